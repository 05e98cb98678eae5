"""A local certificate authority and per-node certificates for mutual TLS.

``init_pki(DIR)`` writes::

    DIR/ca.crt  DIR/ca.key            the CA (EC P-256, self-signed)
    DIR/<node>.crt  DIR/<node>.key    one key pair per node, signed by the CA

Every node certificate names the node (CN and SAN DNS), ``localhost`` and
127.0.0.1, and allows both server and client auth, so any node can accept
and open connections. Keys are PKCS#8 PEM, written 0600. EC P-256 rather than
Ed25519 because every TLS stack (gRPC's BoringSSL included) speaks it.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tierflow.errors import ConfigError
from tierflow.types import Tier

DEFAULT_NODES: tuple[str, ...] = (*Tier, "client")
DEFAULT_DAYS = 365
CA_CERT = "ca.crt"
CA_KEY = "ca.key"
_NODE_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
# Certificates start a little in the past so a peer with a slightly slow clock accepts them.
_CLOCK_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True)
class PkiFiles:
    """What :func:`init_pki` wrote."""

    directory: Path
    ca_cert: Path
    ca_key: Path
    nodes: dict[str, tuple[Path, Path]]  # name -> (cert, key)


def node_paths(directory: Path, name: str) -> tuple[Path, Path]:
    """The certificate and key paths of node ``name`` inside ``directory``."""
    return directory / f"{name}.crt", directory / f"{name}.key"


def validate_node_name(name: str) -> str:
    """A node name is a DNS label: lowercase letters, digits and inner hyphens."""
    if not _NODE_NAME.match(name):
        raise ConfigError(f"invalid node name {name!r}: use lowercase letters, digits and '-' (a DNS label)")
    return name


def init_pki(
    directory: str | Path,
    nodes: Sequence[str] = DEFAULT_NODES,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> PkiFiles:
    """Create a CA in ``directory`` and a certificate per node; an existing CA is kept unless ``force``."""
    directory = Path(directory)
    if days < 1:
        raise ConfigError(f"--days must be at least 1, got {days}")
    names = [validate_node_name(n.strip()) for n in nodes if n.strip()]
    if not names:
        raise ConfigError("no node names given")
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate node names in {','.join(names)}")
    if "ca" in names:
        raise ConfigError("'ca' is reserved for the certificate authority")
    ca_cert_path, ca_key_path = directory / CA_CERT, directory / CA_KEY
    if not force and (ca_cert_path.exists() or ca_key_path.exists()):
        raise ConfigError(f"a CA already exists in {directory}; pass --force to replace it")
    directory.mkdir(parents=True, exist_ok=True)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = _make_ca(ca_key, days)
    _write_key(ca_key_path, ca_key)
    _write_cert(ca_cert_path, ca_cert)
    written: dict[str, tuple[Path, Path]] = {}
    for name in names:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = _make_node_cert(name, key, ca_cert, ca_key, days)
        cert_path, key_path = node_paths(directory, name)
        _write_key(key_path, key)
        _write_cert(cert_path, cert)
        written[name] = (cert_path, key_path)
    return PkiFiles(directory, ca_cert_path, ca_key_path, written)


def issue_node_cert(directory: str | Path, name: str, days: int = DEFAULT_DAYS) -> tuple[Path, Path]:
    """Add (or replace) one node's key and certificate, signed by the CA already in ``directory``."""
    directory = Path(directory)
    validate_node_name(name)
    try:
        ca_cert = x509.load_pem_x509_certificate((directory / CA_CERT).read_bytes())
        ca_key = serialization.load_pem_private_key((directory / CA_KEY).read_bytes(), password=None)
    except FileNotFoundError as exc:
        raise ConfigError(f"no CA in {directory}: run `tierflow certs init {directory}` first") from exc
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{directory / CA_KEY} is not an EC private key")
    key = ec.generate_private_key(ec.SECP256R1())
    cert = _make_node_cert(name, key, ca_cert, ca_key, days)
    cert_path, key_path = node_paths(directory, name)
    _write_key(key_path, key)
    _write_cert(cert_path, cert)
    return cert_path, key_path


def _validity(days: int) -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - _CLOCK_SKEW, now + dt.timedelta(days=days)


def _make_ca(key: ec.EllipticCurvePrivateKey, days: int) -> x509.Certificate:
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tierflow"),
            x509.NameAttribute(NameOID.COMMON_NAME, "tierflow local CA"),
        ]
    )
    start, end = _validity(days)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )


def _make_node_cert(
    name: str,
    key: ec.EllipticCurvePrivateKey,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    days: int,
) -> x509.Certificate:
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "tierflow"),
            x509.NameAttribute(NameOID.COMMON_NAME, name),
        ]
    )
    start, end = _validity(days)
    # A node certificate must not outlive the CA that signed it.
    end = min(end, ca_cert.not_valid_after_utc)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    san = x509.SubjectAlternativeName(
        [x509.DNSName(name), x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=True,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(san, critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    """Write a private key readable by its owner only, from the moment the file exists."""
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    os.chmod(path, 0o600)  # in case the umask was stricter than needed, or the FS ignores the mode


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
