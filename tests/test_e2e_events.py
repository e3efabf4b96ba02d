"""What the core emits fits its declaration: a real cluster goes through every operation, a
refused and a vetoed request, a node lost and a VM moved off it, while a plugin validates
each event (``event_check:EventCheck``)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from harness import Cluster, wait_for
from usher.client import UsherError
from usher.model import OpKind, OpStatus, VMState

EXPECTED = {
    "ctrl_start", "node_join", "request", "start_request", "register", "state_change",
    "start", "stop", "pause", "resume", "reboot", "cycle", "migrate", "destroy",
    "stop_request", "migrate_request", "destroy_request", "unregister", "request_refused",
    "start_failure", "node_lost", "node_state", "plugin_error", "script_failure",
    "webhook_failure",
}  # fmt: skip


def _report(cluster: Cluster) -> dict[str, Any]:
    return cluster.http("GET", "/v1/event-check").json()


def _ok(cluster: Cluster, op: Any) -> None:
    done = cluster.run(op)
    assert done.status == OpStatus.SUCCEEDED, done.error


def test_every_event_of_a_scenario_fits_its_declaration(
    make_cluster: Callable[..., Cluster],
) -> None:
    failing = [{"events": ["stop"], "run": ["/bin/sh", "-c", "cat >/dev/null; exit 3"]}]
    cluster = make_cluster(
        nodes=2,
        plugins=[
            "event_check:EventCheck",
            "event_check:FailsOnStop",
            "site_plugins:Policy",
            "scripts",
            "webhooks",
        ],
        plugin_tables={
            "site_plugins:Policy": {"closed": ["forbidden"]},
            "scripts": {"hooks": failing},
            "webhooks": {"hooks": [{"events": ["stop"], "url": "http://127.0.0.1:9/"}]},
        },
    )
    client = cluster.client()
    _ok(cluster, client.create_vms(names=["ev-1", "ev-2"], node="node-1"))
    for kind in (OpKind.STOP, OpKind.START, OpKind.PAUSE, OpKind.RESUME):
        _ok(cluster, client.action(kind, ["ev-1"]))
    for kind in (OpKind.REBOOT, OpKind.CYCLE):
        _ok(cluster, client.action(kind, ["ev-1"]))
    _ok(cluster, client.action(OpKind.MIGRATE, ["ev-1"], target_node="node-2"))
    with pytest.raises(UsherError) as refused:
        client.action(OpKind.STOP, ["no-such-vm"])
    assert refused.value.status == 404
    with pytest.raises(UsherError) as vetoed:
        client.create_vms(count=1, cluster="forbidden")
    assert vetoed.value.status == 403
    client.drain("node-2")
    client.undrain("node-2")
    cluster.host_dies("node-1")
    wait_for("ev-2 lost", lambda: client.get_vm("ev-2").state == VMState.LOST)
    _ok(cluster, client.action(OpKind.START, ["ev-2"]))  # moved cold to node-2
    _ok(cluster, client.action(OpKind.DESTROY, ["ev-1", "ev-2"]))

    with contextlib.suppress(AssertionError):  # the plugin may still be catching up
        wait_for("every event seen", lambda: set(_report(cluster)["seen"]) >= EXPECTED, 10)
    report = _report(cluster)
    assert report["wrong"] == []
    assert EXPECTED - set(report["seen"]) == set(), report["seen"]
