"""No command, however malformed, ends an LNM (issue 12, item 2): a real ``usher lnm`` process
linked to a controller that sends it garbage answers every command (an error reply where it
must) and goes on serving the next one."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from harness import TESTS_DIR, free_port

BIG = 10**400
GARBAGE: list[str | bytes] = [
    "{not json",
    "[1, 2, 3]",
    '"a string"',
    "null",
    b"\x00\x01binary frame",
    '{"type": "command"}',
    json.dumps(
        {
            "type": "command",
            "id": "c1",
            "action": "console",
            "vm_id": "vm-1",
            "args": {"offset": BIG},
        }
    ),
    '{"type": "command", "id": "c2", "action": "console", "vm_id": "vm-1", "args": {"offset": -5}}',
    '{"type": "command", "id": "c3", "action": "stop", "vm_id": "vm-1", '
    '"args": {"timeout": 1e400}}',
    '{"type": "command", "id": "c4", "action": "stop", "vm_id": "vm-1", "args": "not a dict"}',
    '{"type": "command", "id": "c5", "action": 12, "vm_id": "vm-1"}',
    '{"type": "command", "id": "c6", "action": "start", "vm_id": "vm-1", "guest": [1]}',
    '{"type": "command", "id": "c7", "action": "start", "vm_id": "vm-1", "guest": {"id": 5}}',
    '{"type": "command", "id": "c8", "action": "info", "vm_id": "../../etc\\n"}',
    '{"type": "command", "id": "c9", "action": "migrate", "vm_id": "vm-1", "args": {}}',
    '{"type": "command", "id": "c10", "action": "nonsense", "vm_id": "vm-1"}',
    '{"type": "command", "id": {"nested": true}, "action": "info", "vm_id": "vm-1"}',
    '{"type": "cancel-everything"}',
    '{"type": "command", "id": "c11", "action": "cancel", "args": {"command": [1]}}',
    json.dumps({"type": "command", "id": "c12", "action": "info", "vm_id": "vm-1", "x": BIG}),
]


async def test_garbage_from_the_controller_never_ends_the_lnm(tmp_path: Path) -> None:
    port = free_port()
    replies: list[dict[str, Any]] = []
    done = asyncio.Event()

    async def controller(ws: ServerConnection) -> None:
        hello = json.loads(await ws.recv())
        assert hello["type"] == "hello" and hello["node"] == "n1"
        await ws.send(json.dumps({"type": "welcome", "heartbeat": 0.2}))
        for message in GARBAGE:
            await ws.send(message)
        await ws.send(
            json.dumps({"type": "command", "id": "last", "action": "info", "vm_id": "vm-1"})
        )
        async for raw in ws:
            message = json.loads(raw)
            if message.get("type") == "reply":
                replies.append(message)
                if message["id"] == "last":
                    done.set()

    token = tmp_path / "join.token"
    token.write_text("ush_not-checked-by-this-controller\n")
    async with serve(controller, "127.0.0.1", port):
        lnm = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "usher.cli.usher_cmd", "lnm",
            "--ctrl", f"http://127.0.0.1:{port}", "--name", "n1", "--driver", "fake",
            "--state-dir", str(tmp_path / "n1"), "--storage-dir", str(tmp_path / "storage"),
            "--join-token-file", str(token),
            cwd=TESTS_DIR, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        try:
            await asyncio.wait_for(done.wait(), 30)
            await asyncio.sleep(0.5)
            assert lnm.returncode is None, "the LNM exited"
        finally:
            lnm.terminate()
            _, stderr = await lnm.communicate()
    by_id = {json.dumps(r["id"]): r for r in replies}
    for cmd_id in ("c1", "c2", "c3", "c4", "c5", "c6", "c7", "c8", "c9", "c10", "c12"):
        reply = by_id[json.dumps(cmd_id)]
        assert reply["ok"] is False and reply["error"], reply
    assert by_id['"c11"']["result"] == {"cancelled": False}  # no such command to cancel
    assert "offset" in by_id['"c1"']["error"] and "offset" in by_id['"c2"']["error"]
    assert by_id['"last"']["ok"] is False and "not on this node" in by_id['"last"']["error"]
    assert b"Traceback" not in stderr, stderr.decode()[-3000:]
