"""The lab CA: reused across runs, private keys private, certificates a strict client accepts."""

from __future__ import annotations

import contextlib
import ssl
import stat
from pathlib import Path

from cryptography import x509

from provisioner.lab.tls import ensure_lab_tls


def test_ca_is_reused_and_keys_are_private(tmp_path: Path) -> None:
    first = ensure_lab_tls(tmp_path)
    ca_pem = first.ca_file.read_bytes()
    first.cert_file.unlink()  # a missing server certificate is issued again by the same CA
    second = ensure_lab_tls(tmp_path)
    assert second.ca_file.read_bytes() == ca_pem
    for key in (second.key_file, tmp_path / "ca-key.pem"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_server_certificate_names_loopback_and_passes_strict_verification(tmp_path: Path) -> None:
    tls = ensure_lab_tls(tmp_path)
    cert = x509.load_pem_x509_certificate(tls.cert_file.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert [str(ip) for ip in names.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    # VERIFY_X509_STRICT (Python 3.13's default) wants key identifiers and key usage
    context = ssl.create_default_context(cafile=str(tls.ca_file))
    context.verify_flags |= ssl.VERIFY_X509_STRICT
    server_context = tls.server_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    server_in, server_out = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname="127.0.0.1")
    server = server_context.wrap_bio(server_in, server_out, server_side=True)
    for _ in range(10):  # drive both handshakes in memory until they finish
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        server_in.write(outgoing.read())
        incoming.write(server_out.read())
    assert client.getpeercert()["subject"] == ((("commonName", "localhost"),),)
