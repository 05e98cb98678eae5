"""`tierflow certs`: the local CA, node certificates, key files and identities."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from tierflow.errors import ConfigError, TransportError
from tierflow.transport.certs import init_pki, issue_node_cert
from tierflow.transport.tls import (
    cert_fingerprint,
    load_identity,
    load_identity_files,
    sign,
    verify_server_cert,
    verify_signature,
)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("pki")
    init_pki(directory, ["device", "edge", "cloud", "client"], days=30)
    return directory


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def test_init_writes_a_ca_and_one_key_pair_per_node(pki: Path) -> None:
    names = sorted(p.name for p in pki.iterdir())
    expected = ["ca", "client", "cloud", "device", "edge"]
    assert names == sorted(f"{n}.{ext}" for n in expected for ext in ("crt", "key"))
    for key in pki.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600, key
    ca = _cert(pki / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_node_certificates_name_the_node_localhost_and_loopback(pki: Path) -> None:
    cert = _cert(pki / "edge.crt")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"edge", "localhost"}
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.issuer == _cert(pki / "ca.crt").subject


def test_verification_accepts_the_names_in_the_certificate_only(pki: Path) -> None:
    ident = load_identity(pki, "cloud")
    for name in ("cloud", "localhost", "127.0.0.1"):
        verify_server_cert(ident.cert_der, ident.ca_pem, name)
    with pytest.raises(TransportError, match="edge"):
        verify_server_cert(ident.cert_der, ident.ca_pem, "edge")


def test_a_certificate_from_another_ca_is_rejected(pki: Path, tmp_path: Path) -> None:
    init_pki(tmp_path, ["cloud"])
    foreign = load_identity(tmp_path, "cloud")
    with pytest.raises(TransportError):
        verify_server_cert(foreign.cert_der, load_identity(pki, "device").ca_pem, "cloud")


def test_init_refuses_to_replace_a_ca_unless_forced(tmp_path: Path) -> None:
    init_pki(tmp_path, ["device"])
    before = (tmp_path / "ca.crt").read_bytes()
    with pytest.raises(ConfigError, match="--force"):
        init_pki(tmp_path, ["device"])
    assert (tmp_path / "ca.crt").read_bytes() == before
    init_pki(tmp_path, ["device"], force=True)
    assert (tmp_path / "ca.crt").read_bytes() != before
    ident = load_identity(tmp_path, "device")
    verify_server_cert(ident.cert_der, ident.ca_pem, "device")  # re-issued under the new CA


@pytest.mark.parametrize(
    ("nodes", "days", "fragment"),
    [
        (["Device"], 30, "invalid node name"),
        (["a_b"], 30, "invalid node name"),
        (["edge", "edge"], 30, "duplicate"),
        (["ca"], 30, "reserved"),
        ([" "], 30, "no node names"),
        (["edge"], 0, "--days"),
    ],
)
def test_init_rejects_bad_arguments(tmp_path: Path, nodes: list[str], days: int, fragment: str) -> None:
    with pytest.raises(ConfigError, match=fragment):
        init_pki(tmp_path, nodes, days=days)
    assert not (tmp_path / "ca.crt").exists()


def test_issue_adds_a_node_under_the_existing_ca(pki: Path, tmp_path: Path) -> None:
    shutil.copy(pki / "ca.crt", tmp_path)
    shutil.copy(pki / "ca.key", tmp_path)
    cert_path, key_path = issue_node_cert(tmp_path, "gateway", days=2)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    ident = load_identity(tmp_path, "gateway")
    verify_server_cert(ident.cert_der, load_identity(pki, "cloud").ca_pem, "gateway")
    with pytest.raises(ConfigError, match="certs init"):
        issue_node_cert(tmp_path / "nowhere", "gateway")


def test_identity_fingerprint_signature_and_missing_files(pki: Path) -> None:
    ident = load_identity(pki, "device")
    assert ident.name == "device"
    assert (
        ident.fingerprint == cert_fingerprint(ident.cert_der) == cert_fingerprint(_cert(pki / "device.crt"))
    )
    assert ident.fingerprint != load_identity(pki, "edge").fingerprint
    signature = sign(ident, b"transcript")
    verify_signature(_cert(pki / "device.crt"), b"transcript", signature)
    with pytest.raises(TransportError):
        verify_signature(_cert(pki / "device.crt"), b"transcript!", signature)
    with pytest.raises(ConfigError, match="cannot read"):
        load_identity(pki, "nobody")
    assert load_identity_files(pki / "edge.crt", pki / "edge.key", pki / "ca.crt").name == "edge"


def _tierflow(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "tierflow", *args], capture_output=True, text=True, env=env)


def test_cli_init_then_refuse_then_issue(tmp_path: Path) -> None:
    out = tmp_path / "pki"
    proc = _tierflow("certs", "init", str(out), "--nodes", "device,cloud", "--days", "7")
    assert proc.returncode == 0, proc.stderr
    assert "device" in proc.stdout and "cloud" in proc.stdout
    assert {p.name for p in out.iterdir()} == {
        f"{n}.{e}" for n in ("ca", "device", "cloud") for e in ("crt", "key")
    }
    again = _tierflow("certs", "init", str(out))
    assert again.returncode == 2
    assert again.stderr.strip().startswith("error:") and "--force" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1
    issued = _tierflow("certs", "issue", str(out), "edge")
    assert issued.returncode == 0, issued.stderr
    assert (out / "edge.crt").exists()
