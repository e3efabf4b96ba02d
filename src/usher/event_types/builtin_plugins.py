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


class ClusterCreate(Payload):
    """Plugin ``authz``: a virtual cluster was made (``PUT /v1/clusters/{name}`` or the first
    start into it), once per cluster; the event's principal is its owner.
    ``ldap_clusters`` makes its directory branch."""

    sets = ("principal",)
    cluster: str
    owner: str


class LdapFailure(Payload):
    """Plugin ``ldap_clusters``: a virtual cluster's directory branch could not be brought up
    to date (the change itself stands); retried every ``retry_interval`` until it is."""

    cluster: str
    error: str


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


class IpamConflict(Payload):
    """Plugin ``ipam``: a VM adopted after a restore (``vm_adopted``) has an address another VM
    holds (it was handed out again between the backup and the restore). The address stays
    with its holder; the adopted VM keeps running with it, so two guests may answer at it:
    stop or re-address one of them."""

    sets = ("vm_id",)
    address: str
    holder_id: str = Field(description="the VM that holds the address")
    holder: str = Field(description="that VM's name")


class DnsFailure(Payload):
    """Plugin ``dns``: an update of the site's nameserver failed and is retried
    (``retry_in``), or cannot be made at all (a name that is no DNS name, or in no zone
    configured: ``retry_in`` None). The VM's operation is not affected."""

    sets = ("vm_id",)
    name: str = Field(description="the DNS name of the record set")
    type: str = Field(description="`A`, `AAAA` or `PTR`")
    action: str = Field(description="`add` or `remove`")
    error: str
    attempts: int = Field(description="failed tries of this update so far")
    retry_in: float | None = Field(description="seconds until it is tried again")
    waiting: int = Field(
        description="updates this failure put off (an unreachable server: all due)"
    )
