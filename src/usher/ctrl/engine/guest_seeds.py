"""The cloud-init configuration of a guest, made at each start by the core and the plugins'
``guest_config`` hook (rules in :mod:`usher.guest_config`), as the node writes it into the
VM's NoCloud seed."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from usher.bounds import BoundsError
from usher.ctrl.engine.errors import StepFailed
from usher.ctrl.kwargs import check_core_kwargs
from usher.guest_config import GuestConfig, account_name, hostname_of
from usher.model import VM

if TYPE_CHECKING:
    from usher.ctrl.plugins import PluginHost


class GuestSeeds:
    def __init__(self, plugins: PluginHost) -> None:
        self.plugins = plugins

    async def seed(self, vm: VM) -> dict[str, Any]:
        """``vm``'s seed: hostname and owner's account (their keys, the ``ssh_keys`` kwarg's,
        sudo) from the core, then each plugin's part; StepFailed if a plugin fails."""
        kwargs = vm.spec.kwargs
        try:  # checked on admission; a record of an older release is checked again here
            check_core_kwargs({k: kwargs.get(k) for k in ("user_data", "ssh_keys")})
        except BoundsError as exc:
            raise StepFailed(f"{vm.name}: {exc}") from exc
        config = GuestConfig(vm.id, hostname_of(vm.name), user_data=kwargs.get("user_data"))
        keys = [*await self.plugins.ssh_keys(vm.owner), *(kwargs.get("ssh_keys") or ())]
        try:
            config.add_user(account_name(vm.owner), keys=keys, sudo=True)
        except ValueError as exc:  # a key a plugin gave that is no key
            raise StepFailed(f"{vm.name}: the owner's SSH keys: {exc}") from exc
        async for plugin, _answer, error in self.plugins.answers(
            "guest_config", vm=vm, config=config
        ):
            if error is not None:
                reason = getattr(error, "reason", None) or str(error)
                raise StepFailed(
                    f"{vm.name}: plugin {plugin} could not configure the guest: {reason}"
                )
        return config.seed()
