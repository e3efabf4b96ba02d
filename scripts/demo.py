"""The quick start's tour of a running local cluster: three guests, one live migration.

Run by quickstart.sh with the project's virtualenv, once ``usher local`` is up; it prints each
``ush`` command before running it, as a user would type it.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from usher.client import Client

T = TypeVar("T")
HEARTBEAT = re.compile(r"usher-heartbeat (\d+)")
VENV_BIN = Path(sys.executable).parent


def ush(*args: str) -> None:
    print(f"\n$ ush {' '.join(args)}", flush=True)
    subprocess.run([str(VENV_BIN / "ush"), *args], check=True)


def heartbeat(client: Client, vm: str) -> int | None:
    counts = HEARTBEAT.findall(client.console(vm).data)
    return int(counts[-1]) if counts else None


def wait_until(what: str, check: Callable[[], T | None], timeout: float = 120.0) -> T:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := check():
            return value
        time.sleep(0.5)
    sys.exit(f"error: timed out waiting for {what}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cluster", default="demo")
    parser.add_argument("--driver", default="qemu")
    parser.add_argument("--state", required=True)
    args = parser.parse_args()
    client = Client()
    name = args.cluster

    ush("nodes")
    if not any(True for _ in client.iter_vms(cluster=name)):
        ush("start", "-n", "3", "--cluster", name)
    ush("list", "--cluster", name)
    real = args.driver in ("qemu", "libvirt")  # real guests, with a serial console
    first = f"{name}-1"
    if real:
        print("\nwaiting for the guests to boot (their serial consoles say USHER-READY)…")
        for vm in client.iter_vms(cluster=name):
            wait_until(
                f"{vm.name} to boot", lambda v=vm: "USHER-READY" in client.console(v.id).data
            )
        before = wait_until("a heartbeat", lambda: heartbeat(client, first))
        print(f"{first} is alive: its heartbeat counter is at {before}")

    if len(client.nodes()) < 2:
        print("\none node only: no live migration to show (./quickstart.sh --nodes 2 for one)")
        real = False
    else:
        ush("migrate", first)
        ush("show", first)
    if real:
        after = wait_until(
            "the heartbeat to go on",
            lambda: (n := heartbeat(client, first)) and n > before + 1 and n,
        )
        print(
            f"\n{first} kept running through the live migration: heartbeat {before} → {after}, "
            "no reboot (the counter did not start over)"
        )
        print(f"\n$ ush console {first} | tail -3")
        print("\n".join(client.console(first).data.strip().splitlines()[-3:]))

    activate = VENV_BIN / "activate"
    on_path = shutil.which("ush") == str(VENV_BIN / "ush")
    print(f"""
Usher is running: a controller with its node managers ({args.driver} driver) on this machine,
state and logs in {args.state}. ush is set up through ~/.usher/config.toml:

  {"" if on_path else f". {activate}   # puts ush and usher on PATH"}
  ush                          # the interactive shell (help, quit)
  ush list                     # the {name} cluster's VMs
  ush console {first} -f         # follow a guest's serial console
  ush migrate {first} --to NODE  # move it again
  ush stop --cluster {name}

Stop it all (guests included):  usher local --stop
Run the tests:                  ./test.sh""")


if __name__ == "__main__":
    main()
