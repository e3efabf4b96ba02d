"""The ``dns`` plugin's config (``[plugins.dns]``) and its TSIG key, checked at start.

See :mod:`usher.plugins.dns_update` for the keys. A key comes either inline (``key_name``,
``key_algorithm``, ``key_secret``) or from a BIND key file (``key_file``, what
``tsig-keygen`` writes; ``key_name`` picks one if it holds several).
"""

from __future__ import annotations

import base64
import binascii
import re
from ipaddress import IPv4Address, IPv6Address
from pathlib import Path
from typing import Literal

import dns.exception
import dns.name
import dns.tsig
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

ALGORITHMS = {
    "hmac-md5": dns.tsig.HMAC_MD5,
    "hmac-sha1": dns.tsig.HMAC_SHA1,
    "hmac-sha224": dns.tsig.HMAC_SHA224,
    "hmac-sha256": dns.tsig.HMAC_SHA256,
    "hmac-sha384": dns.tsig.HMAC_SHA384,
    "hmac-sha512": dns.tsig.HMAC_SHA512,
}
Algorithm = Literal[
    "hmac-md5", "hmac-sha1", "hmac-sha224", "hmac-sha256", "hmac-sha384", "hmac-sha512"
]
KEY_STATEMENT = re.compile(
    r'key\s+"?(?P<name>[^"\s{]+)"?\s*\{(?P<body>[^}]*)\}\s*;', re.IGNORECASE | re.DOTALL
)


def zone_name(text: str) -> str:
    """``text`` as an absolute DNS name in lower case (``example.org.``), or ValueError."""
    try:
        name = dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        raise ValueError(f"{text!r} is not a DNS name: {exc}") from exc
    if name == dns.name.root:
        raise ValueError("the root zone is not a zone Usher updates")
    return name.to_text().lower()


def _secret(text: str) -> str:
    if not text:
        raise ValueError("the TSIG secret is empty")
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError("the TSIG secret is not base64 (as tsig-keygen writes it)") from exc
    return text


def read_key_file(path: Path, name: str | None) -> tuple[str, str, str]:
    """(name, algorithm, secret) of the key named ``name`` (or the only key) of a BIND key
    file."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read TSIG key file {path}: {exc.strerror or exc}") from exc
    keys: dict[str, tuple[str, str]] = {}
    for found in KEY_STATEMENT.finditer(text):
        body = found.group("body")
        algorithm = re.search(r"algorithm\s+\"?([\w-]+)\"?\s*;", body)
        secret = re.search(r'secret\s+"([^"]+)"\s*;', body)
        if algorithm is None or secret is None:
            raise ValueError(f"key {found.group('name')!r} in {path} lacks its algorithm or secret")
        keys[found.group("name").rstrip(".")] = (algorithm.group(1).lower(), secret.group(1))
    if not keys:
        raise ValueError(
            f'{path} holds no key statement (key "NAME" {{ algorithm …; secret "…"; }};)'
        )
    if name is None:
        if len(keys) > 1:
            raise ValueError(f"{path} holds several keys ({', '.join(keys)}): set key_name")
        name = next(iter(keys))
    if name.rstrip(".") not in keys:
        raise ValueError(f"{path} holds no key {name!r} (it has: {', '.join(keys)})")
    algorithm, secret = keys[name.rstrip(".")]
    return name.rstrip("."), algorithm, secret


class DnsConfig(BaseModel):
    """``[plugins.dns]``."""

    model_config = ConfigDict(extra="forbid")

    server: IPv4Address | IPv6Address = Field(description="the primary nameserver's address")
    port: int = Field(53, ge=1, le=65535)
    transport: Literal["tcp", "udp"] = "tcp"
    domain: str = Field("usher", pattern=r"^[A-Za-z0-9][A-Za-z0-9.-]*$")
    forward_zones: list[str] = Field(default_factory=list)
    reverse_zones: list[str] = Field(default_factory=list)
    key_name: str | None = None
    key_algorithm: Algorithm = "hmac-sha256"
    key_secret: SecretStr | None = None
    key_file: Path | None = None
    ttl: int = Field(300, ge=0, le=2**31 - 1)
    timeout: float = Field(5.0, gt=0, le=120)
    retry_interval: float = Field(10.0, gt=0, le=86400)
    retry_max: float = Field(600.0, gt=0, le=86400)

    @field_validator("forward_zones", "reverse_zones")
    @classmethod
    def _zones(cls, zones: list[str]) -> list[str]:
        return [zone_name(z) for z in zones]

    @field_validator("reverse_zones")
    @classmethod
    def _reverse(cls, zones: list[str]) -> list[str]:
        for zone in zones:
            if not zone.endswith((".in-addr.arpa.", ".ip6.arpa.")):
                raise ValueError(f"reverse zone {zone} is not under in-addr.arpa or ip6.arpa")
        return zones

    @model_validator(mode="after")
    def _check(self) -> DnsConfig:
        domain = dns.name.from_text(zone_name(self.domain))
        if not self.forward_zones:
            self.forward_zones = [domain.to_text()]
        if not any(domain.is_subdomain(dns.name.from_text(z)) for z in self.forward_zones):
            raise ValueError(
                f"domain {self.domain} is in none of the forward zones "
                f"({', '.join(self.forward_zones)})"
            )
        if self.key_file is not None:
            if self.key_secret is not None:
                raise ValueError("give the TSIG key as key_secret or key_file, not both")
            name, algorithm, secret = read_key_file(self.key_file, self.key_name)
            if algorithm not in ALGORITHMS:
                raise ValueError(f"key {name} in {self.key_file}: unknown algorithm {algorithm}")
            self.key_name, self.key_algorithm = name, algorithm  # type: ignore[assignment]
            self.key_secret = SecretStr(_secret(secret))
        elif self.key_secret is None or self.key_name is None:
            raise ValueError("a TSIG key is needed: key_name and key_secret, or key_file")
        else:
            _secret(self.key_secret.get_secret_value())
        zone_name(self.key_name)
        if self.retry_max < self.retry_interval:
            raise ValueError("retry_max is shorter than retry_interval")
        return self

    def tsig_key(self) -> dns.tsig.Key:
        assert self.key_name is not None and self.key_secret is not None
        return dns.tsig.Key(
            self.key_name, self.key_secret.get_secret_value(), ALGORITHMS[self.key_algorithm]
        )

    @property
    def where(self) -> str:
        """The server as ``host:port``, for messages."""
        host = f"[{self.server}]" if isinstance(self.server, IPv6Address) else str(self.server)
        return f"{host}:{self.port}"
