"""``usher local`` (what the quick start runs): a controller and LNMs over TLS, the default,
with ush set up to verify the generated CA."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

from harness import free_port


def _run(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def test_usher_local_runs_over_tls_and_sets_up_ush(tmp_path: Path) -> None:
    home = tmp_path / "home"
    state = home / "local"  # where usher local keeps it by default (as the quick start)
    env = {**os.environ, "USHER_HOME": str(home)}
    for key in ("USHER_URL", "USHER_TOKEN", "USHER_CA_FILE"):
        env.pop(key, None)
    local = ["usher.cli.usher_cmd", "local", "--state-dir", str(state)]
    home.mkdir()
    (home / "config.toml").write_text('url = "https://lab.example:8760"\ntoken = "lab-token"\n')
    port = free_port()
    up = _run(env, *local, "--nodes", "2", "--port", str(port), "--detach")
    try:
        assert up.returncode == 0, up.stderr + up.stdout
        assert "a controller at https://127.0.0.1:" in up.stdout
        config_file = home / "config.toml"
        assert config_file.stat().st_mode & 0o777 == 0o600
        config = tomllib.loads(config_file.read_text())
        mine = config["remotes"][f"local-{port}"]
        assert config["remote"] == f"local-{port}" and mine["url"].startswith("https://")
        assert Path(mine["ca_file"]) == state / "ctrl" / "tls" / "ca.pem"
        # the controller ush knew before is kept, as a remote of its own
        assert config["remotes"]["default"] == {
            "url": "https://lab.example:8760",
            "token": "lab-token",
        }
        remotes = _run(env, "usher.cli.ush", "remote", "list", "-o", "json", timeout=60)
        assert [(r["name"], r["in_use"]) for r in json.loads(remotes.stdout)] == [
            ("default", False),
            (f"local-{port}", True),
        ]

        nodes = _run(env, "usher.cli.ush", "nodes", "-o", "json", timeout=60)
        assert nodes.returncode == 0, nodes.stderr
        assert sorted((n["name"], n["connected"]) for n in json.loads(nodes.stdout)) == [
            ("node-1", True),
            ("node-2", True),
        ]
        # the admin tools find the local cluster without --state-dir or --storage-dir
        if not Path("/var/lib/usher").exists():
            joining = _run(env, "usher.cli.usher_cmd", "node", "token", timeout=60)
            assert joining.returncode == 0, joining.stderr
            assert joining.stdout.strip()
            images = _run(env, "usher.cli.usher_cmd", "image", "list", "-o", "json", timeout=60)
            assert images.returncode == 0, images.stderr
            assert "tiny" in [image["name"] for image in json.loads(images.stdout)]
        started = _run(env, "usher.cli.ush", "start", "-n", "2", "--cluster", "t", timeout=60)
        assert started.returncode == 0, started.stderr

        # without the CA, the controller's certificate is not trusted: a clear refusal
        untrusted = _run(
            {**env, "USHER_CA_FILE": "/etc/ssl/certs/ca-certificates.crt"},
            "usher.cli.ush",
            "list",
            timeout=60,
        )
        assert untrusted.returncode != 0
        assert "certificate" in (untrusted.stderr + untrusted.stdout).lower()
    finally:
        down = _run(env, *local, "--stop", timeout=120)
    assert down.returncode == 0, down.stderr
    assert "stopping 2 VMs" in down.stdout


def test_a_bogus_driver_or_a_busy_port_fails_at_once_and_starts_nothing(tmp_path: Path) -> None:
    state = tmp_path / "local"
    env = {**os.environ, "USHER_HOME": str(tmp_path / "home")}
    local = ["usher.cli.usher_cmd", "local", "--state-dir", str(state)]
    bogus = _run(env, *local, "--driver", "bogus", "--port", str(free_port()), timeout=60)
    assert bogus.returncode == 2
    assert "no driver 'bogus' is installed; installed: " in bogus.stderr
    assert "fake" in bogus.stderr and "Traceback" not in bogus.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        taken = _run(env, *local, "--port", str(port), "--detach", timeout=60)
    assert taken.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in taken.stderr
    assert taken.stderr.count("\n") == 1  # one clear line
    assert not state.exists()  # nothing built, nothing started
