"""A real BIND 9 (``named``) for the dns plugin's tests: a forward and a reverse zone, both
updatable with one TSIG key, on a free port of 127.0.0.1, run in the foreground with its
files in a directory of the test's own."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import dns.query
import dns.rcode
import dns.resolver

from harness import free_port, wait_for

NAMED = "/usr/sbin/named"
KEY_NAME = "usher-update"


class Bind:
    """One ``named`` serving ``forward`` and ``reverse`` under ``root``; ``start``/``stop``
    may be called again (the zones' journals keep what was updated)."""

    def __init__(self, root: Path, forward: str, reverse: str) -> None:
        self.root = root
        self.forward = forward
        self.reverse = reverse
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        key = subprocess.run(
            ["tsig-keygen", "-a", "hmac-sha256", KEY_NAME],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        self.key_file = root / "update.key"
        self.key_file.write_text(key)
        found = re.search(r'secret "([^"]+)"', key)
        assert found is not None, key
        self.secret = found.group(1)
        for zone in (forward, reverse):
            (root / f"{zone}.zone").write_text(
                f"$TTL 60\n@ SOA ns.{forward}. admin.{forward}. 1 60 60 600 60\n"
                f"@ NS ns.{forward}.\n" + ("ns A 127.0.0.1\n" if zone == forward else "")
            )
        zones = "".join(
            f'zone "{zone}" {{ type primary; file "{root}/{zone}.zone"; '
            f"update-policy {{ grant {KEY_NAME} zonesub ANY; }}; }};\n"
            for zone in (forward, reverse)
        )
        (root / "named.conf").write_text(
            f'include "{self.key_file}";\n'
            f'options {{ directory "{root}"; pid-file "{root}/named.pid"; '
            f"listen-on port {self.port} {{ 127.0.0.1; }}; listen-on-v6 {{ none; }}; "
            "recursion no; dnssec-validation no; notify no; };\n"
            f"controls {{ }};\n{zones}"
        )

    def start(self) -> None:
        log = open(self.root / "named.log", "ab")  # noqa: SIM115 - closed with the process
        self.process = subprocess.Popen(
            [NAMED, "-g", "-4", "-c", str(self.root / "named.conf")],
            stdout=log,
            stderr=log,
        )

        def answers() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise AssertionError(f"named exited: {self.log()[-3000:]}")
            try:
                return self.resolve(self.forward, "SOA") is not None
            except (OSError, dns.exception.DNSException):
                return False

        wait_for("named to answer", answers, timeout=20, every=0.1)

    def stop(self) -> None:
        """Stop ``named`` (SIGTERM: it writes its journals first)."""
        if self.process is None:
            return
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        self.process = None
        time.sleep(0.1)  # the port is free again

    def log(self) -> str:
        return (self.root / "named.log").read_text(errors="replace")

    def resolve(self, name: str, rdtype: str) -> list[str] | None:
        """The records of ``name`` as a real lookup answers them (None: NXDOMAIN or none of
        that type)."""
        query = dns.message.make_query(name, rdtype)
        answer = dns.query.udp(query, "127.0.0.1", port=self.port, timeout=2)
        if answer.rcode() == dns.rcode.NXDOMAIN or not answer.answer:
            return None
        return sorted(rr.to_text() for rrset in answer.answer for rr in rrset)

    def dig(self, *args: str) -> str:
        """What ``dig`` prints (short form) for ``args``."""
        return subprocess.run(
            ["dig", "@127.0.0.1", "-p", str(self.port), "+short", "+time=2", "+tries=1", *args],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
