"""Passwords checked against an LDAP directory (ldap3): bind as the user, groups become roles.

Config ``[plugins.ldap]``::

    url = "ldap://ldap.example.org"        # ldaps://… for TLS
    user_dn_template = "uid={username},ou=people,dc=example,dc=org"
    group_base = "ou=groups,dc=example,dc=org"   # leave out: no group lookup
    group_filter = "(&(objectClass=groupOfNames)(member={user_dn}))"   # the default
    role_map = {admins = "admin", staff = ["operator", "user"]}  # group cn -> role(s)
    default_roles = []                     # roles every directory user gets
    timeout = 5                            # seconds (whole), to connect and for each answer

The directory is asked at login only (``POST /v1/login`` of the ``tokens`` plugin calls
:meth:`LdapAuth.check_password`); the session that follows is an ordinary token, so the
groups and roles are those of the login. User names are lower-cased, as LDAP matches them
regardless of case. The group search runs bound as the user, so users must be allowed to read
the groups they are in.
"""

from __future__ import annotations

import asyncio
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn
from pydantic import Field, ValidationError, field_validator

from usher.model import Principal, Strict
from usher.plugin import hookimpl

INVALID_CREDENTIALS = 49  # the LDAP result code of a failed simple bind


class LdapConfig(Strict):
    url: str
    user_dn_template: str
    group_base: str | None = None
    group_filter: str = "(&(objectClass=groupOfNames)(member={user_dn}))"
    role_map: dict[str, str | list[str]] = Field(default_factory=dict)
    default_roles: list[str] = Field(default_factory=list)
    timeout: int = Field(5, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("ldap://", "ldaps://")):
            raise ValueError("must start with ldap:// or ldaps://")
        return value.rstrip("/")

    @field_validator("user_dn_template")
    @classmethod
    def _template(cls, value: str) -> str:
        if "{username}" not in value:
            raise ValueError("must contain {username}")
        return value

    def roles_of(self, groups: list[str]) -> list[str]:
        roles = set(self.default_roles)
        for group in groups:
            mapped = self.role_map.get(group, [])
            roles.update([mapped] if isinstance(mapped, str) else mapped)
        return sorted(roles)


class LdapError(Exception):
    """The directory could not be asked (unreachable, misconfigured): not a wrong password."""


class LdapAuth:
    config: LdapConfig

    @hookimpl
    def usher_configure(self, config: dict[str, Any]) -> None:
        try:
            self.config = LdapConfig.model_validate(config)
        except ValidationError as exc:
            raise ValueError(f"[plugins.ldap]: {exc}") from exc

    @hookimpl
    async def check_password(self, username: str, password: str) -> Principal | None:
        """Bind as ``username``; on success its principal, with roles mapped from its groups."""
        if not password:  # an empty password is an anonymous bind, which always succeeds
            return None
        return await asyncio.to_thread(self._check, username.lower(), password)

    def _check(self, username: str, password: str) -> Principal | None:
        cfg = self.config
        user_dn = cfg.user_dn_template.format(username=escape_rdn(username))
        server = ldap3.Server(cfg.url, connect_timeout=cfg.timeout)
        conn = ldap3.Connection(
            server, user=user_dn, password=password, receive_timeout=cfg.timeout, read_only=True
        )
        try:
            if not conn.bind():
                if conn.result["result"] == INVALID_CREDENTIALS:
                    return None
                raise LdapError(f"cannot bind to {cfg.url}: {_describe(conn.result)}")
            groups = self._groups(conn, username, user_dn)
        except LDAPException as exc:
            raise LdapError(f"LDAP server {cfg.url}: {exc}") from exc
        finally:
            conn.unbind()
        return Principal(name=username, roles=cfg.roles_of(groups), groups=groups)

    def _groups(self, conn: ldap3.Connection, username: str, user_dn: str) -> list[str]:
        """The ``cn`` of every group ``group_filter`` finds under ``group_base``."""
        cfg = self.config
        if cfg.group_base is None:
            return []
        query = cfg.group_filter.format(
            user_dn=escape_filter_chars(user_dn), username=escape_filter_chars(username)
        )
        if not conn.search(cfg.group_base, query, attributes=["cn"]) and conn.result["result"]:
            raise LdapError(f"group search under {cfg.group_base} failed: {_describe(conn.result)}")
        found = {
            str(cn)
            for entry in conn.response or []
            if entry.get("type") == "searchResEntry"
            for cn in entry["attributes"].get("cn", [])
        }
        return sorted(found)


def _describe(result: dict[str, Any]) -> str:
    return " ".join(filter(None, [result.get("description"), result.get("message")]))
