"""A lab certificate authority and a server certificate for loopback, made with ``cryptography``.

The lab's servers speak HTTPS with a certificate the client verifies, exactly as a real Windows
host with an AD CS certificate would: nothing in the lab turns verification off. ::

    tls = ensure_lab_tls(Path("lab/tls"))
    tls.ca_file      # lab/tls/ca.pem          (an inventory's ca_file points here)
    tls.cert_file    # lab/tls/server.pem      (names localhost, 127.0.0.1, ::1)
    tls.key_file     # lab/tls/server-key.pem  (mode 0600, as is ca-key.pem)
    context = tls.server_context()
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_NAMES: tuple[str, ...] = ("localhost", "127.0.0.1", "::1")

_CA_CERT = "ca.pem"
_CA_KEY = "ca-key.pem"
_SERVER_CERT = "server.pem"
_SERVER_KEY = "server-key.pem"


@dataclass(frozen=True)
class LabTLS:
    """The PEM files of one lab CA and the server certificate it issued."""

    ca_file: Path
    cert_file: Path
    key_file: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context (TLS 1.2 or later) holding the lab server certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


def ensure_lab_tls(
    directory: Path, *, names: Sequence[str] = DEFAULT_NAMES, valid_days: int = 365
) -> LabTLS:
    """Reuse the CA and server certificate in ``directory``, creating whatever is missing.

    Keeping the CA across runs keeps an inventory's ``ca_file`` valid; a server certificate is
    issued again only when its files are missing. ``names`` are DNS names or IP addresses.
    """
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert_path, ca_key_path = directory / _CA_CERT, directory / _CA_KEY
    if ca_cert_path.is_file() and ca_key_path.is_file():
        ca_cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_path} is not an EC private key made by ensure_lab_tls")
    else:
        ca_cert, ca_key = _make_ca(valid_days)
        _write_key(ca_key_path, ca_key)
        ca_cert_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    cert_path, key_path = directory / _SERVER_CERT, directory / _SERVER_KEY
    if not (cert_path.is_file() and key_path.is_file()):
        server_cert, server_key = _make_server_cert(ca_cert, ca_key, names, valid_days)
        _write_key(key_path, server_key)
        cert_path.write_bytes(server_cert.public_bytes(serialization.Encoding.PEM))
    return LabTLS(ca_file=ca_cert_path, cert_file=cert_path, key_file=key_path)


def _make_ca(valid_days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    # P-256 keys take a millisecond to make, where RSA-2048 takes tens: labs start often.
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "provisioner lab CA")])
    now = dt.datetime.now(dt.UTC)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def _make_server_cert(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    names: Sequence[str],
    valid_days: int,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    ca_ski = ca_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert, key


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    # Created 0600 from the start: a private key is never readable by others, not even briefly.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
