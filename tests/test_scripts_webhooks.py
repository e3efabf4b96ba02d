"""Scripts and webhooks through a real controller, a real bash and a real HTTP receiver.

Neither plugin touches the database, so these run on SQLite only.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from harness import Cluster, free_port, wait_for
from usher.client import UsherError
from usher.model import OpStatus, VMState
from usher.plugins.hooktable import parse_hooks
from usher.plugins.scripts import run_script

SCRIPTS = {
    # every event it gets, one file each
    "record.sh": 'cat > "$(mktemp "$OUT/$USHER_EVENT.XXXXXX")"',
    # a stop policy: refuses VMs asked to be kept
    "guard.sh": """payload=$(cat)
printf '%s\\n' "$payload" >> "$OUT/guard.log"
if [[ $payload == *'"keep": true'* || $payload == *'"keep":true'* ]]; then
  echo "VM is marked keep: not stopping it" >&2
  exit 3
fi""",
    "fail.sh": "cat >/dev/null; echo 'disk full' >&2; exit 4",
    "slow.sh": "sleep 30",
}


def _toml(value: Any) -> str:
    """Enough TOML for a hooks list: inline tables, lists, strings and numbers."""
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


class Receiver:
    """A local HTTP server that keeps what is POSTed to it: ``/ok`` answers 204, ``/fail``
    500, ``/slow`` only after two seconds."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, dict[str, str], dict[str, Any]]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                receiver.posts.append((self.path, dict(self.headers), body))
                if self.path == "/slow":
                    time.sleep(2)
                self.send_response(500 if self.path == "/fail" else 204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def bodies(self, path: str) -> list[dict[str, Any]]:
        return [body for p, _headers, body in self.posts if p == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
def hooked(
    tmp_path: Path, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cluster]:
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("OUT", str(out))  # the controller (and so its scripts) inherit it
    paths = {}
    for name, body in SCRIPTS.items():
        paths[name] = tmp_path / name
        paths[name].write_text(f"#!/bin/bash\nset -u\n{body}\n")
        paths[name].chmod(0o755)
    scripts = [
        {"events": ["start", "stop"], "run": str(paths["record.sh"])},
        {"events": ["stop_request"], "run": str(paths["guard.sh"]), "timeout": 5},
        {"events": ["destroy_request", "resume"], "run": str(paths["slow.sh"]), "timeout": 0.5},
        {"events": ["pause"], "run": [str(paths["fail.sh"]), "--an-argument"]},
        {"events": ["reboot"], "run": str(tmp_path / "no-such-script")},
    ]
    webhooks = [
        {
            "events": ["start", "stop_request"],
            "url": f"{receiver.url}/ok",
            "headers": {"X-Usher-Key": "s3cret"},
        },
        {"events": ["pause"], "url": f"{receiver.url}/fail"},
        {"events": ["resume"], "url": f"{receiver.url}/slow", "timeout": 0.5},
        {"events": ["reboot"], "url": f"http://127.0.0.1:{free_port()}/closed", "timeout": 2},
    ]
    cluster = Cluster(tmp_path / "c", None, plugins=["scripts", "webhooks"])
    with cluster.config.open("a") as fh:
        fh.write(f"[plugins.scripts]\nhooks = {_toml(scripts)}\n")
        fh.write(f"[plugins.webhooks]\nhooks = {_toml(webhooks)}\n")
    try:
        cluster.add_blank_image()
        cluster.start_ctrl()
        cluster.start_lnm("node-1")
        yield cluster
    finally:
        cluster.stop()


def failures(cluster: Cluster, name: str, count: int) -> dict[str, dict[str, Any]]:
    """The data of ``name`` events by the event they report, once there are ``count``."""
    client = cluster.client()

    def found() -> dict[str, dict[str, Any]] | None:
        data = {e.data["event"]: e.data for e in client.iter_events(name=name)}
        return data if len(data) >= count else None

    return wait_for(f"{count} {name} events", found)


def test_scripts_get_events_and_veto_requests(hooked: Cluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    client = hooked.client()
    op = hooked.run(client.create_vms(count=1, cluster="s"))
    vm_id = op.targets[0]
    started = wait_for("the start event script", lambda: list(out.glob("start.*")))
    event = json.loads(started[0].read_text())
    assert (event["name"], event["vm_id"], event["operation_id"]) == ("start", vm_id, op.id)

    with pytest.raises(UsherError) as err:
        client.stop(["s-1"], kwargs={"keep": True})
    assert err.value.status == 403
    assert "VM is marked keep: not stopping it" in err.value.message
    assert client.get_vm("s-1").state == VMState.RUNNING

    assert hooked.run(client.stop(["s-1"])).status == OpStatus.SUCCEEDED
    wait_for("the stop event script", lambda: list(out.glob("stop.*")))
    asked = [json.loads(line) for line in (out / "guard.log").read_text().splitlines()]
    assert len(asked) == 2  # once per request: not again on the stop_request event
    assert {a["name"] for a in asked} == {"stop_request"}
    assert asked[1]["data"]["vm_ids"] == [vm_id] and asked[1]["principal"] == client.whoami().name

    # a request script that hangs vetoes (a broken policy lets nothing through)
    with pytest.raises(UsherError) as err:
        client.destroy(["s-1"])
    assert err.value.status == 403 and "timed out after 0.5 s" in err.value.message
    assert client.get_vm("s-1").state == VMState.STOPPED

    # failing notification scripts: logged and published, the operations unharmed
    hooked.run(client.start_existing(["s-1"]))
    for kind in ("pause", "resume", "reboot"):
        assert hooked.run(client.action(kind, ["s-1"])).status == OpStatus.SUCCEEDED
    found = failures(hooked, "script_failure", 3)
    assert found["pause"]["error"].endswith("fail.sh exited with status 4")
    assert found["pause"]["output"] == "disk full"
    assert found["resume"]["error"].endswith("slow.sh timed out after 0.5 s")
    assert found["reboot"]["error"].startswith("cannot run")
    assert "no-such-script" in found["reboot"]["error"]
    assert "script" in hooked.log("ctrl") and "failed on event pause" in hooked.log("ctrl")


def test_webhooks_post_events_and_report_failures(hooked: Cluster, receiver: Receiver) -> None:
    client = hooked.client()
    op = hooked.run(client.create_vms(count=1, cluster="w"))
    hooked.run(client.stop(["w-1"]))
    wait_for("two posts to /ok", lambda: len(receiver.bodies("/ok")) == 2)
    start, stop_request = receiver.bodies("/ok")
    assert (start["name"], start["vm_id"], start["operation_id"]) == ("start", op.targets[0], op.id)
    assert stop_request["name"] == "stop_request"
    assert stop_request["data"]["vm_ids"] == op.targets
    headers = next(h for p, h, _b in receiver.posts if p == "/ok")
    assert headers["X-Usher-Key"] == "s3cret"
    assert headers["Content-Type"] == "application/json"

    hooked.run(client.start_existing(["w-1"]))
    for kind in ("pause", "resume", "reboot"):
        assert hooked.run(client.action(kind, ["w-1"])).status == OpStatus.SUCCEEDED
    found = failures(hooked, "webhook_failure", 3)
    assert found["pause"] == {
        "url": f"{receiver.url}/fail",
        "event": "pause",
        "error": "answered 500",
    }
    assert found["resume"]["error"] == "no answer within 0.5 s"
    assert found["reboot"]["error"].startswith("ConnectError")
    assert [b["name"] for b in receiver.bodies("/fail")] == ["pause"]


@pytest.mark.parametrize(
    ("hooks", "message"),
    [
        ([{"run": "/bin/true"}], "hooks[0] needs events"),
        ([{"events": "start", "run": "/bin/true"}], "hooks[0] needs events"),
        ([{"events": ["start"]}], "hooks[0] needs run"),
        ([{"events": ["start"], "run": "/bin/true", "timeout": 0}], "timeout must be positive"),
        (["/bin/true"], "hooks[0] must be a table"),
    ],
)
def test_bad_hook_tables_are_refused(hooks: list[Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_hooks("scripts", {"hooks": hooks}, "run")


async def test_a_script_that_exits_without_reading_its_input_fails_cleanly() -> None:
    """A script that never reads the event on its stdin (here a megabyte of it) is an
    ordinary failure with its exit status, not an error in the plugin."""
    payload = {"name": "start", "data": {"big": "x" * 1024 * 1024}}
    result = await run_script(["sh", "-c", "echo no >&2; exit 3"], payload, 10)
    assert result.error == "sh exited with status 3" and result.output == "no"
    result = await run_script(["sh", "-c", "wc -c"], payload, 10)
    assert result.error is None and int(result.output) > 1024 * 1024
