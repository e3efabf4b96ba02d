"""A virtual cluster's branch of the site's LDAP directory, and bringing it up to date (ldap3,
blocking: the ``ldap_clusters`` plugin runs it in a thread).

The branch of cluster ``C`` under ``base``::

    ou=C,<base>                            organizationalUnit
      ou=people,ou=C,<base>                organizationalUnit
        uid=<account>,ou=people,ou=C,...   account + posixAccount: one per member and the owner
      ou=groups,ou=C,<base>                organizationalUnit
        cn=admin,ou=groups,ou=C,...        posixGroup: the owner (who created the cluster)
        cn=members,ou=groups,ou=C,...      posixGroup: the owner and every member

A person's ``uid`` (and the RDN) is the Linux account the principal gets in guests
(:func:`usher.plugin.account_name`: ``a-z 0-9 _ -``, so the same account the ``authz``
plugin makes); ``cn`` is the principal's name as it is, ``description`` says whose entry it
is. ``seeAlso`` names the person's own entry in the site's directory when there is one (the
entry the guests bind to with the person's password). Every person's primary group is the
cluster's ``members`` group. Every value that goes into a DN is escaped (RFC 4514), every one
that goes into a filter too: names with ``,`` ``+`` ``=`` ``\\``, leading ``#`` or spaces,
non-ASCII letters or of any length stay values, never structure.

:func:`sync_branch` makes the branch as it should be: missing entries added, managed
attributes replaced, people no longer in the cluster deleted. Running it again changes
nothing; it never touches entries outside the branch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.dn import escape_rdn

ALREADY_EXISTS = 68
NO_SUCH_OBJECT = 32


class DirectoryError(Exception):
    """The directory refused a change or could not be reached."""


@dataclass(frozen=True)
class Person:
    """A principal as the branch shows it."""

    principal: str
    account: str  # the uid: a Linux account name
    uid_number: int


@dataclass(frozen=True)
class Branch:
    """What cluster ``cluster``'s branch should hold."""

    cluster: str
    owner: Person
    members: tuple[Person, ...]  # the owner excluded
    admin_gid: int
    members_gid: int


@dataclass(frozen=True)
class Layout:
    """Where things are in the site's directory."""

    base: str  # the clusters' subtree, e.g. ou=clusters,dc=example,dc=org
    user_dn_template: str | None  # a person's site entry: uid={username},ou=people,…
    home: str = "/home/{account}"
    shell: str = "/bin/bash"

    def branch_dn(self, cluster: str) -> str:
        return f"ou={escape_rdn(cluster)},{self.base}"

    def people_dn(self, cluster: str) -> str:
        return f"ou=people,{self.branch_dn(cluster)}"

    def groups_dn(self, cluster: str) -> str:
        return f"ou=groups,{self.branch_dn(cluster)}"

    def person_dn(self, cluster: str, person: Person) -> str:
        return f"uid={escape_rdn(person.account)},{self.people_dn(cluster)}"

    def group_dn(self, cluster: str, group: str) -> str:
        return f"cn={escape_rdn(group)},{self.groups_dn(cluster)}"

    def site_dn(self, principal: str) -> str | None:
        if self.user_dn_template is None:
            return None
        return self.user_dn_template.format(username=escape_rdn(principal))


def sync_branch(conn: ldap3.Connection, layout: Layout, branch: Branch) -> None:
    """Make ``branch`` in the directory as it should be (see the module documentation).
    Raises :class:`DirectoryError` with what failed."""
    try:
        _sync(conn, layout, branch)
    except LDAPException as exc:
        raise DirectoryError(f"{type(exc).__name__}: {exc}") from exc


def _sync(conn: ldap3.Connection, layout: Layout, branch: Branch) -> None:
    name = branch.cluster
    _ensure(
        conn,
        layout.branch_dn(name),
        ["organizationalUnit"],
        {
            "ou": name,
            "description": f"usher virtual cluster {name}, owner {branch.owner.principal}",
        },
    )
    _ensure(conn, layout.people_dn(name), ["organizationalUnit"], {"ou": "people"})
    _ensure(conn, layout.groups_dn(name), ["organizationalUnit"], {"ou": "groups"})
    people = (branch.owner, *branch.members)
    wanted = {p.account for p in people}
    for person in people:
        _ensure(
            conn,
            layout.person_dn(name, person),
            ["account", "posixAccount"],
            _person_attributes(conn, layout, branch, person),
        )
    for dn, accounts in _people_now(conn, layout.people_dn(name)).items():
        if not wanted & accounts:  # the server's DN as it wrote it (escapes may differ)
            _check(conn, conn.delete(dn), f"delete {dn}", ok=(NO_SUCH_OBJECT,))
    groups = {
        "admin": (branch.admin_gid, [branch.owner.account]),
        "members": (branch.members_gid, list(dict.fromkeys(p.account for p in people))),
    }
    for group, (gid, accounts) in groups.items():
        _ensure(
            conn,
            layout.group_dn(name, group),
            ["posixGroup"],
            {
                "cn": group,
                "gidNumber": gid,
                "memberUid": accounts,
                "description": f"usher virtual cluster {name}: {group}",
            },
        )


def _person_attributes(
    conn: ldap3.Connection, layout: Layout, branch: Branch, person: Person
) -> dict[str, Any]:
    attributes: dict[str, Any] = {
        "uid": person.account,
        "cn": person.principal,
        "uidNumber": person.uid_number,
        "gidNumber": branch.members_gid,
        "homeDirectory": layout.home.format(account=person.account),
        "loginShell": layout.shell,
        "description": f"usher principal {person.principal} in virtual cluster {branch.cluster}",
        "seeAlso": [],
    }
    site = layout.site_dn(person.principal)
    if site is not None and _exists(conn, site):
        attributes["seeAlso"] = [site]
    return attributes


def _exists(conn: ldap3.Connection, dn: str) -> bool:
    found = conn.search(dn, "(objectClass=*)", search_scope=ldap3.BASE, attributes=[])
    if not found and conn.result["result"] not in (0, NO_SUCH_OBJECT):
        raise DirectoryError(f"read {dn}: {_describe(conn.result)}")
    return bool(found)


def _people_now(conn: ldap3.Connection, people_dn: str) -> dict[str, set[str]]:
    """The people entries under ``people_dn``: DN -> their ``uid`` values."""
    found = conn.search(
        people_dn, "(objectClass=posixAccount)", search_scope=ldap3.LEVEL, attributes=["uid"]
    )
    if not found and conn.result["result"] not in (0, NO_SUCH_OBJECT):
        raise DirectoryError(f"search {people_dn}: {_describe(conn.result)}")
    return {
        e["dn"]: {str(uid) for uid in e["attributes"].get("uid", [])}
        for e in conn.response or []
        if e.get("type") == "searchResEntry"
    }


def _ensure(conn: ldap3.Connection, dn: str, classes: list[str], attrs: dict[str, Any]) -> None:
    """Add ``dn`` with ``attrs``; if it is there, replace those attributes (an empty list
    removes one)."""
    present = {k: v for k, v in attrs.items() if v != []}
    if conn.add(dn, classes, present):
        return
    _check(conn, False, f"add {dn}", ok=(ALREADY_EXISTS,))
    changes = {
        k: [(ldap3.MODIFY_REPLACE, v if isinstance(v, list) else [v])] for k, v in attrs.items()
    }
    _check(conn, conn.modify(dn, changes), f"modify {dn}")


def _check(conn: ldap3.Connection, done: bool, what: str, ok: tuple[int, ...] = ()) -> None:
    if not done and conn.result["result"] not in (0, *ok):
        raise DirectoryError(f"{what}: {_describe(conn.result)}")


def _describe(result: dict[str, Any]) -> str:
    return " ".join(filter(None, [result.get("description"), result.get("message")]))
