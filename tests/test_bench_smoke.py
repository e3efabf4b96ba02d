"""The benchmarks (bench/, ``make bench``) still run: each at a tiny scale, in seconds.

The real runs are not part of CI; these check that the scripts work end to end against a
real controller and LNMs, and that their JSON and the report have what docs/performance.md
is made of.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run(script: str, out: Path, *args: str) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / script), "--out", str(out), *args],
        timeout=150,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"{script} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}"


def result(out: Path, name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / f"{name}.json").read_text())
    assert {"cores", "cpu_model", "memory_gib", "load_avg", "date"} <= set(data["machine"])
    return data


@pytest.mark.timeout(600)
def test_benchmarks_run_at_tiny_scale(tmp_path: Path) -> None:
    out = tmp_path / "results"
    run("scale.py", out, "--nodes", "5", "--vms", "50", "--batch", "20", "--list-rounds", "2")
    scale = result(out, "scale-5")
    assert scale["nodes"] == 5
    assert scale["starts"]["running"] == 50 and scale["starts"]["errors"] == []
    assert scale["starts"]["vm_latency_ms"]["n"] == 50
    assert scale["list"]["vms_listed"] == 50
    assert scale["rss_mb"]["peak"] > 0

    run("scale.py", out, "--reconnect", "--nodes", "5", "--vms", "10", "--batch", "5")
    storm = result(out, "reconnect-5")["reconnect"]
    assert storm["nodes_back"] == 5 and storm["operation"]["status"] == "succeeded"
    assert storm["per_node_s"]["n"] == 5 and storm["tracebacks"] == 0
    assert storm["gate"]["admitted"] >= 5  # the restarted controller's own count

    run(
        "scheduler.py",
        out,
        *("--nodes", "10,20", "--decisions", "5", "--gang", "20"),
        *("--shapes-nodes", "12", "--shapes-seeds", "2", "--shapes-timing-nodes", "30"),
    )
    sched = result(out, "scheduler")
    assert {(t["weigher"], t["nodes"]) for t in sched["timing"]} == {
        (w, n) for w in ("fit", "spread", "pack", "balanced") for n in (10, 20)
    }
    standard = sched["packing"][0]["standard"]
    assert standard["fit"] == standard["capacity_allows"]
    shapes = sched["shapes"]
    assert shapes["default_weigher"] == "fit" and shapes["nodes"] == 12
    assert {(r["weigher"], r["seed"]) for r in shapes["runs"]} == {
        (s["weigher"], seed) for s in shapes["summary"] for seed in (1, 2)
    }
    for run_ in shapes["runs"]:  # pre-filled, then filled up to a refusal
        assert 40 <= run_["prefill_memory_pct"] < run_["memory_used_pct"] <= 100
        assert run_["first_refusal"] is not None and run_["vms"] > 0
        assert run_["first_refusal"]["memory_used_pct"] <= run_["memory_used_pct"]
    assert {t["weigher"] for t in shapes["at_1000"]} == {"fit", "spread", "pack", "balanced"}
    assert all(t["cpu_ms_placed"]["n"] == t["vms"] > 0 for t in shapes["at_1000"])

    tiny_load = ("--clients", "4", "--vms", "40", "--nodes", "3", "--seconds", "2")
    run("api_load.py", out, *tiny_load, "--per-kind-seconds", "1")
    load = result(out, "api-load")
    assert load["setup"]["vms_started"] == 40
    assert load["errors"] == 0 and load["requests"] > 0
    for kind in ("show", "list", "start_stop"):  # each kind alone, and the controller's CPU
        alone = load["cpu_per_kind"][kind]
        assert alone["requests"] > 0 and alone["ctrl_cpu_ms_per_request"] > 0
        assert alone["errors"] == 0

    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nhand-written analysis\n")
    subprocess.run(
        [sys.executable, str(BENCH / "report.py"), "--results", str(out), "--doc", str(doc)],
        check=True,
        timeout=60,
    )
    text = doc.read_text()
    assert "hand-written analysis" in text
    assert "### Control-plane scale" in text and "### Scheduler" in text
    assert "Placement on mixed VM sizes" in text and "| fit (default) |" in text
    assert "### API under load" in text
    assert "### Reconnect storms" in text and "5 (2)" in text
