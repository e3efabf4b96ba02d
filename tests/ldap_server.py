"""A real OpenLDAP slapd for tests, started and seeded by the tests themselves (a pytest plugin
that conftest.py loads): fixture ``slapd`` (its URL) and ``slapd_server`` (the
:class:`Slapd`, to stop and start it again).

The seed: people ada, bob and cyd (``uid=…,ou=people``, inetOrgPerson with passwords
``<uid>-ldap-pw``), groups usher-admins, ops and physics, an empty ``ou=clusters`` for
per-cluster branches, the account ``cn=usher-writer`` that may write that subtree (and only
it), and the read-only account ``cn=guest-reader`` a guest's nslcd reads with.
"""

from __future__ import annotations

import base64
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from harness import free_port

SLAPD = "/usr/sbin/slapd"
SUFFIX = "dc=usher,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PW = "root-secret"
CLUSTERS = f"ou=clusters,{SUFFIX}"
PEOPLE = f"ou=people,{SUFFIX}"
WRITER_DN = f"cn=usher-writer,{SUFFIX}"
WRITER_PW = "writer-secret"
READER_DN = f"cn=guest-reader,{SUFFIX}"
READER_PW = "reader-secret"

# the writer's ACL is the one docs/plugins.md shows for the ldap_clusters plugin
SLAPD_CONF = """\
include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include /etc/ldap/schema/nis.schema
pidfile {root}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
database mdb
maxsize 16777216
suffix "{suffix}"
rootdn "{root_dn}"
rootpw {root_pw}
directory {root}/data
access to attrs=userPassword by self write by anonymous auth by * none
access to dn.subtree="{clusters}" by dn.exact="{writer}" write by users read by * none
access to * by users read by * none
"""


def _person(uid: str, password: str) -> str:
    return f"""\
dn: uid={uid},{PEOPLE}
objectClass: inetOrgPerson
uid: {uid}
cn: {uid.title()}
sn: {uid.title()}
userPassword: {password}
"""


def _group(cn: str, *members: str) -> str:
    lines = [f"dn: cn={cn},ou=groups,{SUFFIX}", "objectClass: groupOfNames", f"cn: {cn}"]
    lines += [f"member: uid={m},{PEOPLE}" for m in members]
    return "\n".join(lines) + "\n"


def _account(dn: str, password: str) -> str:
    cn = dn.split(",")[0].split("=")[1]
    return (
        f"dn: {dn}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: {cn}\nuserPassword: {password}\n"
    )


SEED = "\n".join(
    [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\ndc: usher\no: Usher\n",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n",
        f"dn: ou=groups,{SUFFIX}\nobjectClass: organizationalUnit\nou: groups\n",
        f"dn: {CLUSTERS}\nobjectClass: organizationalUnit\nou: clusters\n",
        _account(WRITER_DN, WRITER_PW),
        _account(READER_DN, READER_PW),
        _person("ada", "ada-ldap-pw"),
        _person("bob", "bob-ldap-pw"),
        _person("cyd", "cyd-ldap-pw"),
        _group("usher-admins", "ada"),
        _group("ops", "ada", "bob"),
        _group("physics", "bob", "cyd"),
    ]
)


class Slapd:
    """One slapd on a free loopback port, its database under ``root``; stop and start it
    again at will (same port, same data)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "data").mkdir(parents=True)
        self.conf = root / "slapd.conf"
        self.conf.write_text(
            SLAPD_CONF.format(
                root=root,
                suffix=SUFFIX,
                root_dn=ROOT_DN,
                root_pw=ROOT_PW,
                clusters=CLUSTERS,
                writer=WRITER_DN,
            )
        )
        self.url = f"ldap://127.0.0.1:{free_port()}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.root / "slapd.log", "ab") as log:
            self.proc = subprocess.Popen(
                [SLAPD, "-d", "0", "-h", f"{self.url}/", "-f", str(self.conf)], stderr=log
            )
        self._wait_answering()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None

    def seed(self) -> None:
        seed = self.root / "seed.ldif"
        seed.write_text(SEED)
        add = ["ldapadd", "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PW, "-f", str(seed)]
        result = subprocess.run(add, capture_output=True, text=True)
        if result.returncode != 0:
            raise AssertionError(f"cannot seed slapd: {result.stderr}")

    def clear_clusters(self) -> None:
        """Remove every branch below ``ou=clusters`` (one test's branches are not the next's:
        two controllers of one module would both own a cluster of the same name)."""
        search = ["ldapsearch", "-x", "-LLL", "-o", "ldif-wrap=no", "-H", self.url]
        search += ["-D", ROOT_DN, "-w", ROOT_PW, "-b", CLUSTERS, "-s", "one", "dn"]
        listed = subprocess.run(search, capture_output=True, text=True, check=True)
        branches = [
            base64.b64decode(line[5:]).decode() if line.startswith("dn:: ") else line[4:]
            for line in listed.stdout.splitlines()
            if line.startswith("dn:")
        ]
        if branches:
            delete = ["ldapdelete", "-x", "-r", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PW]
            subprocess.run([*delete, *branches], capture_output=True, text=True, check=True)

    def _wait_answering(self) -> None:
        probe = ["ldapwhoami", "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PW]
        deadline = time.monotonic() + 20
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                log = (self.root / "slapd.log").read_text()[-2000:]
                raise AssertionError(f"slapd exited: {log}")
            if subprocess.run(probe, capture_output=True).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise AssertionError("slapd does not answer")
            time.sleep(0.1)


@pytest.fixture(scope="module")
def slapd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Slapd]:
    """A real slapd, seeded (module scope: a test that stops it starts it again)."""
    server = Slapd(tmp_path_factory.mktemp("slapd"))
    server.start()
    try:
        server.seed()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def slapd(slapd_server: Slapd) -> str:
    """The URL of a real, seeded slapd."""
    return slapd_server.url
