"""Run many fake-driver LNMs in one process, each its own agent with its own WebSocket
connection to the controller (what a scale benchmark needs: 1,000 LNM processes would not
fit on a small machine, 1,000 connections do).

    python bench/swarm.py --ctrl URL --join-token-file FILE --state-dir DIR --count 500

Node names are ``node-<first>`` … ``node-<first+count-1>``; each keeps its credential in
``<state-dir>/<name>/``. Stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import time
from pathlib import Path

import orjson

from usher import gctune
from usher.lnm.agent import CREDENTIAL_FILE, LNM, LNMConfig
from usher.vmm.fake import FakeDriver

JOIN_WAVE = 25  # agents dialling at once; the next wave waits until these are connected
WAVE_TIMEOUT = 30.0
STATUS_EVERY = 0.1


def build_agents(args: argparse.Namespace) -> list[LNM]:
    token = Path(args.join_token_file).read_text().strip()
    agents = []
    for i in range(args.first, args.first + args.count):
        name = f"node-{i}"
        node_dir = Path(args.state_dir) / name
        node_dir.mkdir(parents=True, exist_ok=True)
        driver = FakeDriver(
            options={"vcpus": args.vcpus, "memory_mb": args.memory_mb, "latency": args.latency}
        )
        config = LNMConfig(
            ctrl_url=args.ctrl,
            name=name,
            credential_file=node_dir / CREDENTIAL_FILE,
            join_token=token,
            vcpus=args.vcpus,
            memory_mb=args.memory_mb,
            labels={"rack": f"r{i % 10}"},
            ca_file=args.ca_file,
        )
        agents.append(LNM(config, driver))
    return agents


async def run(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agents = build_agents(args)
    if args.status:
        watcher = asyncio.create_task(watch(agents, Path(args.status), stop))
    tasks = []
    for first in range(0, len(agents), JOIN_WAVE):
        wave = agents[first : first + JOIN_WAVE]
        tasks += [asyncio.create_task(agent.run(stop)) for agent in wave]
        # the first join of a node is a few database writes under one lock: dialling faster
        # than the controller admits only makes LNMs time out and retry
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(*(agent.connected.wait() for agent in wave)), WAVE_TIMEOUT
            )
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    if args.status:
        await watcher
    for agent, outcome in zip(agents, outcomes, strict=True):
        if isinstance(outcome, Exception):  # a refused node stops; the others go on
            logging.error("node %s stopped: %r", agent.config.name, outcome)


async def watch(agents: list[LNM], path: Path, stop: asyncio.Event) -> None:
    """Every ``STATUS_EVERY`` s, write to ``path`` (JSON, replaced whole) when each agent's
    current link was welcomed (wall clock; None while it has none): what a benchmark reads
    to time a reconnect without asking the controller (which is busy with the storm)."""
    since: dict[str, float | None] = {a.config.name: None for a in agents}
    while not stop.is_set():
        now = time.time()
        for agent in agents:
            name, up = agent.config.name, agent.connected.is_set()
            if not up:
                since[name] = None
            elif since[name] is None:
                since[name] = now
        part = path.with_suffix(".part")
        part.write_bytes(orjson.dumps(since))
        part.replace(path)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), STATUS_EVERY)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ctrl", required=True)
    parser.add_argument("--join-token-file", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--first", type=int, default=0)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--vcpus", type=int, default=64)
    parser.add_argument("--memory-mb", type=int, default=262144)
    parser.add_argument("--latency", type=float, default=0.0, help="fake driver latency (s)")
    parser.add_argument("--ca-file", help="the CA to verify a TLS controller with")
    parser.add_argument("--verbose", action="store_true", help="log every reconnect")
    parser.add_argument("--status", help="keep each node's time of joining in this JSON file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    if args.verbose:
        logging.getLogger("usher.lnm").setLevel(logging.DEBUG)
    gctune.tune()  # as `usher lnm` does
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
