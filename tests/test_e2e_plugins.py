"""Plugins through a real controller: vetoes reach the user, broken plugins break nothing."""

from __future__ import annotations

import pytest

from harness import Cluster, wait_for
from usher.client import UsherError
from usher.model import OpStatus, VMState

PLUGINS = [
    "site_plugins:Policy",
    "site_plugins:Boom",
    "site_plugins:Sleepy",
    "site_plugins:BrokenStopPolicy",
]


@pytest.fixture
def policed(make_cluster) -> Cluster:
    return make_cluster(
        nodes=2, plugins=PLUGINS, plugin_tables={"site_plugins:Policy": {"closed": ["forbidden"]}}
    )


def test_veto_reaches_the_user_and_changes_nothing(policed: Cluster) -> None:
    client = policed.client()
    with pytest.raises(UsherError) as err:
        client.create_vms(count=3, cluster="forbidden")
    assert err.value.status == 403
    assert "cluster 'forbidden' is closed for maintenance" in err.value.message
    assert "Policy" in err.value.message
    assert policed.vms() == []
    vetoed = client.list_operations(status="vetoed").items
    assert len(vetoed) == 1 and "closed for maintenance" in (vetoed[0].error or "")
    # and through ush: the message on stderr, a failing exit code
    result = policed.ush("start", "-n", "2", "--cluster", "forbidden")
    assert result.returncode != 0
    assert "closed for maintenance" in result.stderr
    assert policed.vms() == []


def test_request_hook_may_change_the_request(policed: Cluster) -> None:
    client = policed.client()
    op = policed.run(client.create_vms(count=1, cluster="ok", kwargs={"tag": True}))
    assert op.status == OpStatus.SUCCEEDED, op.error
    vm = client.get_vm(op.targets[0])
    assert vm.spec.kwargs["tagged_by"] == "policy"


def test_failing_and_hanging_notification_plugins_break_nothing(policed: Cluster) -> None:
    client = policed.client()
    op = policed.run(client.create_vms(count=4, cluster="fine"), timeout=30)
    assert op.status == OpStatus.SUCCEEDED, op.error
    assert {vm.state for vm in policed.vms()} == {VMState.RUNNING}
    errors = wait_for(
        "plugin_error events from both broken plugins",
        lambda: (
            {e.data["plugin"]: e.data["error"] for e in client.iter_events(name="plugin_error")}
            if {"site_plugins:Boom", "site_plugins:Sleepy"}
            <= {e.data["plugin"] for e in client.iter_events(name="plugin_error")}
            else None
        ),
    )
    assert "boom on" in errors["site_plugins:Boom"]
    assert errors["site_plugins:Sleepy"] == "timed out"
    # the event log (a plugin too) still recorded every start
    starts = wait_for(
        "4 start events",
        lambda: [e for e in client.iter_events(name="start") if e.operation_id == op.id] or None,
    )
    wait_for(
        "all 4",
        lambda: len([e for e in client.iter_events(name="start") if e.operation_id == op.id]) == 4,
    )
    assert starts


def test_broken_request_plugin_refuses_with_a_clear_message(policed: Cluster) -> None:
    client = policed.client()
    op = policed.run(client.create_vms(count=1, cluster="x"))
    with pytest.raises(UsherError) as err:
        client.stop(cluster="x")
    assert err.value.status == 403  # a broken policy plugin refuses (fails closed)
    assert "BrokenStopPolicy" in err.value.message and "stop_request" in err.value.message
    assert "nothing was changed" in err.value.message
    assert client.get_vm(op.targets[0]).state == VMState.RUNNING
