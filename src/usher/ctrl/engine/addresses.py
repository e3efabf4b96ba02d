"""NICs and addresses of new VMs: from the IP management plugins, or one NIC on a site
network that the core makes itself."""

from __future__ import annotations

import secrets

from usher.bounds import BoundsError
from usher.ctrl.engine.admission import Admission
from usher.ctrl.engine.errors import RequestError
from usher.ctrl.kwargs import nic_network
from usher.ctrl.plugins import PluginError, Vetoed
from usher.model import VM, Operation, OpRequest, VMSpec


def random_mac() -> str:
    """A locally administered unicast MAC in QEMU's 52:54:00 range."""
    return "52:54:00:" + secrets.token_bytes(3).hex(":")


def with_nics(spec: VMSpec, network: str) -> VMSpec:
    """``spec`` with one NIC (a MAC Usher chose, on ``network``) unless it names its own."""
    if spec.nics:
        return spec
    return spec.model_copy(update={"nics": [{"mac": random_mac(), "network": network}]})


class Addresses:
    def __init__(self, admission: Admission) -> None:
        self.admission = admission
        self.crew = admission.crew

    async def assign(self, op: Operation, req: OpRequest, vms: list[VM]) -> None:
        """Give each new VM its NICs (all VMs, or none: what was handed out goes back)."""
        await self._allocate(op, req, vms)
        await self._core_nics(req, vms)

    async def _allocate(self, op: Operation, req: OpRequest, vms: list[VM]) -> None:
        """Ask the IP management plugins for each new VM's addresses."""
        plugins = self.crew.plugins
        done: list[VM] = []
        try:
            for vm in vms:
                nics = await plugins.decide("allocate_address", vm=vm, request=req)
                if nics:
                    vm.spec = vm.spec.model_copy(update={"nics": list(nics)})
                    vm.addresses = [n["address"] for n in nics if n.get("address")]
                done.append(vm)
        except (Vetoed, PluginError) as exc:
            for vm in done:
                await plugins.call_all("release_address", vm=vm)
            raise await self.admission.plugin_refused(op, exc, record=True) from exc

    async def _core_nics(self, req: OpRequest, vms: list[VM]) -> None:
        """A NIC on the site network the request names for each VM no IP management plugin
        gave NICs; an unknown network refuses the request."""
        if all(vm.spec.nics for vm in vms):
            return
        try:
            network = nic_network(req.kwargs, self.crew.settings.networks)
        except BoundsError as exc:
            for vm in vms:
                await self.crew.plugins.call_all("release_address", vm=vm)
            raise RequestError(422, f"{exc}; nothing was changed") from exc
        for vm in vms:
            vm.spec = with_nics(vm.spec, network)
