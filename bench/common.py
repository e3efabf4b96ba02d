"""What every benchmark shares: the machine's description, a controller process with swarms
of fake-driver LNMs, RSS sampling, optional py-spy profiles, and the JSON result files."""

from __future__ import annotations

import contextlib
import json
import os
import platform
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS = BENCH_DIR / "results"


def machine() -> dict[str, Any]:
    """Cores, CPU model, memory, load and date: what a figure means depends on them."""
    model = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    commit = ""
    with contextlib.suppress(OSError):  # no git (a bare Debian): the commit stays unknown
        commit = subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit or None,
    }


def percentiles(values: list[float]) -> dict[str, float]:
    """p50, p99 and max of ``values`` (in their unit), rounded; zeros for no values."""
    if not values:
        return {"p50": 0.0, "p99": 0.0, "max": 0.0, "n": 0}
    ordered = sorted(values)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return {
        "p50": round(statistics.median(ordered), 3),
        "p99": round(p99, 3),
        "max": round(ordered[-1], 3),
        "n": len(ordered),
    }


def write_result(name: str, result: dict[str, Any], out_dir: Path = RESULTS) -> Path:
    """Write ``result`` (with the machine's description) as ``<out_dir>/<name>.json``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    result = {"benchmark": name, "machine": machine(), **result}
    path.write_text(json.dumps(result, indent=2, sort_keys=False) + "\n")
    return path


def raise_nofile(wanted: int) -> int:
    """Raise this process's open-file limit towards ``wanted`` (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RSSSampler:
    """Samples a process's resident memory in a thread; ``peak_mb`` is the highest seen."""

    def __init__(self, pid: int, every: float = 0.1) -> None:
        self.proc = psutil.Process(pid)
        self.every = every
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(psutil.Error):
                self.peak_mb = max(self.peak_mb, self.proc.memory_info().rss / 2**20)
            self._stop.wait(self.every)

    def now_mb(self) -> float:
        return round(self.proc.memory_info().rss / 2**20, 1)

    def __enter__(self) -> RSSSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@contextlib.contextmanager
def profiled(pid: int, out: Path | None, rate: int = 250, *, gil: bool = False) -> Iterator[None]:
    """Record a py-spy profile of ``pid`` while the block runs (nothing if ``out`` is None).
    Writes collapsed stacks to ``out`` (``.txt``); :func:`top_frames` summarizes them. With
    ``gil``, only the thread holding the GIL is sampled: where the process's Python CPU goes,
    without its idle threads and its event loop waiting."""
    if out is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    spy = Path(sys.executable).with_name("py-spy")
    proc = subprocess.Popen(
        [
            *(str(spy), "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"),
            *("--nonblocking", "--output", str(out)),
            *(("--gil",) if gil else ()),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield
    finally:
        proc.send_signal(2)  # SIGINT: py-spy writes its output and exits
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)


def top_frames(collapsed: Path, n: int = 15) -> dict[str, Any]:
    """From py-spy's collapsed stacks: the ``n`` functions with the most samples anywhere on
    the stack (inclusive) and on top of it (self), as percentages of all samples."""
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = 0
    if not collapsed.exists():
        return {"samples": 0, "inclusive": {}, "self": {}}
    for line in collapsed.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        frames = [_short(f) for f in stack.split(";")]
        for frame in set(frames):
            inclusive[frame] += count
        own[frames[-1]] += count

    def pct(counter: Counter[str]) -> dict[str, float]:
        return {k: round(100 * v / total, 1) for k, v in counter.most_common(n)} if total else {}

    return {"samples": total, "inclusive": pct(inclusive), "self": pct(own)}


def _short(frame: str) -> str:
    """``func (path/to/module.py:12)`` → ``func (module.py)``."""
    name, _, where = frame.partition(" (")
    module = where.rstrip(")").rsplit(":", 1)[0].rsplit("/", 1)[-1]
    return f"{name} ({module})" if module else name


class BenchCluster:
    """A controller process plus swarm processes of fake-driver LNMs (bench/swarm.py), each
    LNM its own WebSocket connection, all state under ``root``."""

    def __init__(
        self,
        root: Path,
        *,
        db_url: str | None = None,
        node_timeout: float = 10.0,
        settings: dict[str, Any] | None = None,
        storage: Path | None = None,
        tls: bool = False,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.state = root / "ctrl"
        self.storage = storage or root / "storage"
        self.config = root / "ctrl.toml"
        lines = [
            f'state_dir = "{self.state}"',
            f'storage_dir = "{self.storage}"',
            f"node_timeout = {node_timeout}",
            # plain HTTP/WS on loopback unless asked (TLS is the controller's default: it
            # makes its own CA and certificate at first start, see usher.ctrl.tls)
            f"tls = {'true' if tls else 'false'}",
        ]
        if db_url:
            lines.append(f'database_url = "{db_url}"')
        lines += [f"{k} = {json.dumps(v)}" for k, v in (settings or {}).items()]
        self.config.write_text("\n".join(lines) + "\n")
        self.ctrl: subprocess.Popen[bytes] | None = None
        self.swarms: list[subprocess.Popen[bytes]] = []  # and single LNMs
        self.token = ""
        self._join_token: Path | None = None

    def _log(self, name: str) -> Any:
        return open(self.root / f"{name}.log", "ab")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    @property
    def ca_file(self) -> Path | None:
        """The CA the controller made for its certificate (None without TLS)."""
        return self.state / "tls" / "ca.pem" if self.tls else None

    @property
    def verify(self) -> ssl.SSLContext | bool:
        """What an httpx client verifies the controller with."""
        ca = self.ca_file
        return ssl.create_default_context(cafile=str(ca)) if ca else True

    def start_ctrl(self, timeout: float = 60, poll: float = 0.1) -> int:
        """Start the controller; return its pid once it answers (asked every ``poll`` s)."""
        cmd = [sys.executable, "-m", "usher.cli.usher_cmd", "ctrl", "--config", str(self.config)]
        cmd += ["--listen", f"127.0.0.1:{self.port}"]
        log = self._log("ctrl")
        self.ctrl = subprocess.Popen(cmd, stdout=log, stderr=log)
        token_file = self.state / "admin.token"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ctrl.poll() is not None:
                raise RuntimeError(f"the controller exited; see {self.root / 'ctrl.log'}")
            if token_file.exists():
                self.token = token_file.read_text().strip()
                with contextlib.suppress(httpx.HTTPError):
                    r = httpx.get(
                        f"{self.url}/v1/whoami", headers=self.headers, timeout=2, verify=self.verify
                    )
                    if r.status_code == 200:
                        return self.ctrl.pid
            time.sleep(poll)
        raise RuntimeError("the controller did not answer")

    def add_blank_image(self, name: str = "tiny") -> None:
        """A blank qcow2 in the catalogue: all the fake driver needs of an image."""
        from usher.images import catalog

        blank = self.root / f"{name}-blank.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(blank), "16M"], check=True)
        catalog.import_disk(self.storage, name, blank, "blank disk for fake-driver benchmarks")

    def join_token(self, uses: int) -> Path:
        r = httpx.post(
            f"{self.url}/v1/nodes/join-tokens",
            json={"ttl": 86400, "uses": uses},
            headers=self.headers,
            timeout=30,
            verify=self.verify,
        )
        r.raise_for_status()
        path = self.root / "join.token"
        path.write_text(r.json()["token"] + "\n")
        return path

    def start_swarms(
        self,
        nodes: int,
        processes: int,
        *,
        vcpus: int = 64,
        memory_mb: int = 262144,
        latency: float = 0.0,
    ) -> None:
        """``nodes`` fake LNMs named node-0… spread over ``processes`` swarm processes."""
        token = self.join_token(nodes)
        per = -(-nodes // processes)
        for first in range(0, nodes, per):
            count = min(per, nodes - first)
            cmd = [sys.executable, str(BENCH_DIR / "swarm.py"), "--ctrl", self.url]
            cmd += ["--join-token-file", str(token), "--state-dir", str(self.root / "nodes")]
            cmd += ["--first", str(first), "--count", str(count)]
            cmd += ["--vcpus", str(vcpus), "--memory-mb", str(memory_mb)]
            cmd += ["--latency", str(latency)]
            cmd += ["--status", str(self.root / f"status-{first}.json")]
            if self.ca_file:
                cmd += ["--ca-file", str(self.ca_file)]
            log = self._log(f"swarm-{first}")
            self.swarms.append(subprocess.Popen(cmd, stdout=log, stderr=log))

    def start_lnm(self, name: str, driver: str, driver_options: Sequence[str] = ()) -> None:
        """One ``usher lnm`` process (as a host runs it), with the host's capacity, and a
        ``--driver-option`` for each ``KEY=VALUE`` of ``driver_options``."""
        self._join_token = self._join_token or self.join_token(100)
        cmd = [sys.executable, "-m", "usher.cli.usher_cmd", "lnm", "--ctrl", self.url]
        cmd += ["--name", name, "--driver", driver, "--state-dir", str(self.root / name)]
        cmd += ["--storage-dir", str(self.storage), "--join-token-file", str(self._join_token)]
        for option in driver_options:
            cmd += ["--driver-option", option]
        log = self._log(name)
        self.swarms.append(subprocess.Popen(cmd, stdout=log, stderr=log))

    def joined(self) -> dict[str, float | None]:
        """Each swarm node's time of joining on its current link (None: not linked now), as
        the swarms last wrote it (bench/swarm.py ``--status``)."""
        found: dict[str, float | None] = {}
        for path in self.root.glob("status-*.json"):
            with contextlib.suppress(OSError, ValueError):
                found.update(json.loads(path.read_bytes()))
        return found

    def connected_nodes(self) -> int:
        r = httpx.get(f"{self.url}/v1/nodes", headers=self.headers, timeout=60, verify=self.verify)
        r.raise_for_status()
        return sum(1 for n in r.json() if n.get("connected"))

    def wait_nodes(self, nodes: int, timeout: float) -> float:
        """Wait until ``nodes`` nodes are connected; return how long that took."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.connected_nodes() >= nodes:
                return time.monotonic() - started
            for swarm in self.swarms:
                if swarm.poll() is not None:
                    raise RuntimeError(f"a swarm exited; see the logs in {self.root}")
            time.sleep(0.5)
        raise RuntimeError(f"only {self.connected_nodes()} of {nodes} nodes connected")

    def stop(self) -> None:
        for proc in [*self.swarms, self.ctrl]:
            if proc is not None and proc.poll() is None:
                proc.terminate()
        for proc in [*self.swarms, self.ctrl]:
            if proc is None:
                continue
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
