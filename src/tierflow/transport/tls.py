"""TLS identities of tier nodes: loading, fingerprints, verification against the CA, TLS contexts.

An :class:`Identity` is what a node presents (its certificate and key) and
what it trusts (the CA). Fingerprints are SHA-256 over the DER certificate;
the data plane binds both peers' fingerprints into its session keys.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from cryptography.x509.verification import PolicyBuilder, Store, VerificationError

from tierflow.errors import ConfigError, TransportError
from tierflow.transport.certs import CA_CERT, node_paths, validate_node_name


@dataclass(frozen=True)
class Identity:
    """A node's certificate chain material, all PEM."""

    name: str
    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    ca_pem: bytes

    @property
    def fingerprint(self) -> bytes:
        return cert_fingerprint(self.cert_pem)

    @property
    def cert_der(self) -> bytes:
        return x509.load_pem_x509_certificate(self.cert_pem).public_bytes(serialization.Encoding.DER)

    def private_key(self) -> ec.EllipticCurvePrivateKey:
        key = serialization.load_pem_private_key(self.key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError(f"the key of node {self.name!r} is not an EC key")
        return key


def load_identity(directory: str | Path, name: str) -> Identity:
    """Load node ``name`` from a directory made by ``tierflow certs init``."""
    directory = Path(directory)
    validate_node_name(name)
    cert_path, key_path = node_paths(directory, name)
    return load_identity_files(cert_path, key_path, directory / CA_CERT, name=name)


def load_identity_files(
    cert: str | Path, key: str | Path, ca: str | Path, name: str | None = None
) -> Identity:
    """Load an identity from explicit PEM files; the name defaults to the certificate's CN."""
    blobs = {}
    for label, path in (("certificate", cert), ("key", key), ("CA certificate", ca)):
        try:
            blobs[label] = Path(path).read_bytes()
        except OSError as exc:
            raise ConfigError(f"cannot read {label} {path}: {exc.strerror or exc}") from exc
    try:
        leaf = x509.load_pem_x509_certificate(blobs["certificate"])
        x509.load_pem_x509_certificate(blobs["CA certificate"])
        serialization.load_pem_private_key(blobs["key"], password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid PEM in {cert}, {key} or {ca}: {exc}") from exc
    return Identity(
        name=name or common_name(leaf),
        cert_pem=blobs["certificate"],
        key_pem=blobs["key"],
        ca_pem=blobs["CA certificate"],
    )


def cert_fingerprint(cert: bytes | x509.Certificate) -> bytes:
    """SHA-256 of the DER encoding; accepts PEM, DER or a parsed certificate."""
    if isinstance(cert, x509.Certificate):
        der = cert.public_bytes(serialization.Encoding.DER)
    elif cert.lstrip().startswith(b"-----BEGIN"):
        der = x509.load_pem_x509_certificate(cert).public_bytes(serialization.Encoding.DER)
    else:
        der = cert
    return hashlib.sha256(der).digest()


def common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def verify_server_cert(cert_der: bytes, ca_pem: bytes, server_name: str) -> x509.Certificate:
    """Check that ``cert_der`` chains to the CA, is valid now and names ``server_name``; return it parsed.

    Raises TransportError: this runs on a certificate a peer sent, never on user input.
    """
    try:
        cert = x509.load_der_x509_certificate(cert_der)
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise TransportError(f"peer sent an unparsable certificate: {exc}") from exc
    try:
        subject: x509.verification.Subject
        try:
            subject = x509.IPAddress(ipaddress.ip_address(server_name))
        except ValueError:
            subject = x509.DNSName(server_name)
        verifier = (
            PolicyBuilder().store(Store([ca])).time(dt.datetime.now(dt.UTC)).build_server_verifier(subject)
        )
        verifier.verify(cert, [])
    except VerificationError as exc:
        raise TransportError(f"peer certificate rejected for {server_name!r}: {exc}") from exc
    return cert


def sign(identity: Identity, data: bytes) -> bytes:
    """ECDSA-SHA256 signature of ``data`` with the node's TLS key (proof that we hold it)."""
    return identity.private_key().sign(data, ec.ECDSA(hashes.SHA256()))


def verify_signature(cert: x509.Certificate, data: bytes, signature: bytes) -> None:
    key = cert.public_key()
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise TransportError("peer certificate does not carry an EC key")
    try:
        key.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise TransportError("peer handshake signature is invalid") from exc


def server_ssl_context(identity: Identity) -> ssl.SSLContext:
    """mTLS server context: a client without a certificate from our CA fails the TLS handshake."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.verify_mode = ssl.CERT_REQUIRED
    return _with_identity(context, identity)


def client_ssl_context(identity: Identity) -> ssl.SSLContext:
    """mTLS client context: trust only our CA, present our node certificate; the caller passes the
    server's node name as ``server_hostname``, which its certificate must name."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED and check_hostname by default
    return _with_identity(context, identity)


def _with_identity(context: ssl.SSLContext, identity: Identity) -> ssl.SSLContext:
    context.minimum_version = ssl.TLSVersion.TLSv1_3
    context.load_verify_locations(cadata=identity.ca_pem.decode("ascii"))
    # the ssl module loads a key only from a file: a private one, removed as soon as it is read
    with tempfile.TemporaryDirectory(prefix="tierflow-tls-") as tmp:
        chain = Path(tmp) / "identity.pem"
        chain.touch(mode=0o600)
        chain.write_bytes(identity.cert_pem + b"\n" + identity.key_pem)
        context.load_cert_chain(str(chain))
    return context
