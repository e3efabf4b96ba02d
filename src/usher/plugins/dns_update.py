"""The site's DNS (the original's ``udns``): A (AAAA) and PTR records of every VM's
addresses on the site's own nameserver, through RFC 2136 dynamic updates signed with TSIG.

Config (``[plugins.dns]``)::

    server = "192.0.2.53"         # the zones' primary server (an IP address)
    port = 53
    transport = "tcp"             # or "udp"
    domain = "usher.test"         # names are VM.CLUSTER.DOMAIN (VM.DOMAIN outside a cluster)
    forward_zones = ["usher.test"]              # default: [domain]
    reverse_zones = ["9.213.10.in-addr.arpa"]   # PTRs of addresses in none are not made
    key_name = "usher-update"     # the TSIG key: name, algorithm, base64 secret ...
    key_algorithm = "hmac-sha256"
    key_secret = "…"
    # key_file = "/etc/usher/dns.key"   # ... or a BIND key file (what tsig-keygen writes)
    ttl = 300
    timeout = 5.0                 # seconds to wait for the server's answer
    retry_interval = 10.0         # first retry after a failure; doubles up to retry_max
    retry_max = 600.0

A VM's records are asked for when it gets its addresses (event ``register``, from the
``ipam`` plugin's ``allocate_address``; again at a ``start`` that took a released address
back), renamed with it (``vm_change``) and removed when it is destroyed or its start fails
and its address is released (``unregister``, ``destroy``, ``start_failure``), as ``ipam``
holds and frees its addresses. Each update replaces the whole record set (delete, then add,
in one message), or deletes it, so making it again is harmless.

Updates are made in the background and never hold up or fail a VM's operation. One that
fails (the server down, refusing, a TSIG key it rejects, no answer in time) is published as
a ``dns_failure`` event and retried with growing delays until it is made, with no further
request; when the server does not answer at all, answers garbage or rejects the TSIG key,
one event covers every update waiting.
Pending updates are plugin data (:mod:`usher.plugins.dns_pending`): they survive a restart,
and a later change of the same name supersedes them. A VM or cluster name that is not a DNS
label (``web_1``, ``a.b``) or a name in none of the zones gives a ``dns_failure`` event with
no retry, and no record.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from usher.model import Event, VMState
from usher.plugin import PluginContext, hookimpl
from usher.plugins.dns_config import DnsConfig
from usher.plugins.dns_names import changes, vm_names, zone_of
from usher.plugins.dns_pending import Ledger, Names
from usher.plugins.dns_send import UpdateFailed, send

REMOVING_EVENTS = frozenset({"unregister", "destroy", "start_failure"})
SETTLE_BATCH = 100
"""Updates made that are settled in one write."""
LIVE_STATES = frozenset({VMState.RUNNING, VMState.PAUSED, VMState.MIGRATING})
"""States a VM reaches only by a start that kept its addresses."""


class DnsUpdate:
    """Keeps the site's nameserver in step with the VMs' addresses."""

    def __init__(self) -> None:
        self.task: asyncio.Task[None] | None = None
        self.wake = asyncio.Event()

    @hookimpl
    async def usher_configure(self, ctx: PluginContext, config: dict[str, Any]) -> None:
        self.ctx = ctx
        self.config = DnsConfig.model_validate(config)
        self.ledger = Ledger(ctx)
        self.log = ctx.logger("dns")
        self.wake = asyncio.Event()
        await self._reconcile()
        self.task = asyncio.create_task(self._run(), name="dns-updates")

    @hookimpl
    async def usher_shutdown(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task
            self.task = None

    # --- what should be in DNS ---------------------------------------------------------

    @hookimpl
    async def usher_event(self, event: Event) -> None:
        vm_id = event.vm_id
        if vm_id is None:
            return
        if event.name in REMOVING_EVENTS:
            await self._set(vm_id, None)
        elif event.name in ("register", "vm_adopted"):
            data = event.data
            await self._publish(vm_id, data["name"], data.get("cluster"), data["addresses"])
        elif event.name == "start" or (event.name == "vm_change" and event.data.get("old_name")):
            vm = await self.ctx.records.get_vm(vm_id)
            if vm is not None:
                await self._publish(vm_id, vm.name, vm.cluster, vm.addresses)

    async def _reconcile(self) -> None:
        """Catch up with what the events lost in a crash told no one (they are not kept):
        the names of VMs whose records are gone are removed, those of running VMs made or
        renamed. Run at start, before any event comes, so no operation races it."""
        published = await self.ledger.all_published()
        seen: set[str] = set()
        cursor: str | None = None
        while True:
            page = await self.ctx.records.list_vms(limit=500, cursor=cursor)
            for vm in page.items:
                seen.add(vm.id)
                if vm.state not in LIVE_STATES or not vm.addresses:
                    continue  # a failed start's address may be someone else's by now
                try:
                    wanted = vm_names(vm.name, vm.cluster, self.config.domain, vm.addresses)
                except ValueError:
                    wanted = None  # _publish knows whether it said so already
                if wanted is None or published.get(vm.id) != wanted:
                    await self._publish(vm.id, vm.name, vm.cluster, vm.addresses)
            cursor = page.next
            if cursor is None:
                break
        for vm_id in published.keys() - seen:
            await self._set(vm_id, None)

    async def _publish(
        self, vm_id: str, name: str, cluster: str | None, addresses: list[str]
    ) -> None:
        if not addresses:
            await self._set(vm_id, None)
            return
        try:
            names = vm_names(name, cluster, self.config.domain, addresses)
        except ValueError as exc:
            # kept with no address: nothing to make, what it had is removed, and the event
            # is not repeated at its next start
            fqdn = ".".join(p for p in (name, cluster, self.config.domain.rstrip(".")) if p)
            refused = Names(fqdn + ".", ())
            if await self.ledger.published(vm_id) != refused:
                await self._failed(vm_id, "A", refused.fqdn, "add", str(exc), 0, None)
                await self._set(vm_id, refused)
            return
        await self._set(vm_id, names)

    async def _set(self, vm_id: str, names: Names | None) -> None:
        made, holder = await self.ledger.set_names(
            vm_id, names, lambda old, new: changes(vm_id, old, new)
        )
        if made:
            self.wake.set()
        if holder is not None and names is not None:
            vm = await self.ctx.records.get_vm(holder)
            error = (
                f"{names.fqdn} is VM {vm.name if vm else holder}'s name in DNS "
                "(VM names that differ only in case make the same DNS name)"
            )
            await self._failed(vm_id, "A", names.fqdn, "add", error, 0, None)

    # --- making it so ------------------------------------------------------------------

    def _delay(self, attempts: int) -> float:
        return min(self.config.retry_interval * 2 ** min(attempts - 1, 30), self.config.retry_max)

    async def _run(self) -> None:
        """Make the pending updates as they fall due; a restart makes them all due."""
        everything = True
        while True:
            self.wake.clear()
            wait: float | None
            try:
                await self._pass(everything)
                everything = False
                entries = await self.ledger.pending()
                wait = max(0.0, min(e["due"] for e in entries) - time.time()) if entries else None
            except Exception:  # the database, say: the pending updates are tried again later
                self.log.exception("dns: a pass over the pending updates failed")
                wait = self.config.retry_interval
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), wait)

    async def _pass(self, everything: bool) -> None:
        now = time.time()
        due = [e for e in await self.ledger.pending() if everything or e["due"] <= now]
        made: list[dict[str, Any]] = []  # settled in batches: each write rewrites them all
        for i, entry in enumerate(due):
            if len(made) >= SETTLE_BATCH:
                await self.ledger.settle(*made)
                made.clear()
            action = "add" if entry["values"] else "remove"
            zones = (
                self.config.reverse_zones if entry["type"] == "PTR" else self.config.forward_zones
            )
            zone = zone_of(entry["name"], zones)
            if zone is None:
                made.append(entry)
                known = ", ".join(zones) or "none"
                error = f"{entry['name']} is in none of the zones configured ({known})"
                await self._failed(
                    entry["vm_id"], entry["type"], entry["name"], action, error, 0, None
                )
                continue
            try:
                await self._send(zone, entry)
            except UpdateFailed as exc:
                failed = due[i:] if exc.server_wide else [entry]
                kept = await self.ledger.postpone(failed, self._delay)
                mine = next((k for k in kept if k["key"] == entry["key"]), None)
                attempts = mine["attempts"] if mine else entry["attempts"] + 1
                await self._failed(
                    entry["vm_id"],
                    entry["type"],
                    entry["name"],
                    action,
                    str(exc),
                    attempts,
                    self._delay(attempts),
                    waiting=len(kept),
                )
                if exc.server_wide:
                    break
            else:
                made.append(entry)
                self.log.info("dns: %s %s %s", action, entry["type"], entry["name"])
        await self.ledger.settle(*made)

    async def _send(self, zone: str, entry: dict[str, Any]) -> None:
        """:func:`send`, with an error it did not foresee turned into a failure of this
        update (retried, as others are), so it cannot stop the ones after it."""
        try:
            await send(self.config, zone, entry)
        except UpdateFailed:
            raise
        except Exception as exc:
            self.log.exception("dns: unexpected error updating %s %s", entry["type"], entry["name"])
            raise UpdateFailed(f"{type(exc).__name__}: {exc}") from exc

    async def _failed(
        self,
        vm_id: str | None,
        rdtype: str,
        name: str,
        action: str,
        error: str,
        attempts: int,
        retry_in: float | None,
        waiting: int = 1,
    ) -> None:
        level = logging.WARNING if retry_in is not None else logging.ERROR
        self.log.log(level, "dns: %s %s %s failed: %s", action, rdtype, name, error)
        await self.ctx.emit(
            "dns_failure",
            vm_id=vm_id,
            data={
                "name": name,
                "type": rdtype,
                "action": action,
                "error": error,
                "attempts": attempts,
                "retry_in": retry_in,
                "waiting": waiting if retry_in is not None else 0,
            },
        )
