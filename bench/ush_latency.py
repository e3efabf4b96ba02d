"""How long a one-shot ``ush`` command takes as a whole process, beside ``python -c pass``.

Starts a local cluster on the fake driver (``usher local --detach``, its own ``USHER_HOME``),
creates one VM, then runs each command RUNS times in turn and reports min / median / max
wall seconds: ``ush list``, ``ush show VM``, ``ush stop VM`` and ``ush start VM`` (one after
the other, so each stop and start really changes the VM), and ``python -c pass`` for the
floor. Each ``ush`` command is timed twice: as installed, the launcher handing it to its
warm server (started by the first command, before the timing), and alone
(``USHER_SERVER=off``: Python and every import in the command's own process, as the first
command after a while). Issue 14's target: list, show and stop at most 0.15 s median.

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

USH = [str(Path(sys.executable).parent / "ush")]  # as installed: the launcher


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


def wait_for_server(env: dict[str, str]) -> None:
    """Have the first command start the ush server, and wait until it answers."""
    subprocess.run([*USH, "nodes"], env=env, check=True, capture_output=True)
    path = str(Path(env["USHER_HOME"]) / "ush.sock")
    for _ in range(300):
        with socket.socket(socket.AF_UNIX) as conn:
            try:
                conn.connect(path)
                return
            except OSError:
                time.sleep(0.1)
    raise SystemExit("the ush server did not start")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    runs = parser.parse_args().runs
    with tempfile.TemporaryDirectory() as tmp:
        # (the ush server the first command starts ends 10 s after the last)
        env = {**os.environ, "USHER_HOME": str(Path(tmp) / "home"), "USHER_SERVER_IDLE": "10"}
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
            alone = {**env, "USHER_SERVER": "off"}
            commands: dict[str, tuple[list[str], dict[str, str]]] = {
                "python -c pass": ([sys.executable, "-c", "pass"], env)
            }
            for how, how_env in (("", env), (" (alone)", alone)):
                for words in (["list"], ["show", "bench"], ["stop", "bench"], ["start", "bench"]):
                    commands[f"ush {words[0]}{how}"] = ([*USH, *words], how_env)
            wait_for_server(env)
            times: dict[str, list[float]] = {name: [] for name in commands}
            for _ in range(runs):
                for name, (args, how_env) in commands.items():  # in turn: drift hits all alike
                    times[name].append(timed(args, how_env))
        finally:
            subprocess.run([*local, "--stop"], env=env, check=False, capture_output=True)
    figures = {
        name: {"min": min(t), "median": statistics.median(t), "max": max(t)}
        for name, t in times.items()
    }
    for name, f in figures.items():
        print(f"{name:24} min {f['min']:.3f} s  median {f['median']:.3f} s  max {f['max']:.3f} s")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "ush_latency.json"
    out.write_text(json.dumps({"machine": machine(), "runs": runs, "figures": figures}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
