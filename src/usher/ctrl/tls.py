"""TLS for the API and the LNM link: the site's certificate, or one generated at first start.

With ``tls = true`` and no ``tls_cert``/``tls_key`` in the config, the controller makes a
private CA and a server certificate signed by it under ``<state-dir>/tls/`` (keys mode
0600). Clients and LNMs verify the server against the CA file (:func:`ca_file`).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from usher.ctrl.config import Settings

TLS_DIR = "tls"
CERT_DAYS = 3650


@dataclass(frozen=True)
class ServerFiles:
    cert: Path
    key: Path


def ca_file(settings: Settings) -> Path | None:
    """The CA file clients verify this controller with (None: the system's CAs)."""
    if settings.tls_cert:
        return settings.tls_ca
    return settings.state_dir / TLS_DIR / "ca.pem"


def base_url(settings: Settings) -> str:
    """How a client on this host reaches the controller (a wildcard listen → loopback)."""
    host, port = settings.host_port
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if settings.tls else 'http'}://{host}:{port}"


def server_files(settings: Settings) -> ServerFiles:
    """The certificate and key to serve with, generated (once) unless the site gave its own."""
    if settings.tls_cert and settings.tls_key:
        return ServerFiles(settings.tls_cert, settings.tls_key)
    if settings.tls_cert or settings.tls_key:
        raise ValueError("tls_cert and tls_key go together")
    tls_dir = settings.state_dir / TLS_DIR
    files = ServerFiles(tls_dir / "server.pem", tls_dir / "server.key")
    if not files.cert.exists():
        host, _ = settings.host_port
        wildcards = {"", "0.0.0.0", "::"}
        _generate(tls_dir, {"127.0.0.1", "localhost", host, *settings.tls_names} - wildcards)
    return files


def _generate(tls_dir: Path, names: set[str]) -> None:
    tls_dir.mkdir(parents=True, exist_ok=True)
    start = datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    end = start + datetime.timedelta(days=CERT_DAYS)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Usher controller CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Usher controller")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName([_san(n) for n in sorted(names)]), False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    _write(tls_dir / "ca.key", _key_pem(ca_key), secret=True)
    _write(tls_dir / "server.key", _key_pem(key), secret=True)
    _write(tls_dir / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    _write(tls_dir / "server.pem", cert.public_bytes(serialization.Encoding.PEM))


def _san(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, data: bytes, *, secret: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
