"""The example plugin package, installed through its entry point, in a real controller."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

from harness import Cluster, wait_for
from usher.client import UsherError
from usher.model import OpStatus

PACKAGE = Path(__file__).resolve().parent.parent / "examples" / "usher-example-plugin"


@pytest.fixture(scope="session")
def installed() -> None:
    """pip-install the example package (editable, no dependencies: Usher is there)."""
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "-e", str(PACKAGE)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    found = {ep.name: ep.value for ep in entry_points(group="usher.plugins")}
    assert found.get("vmcap") == "usher_example_plugin:VmCap"
    commands = {ep.name: ep.value for ep in entry_points(group="usher.ush_commands")}
    assert commands.get("vmcap") == "usher_example_plugin.commands:vmcap"


def test_example_plugin_vetoes_big_starts_and_counts_events(installed: None, make_cluster) -> None:
    cluster: Cluster = make_cluster(
        nodes=2, plugins=["vmcap"], plugin_tables={"vmcap": {"max_vms": 3}}
    )
    client = cluster.client()
    with pytest.raises(UsherError) as err:
        client.create_vms(count=4)
    assert err.value.status == 403
    assert "refused by plugin 'vmcap'" in err.value.message
    assert "at most 3 VMs per start; you asked for 4" in err.value.message
    assert cluster.vms() == []
    op = cluster.run(client.create_vms(count=3, cluster="ok"))
    assert op.status == OpStatus.SUCCEEDED

    def counted() -> dict[str, int] | None:
        counts = client.request("GET", "/vmcap/counts")
        return counts if counts.get("start") == 3 else None

    counts = wait_for("the plugin to count three starts", counted)
    assert counts["register"] == 3 and counts["start_failure"] == 1 and counts["request"] == 1
    result = cluster.ush("start", "-n", "5")
    assert result.returncode == 1 and "you asked for 5" in result.stderr


def test_example_plugin_adds_an_ush_command(installed: None, make_cluster) -> None:
    cluster: Cluster = make_cluster(nodes=1, plugins=["vmcap"])
    listed = cluster.ush("--help")
    assert listed.returncode == 0 and "vmcap" in listed.stdout, listed.stderr
    assert listed.stderr == ""  # every entry point loaded: no warning
    cluster.run(cluster.client().create_vms(count=2))

    def counted() -> dict[str, int] | None:
        shown = cluster.ush("vmcap", "counts", "-o", "json")
        assert shown.returncode == 0, shown.stderr
        counts = json.loads(shown.stdout)
        return counts if counts.get("start") == 2 else None

    counts = wait_for("ush vmcap counts to show two starts", counted)
    assert counts["register"] == 2
    table = cluster.ush("vmcap", "counts")
    assert table.returncode == 0, table.stderr
    assert table.stdout.split()[:2] == ["EVENT", "COUNT"]
    assert any(line.split() == ["start", "2"] for line in table.stdout.splitlines())


def test_example_plugin_refuses_a_bad_config(installed: None, tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, None, plugins=["vmcap"], plugin_tables={"vmcap": {"max_vms": 0}})
    try:
        with pytest.raises(AssertionError, match="controller exited"):
            cluster.start_ctrl()
        assert "max_vms must be at least 1" in cluster.log("ctrl")
    finally:
        cluster.stop()
