"""Keyword-argument filter (the original's ``kwargfil``): which free-form ``kwargs`` each role
may pass to operations and plugins.

Config (``[plugins.kwargfil]``)::

    mode = "refuse"            # or "strip": drop what is not allowed and go on
    allow = {user = ["tag", "network"], operator = ["*"], admin = ["*"]}

A principal may pass the keys allowed to any of its roles (``"*"``: any key). Others are
refused with a message naming them, or stripped from the request (and from a new VM's spec).
The keys the core sets for an operation of its own (``usher.model.OPERATION_KWARGS``: a
snapshot's name, a resize's sizes) are never filtered.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from usher.model import OPERATION_KWARGS, OpRequest
from usher.plugin import Veto, hookimpl

ANY = "*"


class KwargConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mode: Literal["refuse", "strip"] = "refuse"
    allow: dict[str, list[str]] = Field(default_factory=lambda: {"admin": [ANY]})


class KwargFilter:
    config: KwargConfig = KwargConfig()

    @hookimpl
    def usher_configure(self, config: dict[str, Any]) -> None:
        self.config = KwargConfig.model_validate(config)

    def allowed(self, roles: list[str]) -> set[str]:
        return {key for role in roles for key in self.config.allow.get(role, [])}

    @hookimpl
    def request(self, request: OpRequest) -> None:
        allowed = self.allowed(request.principal.roles)
        if ANY in allowed:
            return
        passed = set(request.kwargs) | set(request.spec.kwargs if request.spec else ())
        bad = sorted(passed - allowed - OPERATION_KWARGS.get(request.kind, frozenset()))
        if not bad:
            return
        if self.config.mode == "refuse":
            roles = ", ".join(request.principal.roles) or "no role"
            raise Veto(
                f"kwargs not allowed for {request.principal.name} ({roles}): {', '.join(bad)}"
                f"; allowed: {', '.join(sorted(allowed)) or 'none'}"
            )
        for key in bad:
            request.kwargs.pop(key, None)
            if request.spec is not None:
                request.spec.kwargs.pop(key, None)
