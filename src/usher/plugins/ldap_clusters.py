"""Per-cluster directory branches (the original Usher's ``uldap``): each virtual cluster of the
``authz`` plugin gets a branch of the site's LDAP directory with its people and groups, kept
current as members come and go, and its guests authenticate against it.

Config ``[plugins.ldap_clusters]``::

    url = "ldap://ldap.example.org"             # ldaps://… for TLS
    bind_dn = "cn=usher,ou=services,dc=example,dc=org"   # may write the clusters' subtree
    bind_password_file = "/etc/usher/ldap-writer.pw"     # or bind_password = "…"
    base = "ou=clusters,dc=example,dc=org"      # the site makes it; branches go below
    people_base = "ou=people,dc=example,dc=org" # the site's people (for seeAlso and logins)
    user_dn_template = "uid={username},ou=people,dc=example,dc=org"  # default: from people_base
    timeout = 5                                 # seconds, to connect and for each answer
    retry_interval = 10                         # seconds between tries while it fails
    first_id = 20000                            # uidNumbers and gidNumbers count up from here
    home = "/home/{account}"
    shell = "/bin/bash"
    # what the guests' nslcd is told (see usher.plugins.ldap_guest)
    guest_url = "ldap://ldap.example.org"       # default: url
    guest_bind_dn = "cn=guests,ou=services,dc=example,dc=org"   # default: anonymous reads
    guest_bind_password = "…"
    site_person_filter = "(objectClass=inetOrgPerson)"

The branch layout is :mod:`usher.plugins.ldap_branch`'s. It follows the ``authz`` plugin's
record of the cluster (its owner and members, read from that plugin's data): on
``cluster_create``, ``cluster_member_add`` and ``cluster_member_remove`` the cluster is marked
pending (in this plugin's data, so a restart does not forget it) and a worker brings its whole
branch up to date; a branch that is already right is left as it is. A directory that fails
(down, refusing, slow) never fails the request that changed the cluster: the cluster stays
pending, ``ldap_failure`` fires (once when a cluster starts failing, again if the error
changes) and the worker tries again every ``retry_interval`` seconds until it succeeds. At its
first start the plugin marks every existing cluster pending. uidNumbers (one per principal,
the same in every cluster) and gidNumbers (two per cluster) are handed out once, from one
counter in this plugin's data, and never reused. A cluster's owner never changes (``authz``
has no way to), and clusters are never deleted, so neither are branches.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException
from pydantic import Field, ValidationError, field_validator, model_validator

from usher.model import VM, Event, Strict
from usher.plugin import GuestConfig, PluginContext, PluginData, account_name, hookimpl
from usher.plugins.ldap_branch import Branch, DirectoryError, Layout, Person, sync_branch
from usher.plugins.ldap_guest import GuestDirectory, cloud_config

PLUGIN = "ldap_clusters"
AUTHZ = "authz"
WATCHED = frozenset({"cluster_create", "cluster_member_add", "cluster_member_remove"})


class ClustersConfig(Strict):
    url: str
    bind_dn: str
    bind_password: str | None = None
    bind_password_file: Path | None = None
    base: str
    people_base: str | None = None
    user_dn_template: str | None = None
    timeout: int = Field(5, gt=0)
    retry_interval: float = Field(10.0, gt=0)
    first_id: int = Field(20000, ge=1000, lt=2**31)
    home: str = "/home/{account}"
    shell: str = "/bin/bash"
    guest_url: str | None = None
    guest_bind_dn: str | None = None
    guest_bind_password: str | None = None
    site_person_filter: str = "(objectClass=inetOrgPerson)"

    @field_validator("url", "guest_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("ldap://", "ldaps://")):
            raise ValueError("must start with ldap:// or ldaps://")
        return value

    @field_validator("site_person_filter")
    @classmethod
    def _filter(cls, value: str) -> str:
        if not (value.startswith("(") and value.endswith(")")):
            raise ValueError("must be an LDAP filter in parentheses")
        return value

    @model_validator(mode="after")
    def _complete(self) -> ClustersConfig:
        if (self.bind_password is None) == (self.bind_password_file is None):
            raise ValueError("give bind_password or bind_password_file (one of them)")
        if self.user_dn_template is None and self.people_base is not None:
            self.user_dn_template = f"uid={{username}},{self.people_base}"
        if self.user_dn_template is not None:
            _template(self.user_dn_template, "username")
        _template(self.home, "account")
        return self

    def password(self) -> str:
        if self.bind_password is not None:
            return self.bind_password
        assert self.bind_password_file is not None
        return self.bind_password_file.read_text().strip()


def _template(template: str, name: str) -> None:
    """``template`` has ``{name}`` and no other placeholder; ValueError saying so if not."""
    try:
        filled = template.format(**{name: "\0"})
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"{template!r} may hold {{{name}}} and no other placeholder") from exc
    if "\0" not in filled:
        raise ValueError(f"{template!r} must contain {{{name}}}")


class LdapClusters:
    ctx: PluginContext
    config: ClustersConfig
    layout: Layout
    log: logging.Logger
    _password: str  # the writer's

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.failing: dict[str, str] = {}  # cluster -> the error last reported

    @hookimpl
    async def usher_configure(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        try:
            self.config = ClustersConfig.model_validate(config)
            password = self.config.password()
        except (ValidationError, OSError) as exc:
            raise ValueError(f"[plugins.{PLUGIN}]: {exc}") from exc
        self.ctx = ctx
        self.log = ctx.logger(PLUGIN)
        self.layout = Layout(
            self.config.base, self.config.user_dn_template, self.config.home, self.config.shell
        )
        self._password = password
        await self._seed()
        self.task = asyncio.create_task(self._worker(), name=PLUGIN)

    @hookimpl
    async def usher_shutdown(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)

    @hookimpl
    async def usher_event(self, event: Event) -> None:
        cluster = event.data.get("cluster") if event.name in WATCHED else None
        if isinstance(cluster, str):
            await self._mark([cluster])

    @hookimpl
    async def guest_config(self, vm: VM, config: GuestConfig) -> None:
        """Guests of a virtual cluster get nslcd set to the cluster's branch."""
        if vm.cluster is None or await self.ctx.get(AUTHZ, f"cluster:{vm.cluster}") is None:
            return
        cfg, name = self.config, vm.cluster
        directory = GuestDirectory(
            url=cfg.guest_url or cfg.url,
            branch_dn=self.layout.branch_dn(name),
            people_dn=self.layout.people_dn(name),
            groups_dn=self.layout.groups_dn(name),
            site_people=cfg.people_base,
            site_filter=cfg.site_person_filter,
            bind_dn=cfg.guest_bind_dn,
            bind_password=cfg.guest_bind_password,
        )
        config.merge(cloud_config(directory, name))

    # --- pending clusters ----------------------------------------------------------------

    async def _seed(self) -> None:
        """At the first start, every cluster ``authz`` knows is pending."""
        index: dict[str, list[str]] = await self.ctx.get(AUTHZ, "member-index", {})
        clusters = sorted({c for names in index.values() for c in names})

        async def seed(data: PluginData) -> bool:
            if await data.get("seeded", False):
                return False
            await data.put("seeded", True)
            return True

        if await self.ctx.atomically(PLUGIN, seed):
            await self._mark(clusters)

    async def _mark(self, clusters: list[str]) -> None:
        """Mark ``clusters`` pending (each mark a new generation) and wake the worker."""

        async def mark(data: PluginData) -> None:
            pending: dict[str, int] = await data.get("pending", {})
            for cluster in clusters:
                pending[cluster] = pending.get(cluster, 0) + 1
            await data.put("pending", pending)

        if clusters:
            await self.ctx.atomically(PLUGIN, mark)
            self.wake.set()

    async def _done(self, cluster: str, generation: int) -> None:
        """No longer pending, unless marked again while it was being brought up to date."""

        async def done(data: PluginData) -> None:
            pending: dict[str, int] = await data.get("pending", {})
            if pending.get(cluster) == generation:
                del pending[cluster]
                await data.put("pending", pending)

        await self.ctx.atomically(PLUGIN, done)

    # --- the worker ----------------------------------------------------------------------

    async def _worker(self) -> None:
        while True:
            self.wake.clear()
            try:
                waiting = await self._round()
            except Exception:  # the database, say: try again later
                self.log.exception("bringing directory branches up to date failed")
                waiting = True
            try:
                timeout = self.config.retry_interval if waiting else None
                await asyncio.wait_for(self.wake.wait(), timeout)
            except TimeoutError:
                pass

    async def _round(self) -> bool:
        """Bring every pending cluster's branch up to date; True if some are still pending."""
        pending: dict[str, int] = await self.ctx.get(PLUGIN, "pending", {})
        left = False
        for cluster, generation in sorted(pending.items()):
            try:
                await self._sync(cluster)
            except DirectoryError as exc:
                left = True
                await self._failed(cluster, str(exc))
                continue
            except Exception as exc:  # a bug or a bad record: this cluster only
                self.log.exception("directory branch of %s", cluster)
                left = True
                await self._failed(cluster, f"{type(exc).__name__}: {exc}")
                continue
            await self._done(cluster, generation)
            if self.failing.pop(cluster, None) is not None:
                self.log.info("directory branch of %s is up to date again", cluster)
        return left

    async def _failed(self, cluster: str, error: str) -> None:
        self.log.warning(
            "directory branch of %s: %s (tried again in %g s)",
            cluster,
            error,
            self.config.retry_interval,
        )
        if self.failing.get(cluster) != error:
            self.failing[cluster] = error
            await self.ctx.emit("ldap_failure", data={"cluster": cluster, "error": error})

    async def _sync(self, cluster: str) -> None:
        record = await self.ctx.get(AUTHZ, f"cluster:{cluster}")
        if record is None:  # nothing to show
            return
        owner: str = record["owner"]
        members = [m for m in dict.fromkeys(record.get("members", [])) if m != owner]
        ids = await self._ids(
            [f"uid:{p}" for p in (owner, *members)]
            + [f"gid:{cluster}:admin", f"gid:{cluster}:members"]
        )

        def person(principal: str) -> Person:
            return Person(principal, account_name(principal), ids[f"uid:{principal}"])

        branch = Branch(
            cluster=cluster,
            owner=person(owner),
            members=tuple(person(m) for m in members),
            admin_gid=ids[f"gid:{cluster}:admin"],
            members_gid=ids[f"gid:{cluster}:members"],
        )
        await asyncio.to_thread(self._write, branch)

    async def _ids(self, keys: list[str]) -> dict[str, int]:
        """The number of each key (``uid:<principal>``, ``gid:<cluster>:<group>``), handed
        out from one counter the first time a key is asked for, then always the same."""

        async def allocate(data: PluginData) -> dict[str, int]:
            numbers: dict[str, int] = await data.get("ids", {})
            new = [k for k in keys if k not in numbers]
            if new:
                next_id: int = await data.get("next-id", self.config.first_id)
                for key in new:
                    numbers[key] = next_id
                    next_id += 1
                await data.put("ids", numbers)
                await data.put("next-id", next_id)
            return {k: numbers[k] for k in keys}

        return await self.ctx.atomically(PLUGIN, allocate)

    def _write(self, branch: Branch) -> None:
        cfg = self.config
        server = ldap3.Server(cfg.url, connect_timeout=cfg.timeout)
        conn = ldap3.Connection(
            server, user=cfg.bind_dn, password=self._password, receive_timeout=cfg.timeout
        )
        try:
            if not conn.bind():
                raise DirectoryError(
                    f"cannot bind as {cfg.bind_dn}: {conn.result.get('description')}"
                )
            sync_branch(conn, self.layout, branch)
        except DirectoryError as exc:
            raise DirectoryError(f"{cfg.url}: {exc}") from exc
        except LDAPException as exc:  # unreachable, timed out
            raise DirectoryError(f"{cfg.url}: {type(exc).__name__}: {exc}") from exc
        finally:
            conn.unbind()
