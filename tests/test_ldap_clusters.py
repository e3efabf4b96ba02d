"""Per-cluster directory branches (plugin ``ldap_clusters``) through a real controller against
a real slapd (tests/ldap_server.py): branches follow clusters and their members, survive a
directory that is down and a controller restart, escape odd names, and the client settings
guests get admit members and refuse others."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ldap3
import pytest
from ldap3.utils.conv import escape_filter_chars
from pydantic import ValidationError

import nslcd_host
from conftest import _start
from harness import Cluster, wait_for
from ldap_server import (
    CLUSTERS,
    PEOPLE,
    READER_DN,
    READER_PW,
    ROOT_DN,
    ROOT_PW,
    SUFFIX,
    WRITER_DN,
    WRITER_PW,
    Slapd,
)
from usher.guest_config import account_name
from usher.plugins.ldap_branch import Branch, DirectoryError, Layout, Person, sync_branch
from usher.plugins.ldap_clusters import ClustersConfig

RETRY = 0.5


def table(url: str) -> dict[str, Any]:
    return {
        "url": url,
        "bind_dn": WRITER_DN,
        "bind_password": WRITER_PW,
        "base": CLUSTERS,
        "people_base": PEOPLE,
        "timeout": 2,
        "retry_interval": RETRY,
        "guest_bind_dn": READER_DN,
        "guest_bind_password": READER_PW,
    }


@pytest.fixture(scope="module")
def site(
    tmp_path_factory: pytest.TempPathFactory, db_kind: str, slapd_server: Slapd
) -> Iterator[dict[str, Any]]:
    """A controller with authz and ldap_clusters (and a recorder of guests' cloud-config),
    one fake node, an image ``cloudy`` that runs cloud-init, and user tokens for alice, bob
    and dan."""
    slapd_server.clear_clusters()
    root = tmp_path_factory.mktemp("ldapc")
    seeds = root / "seeds"
    seeds.mkdir()
    cluster = _start(
        root,
        db_kind,
        1,
        None,
        plugins=["keys", "authz", "ldap_clusters", "site_plugins:SeedRecorder"],
        plugin_tables={
            "ldap_clusters": table(slapd_server.url),
            "site_plugins:SeedRecorder": {"dir": str(seeds)},
        },
    )
    disk = root / "cloudy.raw"
    disk.write_bytes(b"\0" * 65536)
    imported = cluster.ush("image", "import", str(disk), "--name", "cloudy", "--cloud-init")
    assert imported.returncode == 0, imported.stderr
    tokens = {name: cluster.issue_token(name, ["user"]) for name in ("alice", "bob", "dan")}
    yield {"cluster": cluster, "tokens": tokens, "slapd": slapd_server, "seeds": seeds}
    cluster.stop()


# --- reading the directory ---------------------------------------------------------------


def admin_conn(url: str) -> ldap3.Connection:
    conn = ldap3.Connection(ldap3.Server(url), ROOT_DN, ROOT_PW, auto_bind=True)
    return conn


def branch(url: str, cluster: str) -> dict[str, Any] | None:
    """Cluster ``cluster``'s branch as plain data: people by uid (their attributes) and the
    memberUid of each group; None if there is no branch."""
    dn = f"ou={cluster},{CLUSTERS}"
    with admin_conn(url) as conn:
        if not conn.search(dn, "(objectClass=*)", ldap3.BASE):
            return None
        conn.search(f"ou=people,{dn}", "(objectClass=posixAccount)", ldap3.LEVEL, attributes=["*"])
        people = {
            e.entry_attributes_as_dict["uid"][0]: e.entry_attributes_as_dict for e in conn.entries
        }
        conn.search(f"ou=groups,{dn}", "(objectClass=posixGroup)", ldap3.LEVEL, attributes=["*"])
        groups = {
            e.entry_attributes_as_dict["cn"][0]: sorted(e.entry_attributes_as_dict["memberUid"])
            for e in conn.entries
        }
        gids = {e.entry_attributes_as_dict["cn"][0]: e.gidNumber.value for e in conn.entries}
    return {"people": people, "groups": groups, "gids": gids}


def wait_branch(url: str, cluster: str, members: list[str], timeout: float = 20) -> dict[str, Any]:
    """The branch once its members group is exactly ``members``."""

    def check() -> dict[str, Any] | None:
        found = branch(url, cluster)
        if found is None or found["groups"].get("members") != sorted(members):
            return None
        return found

    return wait_for(f"branch {cluster} with {members}", check, timeout=timeout)


def events(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    answer = cluster.http("GET", f"/v1/events?name={name}&limit=1000")
    return list(answer.json()["items"])


def ush_as(site: dict[str, Any], who: str, *args: str) -> None:
    result = site["cluster"].ush("--token", site["tokens"][who], "cluster", *args, "-o", "json")
    assert result.returncode == 0, result.stderr


# --- branches follow clusters --------------------------------------------------------------


def test_branch_follows_the_cluster_and_its_members(site: dict[str, Any]) -> None:
    cluster: Cluster = site["cluster"]
    url = site["slapd"].url
    ush_as(site, "alice", "create", "lab")
    made = wait_branch(url, "lab", ["alice"])
    assert made["groups"] == {"admin": ["alice"], "members": ["alice"]}
    alice = made["people"]["alice"]
    assert alice["cn"] == ["alice"] and alice["homeDirectory"] == ["/home/alice"]
    assert alice["gidNumber"] == [made["gids"]["members"]]
    assert "seeAlso" not in alice  # alice has no entry in the site's people

    ush_as(site, "alice", "add-member", "lab", "bob")
    grown = wait_branch(url, "lab", ["alice", "bob"])
    assert grown["groups"]["admin"] == ["alice"]
    bob = grown["people"]["bob"]
    assert bob["seeAlso"] == [f"uid=bob,{PEOPLE}"]  # bob is a site person: pointed at
    assert bob["uidNumber"] != alice["uidNumber"]
    assert grown["gids"] == made["gids"]

    ush_as(site, "alice", "remove-member", "lab", "bob")
    shrunk = wait_branch(url, "lab", ["alice"])
    assert set(shrunk["people"]) == {"alice"}
    ush_as(site, "alice", "add-member", "lab", "bob")  # back, with the same numbers
    again = wait_branch(url, "lab", ["alice", "bob"])
    assert again["people"]["bob"]["uidNumber"] == bob["uidNumber"]
    # a cluster made by a first start gets its branch too; bob's uidNumber is his everywhere
    bob_client = cluster.client(site["tokens"]["bob"])
    cluster.run(bob_client.create_vms(count=1, cluster="web"))
    web = wait_branch(url, "web", ["bob"])
    assert web["groups"]["admin"] == ["bob"]
    assert web["people"]["bob"]["uidNumber"] == bob["uidNumber"]
    assert web["gids"]["members"] not in made["gids"].values()
    assert {e["data"]["cluster"] for e in events(cluster, "cluster_create")} >= {"lab", "web"}
    assert events(cluster, "ldap_failure") == []


def test_a_directory_down_fails_nothing_and_catches_up(site: dict[str, Any]) -> None:
    cluster: Cluster = site["cluster"]
    slapd: Slapd = site["slapd"]
    ush_as(site, "alice", "create", "down")
    wait_branch(slapd.url, "down", ["alice"])
    slapd.stop()
    try:
        ush_as(site, "alice", "add-member", "down", "dan")  # succeeds with slapd down
        failures = wait_for(
            "an ldap_failure",
            lambda: [e for e in events(cluster, "ldap_failure") if e["data"]["cluster"] == "down"],
        )
        error = failures[0]["data"]["error"]
        assert error.startswith(f"{slapd.url}: LDAPSocketOpenError") and "refused" in error
        shown = cluster.client(site["tokens"]["alice"]).request("GET", "/clusters/down")
        assert shown["members"] == ["dan"]
    finally:
        slapd.start()
    # no further request: the retry brings the branch up to date
    caught_up = wait_branch(slapd.url, "down", ["alice", "dan"])
    assert set(caught_up["people"]) == {"alice", "dan"}


def test_pending_changes_survive_a_controller_restart(site: dict[str, Any]) -> None:
    cluster: Cluster = site["cluster"]
    slapd: Slapd = site["slapd"]
    ush_as(site, "bob", "create", "restart")
    wait_branch(slapd.url, "restart", ["bob"])
    slapd.stop()
    try:
        ush_as(site, "bob", "add-member", "restart", "alice")
        wait_for(
            "an ldap_failure",
            lambda: [
                e for e in events(cluster, "ldap_failure") if e["data"]["cluster"] == "restart"
            ],
        )
        cluster.kill_ctrl()
    finally:
        slapd.start()
    assert branch(slapd.url, "restart")["groups"]["members"] == ["bob"]  # nobody wrote it
    cluster.start_ctrl()
    wait_branch(slapd.url, "restart", ["alice", "bob"])
    cluster.wait_node("node-1", connected=True)  # for the tests that follow


# --- odd names -----------------------------------------------------------------------------


def all_dns(url: str) -> set[str]:
    with admin_conn(url) as conn:
        conn.search(SUFFIX, "(objectClass=*)", ldap3.SUBTREE, attributes=[])
        return {e.entry_dn.lower() for e in conn.entries}


def test_odd_names_stay_values(slapd_server: Slapd) -> None:
    """Names that need escaping in a DN make entries exactly where the layout says, and
    nothing anywhere else; a principal shaped like a DN is not someone else's site entry."""
    url = slapd_server.url
    layout = Layout(CLUSTERS, f"uid={{username}},{PEOPLE}")
    odd = [
        f"bob,{PEOPLE}",  # would be bob's site entry if injected
        "a+b=c",
        "#lead and trail ",
        "Ünïcødé-名前",
        'q"<>;\\x',
        "x" * 150,
    ]
    people = tuple(Person(p, account_name(p), 40000 + i) for i, p in enumerate(odd))
    cluster_name = f"evil,ou=people,{SUFFIX}"
    before = all_dns(url)
    the_branch = Branch(cluster_name, people[0], people[1:], 41000, 41001)
    conn = ldap3.Connection(ldap3.Server(url), WRITER_DN, WRITER_PW, auto_bind=True)
    try:
        sync_branch(conn, layout, the_branch)
        sync_branch(conn, layout, the_branch)  # again: nothing changes, nothing fails
    finally:
        conn.unbind()
    added = all_dns(url) - before
    branch_dn = layout.branch_dn(cluster_name)
    assert branch_dn.startswith("ou=evil\\,ou\\=people\\,dc\\=usher\\,dc\\=test,")
    assert all(dn.endswith(f",{CLUSTERS}".lower()) for dn in added), added
    with admin_conn(url) as conn:
        conn.search(branch_dn, "(objectClass=organizationalUnit)", ldap3.BASE, attributes=["ou"])
        assert conn.entries[0].ou.value == cluster_name
        for person in people:
            dn = layout.person_dn(cluster_name, person)
            assert conn.search(dn, "(objectClass=posixAccount)", ldap3.BASE, attributes=["*"])
            assert conn.entries[0].cn.value == person.principal  # the name as it is
            assert "seeAlso" not in conn.entries[0].entry_attributes_as_dict  # no such site entry
        assert conn.search(
            layout.group_dn(cluster_name, "members"),
            f"(memberUid={escape_filter_chars(people[-1].account)})",
            ldap3.BASE,
        )
    assert len(added) == 3 + len(people) + 2  # branch, people, groups; persons; two groups


def test_odd_names_through_the_api(site: dict[str, Any]) -> None:
    """Names the API takes (``@ . : -``, up to 200 characters) get hashed accounts in the
    branch; names it does not take never reach the directory."""
    cluster: Cluster = site["cluster"]
    url = site["slapd"].url
    ush_as(site, "alice", "create", "odd")
    long_name = "l" * 150 + "@example.org"
    for user in ("x.y@example.org", long_name, "a:b"):
        ush_as(site, "alice", "add-member", "odd", user)
    accounts = sorted(["alice", *(account_name(u) for u in ("x.y@example.org", long_name, "a:b"))])
    found = wait_branch(url, "odd", accounts)
    assert {p["cn"][0] for p in found["people"].values()} == {
        "alice", "x.y@example.org", long_name, "a:b",
    }  # fmt: skip
    for user in ("a,b", "a+b", "a=b", "*)(uid=*"):
        answer = cluster.http(
            "PUT", f"/v1/clusters/odd/members/{user}", token=site["tokens"]["alice"]
        )
        assert answer.status_code == 422, user


# --- what guests are told ------------------------------------------------------------------


def nslcd_settings(text: str) -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.split(" ", 1)
            settings.setdefault(key, []).append(value)
    return settings


class Nslcd:
    """What nslcd 0.9 does with these settings, step by step, with ldap3: ``getpwnam``
    (every ``base passwd``, entries with a uidNumber), the DN it binds to for a password
    (the first entry any ``base passwd`` finds: ``uid2entry``) and ``pam_authz_search``
    (under ``base``, ``$username`` escaped)."""

    def __init__(self, conf: str, url: str) -> None:
        self.s = nslcd_settings(conf)
        self.url = url

    def _reader(self) -> ldap3.Connection:
        return ldap3.Connection(
            ldap3.Server(self.url), self.s["binddn"][0], self.s["bindpw"][0], auto_bind=True
        )

    def _passwd_filter(self, name: str) -> str:
        (passwd,) = [f.split(" ", 1)[1] for f in self.s["filter"] if f.startswith("passwd ")]
        return f"(&{passwd}(uid={escape_filter_chars(name)}))"

    def getpwnam(self, name: str) -> dict[str, Any] | None:
        with self._reader() as conn:
            for base in self.s["base"][1:]:
                if not base.startswith("passwd "):
                    continue
                conn.search(base.split(" ", 1)[1], self._passwd_filter(name), attributes=["*"])
                for entry in conn.entries:
                    attributes = entry.entry_attributes_as_dict
                    if attributes.get("uidNumber"):
                        return attributes
        return None

    def authenticate(self, name: str, password: str) -> bool:
        with self._reader() as conn:
            dn = None
            for base in self.s["base"][1:]:
                if base.startswith("passwd "):
                    conn.search(base.split(" ", 1)[1], self._passwd_filter(name))
                    if conn.entries:
                        dn = conn.entries[0].entry_dn
                        break
            if dn is None:
                return False
            authz = self.s["pam_authz_search"][0].replace("$username", escape_filter_chars(name))
            admitted = bool(conn.search(self.s["base"][0], authz))
        user = ldap3.Connection(ldap3.Server(self.url), dn, password)
        try:
            return user.bind() and admitted
        finally:
            user.unbind()


def test_guests_admit_members_and_refuse_others(site: dict[str, Any]) -> None:
    """The nslcd settings a guest of cluster ``guests`` gets, run as nslcd runs them against
    the branch: bob (a member, a site person) logs in with his site password and has the
    branch's uidNumber and group; a wrong password, cyd (a site person, not a member) and a
    member without a site entry are refused."""
    cluster: Cluster = site["cluster"]
    url = site["slapd"].url
    dan = cluster.client(site["tokens"]["dan"])
    dan.request("PUT", "/clusters/guests")
    dan.request("PUT", "/clusters/guests/members/bob")
    found = wait_branch(url, "guests", ["bob", "dan"])
    cluster.run(dan.create_vms(cluster="guests", names=["g-1"], image="cloudy"))
    config = json.loads((site["seeds"] / "g-1.json").read_text())
    assert {"nslcd", "libnss-ldapd", "libpam-ldapd"} <= set(config["packages"])
    assert config["ssh_pwauth"] is True
    (conf,) = [f for f in config["write_files"] if f["path"] == "/etc/nslcd.conf"]
    assert conf["permissions"] == "0600" and conf["defer"] is True
    assert re.search(r"^uri ldap://127\.0\.0\.1:\d+$", conf["content"], re.M)
    nslcd = Nslcd(conf["content"], url)

    bob = nslcd.getpwnam("bob")
    assert bob is not None and bob["uidNumber"] == found["people"]["bob"]["uidNumber"]
    assert bob["gidNumber"] == [found["gids"]["members"]]
    assert nslcd.authenticate("bob", "bob-ldap-pw")
    assert not nslcd.authenticate("bob", "cyd-ldap-pw")
    assert nslcd.getpwnam("cyd") is None  # no account on the guest
    assert not nslcd.authenticate("cyd", "cyd-ldap-pw")  # right password, not a member
    assert not nslcd.authenticate("dan", "anything")  # a member with no site entry
    assert not nslcd.authenticate("*", "bob-ldap-pw")
    # a VM outside any cluster gets no directory settings
    cluster.run(dan.create_vms(names=["loner"], image="cloudy"))
    assert "write_files" not in json.loads((site["seeds"] / "loner.json").read_text())


def test_real_nslcd_admits_members_and_refuses_others(site: dict[str, Any], tmp_path: Path) -> None:
    """Debian's nslcd itself, on this host with a guest's settings (tests/nslcd_host.py), asked
    as a guest's sshd asks it through NSS and PAM."""
    lacking = nslcd_host.missing()
    if lacking:
        pytest.fail(f"this host lacks {lacking}: run the suite through ./test.sh as root")
    cluster: Cluster = site["cluster"]
    url = site["slapd"].url
    dan = cluster.client(site["tokens"]["dan"])
    dan.request("PUT", "/clusters/nss")
    dan.request("PUT", "/clusters/nss/members/bob")
    found = wait_branch(url, "nss", ["bob", "dan"])
    cluster.run(dan.create_vms(cluster="nss", names=["nss-1"], image="cloudy"))
    config = json.loads((site["seeds"] / "nss-1.json").read_text())
    (conf,) = [f["content"] for f in config["write_files"] if f["path"] == "/etc/nslcd.conf"]
    (nsswitch,) = [c[2] for c in config["runcmd"] if c[:2] == ["sh", "-c"] and "nsswitch" in c[2]]
    answers = nslcd_host.ask(
        tmp_path,
        conf,
        nsswitch,
        names=["bob", "dan", "cyd", "members", "admin"],
        logins=[
            ("bob", "bob-ldap-pw"),
            ("bob", "cyd-ldap-pw"),
            ("cyd", "cyd-ldap-pw"),
            ("dan", "dan"),
            ("bob*", "bob-ldap-pw"),
        ],
    )
    bob_uid = str(found["people"]["bob"]["uidNumber"][0])
    members_gid = str(found["gids"]["members"])
    assert answers.passwd["bob"][2:] == [bob_uid, members_gid, "bob", "/home/bob", "/bin/bash"]
    assert set(answers.passwd) == {"bob", "dan"}, answers.log[-2000:]  # cyd: no account here
    assert answers.group["members"][2:] == [members_gid, "dan,bob"]
    assert answers.group["admin"][3] == "dan"
    assert answers.logins == {
        "bob:bob-ldap-pw": True,  # a member, with his site password
        "bob:cyd-ldap-pw": False,
        "cyd:cyd-ldap-pw": False,  # the right password, but not a member
        "dan:dan": False,  # a member without a site entry has no password to log in with
        "bob*:bob-ldap-pw": False,
    }, answers.log[-3000:]


def test_clusters_made_before_the_plugin_get_branches(
    tmp_path: Path, db_kind: str, slapd_server: Slapd
) -> None:
    """A site that enables ldap_clusters later: at its first start, every cluster ``authz``
    knows gets its branch."""
    first = _start(tmp_path / "site", db_kind, 0, None, plugins=["authz"])
    try:
        assert first.http("PUT", "/v1/clusters/early").status_code == 200
        assert first.http("PUT", "/v1/clusters/early/members/bob").status_code == 200
    finally:
        first.stop()
    second = Cluster(
        tmp_path / "site",
        first.db_url,
        plugins=["authz", "ldap_clusters"],
        plugin_tables={"ldap_clusters": table(slapd_server.url)},
    )
    second.start_ctrl()
    try:
        found = wait_branch(slapd_server.url, "early", sorted([account_name("admin"), "bob"]))
        assert found["groups"]["admin"] == [account_name("admin")]
    finally:
        second.stop()


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"url": "http://ldap.example.org"}, "must start with ldap:// or ldaps://"),
        ({"bind_password": None}, "give bind_password or bind_password_file"),
        ({"bind_password_file": "/etc/x"}, "give bind_password or bind_password_file"),
        ({"user_dn_template": "uid={user},dc=x"}, "may hold {username} and no other"),
        ({"user_dn_template": "uid=x,dc=x"}, "must contain {username}"),
        ({"home": "/home/all"}, "must contain {account}"),
        ({"site_person_filter": "objectClass=person"}, "an LDAP filter in parentheses"),
        ({"retry_interval": 0}, "greater than 0"),
        ({"colour": "blue"}, "Extra inputs are not permitted"),
    ],
)
def test_a_bad_config_is_refused(change: dict[str, Any], error: str) -> None:
    config = {k: v for k, v in (table("ldap://127.0.0.1:1") | change).items() if v is not None}
    with pytest.raises(ValidationError, match=re.escape(error)):
        ClustersConfig.model_validate(config)


def test_the_writer_writes_nowhere_else(slapd_server: Slapd) -> None:
    """The writer's ACL holds: a layout pointing outside the clusters' subtree is refused
    with the directory's reason, and nothing is written."""
    before = all_dns(slapd_server.url)
    layout = Layout(PEOPLE, None)
    owner = Person("mallory", "mallory", 40100)
    conn = ldap3.Connection(ldap3.Server(slapd_server.url), WRITER_DN, WRITER_PW, auto_bind=True)
    try:
        with pytest.raises(DirectoryError, match="insufficientAccessRights"):
            sync_branch(conn, layout, Branch("outside", owner, (), 40101, 40102))
    finally:
        conn.unbind()
    assert all_dns(slapd_server.url) == before
