"""What every API route needs: the controller, the authenticated principal, authorization."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from usher.ctrl.api.guard import PRINCIPAL_KEY
from usher.ctrl.authz import authorize
from usher.ctrl.context import PluginContext
from usher.ctrl.controller import Controller
from usher.ctrl.engine import RequestError, in_scope
from usher.model import VM, Principal, Scope

bearer = HTTPBearer(auto_error=False, description="an Usher API token")


# The dependencies are coroutines, though they never wait: FastAPI runs a plain function
# in its thread pool, a hand-off per request that cost more than the function.


async def get_ctrl(request: Request) -> Controller:
    return request.app.state.ctrl


async def get_context(request: Request) -> PluginContext:
    """What a plugin's route may use of the controller (``usher.plugin.ContextDep``)."""
    return request.app.state.ctrl.ctx


async def authenticate_token(ctrl: Controller, token: str | None) -> Principal:
    """The principal a bearer token belongs to, or a 401 RequestError."""
    return await ctrl.authenticate(token)


async def get_principal(
    request: Request,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    known = request.scope.get("state", {}).get(PRINCIPAL_KEY)
    if known is not None:  # authenticated before the body was read (usher.ctrl.api.guard)
        return known
    return await authenticate_token(request.app.state.ctrl, creds.credentials if creds else None)


CtrlDep = Annotated[Controller, Depends(get_ctrl)]
ContextDep = Annotated[PluginContext, Depends(get_context)]
PrincipalDep = Annotated[Principal, Depends(get_principal)]


async def allow(ctrl: Controller, principal: Principal, action: str, **target: Any) -> None:
    await authorize(ctrl.plugins, principal, action, target)


async def visible(ctrl: Controller, principal: Principal) -> Scope | None:
    """What ``principal`` may see in listings (None: everything), as the ``scope`` hook says."""
    return await ctrl.engine.scope(principal)


async def visible_vm(ctrl: Controller, principal: Principal, ref: str) -> VM:
    """The VM ``ref`` names, if ``principal`` may see it; otherwise 404, as for a VM that
    does not exist (a refusal never tells what the caller may not see)."""
    found = await ctrl.store.get_vm(ref)
    if found is None or not in_scope(await visible(ctrl, principal), found):
        raise RequestError(404, f"unknown VM {ref!r}")
    return found


async def vm_filter(ctrl: Controller, ref: str | None) -> str | None:
    """The VM id a listing's ``vm`` filter means: a VM's name or id (one destroyed since
    is still found in the history by its id)."""
    if ref is None:
        return None
    found = await ctrl.store.get_vm(ref)
    return found.id if found is not None else ref


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None
