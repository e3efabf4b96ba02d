"""What an LNM may send the controller, each message checked before it is believed.

A node that joined legitimately is still not trusted with more than its own business:
everything it says is parsed into these models (bounded like every input, see
:mod:`usher.bounds`), and a message that does not parse is dropped with a warning; it never
ends the link, nor the controller's read of it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from usher.bounds import NAME_PATTERN
from usher.model import Capacity, Ref, Usage, VMState

Short = Annotated[str, Field(max_length=200)]
Reason = Annotated[str | None, Field(max_length=2000)]
INVENTORY_MAX = 10_000
"""Most VMs of one hello or inventory message."""


class _Message(BaseModel):
    model_config = ConfigDict(allow_inf_nan=False)


class DomainSummary(_Message):
    """A VM as a node reports it: enough to reconcile its record."""

    id: Ref
    name: Short = ""
    state: VMState
    reason: Reason = None


class Hello(_Message):
    type: Literal["hello"]
    node: Annotated[str, Field(pattern=NAME_PATTERN)]
    driver: Annotated[str, Field(pattern=r"^[a-z0-9_]{1,40}$")] = "unknown"
    capacity: Capacity = Field(default_factory=Capacity)
    labels: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9_.:/-]{1,63}$")],
        Annotated[str, Field(pattern=r"^[^\x00-\x1f\x7f]{0,200}$")],
    ] = Field(default_factory=dict, max_length=64)
    capabilities: list[Annotated[str, Field(pattern=r"^[a-z_]{1,40}$")]] = Field(
        default_factory=list, max_length=32
    )
    vms: list[DomainSummary] = Field(default_factory=list, max_length=INVENTORY_MAX)
    more: bool = False


class Inventory(_Message):
    """The rest of a hello's VMs, when there are many."""

    type: Literal["inventory"]
    vms: list[DomainSummary] = Field(max_length=INVENTORY_MAX)
    more: bool = False


class Heartbeat(_Message):
    type: Literal["heartbeat"]
    usage: Usage | None = None


class StateReport(_Message):
    """A VM changed state on its own, or a command outlived its link."""

    type: Literal["state"]
    vm_id: Ref
    state: VMState
    reason: Reason = None


class Gone(_Message):
    """A VM whose command outlived its link is no longer on the node."""

    type: Literal["gone"]
    vm_id: Ref


class Reply(_Message):
    type: Literal["reply"]
    id: Annotated[str, Field(max_length=100)]
    ok: bool = False
    result: dict[str, Any] | None = None
    error: Annotated[str | None, Field(max_length=10_000)] = None


NodeMessage = Annotated[
    Hello | Inventory | Heartbeat | StateReport | Gone | Reply, Field(discriminator="type")
]
NODE_MESSAGE: TypeAdapter[Any] = TypeAdapter(NodeMessage)
HELLO: TypeAdapter[Hello] = TypeAdapter(Hello)
