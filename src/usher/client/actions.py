"""The VM actions as named methods, written once for both clients.

A client implements :meth:`ActionMethods.action`; the named methods only pick the kind.
``R`` is what ``action`` returns: an :class:`~usher.model.Operation` for the sync client,
an awaitable of one for the async client.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, Generic, TypeVar

from usher.model import OpKind

R = TypeVar("R")


class ActionMethods(ABC, Generic[R]):
    @abstractmethod
    def action(
        self,
        kind: OpKind | str,
        vms: Sequence[str] | None = None,
        cluster: str | None = None,
        target_node: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> R:
        """Ask for ``kind`` on VMs (ids or names) and/or every VM of ``cluster``."""

    def start_existing(
        self,
        vms: Sequence[str] | None = None,
        cluster: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> R:
        """Boot stopped VMs (to create new ones, use ``create_vms``)."""
        return self.action(OpKind.START, vms, cluster, kwargs=kwargs)

    def stop(
        self,
        vms: Sequence[str] | None = None,
        cluster: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> R:
        return self.action(OpKind.STOP, vms, cluster, kwargs=kwargs)

    def destroy(
        self,
        vms: Sequence[str] | None = None,
        cluster: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> R:
        return self.action(OpKind.DESTROY, vms, cluster, kwargs=kwargs)

    def pause(
        self,
        vms: Sequence[str] | None = None,
        cluster: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> R:
        return self.action(OpKind.PAUSE, vms, cluster, kwargs=kwargs)

    def resume(
        self,
        vms: Sequence[str] | None = None,
        cluster: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> R:
        return self.action(OpKind.RESUME, vms, cluster, kwargs=kwargs)

    def reboot(
        self,
        vms: Sequence[str] | None = None,
        cluster: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> R:
        return self.action(OpKind.REBOOT, vms, cluster, kwargs=kwargs)

    def cycle(
        self,
        vms: Sequence[str] | None = None,
        cluster: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> R:
        """Stop and start again (a cold reboot)."""
        return self.action(OpKind.CYCLE, vms, cluster, kwargs=kwargs)

    def migrate(
        self,
        vms: Sequence[str] | None = None,
        cluster: str | None = None,
        target_node: str | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> R:
        """Move VMs to ``target_node``, or to nodes the scheduler picks."""
        return self.action(OpKind.MIGRATE, vms, cluster, target_node, kwargs)
