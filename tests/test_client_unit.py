"""usher.client against an httpx MockTransport: no controller involved."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from usher.client import AsyncClient, Client, UsherConnectionError, UsherError
from usher.client.config import (
    DEFAULT_URL,
    add_remote,
    read_config,
    remove_remote,
    resolve,
    save,
    use_remote,
)
from usher.model import OpStatus

URL = "http://usher.test"
Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(autouse=True)
def no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Keep the user's environment and ~/.usher out of the tests."""
    monkeypatch.setenv("USHER_HOME", str(tmp_path / "usher-home"))
    monkeypatch.delenv("USHER_URL", raising=False)
    monkeypatch.delenv("USHER_TOKEN", raising=False)


class Fake:
    """A scripted controller: answers by (method, path) and records every request."""

    def __init__(self, routes: dict[tuple[str, str], Handler | Any]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        route = self.routes.get((request.method, request.url.path))
        if route is None:
            return httpx.Response(404, json={"error": f"no route {request.url.path}"})
        return route(request) if callable(route) else httpx.Response(200, json=route)

    def client(self, token: str | None = "secret") -> Client:
        return Client(URL, token, transport=httpx.MockTransport(self))

    def async_client(self) -> AsyncClient:
        return AsyncClient(URL, "secret", transport=httpx.MockTransport(self))


def vm_json(n: int) -> dict[str, Any]:
    return {"id": f"vm-{n}", "name": f"web-{n}", "owner": "ann", "spec": {}, "state": "running"}


def op_json(status: str = "running", done: int = 0, failed: int = 0, **extra: Any) -> dict:
    return {
        "id": "op-1",
        "kind": "stop",
        "principal": "ann",
        "targets": ["vm-1", "vm-2"],
        "status": status,
        "result": {"progress": {"done": done, "failed": failed, "total": 2}},
        **extra,
    }


def paged_vms(request: httpx.Request) -> httpx.Response:
    """Three pages of VMs; the cursor is the index of the page."""
    pages = [[1, 2], [3, 4], [5]]
    index = int(request.url.params.get("cursor", "0"))
    following = str(index + 1) if index + 1 < len(pages) else None
    items = [vm_json(n) for n in pages[index]]
    return httpx.Response(200, json={"items": items, "total": 5, "next": following})


# --- config ------------------------------------------------------------------------------


def write_config(home: Path, text: str) -> dict[str, str]:
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.toml").write_text(text)
    return {"USHER_HOME": str(home)}


def test_config_file_used_when_nothing_else_given(tmp_path: Path) -> None:
    env = write_config(tmp_path, 'url = "http://file:1"\ntoken = "file-token"\n')
    settings = resolve(env=env)
    assert (settings.url, settings.token) == ("http://file:1", "file-token")


def test_env_beats_config_file_and_explicit_beats_env(tmp_path: Path) -> None:
    env = write_config(tmp_path, 'url = "http://file:1"\ntoken = "file-token"\n')
    env |= {"USHER_URL": "http://env:2", "USHER_TOKEN": "env-token"}
    assert resolve(env=env).url == "http://env:2"
    assert resolve(env=env).token == "env-token"
    explicit = resolve("http://arg:3", "arg-token", env=env)
    assert (explicit.url, explicit.token) == ("http://arg:3", "arg-token")


def test_each_setting_resolves_on_its_own(tmp_path: Path) -> None:
    env = write_config(tmp_path, 'token = "file-token"\n') | {"USHER_URL": "http://env:2/"}
    settings = resolve(env=env)
    assert (settings.url, settings.token) == ("http://env:2", "file-token")


def test_defaults_without_config(tmp_path: Path) -> None:
    settings = resolve(env={"USHER_HOME": str(tmp_path / "none")})
    assert (settings.url, settings.token) == (DEFAULT_URL, None)


def test_url_without_scheme_gets_https() -> None:
    assert resolve("ctrl.example:8760", "t", env={}).url == "https://ctrl.example:8760"


def test_ca_file_resolves_like_the_rest_and_save_keeps_it(tmp_path: Path) -> None:
    env = write_config(tmp_path, 'url = "https://file:1"\nca_file = "/etc/usher/ca.pem"\n')
    assert resolve(env=env).ca_file == "/etc/usher/ca.pem"
    assert resolve(env=env | {"USHER_CA_FILE": "/env/ca.pem"}).ca_file == "/env/ca.pem"
    assert resolve(env=env, ca_file="/arg/ca.pem").ca_file == "/arg/ca.pem"
    path = save({"token": "new-token"}, env=env)  # as `ush login` does
    assert resolve(env=env).ca_file == "/etc/usher/ca.pem"
    assert resolve(env=env).token == "new-token"
    assert path.stat().st_mode & 0o777 == 0o600
    save({"token": None}, env=env)  # as `ush logout` does
    assert resolve(env=env).token is None and resolve(env=env).url == "https://file:1"


def test_a_missing_ca_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UsherError, match="cannot read the CA file"):
        Client("https://ctrl.example:8760", "t", ca_file=str(tmp_path / "nope.pem"))


def test_broken_config_is_an_usher_error_but_only_when_needed(tmp_path: Path) -> None:
    env = write_config(tmp_path, "url = [unclosed")
    with pytest.raises(UsherError, match=r"config\.toml"):
        resolve(env=env)
    assert resolve("http://arg:3", "t", env=env).url == "http://arg:3"


def test_client_reads_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("USHER_HOME", str(tmp_path))
    monkeypatch.setenv("USHER_URL", "http://from-env:9")
    fake = Fake({("GET", "/v1/whoami"): {"name": "ann"}})
    with Client(token="t", transport=httpx.MockTransport(fake)) as client:
        client.whoami()
    assert fake.requests[0].url.host == "from-env"


# --- requests and errors -----------------------------------------------------------------


def test_requests_carry_token_and_v1_prefix() -> None:
    fake = Fake({("GET", "/v1/whoami"): {"name": "ann", "roles": ["admin"]}})
    principal = fake.client().whoami()
    assert principal.is_admin
    assert fake.requests[0].headers["Authorization"] == "Bearer secret"


def test_no_authorization_header_without_token() -> None:
    fake = Fake({("GET", "/v1/whoami"): {"name": "ann"}})
    fake.client(token=None).whoami()
    assert "Authorization" not in fake.requests[0].headers


def test_json_error_body_becomes_usher_error() -> None:
    answer = httpx.Response(409, json={"error": "web-1 is already stopped", "detail": {"x": 1}})
    fake = Fake({("POST", "/v1/vms/actions/stop"): lambda _: answer})
    with pytest.raises(UsherError) as caught:
        fake.client().stop(["web-1"])
    assert (caught.value.status, caught.value.message) == (409, "web-1 is already stopped")
    assert caught.value.detail == {"x": 1}
    assert str(caught.value) == "web-1 is already stopped"


def test_non_json_error_body_still_explains() -> None:
    fake = Fake({("GET", "/v1/nodes"): lambda _: httpx.Response(502, text="bad gateway")})
    with pytest.raises(UsherError, match="HTTP 502 Bad Gateway: bad gateway") as caught:
        fake.client().nodes()
    assert caught.value.status == 502


def test_unexpected_success_body_is_an_usher_error() -> None:
    fake = Fake({("GET", "/v1/vms/web-1"): {"not": "a vm"}})
    with pytest.raises(UsherError, match="unexpected answer"):
        fake.client().get_vm("web-1")


def test_connection_refused_is_a_clear_error() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nobody listens
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    with Client(url, "t") as client, pytest.raises(UsherConnectionError) as caught:
        client.whoami()
    assert caught.value.status is None
    assert caught.value.message.startswith(f"cannot reach the controller at {url}")


def test_timeout_is_a_clear_error() -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(UsherConnectionError, match="did not answer in time"):
        Client(URL, "t", transport=httpx.MockTransport(slow)).nodes()


def test_vm_names_are_quoted_in_paths() -> None:
    fake = Fake({})
    with pytest.raises(UsherError):
        fake.client().get_vm("a/b")
    assert fake.requests[0].url.raw_path == b"/v1/vms/a%2Fb"


def test_create_vms_sends_the_body() -> None:
    fake = Fake({("POST", "/v1/vms"): lambda _: httpx.Response(202, json=op_json("queued"))})
    op = fake.client().create_vms(4, cluster="web", vcpus=2, kwargs={"gpu": 1})
    assert op.status is OpStatus.QUEUED
    body = json.loads(fake.requests[0].content)
    assert body["count"] == 4
    assert body["cluster"] == "web"
    assert body["vcpus"] == 2
    assert body["kwargs"] == {"gpu": 1}
    assert "names" not in body


def test_invalid_request_fails_before_sending() -> None:
    fake = Fake({})
    with pytest.raises(UsherError) as caught:
        fake.client().create_vms(names=["bad name"])
    assert caught.value.status == 422
    assert caught.value.message.startswith("invalid request: names: ")
    assert caught.value.detail[0]["loc"] == ("names",)
    assert fake.requests == []


def test_action_wrappers_pick_kind_and_targets() -> None:
    fake = Fake({("POST", "/v1/vms/actions/migrate"): op_json(kind="migrate")})
    fake.client().migrate("web-1", target_node="n2")
    body = json.loads(fake.requests[0].content)
    assert body == {"vms": ["web-1"], "target_node": "n2", "kwargs": {}}


def test_unknown_action_kind_is_refused_locally() -> None:
    fake = Fake({})
    with pytest.raises(UsherError, match="unknown action 'explode'"):
        fake.client().action("explode", ["web-1"])
    assert fake.requests == []


# --- pagination and waiting --------------------------------------------------------------


def test_iter_vms_follows_cursors_and_keeps_filters() -> None:
    fake = Fake({("GET", "/v1/vms"): paged_vms})
    names = [vm.name for vm in fake.client().iter_vms(cluster="web", page_size=2)]
    assert names == ["web-1", "web-2", "web-3", "web-4", "web-5"]
    assert [r.url.params.get("cursor") for r in fake.requests] == [None, "1", "2"]
    assert {r.url.params["cluster"] for r in fake.requests} == {"web"}
    assert {r.url.params["limit"] for r in fake.requests} == {"2"}


def test_list_vms_returns_one_page() -> None:
    fake = Fake({("GET", "/v1/vms"): paged_vms})
    page = fake.client().list_vms(state="running")
    assert (len(page.items), page.total, page.next) == (2, 5, "1")
    assert fake.requests[0].url.params["state"] == "running"


def progressing(*answers: dict) -> Handler:
    """Answers the wait long poll with each of ``answers`` in turn."""
    queue = list(answers)
    return lambda _: httpx.Response(200, json=queue.pop(0))


def test_wait_polls_until_done_and_reports_progress() -> None:
    fake = Fake(
        {
            ("GET", "/v1/operations/op-1/wait"): progressing(
                op_json(done=0), op_json(done=1), op_json("succeeded", done=2)
            )
        }
    )
    seen: list[tuple[str, int]] = []
    op = fake.client().wait(
        "op-1", on_progress=lambda op: seen.append((op.status, op.result["progress"]["done"]))
    )
    assert op.status is OpStatus.SUCCEEDED
    assert seen == [("running", 0), ("running", 1), ("succeeded", 2)]
    assert [r.url.params["timeout"] for r in fake.requests] == ["2", "2", "2"]


def test_wait_gives_up_at_timeout_with_the_operation_as_it_is() -> None:
    fake = Fake({("GET", "/v1/operations/op-1/wait"): op_json(done=1)})
    op = fake.client().wait("op-1", timeout=0.05, poll=10)
    assert op.status is OpStatus.RUNNING
    assert fake.requests[0].url.params["timeout"] == "1"


def test_wait_surfaces_errors() -> None:
    fake = Fake({})
    with pytest.raises(UsherError, match="no route /v1/operations/op-9/wait"):
        fake.client().wait("op-9")


# --- event stream ------------------------------------------------------------------------


def sse_body(*events: dict) -> str:
    lines = [": ping\n\n"]
    lines += [f"event: {ev['name']}\ndata: {json.dumps(ev)}\n\n" for ev in events]
    return "".join(lines)


def event_stream(request: httpx.Request) -> httpx.Response:
    body = sse_body({"name": "stop", "vm_id": "vm-1"}, {"name": "stop_failure", "vm_id": "vm-2"})
    return httpx.Response(200, text=body, headers={"content-type": "text/event-stream"})


def test_stream_events_yields_events() -> None:
    fake = Fake({("GET", "/v1/events/stream"): event_stream})
    events = list(fake.client().stream_events(name="stop", vm="vm-1"))
    assert [(e.name, e.vm_id) for e in events] == [("stop", "vm-1"), ("stop_failure", "vm-2")]
    assert fake.requests[0].url.params["vm"] == "vm-1"
    assert fake.requests[0].headers["Accept"] == "text/event-stream"


def test_stream_error_answer_is_an_usher_error() -> None:
    denied = httpx.Response(403, json={"error": "not allowed"})
    fake = Fake({("GET", "/v1/events/stream"): lambda _: denied})
    with pytest.raises(UsherError, match="not allowed"):
        list(fake.client().stream_events())


# --- image upload ------------------------------------------------------------------------


def image_upload(received: list[tuple[str | None, bytes]]) -> Handler:
    """Accepts an image upload, noting how it came (chunked or not) and its bytes."""

    def accept(request: httpx.Request) -> httpx.Response:
        received.append((request.headers.get("Transfer-Encoding"), request.read()))
        return httpx.Response(201, json={"name": "img", "kind": "disk", "files": {}})

    return accept


async def test_both_clients_stream_an_image_upload(tmp_path: Path) -> None:
    qcow2 = tmp_path / "disk.qcow2"
    qcow2.write_bytes(bytes(range(256)) * 10_000)  # more than one chunk
    received: list[tuple[str | None, bytes]] = []
    fake = Fake({("POST", "/v1/images/img"): image_upload(received)})
    assert fake.client().import_image(qcow2, "img", "a disk").name == "img"
    async with fake.async_client() as client:
        assert (await client.import_image(str(qcow2), "img")).name == "img"
    assert received == [("chunked", qcow2.read_bytes())] * 2
    assert [r.url.params.get("description") for r in fake.requests] == ["a disk", None]


# --- the async client shares all of the above --------------------------------------------


async def test_async_client_pages_waits_and_maps_errors() -> None:
    fake = Fake(
        {
            ("GET", "/v1/vms"): paged_vms,
            ("GET", "/v1/operations/op-1/wait"): progressing(
                op_json(done=1), op_json("failed", done=1, failed=1, error="1 VM failed")
            ),
        }
    )
    async with fake.async_client() as client:
        names = [vm.name async for vm in client.iter_vms()]
        progress: list[int] = []
        op = await client.wait("op-1", on_progress=lambda op: progress.append(len(progress)))
        with pytest.raises(UsherError) as caught:
            await client.get_vm("nope")
    assert names == ["web-1", "web-2", "web-3", "web-4", "web-5"]
    assert (op.status, op.error, progress) == (OpStatus.FAILED, "1 VM failed", [0, 1])
    assert caught.value.status == 404


async def test_async_action_wrappers_and_stream() -> None:
    fake = Fake(
        {
            ("POST", "/v1/vms/actions/pause"): op_json(kind="pause"),
            ("GET", "/v1/events/stream"): event_stream,
        }
    )
    async with fake.async_client() as client:
        op = await client.pause(cluster="web")
        events = [event.name async for event in client.stream_events()]
    assert op.kind == "pause"
    assert json.loads(fake.requests[0].content)["cluster"] == "web"
    assert events == ["stop", "stop_failure"]


def test_remotes_name_controllers_and_one_is_in_use(tmp_path: Path) -> None:
    env = write_config(tmp_path, 'url = "https://old:1"\ntoken = "old-token"\n')
    assert resolve(env=env).url == "https://old:1"  # a file from before remotes: "default"
    add_remote("lab", {"url": "https://lab:2", "token": "lab-token"}, env=env)
    assert resolve(env=env).token == "old-token"  # adding does not switch
    assert resolve(env=env, remote="lab").token == "lab-token"
    assert resolve(env=env | {"USHER_REMOTE": "lab"}).url == "https://lab:2"
    use_remote("lab", env=env)
    assert resolve(env=env).url == "https://lab:2"
    save({"token": "new-lab-token"}, env=env)  # `ush login` updates the remote in use
    config = read_config(env)
    assert config.current == "lab"
    assert config.remotes == {
        "default": {"url": "https://old:1", "token": "old-token"},
        "lab": {"url": "https://lab:2", "token": "new-lab-token"},
    }
    with pytest.raises(UsherError, match=r"no remote 'nope'.*remotes: default, lab"):
        resolve(env=env, remote="nope")
    with pytest.raises(UsherError, match="remote names are"):
        add_remote("bad name\n", {"url": "https://x"}, env=env)
    remove_remote("lab", env=env)
    assert read_config(env).current is None and resolve(env=env).url == DEFAULT_URL


def test_a_saved_token_goes_to_its_own_controller_only(tmp_path: Path) -> None:
    env = write_config(tmp_path, 'url = "https://prod:1"\ntoken = "prod-token"\n')
    add_remote("lab", {"url": "https://lab:2", "token": "lab-token"}, env=env)
    assert resolve(env=env).token == "prod-token"
    assert resolve(env=env | {"USHER_URL": "https://other:3"}).token is None
    assert resolve("https://other:3", env=env).token is None  # as the shell's connect URL
    named = resolve(env=env | {"USHER_URL": "https://other:3", "USHER_TOKEN": "x"}, remote="lab")
    assert (named.url, named.token) == ("https://lab:2", "lab-token")  # a named remote, whole
    save({"token": "new-lab"}, env=env, remote="lab")  # as `ush --remote lab login`
    config = read_config(env)
    assert config.current == "default" and config.remotes["default"]["token"] == "prod-token"
    assert config.remotes["lab"] == {"url": "https://lab:2", "token": "new-lab"}
