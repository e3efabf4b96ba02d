"""The payloads of the events Usher's built-in plugins emit (through ``ctx.emit``)."""

from __future__ import annotations

from pydantic import Field

from usher.event_types.payload import Payload


class TokenCreate(Payload):
    """Plugin ``tokens``: an API token was issued."""

    sets = ("principal",)
    token: str = Field(description="the token's id (never its secret)")
    for_: str = Field(alias="for", description="whom it is for")
    roles: list[str]


class TokenRevoke(Payload):
    """Plugin ``tokens``: a token was revoked, or a session logged out."""

    sets = ("principal",)
    token: str
    for_: str = Field(alias="for")


class Login(Payload):
    """Plugin ``tokens``: a password login; the event's principal is who logged in."""

    sets = ("principal",)
    via: str = Field(description="the plugin that checked the password")
    token: str = Field(description="the session token's id")
    address: str | None


class LoginFailure(Payload):
    """Plugin ``tokens``: a failed login (beyond ``login_failures`` a minute, failures are refused
    unlogged); the event's principal is the user name tried."""

    sets = ("principal",)
    address: str
    errors: list[str] = Field(description="what broke while checking, if anything")


class UserChange(Payload):
    """Plugin ``passwords``: a user was set or deleted."""

    sets = ("principal",)
    user: str


class KeyChange(Payload):
    """Plugin ``keys``: an SSH public key was registered or forgotten."""

    sets = ("principal",)
    owner: str = Field(description="whose key it is")
    name: str
    fingerprint: str = Field(description="OpenSSH's SHA256 fingerprint")


class ClusterMember(Payload):
    """Plugin ``authz``: a virtual cluster's member was added or removed."""

    sets = ("principal",)
    cluster: str
    user: str


class HAProtect(Payload):
    """Plugin ``ha``: a virtual cluster was protected or no longer is."""

    sets = ("principal",)
    cluster: str


class HARestart(Payload):
    """Plugin ``ha``: a protected VM lost with its node runs again elsewhere."""

    sets = ("vm_id", "node", "operation_id")
    name: str
    from_: str = Field(alias="from")
    to: str | None
    at: float = Field(description="when it ran again (epoch seconds)")
    seconds: float = Field(description="from its loss to running again")
    attempts: int


class HAFailure(Payload):
    """Plugin ``ha``: a protected VM could not be restarted in its attempts."""

    sets = ("vm_id", "node")
    error: str
    attempts: int


class ScriptFailure(Payload):
    """Plugin ``scripts``: a notification script failed on an event."""

    sets = ("vm_id", "operation_id")
    script: str
    event: str
    error: str
    output: str


class WebhookFailure(Payload):
    """Plugin ``webhooks``: a webhook failed on an event."""

    sets = ("vm_id", "operation_id")
    url: str
    event: str
    error: str
