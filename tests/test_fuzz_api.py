"""schemathesis over the controller's whole OpenAPI document (the core's routes and those of
the plugins a site enables), as an ordinary user and as the admin: no 5xx, every error is
JSON ``{"error": <non-empty str>, "detail": ...}``, every status answered is declared in the
document, a method a path does not take is ``405`` with ``Allow``, and the admin cannot lock
itself out (its token works when the run is over)."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings

from harness import Cluster

CASES: Counter[str] = Counter()
MAX_EXAMPLES = 25
PLUGINS = ["authz", "quotas", "passwords", "audit", "ha", "kwargfil"]
# the endless SSE stream and the LNM WebSocket are not plain calls
SKIP = ("/v1/events/stream", "/v1/lnm")
# a user who revokes its own token has nothing left to fuzz with (tests/security has it);
# the admin may revoke its own once it made another admin token, and goes on with that one
SKIP_FOR = {
    "user": {("POST", "/v1/logout"), ("DELETE", "/v1/tokens/{token_id}")},
    "admin": set(),
}


@pytest.fixture(scope="module")
def fuzz_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path_factory.mktemp("fuzz"), None, plugins=PLUGINS)
    cluster.add_blank_image()
    cluster.start_ctrl()
    cluster.start_lnm("node-1")
    cluster.run(cluster.client().create_vms(names=["fuzzed"], cluster="fz"))
    yield cluster
    cluster.stop()


class Tokens:
    """The token a run fuzzes with, and the admin tokens it made on the way: when the one
    in use is revoked (a logout went through: another admin credential was left), the run
    goes on with one of those."""

    def __init__(self, token: str) -> None:
        self.current = token
        self.spare: list[str] = []

    def saw(self, method: str, path: str, response: httpx.Response) -> None:
        made = (method, path) == ("POST", "/v1/tokens") and response.status_code == 201
        if made and "admin" in response.json()["roles"]:
            self.spare.append(response.json()["token"])
        if (method, path) == ("POST", "/v1/logout") and response.status_code == 200:
            assert self.spare, "the last admin credential was revoked"
            self.current = self.spare.pop()


def _check(case, cluster: Cluster, tokens: Tokens, statuses: Counter[int]) -> None:
    response = case.call(
        base_url=cluster.url, headers={"Authorization": f"Bearer {tokens.current}"}, timeout=30
    )
    tokens.saw(case.method.upper(), case.path, response)
    CASES[f"{case.method} {case.path}"] += 1
    statuses[response.status_code] += 1
    where = f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
    assert response.status_code < 500, where
    declared = case.operation.definition.raw.get("responses", {})
    assert str(response.status_code) in declared or "default" in declared, f"undeclared: {where}"
    if response.status_code >= 400:
        body = response.json()
        assert isinstance(body, dict), where
        assert isinstance(body.get("error"), str) and body["error"].strip(), where
        assert "detail" in body, where


def _fuzz(cluster: Cluster, token: str, who: str) -> Tokens:
    schema = schemathesis.openapi.from_url(
        cluster.url + "/openapi.json", headers={"Authorization": f"Bearer {token}"}
    )
    failures: list[str] = []
    operations = 0
    statuses: Counter[int] = Counter()
    tokens = Tokens(token)
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path in SKIP or (operation.method.upper(), operation.path) in SKIP_FOR[who]:
            continue
        operations += 1

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            database=None,
            phases=[Phase.explicit, Phase.generate],
        )
        def run(case) -> None:
            _check(case, cluster, tokens, statuses)

        try:
            run()
        except AssertionError as exc:
            failures.append(str(exc).splitlines()[0])
    total = sum(statuses.values())
    print(f"fuzz as {who}: {total} cases over {operations} operations; statuses {dict(statuses)}")
    assert total >= operations
    assert not failures, failures
    return tokens


@pytest.mark.timeout(1200)
def test_api_never_fails_on_the_server_for_a_user(fuzz_cluster: Cluster) -> None:
    """schemathesis's pytest plugin does not run under pytest 9: its strategies are driven
    here, MAX_EXAMPLES generated cases per operation."""
    user = fuzz_cluster.issue_token("mallory", ["user"])
    _fuzz(fuzz_cluster, user, "user")


@pytest.mark.timeout(1200)
def test_api_never_fails_on_the_server_for_the_admin(fuzz_cluster: Cluster) -> None:
    tokens = _fuzz(fuzz_cluster, fuzz_cluster.token, "admin")
    whoami = fuzz_cluster.http("GET", "/v1/whoami", token=tokens.current)
    assert whoami.status_code == 200 and "admin" in whoami.json()["roles"]  # not locked out


def test_a_method_a_path_does_not_take_is_405_with_allow(fuzz_cluster: Cluster) -> None:
    admin = fuzz_cluster.issue_token("root", ["admin"])  # (the fuzz may have revoked the first)
    document = fuzz_cluster.http("GET", "/openapi.json", token=admin).json()
    templates = [  # routes with a parameter, which a literal path of another route may match
        (re.compile("^" + re.sub(r"\{[^}/]+\}", "[^/]+", path) + "$"), {m.upper() for m in item})
        for path, item in document["paths"].items()
        if "{" in path
    ]
    tried = 0
    for path, item in document["paths"].items():
        if "{" in path:
            path = path.replace("{", "").replace("}", "")  # any value will do
        taken = {m.upper() for m in item}
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            if method in taken or any(
                method in methods and pattern.match(path) for pattern, methods in templates
            ):  # (PATCH /v1/vms/plan is a change of the VM named "plan")
                continue
            response = httpx.request(
                method,
                fuzz_cluster.url + path,
                headers={"Authorization": f"Bearer {admin}"},
                timeout=30,
            )
            tried += 1
            if response.status_code == 404:  # another route shares the prefix
                continue
            assert response.status_code == 405, (method, path, response.text)
            # (a path another route also matches, say /v1/nodes/join-tokens and
            # /v1/nodes/{name}, is answered for the first: its methods are the Allow)
            allow = {m.strip() for m in response.headers["allow"].split(",")}
            assert allow and method not in allow, (method, path, allow, taken)
            assert response.json()["error"]
    assert tried > 20
