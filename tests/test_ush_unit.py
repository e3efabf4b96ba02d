"""ush against a scripted controller behind an httpx MockTransport: no real controller."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner, Result

from usher.cli.ush import cli
from usher.cli.ush_session import Session
from usher.cli.ush_shell import Shell

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the user's environment and ~/.usher out of the tests."""
    monkeypatch.setenv("USHER_HOME", str(tmp_path / "usher-home"))
    monkeypatch.delenv("USHER_URL", raising=False)
    monkeypatch.delenv("USHER_TOKEN", raising=False)


def vm_json(n: int) -> dict[str, Any]:
    return {
        "id": f"vm-{n}",
        "name": f"web-{n}",
        "owner": "ann",
        "cluster": "web",
        "node": "n1",
        "spec": {"vcpus": 1, "memory_mb": 256},
        "state": "running",
    }


def op_json(status: str = "queued", kind: str = "stop", **extra: Any) -> dict[str, Any]:
    done = 2 if status == "succeeded" else 1
    failed = 1 if status == "failed" else 0
    return {
        "id": "op-1",
        "kind": kind,
        "principal": "ann",
        "targets": ["vm-1", "vm-2"],
        "status": status,
        "result": {"progress": {"done": done, "failed": failed, "total": 2}},
        **extra,
    }


def two_pages(request: httpx.Request) -> httpx.Response:
    if request.url.params.get("cursor") == "p2":
        return httpx.Response(200, json={"items": [vm_json(3)], "total": 3, "next": None})
    return httpx.Response(200, json={"items": [vm_json(1), vm_json(2)], "total": 3, "next": "p2"})


def not_found(request: httpx.Request) -> httpx.Response:
    return httpx.Response(404, json={"error": f"no VM named {request.url.path.split('/')[-1]}"})


class Controller:
    """Answers by (host, method, path) and records every request."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.wait_answers: list[dict[str, Any]] = [op_json("succeeded")]
        self.routes: dict[tuple[str, str], Handler | Any] = {
            ("GET", "/v1/whoami"): lambda r: httpx.Response(200, json={"name": r.url.host}),
            ("GET", "/v1/vms"): two_pages,
            ("GET", "/v1/vms/nope"): not_found,
            ("POST", "/v1/vms"): lambda _: httpx.Response(202, json=op_json(kind="start")),
            ("GET", "/v1/operations/op-1/wait"): lambda _: self._next_wait(),
        }

    def _next_wait(self) -> httpx.Response:
        answer = self.wait_answers.pop(0) if len(self.wait_answers) > 1 else self.wait_answers[0]
        return httpx.Response(200, json=answer)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if request.url.path.startswith("/v1/vms/actions/"):
            kind = request.url.path.rsplit("/", 1)[1]
            return httpx.Response(202, json=op_json(kind=kind))
        route = self.routes.get((request.method, request.url.path))
        if route is None:
            return httpx.Response(404, json={"error": "unknown"})
        return route(request) if callable(route) else httpx.Response(200, json=route)

    def session(self) -> Session:
        return Session("http://usher.test", "secret", transport=httpx.MockTransport(self))

    def body(self, index: int = -1) -> Any:
        posts = [r for r in self.requests if r.method == "POST"]
        return json.loads(posts[index].content)


@pytest.fixture
def ctrl() -> Controller:
    return Controller()


def ush(ctrl: Controller, *args: str) -> Result:
    session = ctrl.session()
    try:
        return CliRunner().invoke(cli, list(args), obj=session)
    finally:
        session.close()


# --- output ------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [("list", "-o", "json"), ("-o", "json", "list")])
def test_list_json_is_an_array_of_all_pages(ctrl: Controller, args: tuple[str, ...]) -> None:
    result = ush(ctrl, *args)
    assert result.exit_code == 0, result.output
    vms = json.loads(result.stdout)
    assert [vm["name"] for vm in vms] == ["web-1", "web-2", "web-3"]
    for vm in vms:
        assert {"id", "name", "cluster", "node", "state"} <= vm.keys()
    assert vms[0]["state"] == "running"


def test_list_table_passes_filters(ctrl: Controller) -> None:
    result = ush(ctrl, "list", "--cluster", "web", "--state", "running")
    assert result.exit_code == 0, result.output
    assert "web-3" in result.stdout
    assert "NAME" in result.stdout
    assert ctrl.requests[0].url.params["cluster"] == "web"
    assert ctrl.requests[0].url.params["state"] == "running"


# --- operations --------------------------------------------------------------------------


def test_stop_no_wait_prints_only_the_operation_id(ctrl: Controller) -> None:
    result = ush(ctrl, "stop", "web-1", "web-2", "--no-wait")
    assert result.exit_code == 0, result.output
    assert result.stdout == "op-1\n"
    assert ctrl.requests[-1].url.path == "/v1/vms/actions/stop"
    assert ctrl.body() == {"vms": ["web-1", "web-2"], "kwargs": {}}


def test_stop_no_wait_json_prints_the_operation(ctrl: Controller) -> None:
    result = ush(ctrl, "-o", "json", "stop", "--cluster", "web", "--no-wait")
    assert json.loads(result.stdout)["id"] == "op-1"
    assert ctrl.body()["cluster"] == "web"


def test_stop_waits_and_reports_success(ctrl: Controller) -> None:
    ctrl.wait_answers = [op_json("running"), op_json("succeeded")]
    result = ush(ctrl, "stop", "--cluster", "web")
    assert result.exit_code == 0, result.output
    assert "stop op-1 succeeded: 2/2 done" in result.stdout
    waits = [r for r in ctrl.requests if r.url.path.endswith("/wait")]
    assert len(waits) == 2


def test_failed_operation_exits_1_and_lists_vm_errors(ctrl: Controller) -> None:
    errors = {"progress": {"done": 1, "failed": 1, "total": 2}, "errors": {"vm-2": "disk gone"}}
    ctrl.wait_answers = [op_json("failed", "reboot", error="1 of 2 VMs failed", result=errors)]
    result = ush(ctrl, "reboot", "web-1", "web-2")
    assert result.exit_code == 1
    assert "reboot op-1 failed: 1/2 done, 1 failed" in result.stdout
    assert "vm-2: disk gone" in result.stdout


def test_wait_on_a_vetoed_operation_exits_1(ctrl: Controller) -> None:
    ctrl.wait_answers = [op_json("vetoed", error="quota exceeded")]
    result = ush(ctrl, "-o", "json", "wait", "op-1")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["status"] == "vetoed"


def test_start_creates_vms(ctrl: Controller) -> None:
    args = ["start", "-n", "2", "--cluster", "web", "--memory", "512", "--kwarg", "gpu=2"]
    result = ush(ctrl, *args, "--kwarg", "tag=blue", "--no-wait")
    assert result.exit_code == 0, result.output
    assert ctrl.requests[-1].url.path == "/v1/vms"
    body = ctrl.body()
    assert (body["count"], body["cluster"], body["memory_mb"]) == (2, "web", 512)
    assert body["kwargs"] == {"gpu": 2, "tag": "blue"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["web-1", "web-2"], {"vms": ["web-1", "web-2"], "kwargs": {}}),
        (["--cluster", "web"], {"vms": [], "cluster": "web", "kwargs": {}}),
    ],
)
def test_start_boots_existing_vms(
    ctrl: Controller, args: list[str], expected: dict[str, Any]
) -> None:
    result = ush(ctrl, "start", *args, "--no-wait")
    assert result.exit_code == 0, result.output
    assert ctrl.requests[-1].url.path == "/v1/vms/actions/start"
    assert ctrl.body() == expected


def test_start_refuses_creation_options_when_booting(ctrl: Controller) -> None:
    result = ush(ctrl, "start", "web-1", "--vcpus", "2")
    assert result.exit_code == 2
    assert "--vcpus sizes or places new VMs" in result.stderr
    # before `ush create`, this one silently created a new VM in cluster web
    result = ush(ctrl, "start", "--cluster", "web", "--vcpus", "2")
    assert result.exit_code == 2
    assert "use `ush create --cluster web --vcpus …`" in result.stderr
    result = ush(ctrl, "start")
    assert result.exit_code == 2 and "ush create" in result.stderr
    assert ctrl.requests == []


def test_create_makes_new_vms_and_start_n_is_its_shorthand(ctrl: Controller) -> None:
    for command in (["create"], ["start", "-n", "2"]):
        result = ush(ctrl, *command, "--cluster", "web", "--vcpus", "2", "--no-wait")
        assert result.exit_code == 0, result.output
        assert ctrl.requests[-1].url.path == "/v1/vms"
        assert ctrl.body()["cluster"] == "web" and ctrl.body()["vcpus"] == 2


def test_migrate_sends_target_node(ctrl: Controller) -> None:
    result = ush(ctrl, "migrate", "web-1", "--to", "n2", "--no-wait")
    assert result.exit_code == 0, result.output
    assert ctrl.body() == {"vms": ["web-1"], "target_node": "n2", "kwargs": {}}


def test_action_without_targets_is_a_usage_error(ctrl: Controller) -> None:
    result = ush(ctrl, "destroy")
    assert result.exit_code == 2
    assert ctrl.requests == []


# --- errors ------------------------------------------------------------------------------


def test_api_error_prints_message_and_exits_1(ctrl: Controller) -> None:
    result = ush(ctrl, "-o", "json", "show", "nope")
    assert result.exit_code == 1
    assert result.stderr == "error: no VM named nope\n"
    assert result.stdout == ""


def test_validation_error_lists_the_fields(ctrl: Controller) -> None:
    result = ush(ctrl, "start", "--names", "ok,bad name")
    assert result.exit_code == 1
    assert result.stderr.startswith("error: invalid request: names: ")
    assert ctrl.requests == []


def test_unreachable_controller_exits_1_with_clear_message() -> None:
    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("Connection refused", request=request)

    session = Session("http://down.test", "t", transport=httpx.MockTransport(refuse))
    result = CliRunner().invoke(cli, ["nodes"], obj=session)
    assert result.exit_code == 1
    assert result.stderr.startswith("error: cannot reach the controller at http://down.test")
    assert "Traceback" not in result.output


# --- the interactive shell ---------------------------------------------------------------


def test_shell_runs_commands_and_keeps_going(
    ctrl: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    shell = Shell(cli, ctrl.session())
    assert shell.handle("list -o json") is True
    assert len(json.loads(capsys.readouterr().out)) == 3
    assert shell.handle("ush stop web-1 --no-wait") is True
    assert capsys.readouterr().out == "op-1\n"
    assert shell.handle("show nope") is True
    assert capsys.readouterr().err == "error: no VM named nope\n"
    assert shell.handle("stop") is True  # usage error: shown, not raised
    assert "--cluster" in capsys.readouterr().err
    assert shell.handle('show "unclosed') is True
    assert capsys.readouterr().err.startswith("error: ")
    assert shell.handle("") is True
    assert shell.handle("quit") is False
    assert shell.handle("exit") is False


def test_shell_output_option_lasts_one_line(
    ctrl: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    shell = Shell(cli, ctrl.session())
    shell.handle("-o json stop web-1 --no-wait")
    assert json.loads(capsys.readouterr().out)["id"] == "op-1"
    shell.handle("stop web-1 --no-wait")
    assert capsys.readouterr().out == "op-1\n"


def test_shell_help_lists_commands_and_builtins(
    ctrl: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    Shell(cli, ctrl.session()).handle("help")
    out = capsys.readouterr().out
    assert "migrate" in out
    assert "connect URL [TOKEN]" in out


def test_shell_connect_switches_controller(
    ctrl: Controller, capsys: pytest.CaptureFixture[str]
) -> None:
    session = ctrl.session()
    shell = Shell(cli, session)
    shell.handle("whoami")
    assert "usher.test" in capsys.readouterr().out
    shell.handle("connect http://other.test:9000 tok2")
    assert capsys.readouterr().out == "connected to http://other.test:9000 as other.test\n"
    shell.handle("whoami")
    assert ctrl.requests[-1].url.host == "other.test"
    assert ctrl.requests[-1].headers["Authorization"] == "Bearer tok2"
    session.close()


# --- events ------------------------------------------------------------------------------


def test_events_follow_streams_json_lines(ctrl: Controller) -> None:
    body = "".join(
        f"event: {name}\ndata: {json.dumps({'name': name, 'vm_id': 'vm-1'})}\n\n"
        for name in ("stop", "start")
    )
    ctrl.routes["GET", "/v1/events/stream"] = lambda _: httpx.Response(
        200, text=body, headers={"content-type": "text/event-stream"}
    )
    result = ush(ctrl, "events", "--follow", "--vm", "vm-1", "-o", "json")
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [event["name"] for event in lines] == ["stop", "start"]
    assert ctrl.requests[0].url.params["vm"] == "vm-1"


def test_events_since_accepts_durations(ctrl: Controller) -> None:
    ctrl.routes["GET", "/v1/events"] = {"items": [{"name": "ctrl_start"}], "total": 1}
    result = ush(ctrl, "events", "--since", "10m")
    assert result.exit_code == 0, result.output
    assert "ctrl_start" in result.stdout
    since = float(ctrl.requests[0].url.params["since"])
    assert since == pytest.approx(time.time() - 600, abs=5)
    assert ush(ctrl, "events", "--since", "soon").exit_code == 2


def test_stop_force_and_timeout_reach_the_request(ctrl: Controller) -> None:
    result = ush(ctrl, "stop", "web-1", "--force", "--timeout", "5", "--no-wait")
    assert result.exit_code == 0, result.output
    assert ctrl.body() == {"vms": ["web-1"], "kwargs": {"hard": True, "timeout": 5.0}}
    result = ush(ctrl, "destroy", "web-1", "--timeout", "60", "--no-wait")
    assert ctrl.body() == {"vms": ["web-1"], "kwargs": {"timeout": 60.0}}
    refused = ush(ctrl, "reboot", "web-1", "--force")
    assert refused.exit_code == 2  # a reboot is a reset already: no --force to offer


def test_commands_that_need_the_terminal_run_in_the_launcher(monkeypatch) -> None:
    """``ush ssh`` becomes ssh (exec) and may ask for a passphrase, as ``login`` asks for a
    password: neither can run in a server's child, which has no controlling terminal."""
    from usher.cli import ush_launcher

    monkeypatch.delenv("USHER_SERVER", raising=False)
    for argv in (["ssh", "web", "--", "uname"], ["login"], ["-o", "json", "ssh", "web"]):
        assert not ush_launcher._wanted(argv), argv
    assert ush_launcher._wanted(["list"]) and ush_launcher._wanted(["console", "web"])
