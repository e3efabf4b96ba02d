"""Every hook a plugin can implement, documented where it is declared.

A plugin is a module (or object) with functions marked ``@usher.hookimpl`` whose names are
those below. Plugins are found through the entry-point group ``usher.plugins`` and enabled in
the controller's TOML config, one table per plugin::

    [plugins.scheduler]
    weigher = "spread"

Three kinds of hook:

* **decision** hooks answer a question (``authenticate``, ``authorize``, ``schedule``); the first
  plugin that answers (returns something other than ``None``) decides.
* **request** hooks (``request`` and ``<op>_request``) run before an operation; they may change
  the :class:`~usher.model.OpRequest` in place or veto it by raising :class:`Veto`, whose
  message reaches the user.
* **notification** hooks (``usher_event``) run after the fact. Each plugin's call is timed out
  and its failures are logged; neither ever breaks an operation or other plugins. A
  notification hook may be a coroutine function.

Every event the core and the built-in plugins emit is declared, with the model of its
``data``, in :mod:`usher.event_types`: :data:`EVENTS` (re-exported here) maps each name to
its model; the events table of ``docs/plugins.md`` is made from it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from collections.abc import Mapping

    from fastapi import APIRouter

    from usher.event_types import EVENTS as EVENTS
    from usher.guest_config import GuestConfig
    from usher.model import VM, Event, Node, OpRequest, Placement, Principal, Scope, VMSpec
    from usher.plugin import Changes, PluginContext

PROJECT = "usher"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


def __getattr__(name: str) -> Any:
    """``EVENTS``, imported when first asked for: importing ``usher`` stays light."""
    if name == "EVENTS":
        from usher.event_types import EVENTS

        return EVENTS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class Veto(Exception):
    """Raised by a request hook to refuse an operation; the message is shown to the user."""


# --- set-up -------------------------------------------------------------------------------


@hookspec
def usher_configure(ctx: PluginContext, config: dict[str, Any]) -> None:
    """Called once when the controller starts, before any request.

    ``config`` is the plugin's own table from the controller config (empty if none).
    ``ctx`` gives access to the store, the event bus and settings; keep it for later hooks.
    May be a coroutine function.
    """


@hookspec
def usher_routes() -> list[APIRouter]:
    """API routes of the plugin's own (token management, an audit query, …), mounted under
    ``/v1``. Called once when the controller builds its app, before ``usher_configure``.

    Routes take ``usher.plugin``'s ``ContextDep`` and ``PrincipalDep`` and call its
    ``allow`` like the core's, so they are authenticated and authorized the same way.
    """


@hookspec
def usher_shutdown() -> None:
    """Called once when the controller stops. May be a coroutine function."""


# --- decision hooks -----------------------------------------------------------------------


@hookspec(firstresult=True)
def authenticate(token: str) -> Principal | None:
    """Return the :class:`Principal` a bearer token belongs to, or ``None`` if unknown.

    Plugins are tried in order; the first that returns a principal wins. If none does, the
    request is refused with 401. May be a coroutine function.
    """


@hookspec
def check_password(username: str, password: str) -> Principal | None:
    """The principal ``username`` logs in as with ``password`` (``POST /v1/login``), or
    ``None`` for an unknown user or a wrong password.

    Asked in configured order until one answers; raise only when the check itself could not
    be made (a directory server unreachable): the next plugin is asked and the failure shown.
    May be a coroutine function.
    """


@hookspec(firstresult=True)
def authorize(principal: Principal, action: str, target: dict[str, Any]) -> bool | None:
    """May ``principal`` do ``action`` (e.g. ``vm.stop``, ``node.drain``) on ``target``?

    Return ``True`` to allow, ``False`` to refuse (403), ``None`` to leave it to the next
    plugin. If no plugin answers, the request is allowed for any authenticated principal.
    """


@hookspec(firstresult=True)
def scope(principal: Principal) -> Scope | None:
    """Which VMs, operations and events ``principal`` may see in listings.

    Return a :class:`~usher.model.Scope` (e.g. its own VMs and those of the clusters it is a
    member of), or ``None`` to leave it to the next plugin. If no plugin answers, everything
    is visible. Single objects are checked with ``authorize`` instead.
    """


@hookspec(firstresult=True)
def allocate_address(vm: VM, request: OpRequest) -> list[dict[str, Any]] | None:
    """Addresses for a new VM, before it is recorded and started.

    Return its NICs, each ``{"mac": ..., "network": ..., "address": ...}`` (the addresses go
    to ``vm.addresses``), or ``None`` to keep the MAC the controller chose. Raise
    :class:`Veto` when none can be had (a range is full); the request is then refused and
    ``release_address`` is called for the VMs of the same request already allocated.
    """


@hookspec
def release_address(vm: VM) -> None:
    """Give back what ``allocate_address`` handed out for ``vm`` (its request was refused).

    Addresses of VMs that were recorded are released by the plugin itself, on their
    ``destroy`` or ``start_failure`` events.
    """


@hookspec(firstresult=True)
def schedule(
    nodes: list[Node],
    specs: list[VMSpec],
    request: OpRequest,
    reserved: Mapping[str, Mapping[str, Any]],
    changes: Changes | None,
) -> Placement | None:
    """Place new or migrating VMs: a pure function of the cluster snapshot and the request.

    ``nodes`` is the snapshot (capacity, labels, state, usage); ``specs`` one spec per VM to
    place; ``reserved`` maps node name to ``{"vcpus": n, "memory_mb": m, "vms": k,
    "clusters": {cluster: vm count}}`` already committed there by the controller's records
    (read them; do not change them). Return a :class:`Placement` naming one node per spec, or
    one whose ``error`` says why nothing fits (every VM fits or none is placed).

    ``changes``, when given, says which nodes' records or reservations changed since an
    earlier call (:class:`usher.plugin.Changes`), so a scheduler may keep an index
    across calls and update only those; it is ``None`` when ``nodes`` leaves a node out or
    ``reserved`` includes capacity promised beyond the records.
    """


@hookspec
def ssh_keys(user: str) -> list[str] | None:
    """The SSH public keys principal ``user`` logs into guests with (``ssh-ed25519 AAAA…``
    lines). Every plugin's answer counts: the built-in ``keys`` plugin gives those the user
    registered (``ush key add``); a site's plugin may add keys from its directory. Plugins
    ask through ``PluginContext.ssh_keys``. May be a coroutine function.
    """


@hookspec
def guest_config(vm: VM, config: GuestConfig) -> None:
    """Configure the guest of ``vm`` (one whose image runs cloud-init) before it boots.

    Called at every start, in configured order, with the configuration so far: the core has
    set the hostname (the VM's name) and an account for the VM's owner with their keys (and
    the ``ssh_keys`` kwarg's), with sudo. Add to it in place through
    :class:`usher.plugin.GuestConfig`: ``add_user`` (accounts merge by name: keys and groups
    added, sudo if either asks), ``set_network`` (cloud-init network config v2; the first
    plugin to set it wins, a different one later raises ``ConfigConflict``) and ``merge``
    (any cloud-config: mappings merged, lists extended, a value already set kept, a
    different one raising ``ConfigConflict``). The user's own ``user_data`` goes first in the
    seed and the plugins' part is merged over it by cloud-init. A plugin that raises fails
    the VM's start with its message, as a request hook would. May be a coroutine function.
    """


# --- request hooks ------------------------------------------------------------------------


@hookspec
def request(request: OpRequest) -> None:
    """Any operation was asked for. Change ``request`` in place, or raise :class:`Veto`."""


@hookspec
def start_request(request: OpRequest) -> None:
    """VMs are to be started (created, or booted from stopped). May modify or veto."""


@hookspec
def stop_request(request: OpRequest) -> None:
    """VMs are to be powered off. May modify or veto."""


@hookspec
def destroy_request(request: OpRequest) -> None:
    """VMs are to be destroyed (powered off, disks and records removed). May modify or veto."""


@hookspec
def pause_request(request: OpRequest) -> None:
    """VMs are to be paused. May modify or veto."""


@hookspec
def resume_request(request: OpRequest) -> None:
    """Paused VMs are to be resumed. May modify or veto."""


@hookspec
def reboot_request(request: OpRequest) -> None:
    """VMs are to be rebooted. May modify or veto."""


@hookspec
def cycle_request(request: OpRequest) -> None:
    """VMs are to be power-cycled (hard off, then booted). May modify or veto."""


@hookspec
def migrate_request(request: OpRequest) -> None:
    """VMs are to be live-migrated (``target_node`` may be set). May modify or veto."""


@hookspec
def snapshot_request(request: OpRequest) -> None:
    """A VM's disks are to be snapshot: ``kwargs.snapshot`` names the snapshot,
    ``kwargs.snapshot_bytes`` is the guest data it would hold (what quotas count). May modify
    or veto."""


@hookspec
def snapshot_revert_request(request: OpRequest) -> None:
    """A stopped VM's disks are to be put back as snapshot ``kwargs.snapshot`` holds them.
    May modify or veto."""


@hookspec
def snapshot_delete_request(request: OpRequest) -> None:
    """Snapshot ``kwargs.snapshot`` of a VM is to be deleted. May modify or veto."""


@hookspec
def clone_request(request: OpRequest) -> None:
    """A new VM is to be made from another's disks: a create (``count``, ``names``,
    ``spec``, ``cluster`` as in ``start_request``, which is not called for it). May modify or
    veto."""


@hookspec
def image_from_vm_request(request: OpRequest) -> None:
    """A VM's root disk (or snapshot ``kwargs.snapshot``'s) is to be published as the
    catalogue image ``kwargs.image_name``. May modify or veto."""


@hookspec
def resize_request(request: OpRequest) -> None:
    """A VM (``vm_ids``, one) is to be resized: ``spec`` is its spec as it would become (new
    ``vcpus`` and ``memory_mb`` only while it is stopped; ``disk_gb`` and ``disks`` sizes that
    grow), ``kwargs.resize`` what was asked. Compare with the VM's record for what it adds
    (quotas do). May change ``spec`` within what a resize changes, or veto."""


# --- notification hooks -------------------------------------------------------------------


@hookspec
def usher_event(event: Event) -> None:
    """Something happened. Every event passes here, after it is final.

    Filter on ``event.name``; ``event.data`` is as :data:`EVENTS` declares for that name (the
    events of other plugins excepted). Runs with a timeout; exceptions are logged, never
    propagated. May be a coroutine function.
    """
