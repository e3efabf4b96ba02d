"""One RFC 2136 update, signed with TSIG, sent to the site's nameserver: a record set
replaced (delete the set, add its records, in one message) or removed. Both are idempotent:
making one twice leaves what making it once does."""

from __future__ import annotations

from typing import Any

import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.tsig
import dns.update

from usher.plugins.dns_config import DnsConfig

HINTS = {
    dns.rcode.REFUSED: "does the zone's update-policy (or allow-update) grant the key {key} "
    "this name?",
    dns.rcode.NOTAUTH: "is the server the primary of zone {zone}?",
    dns.rcode.NOTZONE: "the name is not in zone {zone}",
    dns.rcode.SERVFAIL: "see the server's log",
}


class UpdateFailed(Exception):
    """The update was not made. ``server_wide``: the server takes no update now (no answer at
    all: down, refused, timed out, hung up; no usable answer; or it rejects the TSIG key),
    so the others would fare no better."""

    def __init__(self, message: str, *, server_wide: bool = False) -> None:
        super().__init__(message)
        self.server_wide = server_wide


async def send(config: DnsConfig, zone: str, entry: dict[str, Any]) -> None:
    """Make ``entry`` (a pending entry: ``type``, ``name``, ``values``) in ``zone``, or raise
    :class:`UpdateFailed` saying why not."""
    key = config.tsig_key()
    update = dns.update.UpdateMessage(zone)
    update.use_tsig(key)
    name = dns.name.from_text(entry["name"])
    if entry["values"]:
        update.replace(name, config.ttl, entry["type"], *entry["values"])
    else:
        update.delete(name, entry["type"])
    where = config.where
    query = dns.asyncquery.tcp if config.transport == "tcp" else dns.asyncquery.udp
    try:
        answer = await query(update, str(config.server), timeout=config.timeout, port=config.port)
    except dns.exception.Timeout as exc:
        raise UpdateFailed(
            f"nameserver {where} did not answer within {config.timeout:g} s", server_wide=True
        ) from exc
    except OSError as exc:
        raise UpdateFailed(
            f"nameserver {where} is unreachable: {exc.strerror or exc}", server_wide=True
        ) from exc
    except EOFError as exc:  # dnspython's TCP read of a connection closed under it
        raise UpdateFailed(
            f"nameserver {where} closed the connection without answering", server_wide=True
        ) from exc
    except dns.tsig.PeerBadKey as exc:
        raise UpdateFailed(
            f"nameserver {where} does not know TSIG key {config.key_name} (BADKEY)",
            server_wide=True,
        ) from exc
    except dns.tsig.PeerBadSignature as exc:
        raise UpdateFailed(
            f"nameserver {where} rejected the signature of TSIG key {config.key_name} "
            "(BADSIG): its secret is not the server's",
            server_wide=True,
        ) from exc
    except dns.tsig.PeerBadTime as exc:
        raise UpdateFailed(
            f"nameserver {where} rejected the signature's time (BADTIME): the clocks differ",
            server_wide=True,
        ) from exc
    except dns.exception.DNSException as exc:  # garbage, an unsigned answer: from any update
        raise UpdateFailed(
            f"nameserver {where} gave no usable answer: {type(exc).__name__}: {exc}",
            server_wide=True,
        ) from exc
    rcode = answer.rcode()
    if rcode != dns.rcode.NOERROR:
        hint = HINTS.get(rcode, "").format(key=config.key_name, zone=zone)
        raise UpdateFailed(
            f"nameserver {where} answered {dns.rcode.to_text(rcode)} to the update of "
            f"{entry['type']} {entry['name']} in zone {zone}" + (f": {hint}" if hint else "")
        )
