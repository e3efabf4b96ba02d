"""The audit plugin through a real controller: every request, its outcome, queryable."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from harness import Cluster, wait_for
from site_plugins import Alice
from usher.client import Client, UsherError
from usher.model import OpStatus

PLUGINS = [
    "audit",
    "site_plugins:Alice",
    "site_plugins:Policy",
    "site_plugins:BrokenStopPolicy",
    "site_plugins:TinyIpam",
]


@pytest.fixture
def audited(make_cluster, tmp_path: Path) -> Cluster:
    return make_cluster(
        nodes=2,
        plugins=PLUGINS,
        plugin_tables={
            "audit": {"file": str(tmp_path / "log" / "audit.jsonl")},
            "site_plugins:Policy": {"closed": ["forbidden"]},
        },
        lnm_options={"driver_options": {"fail": {"reboot": 1.0}}},
    )


def audit(cluster: Cluster, token: str = "admin", **params: Any) -> list[dict[str, Any]]:
    response = cluster.http("GET", "/v1/audit", token=token, params=params)
    assert response.status_code == 200, response.text
    return response.json()["items"]


def by_op(entries: list[dict[str, Any]]) -> dict[str | None, dict[str, Any]]:
    return {e["operation_id"]: e for e in entries}


def test_every_request_is_recorded_with_its_outcome(audited: Cluster, tmp_path: Path) -> None:
    admin = audited.client()
    me = admin.whoami().name
    started = audited.run(admin.create_vms(count=2, cluster="web"))
    assert started.status == OpStatus.SUCCEEDED
    rebooted = audited.run(admin.reboot(["web-1"]))
    assert rebooted.status == OpStatus.FAILED  # the fake driver fails every reboot here
    with pytest.raises(UsherError) as vetoed:
        admin.create_vms(count=1, cluster="forbidden", kwargs={"why": "test"})
    assert vetoed.value.status == 403
    with pytest.raises(UsherError) as full:  # TinyIpam has one address left
        admin.create_vms(count=2, cluster="big")
    assert full.value.status == 403
    with pytest.raises(UsherError) as refused:
        admin.stop(["web-2"])  # BrokenStopPolicy fails on every stop
    assert refused.value.status == 403  # a broken policy plugin refuses
    admin.plan_start(count=3, cluster="maybe")

    def settled() -> dict[str | None, dict[str, Any]] | None:
        entries = by_op(audit(audited))
        done = entries.get(started.id, {}).get("outcome") == "succeeded"
        failed = entries.get(rebooted.id, {}).get("outcome") == "failed"
        return entries if done and failed and len(entries) == 6 else None

    entries = wait_for("the audit log to settle", settled)
    start = entries[started.id]
    assert start["principal"] == me and start["kind"] == "start"
    assert start["client_address"] == "127.0.0.1" and start["cluster"] == "web"
    assert sorted(start["vm_names"]) == ["web-1", "web-2"]
    assert sorted(start["vms"]) == sorted(started.targets)
    assert (start["total"], start["done"], start["failed"]) == (2, 2, 0)
    assert start["request"]["spec"]["image"] == "tiny" and start["reason"] is None

    reboot = entries[rebooted.id]
    assert reboot["outcome"] == "failed" and reboot["vm_names"] == ["web-1"]
    assert "simulated failure of reboot" in reboot["reason"]

    refusals = [e for e in entries.values() if e["outcome"] in ("vetoed", "refused")]
    veto = next(e for e in refusals if e["cluster"] == "forbidden")
    assert veto["kind"] == "start" and veto["cluster"] == "forbidden"
    assert veto["client_address"] == "127.0.0.1" and veto["request"]["kwargs"] == {"why": "test"}
    assert "closed for maintenance" in veto["reason"]
    broken = next(e for e in refusals if e["outcome"] == "refused")
    assert broken["kind"] == "stop" and broken["vm_names"] == ["web-2"]
    assert "missing-setting" in broken["reason"]
    no_address = next(e for e in refusals if e["cluster"] == "big")
    assert no_address["outcome"] == "vetoed" and "range toy is full" in no_address["reason"]
    assert {veto["operation_id"], no_address["operation_id"]} == {
        op.id for op in admin.list_operations(status="vetoed").items
    }

    plan = entries[None]
    assert plan["outcome"] == "dry_run" and plan["dry_run"] and plan["cluster"] == "maybe"

    # the JSON-lines file has each record as it changed: accepted, then succeeded
    lines = [
        json.loads(line)
        for line in (tmp_path / "log" / "audit.jsonl").read_text().split("\n")
        if line
    ]
    assert [r["outcome"] for r in lines if r["operation_id"] == started.id] == [
        "accepted",
        "succeeded",
    ]
    assert [r["outcome"] for r in lines if r["operation_id"] == no_address["operation_id"]] == [
        "accepted",
        "vetoed",
    ]
    assert {r["outcome"] for r in lines} == {
        "accepted",
        "succeeded",
        "failed",
        "vetoed",
        "refused",
        "dry_run",
    }


def test_audit_queries_filter_and_respect_scope(audited: Cluster) -> None:
    admin = audited.client()
    alice = Client(audited.url, Alice.TOKEN)
    try:
        mine = audited.run(alice.create_vms(count=1, cluster="alices"))
        audited.run(admin.create_vms(count=1, cluster="admins"))
        before_pause = time.time()
        paused = audited.run(alice.pause(["alices-1"]))
        wait_for("three audit records", lambda: len(audit(audited)) == 3)
    finally:
        alice.close()

    assert {e["principal"] for e in audit(audited, user="alice")} == {"alice"}
    assert len(audit(audited, user="alice")) == 2
    on_vm = audit(audited, vm="alices-1")  # by name
    assert [e["operation_id"] for e in on_vm] == [mine.id, paused.id]
    assert audit(audited, vm=mine.targets[0]) == on_vm  # by id
    assert [e["operation_id"] for e in audit(audited, since=before_pause)] == [paused.id]
    assert audit(audited, since=time.time() + 60) == []
    assert [e["operation_id"] for e in audit(audited, limit=1)] == [paused.id]
    assert {e["cluster"] for e in audit(audited, outcome="succeeded")} == {"alices", "admins", None}
    # alice's listings are scoped to her own requests, whatever she asks for
    assert {e["principal"] for e in audit(audited, token=Alice.TOKEN)} == {"alice"}
    assert audit(audited, token=Alice.TOKEN, user=admin.whoami().name) == []
    assert audited.http("GET", "/v1/audit", token=None).status_code == 401


def test_ush_audit(audited: Cluster) -> None:
    admin = audited.client()
    audited.run(admin.create_vms(count=1, cluster="shell"))
    with pytest.raises(UsherError):
        admin.create_vms(count=1, cluster="forbidden")
    wait_for("the start recorded", lambda: audit(audited, outcome="succeeded"))

    table = audited.ush("audit", "--since", "10m")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["TIME", "USER", "OP", "VMS", "CLUSTER", "FROM", "OUTCOME", "REASON"]
    assert any("shell-1" in line and "succeeded (1/1)" in line for line in lines)
    assert any("vetoed" in line and "closed for maintenance" in line for line in lines)

    as_json = audited.ush("audit", "--vm", "shell-1", "-o", "json")
    assert as_json.returncode == 0, as_json.stderr
    items = json.loads(as_json.stdout)
    assert [(i["vm_names"], i["outcome"]) for i in items] == [(["shell-1"], "succeeded")]
    assert json.loads(audited.ush("audit", "--user", "nobody", "-o", "json").stdout) == []
    assert json.loads(audited.ush("audit", "--since", "1h", "-o", "json").stdout) != []

    bad = audited.ush("audit", "--since", "yesterday")
    assert bad.returncode == 2 and "duration ago" in bad.stderr


def test_only_admins_and_operators_read_the_audit_log(make_cluster) -> None:
    cluster = make_cluster(nodes=1, plugins=["audit", "authz"])
    operator = cluster.issue_token("olga", ["operator"])
    user = cluster.issue_token("ursula", ["user"])
    cluster.run(cluster.client(user).create_vms(count=1, cluster="u"))
    wait_for("the user's start recorded", lambda: audit(cluster, outcome="succeeded"))
    assert [e["principal"] for e in audit(cluster, token=operator)] == ["ursula"]
    refused = cluster.http("GET", "/v1/audit", token=user)
    assert refused.status_code == 403 and "audit.list" in refused.json()["error"]


def test_requests_refused_before_they_run_are_recorded(audited: Cluster) -> None:
    client = audited.client()
    with pytest.raises(UsherError, match="unknown VM"):
        client.pause(["no-such-vm"])
    with pytest.raises(UsherError, match="not enough capacity"):
        client.create_vms(count=1, vcpus=64, cluster="huge")
    entries = wait_for(
        "two refusals in the audit log",
        lambda: (
            (rows := [e for e in audit(audited, outcome="refused")]) and len(rows) >= 2 and rows
        ),
    )
    reasons = {e["kind"]: e["reason"] for e in entries}
    assert "unknown VM(s): no-such-vm" in reasons["pause"]
    assert "not enough capacity" in reasons["start"]
    assert {e["principal"] for e in entries} == {"admin"}
    assert all(e["client_address"] == "127.0.0.1" for e in entries)


def test_an_action_that_skips_and_refuses_some_vms_is_audited_whole(
    make_cluster, tmp_path: Path
) -> None:
    cluster = make_cluster(
        nodes=1, plugins=["audit"], plugin_tables={"audit": {"file": str(tmp_path / "a.jsonl")}}
    )
    admin = cluster.client()
    assert cluster.run(admin.create_vms(names=["p-1", "p-2", "p-3"])).status == OpStatus.SUCCEEDED
    cluster.run(admin.pause(["p-1"]))
    cluster.run(admin.stop(["p-2"]))
    paused = cluster.run(admin.pause(["p-1", "p-2", "p-3"]))  # skips p-1, refuses p-2
    assert paused.status == OpStatus.FAILED
    entry = wait_for(
        "the partial pause to be audited",
        lambda: (e := by_op(audit(cluster)).get(paused.id)) and e["finished_at"] and e,
    )
    assert entry["outcome"] == "failed"
    assert (entry["total"], entry["done"], entry["failed"]) == (3, 2, 1)
    assert sorted(entry["vm_names"]) == ["p-1", "p-2", "p-3"]
    events = admin.events(operation=paused.id).items
    seen = {
        (e.name, e.data.get("skipped") is not None)
        for e in events
        if e.vm_id and e.name.startswith("pause")
    }
    assert seen == {("pause", True), ("pause", False), ("pause_failure", False)}
    nothing = cluster.run(admin.pause(["p-1", "p-3"]))  # both there already: no step at all
    assert nothing.status == OpStatus.SUCCEEDED
    done = wait_for(
        "the all-skipped pause to be audited",
        lambda: (e := by_op(audit(cluster)).get(nothing.id)) and e["finished_at"] and e,
    )
    assert (done["outcome"], done["total"], done["done"]) == ("succeeded", 2, 2)
