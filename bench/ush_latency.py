"""How long a one-shot ``ush`` command takes as a whole process, beside ``python -c pass``.

Starts a local cluster on the fake driver (``usher local --detach``, its own ``USHER_HOME``),
creates one VM, then runs each command RUNS times in turn and reports min / median / max
wall seconds: ``ush list``, ``ush show VM``, ``ush stop VM`` and ``ush start VM`` (one after
the other, so each stop and start really changes the VM), and ``python -c pass`` for the
floor. Issue 14's target: list, show and stop at most 0.15 s median.

    python bench/ush_latency.py [--runs 15]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import RESULTS, machine

USH = [sys.executable, "-m", "usher.cli.ush"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def timed(args: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    done = subprocess.run(args, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed: {done.stderr}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "USHER_HOME": str(Path(tmp) / "home")}
        for key in ("USHER_URL", "USHER_TOKEN", "USHER_CA_FILE", "USHER_REMOTE"):
            env.pop(key, None)
        local = [sys.executable, "-m", "usher.cli.usher_cmd", "local", "--state-dir"]
        local += [str(Path(tmp) / "local")]
        subprocess.run(
            [*local, "--nodes", "1", "--port", str(free_port()), "--detach"],
            env=env,
            check=True,
            capture_output=True,
        )
        try:
            subprocess.run([*USH, "create", "--names", "bench"], env=env, check=True)
            commands = {
                "python -c pass": [sys.executable, "-c", "pass"],
                "ush list": [*USH, "list"],
                "ush show": [*USH, "show", "bench"],
                "ush stop": [*USH, "stop", "bench"],
                "ush start": [*USH, "start", "bench"],
            }
            times: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(runs):
                for name, args in commands.items():  # in turn: drift hits all alike
                    times[name].append(timed(args, env))
        finally:
            subprocess.run([*local, "--stop"], env=env, check=False, capture_output=True)
    figures = {
        name: {"min": min(t), "median": statistics.median(t), "max": max(t)}
        for name, t in times.items()
    }
    for name, f in figures.items():
        print(f"{name:16} min {f['min']:.3f} s  median {f['median']:.3f} s  max {f['max']:.3f} s")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "ush_latency.json"
    out.write_text(json.dumps({"machine": machine(), "runs": runs, "figures": figures}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
