"""A VM's DNS names (``VM.CLUSTER.DOMAIN``, ``VM.DOMAIN`` outside a cluster, as the ``ipam``
plugin names them), the record sets they make, and the zone each set belongs to."""

from __future__ import annotations

import re
from ipaddress import ip_address

import dns.name
import dns.reversename

from usher.plugins.dns_pending import Change, Names

LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
"""A host name's label (RFC 952/1123): letters, digits and inner hyphens, 63 at most."""


class BadName(ValueError):
    """A VM or cluster name that makes no host name."""


def vm_names(name: str, cluster: str | None, domain: str, addresses: list[str]) -> Names:
    """The names of a VM; :class:`BadName` if its name or its cluster's is no DNS label."""
    for what, label in (("VM name", name), ("cluster name", cluster)):
        if label is not None and not LABEL.fullmatch(label):
            raise BadName(
                f"{what} {label!r} is not a DNS label (letters, digits and inner '-' only, "
                "63 at most): no DNS record is made for it"
            )
    fqdn = ".".join(p for p in (name, cluster, domain.rstrip(".")) if p).lower() + "."
    if len(fqdn) > 254:
        raise BadName(f"{fqdn} is longer than a DNS name may be (253 characters)")
    return Names(fqdn, tuple(sorted({str(ip_address(a)) for a in addresses})))


def reverse_name(address: str) -> str:
    return dns.reversename.from_address(address).to_text().lower()


def changes(vm_id: str, old: Names | None, new: Names | None) -> list[Change]:
    """The record sets to change when a VM's names go from ``old`` to ``new`` (None:
    none): its A/AAAA set made or replaced, a PTR per address; the sets it no longer has
    removed."""
    made: list[Change] = []
    if old is not None:
        for rdtype in _types(old.addresses):
            still = new is not None and new.fqdn == old.fqdn and rdtype in _types(new.addresses)
            if not still:
                made.append(Change(rdtype, old.fqdn, (), vm_id))
        for address in old.addresses:
            if new is None or address not in new.addresses:
                made.append(Change("PTR", reverse_name(address), (), vm_id))
    if new is not None and new != old:
        for rdtype, addresses in _types(new.addresses).items():
            made.append(Change(rdtype, new.fqdn, tuple(addresses), vm_id))
        for address in new.addresses:
            made.append(Change("PTR", reverse_name(address), (new.fqdn,), vm_id))
    return made


def _types(addresses: tuple[str, ...]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for address in addresses:
        out.setdefault("A" if ip_address(address).version == 4 else "AAAA", []).append(address)
    return out


def zone_of(name: str, zones: list[str]) -> str | None:
    """The deepest of ``zones`` that holds ``name`` (None: none does)."""
    owner = dns.name.from_text(name)
    held = [z for z in zones if owner.is_subdomain(dns.name.from_text(z))]
    return max(held, key=len, default=None)
