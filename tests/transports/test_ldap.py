"""The LDAP transport against a real Samba AD DC, certificate verification on."""

from __future__ import annotations

import datetime
import socket
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import ldap3
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ldap3.core.exceptions import LDAPInvalidDnError
from ldap3.utils.dn import parse_dn

from provisioner.errors import TransportError
from provisioner.lab.samba import SambaDC
from provisioner.secrets import Secret
from provisioner.transports.ldap import (
    InsecureLDAPWarning,
    LDAPBindError,
    LDAPConnection,
    LDAPError,
    LDAPOperationError,
    LDAPStrongerAuthRequiredError,
    LDAPTLSError,
    LDAPUnreachableError,
    dn_key,
)
from tests.support.samba import LabDirectory, samba_unavailable

pytestmark = pytest.mark.samba


def _assert_hides(error: BaseException, secret: Secret) -> None:
    assert secret.reveal() not in str(error)
    assert secret.reveal() not in repr(error)


def _other_ca(path: Path) -> Path:
    """A self-signed CA that signed nothing the DC presents."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Unrelated CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A port nothing listens on. The socket stays bound (not listening) so that the kernel cannot
    pick the port as our own source port and connect to itself."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        yield holder.getsockname()[1]


# -- binds that work ---------------------------------------------------------------------------


@pytest.mark.parametrize("form", ["upn", "netbios", "dn"])
def test_simple_bind_over_ldaps_in_every_user_form(samba_lab: LabDirectory, form: str) -> None:
    account = samba_lab.user(password=True)
    settings = samba_lab.settings_for(account, as_netbios=form == "netbios")
    if form == "dn":
        settings = replace(settings, bind_user=account.dn)
    with LDAPConnection.open(settings) as conn:
        assert conn.operations == 1  # the bind
        assert conn.root_dse(["defaultNamingContext"]).text("defaultNamingContext") == (
            samba_lab.dc.domain_dn
        )
        assert (conn.operations, conn.searches) == (2, 1)


def test_start_tls_on_389_binds(samba_dc: SambaDC) -> None:
    settings = replace(samba_dc.ldap_settings(), url=samba_dc.ldap_url, start_tls=True)
    with LDAPConnection.open(settings) as conn:
        assert conn.read_entry(samba_dc.admin_dn, ["cn"]) is not None


# -- binds that fail: each error names the cause and never the password ------------------------


def test_wrong_password_is_ad_code_52e(samba_lab: LabDirectory) -> None:
    account = samba_lab.user(password=True)
    wrong = Secret("Not-The-Password-42")
    settings = replace(samba_lab.settings_for(account), bind_password=wrong)
    with pytest.raises(LDAPBindError) as caught:
        LDAPConnection.open(settings)
    assert caught.value.reason == "52e"
    assert "wrong password (AD code 52e)" in str(caught.value)
    assert samba_lab.upn(account) in str(caught.value)
    assert isinstance(caught.value, TransportError)
    _assert_hides(caught.value, wrong)


def test_disabled_bind_account_is_ad_code_533(samba_lab: LabDirectory) -> None:
    account = samba_lab.user(password=True, disabled=True)
    with pytest.raises(LDAPBindError) as caught:
        LDAPConnection.open(samba_lab.settings_for(account))
    assert caught.value.reason == "533"
    assert "disabled" in str(caught.value)
    assert account.password is not None
    _assert_hides(caught.value, account.password)


def test_password_that_must_be_changed_is_ad_code_773(samba_lab: LabDirectory) -> None:
    account = samba_lab.user(password=True)
    samba_lab.conn.modify(account.dn, {"pwdLastSet": [(ldap3.MODIFY_REPLACE, ["0"])]})
    with pytest.raises(LDAPBindError) as caught:
        LDAPConnection.open(samba_lab.settings_for(account))
    assert caught.value.reason == "773"
    assert "must be changed" in str(caught.value)


def test_tls_name_mismatch_is_reported(samba_dc: SambaDC) -> None:
    # The certificate names 127.0.0.1 and dc1.nfon.test; "localhost" reaches it but is neither.
    settings = replace(samba_dc.ldap_settings(), url="ldaps://localhost:636")
    with pytest.raises(LDAPTLSError) as caught:
        LDAPConnection.open(settings)
    assert "does not name that host" in str(caught.value)
    _assert_hides(caught.value, samba_dc.admin_password)


def test_unknown_ca_names_the_ca_file(samba_dc: SambaDC, tmp_path: Path) -> None:
    other = _other_ca(tmp_path / "other-ca.pem")
    settings = replace(samba_dc.ldap_settings(), ca_file=other)
    with pytest.raises(LDAPTLSError) as caught:
        LDAPConnection.open(settings)
    assert f"CA file {other}" in str(caught.value)
    assert "not signed by a CA" in str(caught.value)


def test_unknown_ca_over_start_tls_is_reported(samba_dc: SambaDC, tmp_path: Path) -> None:
    other = _other_ca(tmp_path / "other-ca.pem")
    settings = replace(
        samba_dc.ldap_settings(), url=samba_dc.ldap_url, start_tls=True, ca_file=other
    )
    with pytest.raises(LDAPTLSError) as caught:
        LDAPConnection.open(settings)
    assert str(other) in str(caught.value)


def test_missing_ca_file_is_reported(samba_dc: SambaDC, tmp_path: Path) -> None:
    settings = replace(samba_dc.ldap_settings(), ca_file=tmp_path / "nope.pem")
    with pytest.raises(LDAPTLSError, match=r"nope\.pem does not exist"):
        LDAPConnection.open(settings)


def test_unreachable_server_is_reported(samba_dc: SambaDC, closed_port: int) -> None:
    settings = replace(samba_dc.ldap_settings(), url=f"ldaps://127.0.0.1:{closed_port}")
    with pytest.raises(LDAPUnreachableError) as caught:
        LDAPConnection.open(settings)
    assert "cannot reach LDAP server" in str(caught.value)
    assert "connection refused" in str(caught.value)
    _assert_hides(caught.value, samba_dc.admin_password)


def test_plain_ldap_needs_an_explicit_opt_in(samba_dc: SambaDC) -> None:
    settings = replace(samba_dc.ldap_settings(), url=samba_dc.ldap_url)
    with pytest.raises(LDAPError, match=r"use an ldaps:// url or set start_tls"):
        LDAPConnection.open(settings)


def test_plain_389_bind_is_refused_with_stronger_auth_required(samba_dc: SambaDC) -> None:
    settings = replace(samba_dc.ldap_settings(), url=samba_dc.ldap_url, allow_plaintext=True)
    with (
        pytest.warns(InsecureLDAPWarning, match="unencrypted"),
        pytest.raises(LDAPStrongerAuthRequiredError) as caught,
    ):
        LDAPConnection.open(settings)
    assert "use an ldaps:// url or set start_tls" in str(caught.value)
    _assert_hides(caught.value, samba_dc.admin_password)


def test_settings_and_connections_never_show_the_password(samba_dc: SambaDC) -> None:
    password = samba_dc.admin_password.reveal()
    settings = samba_dc.ldap_settings()
    assert password not in repr(settings)
    assert password not in str(settings)
    with LDAPConnection.open(settings) as conn:
        # ldap3's own repr would print the password if the connection still held it
        assert password not in repr(conn)
        assert password not in repr(vars(conn))
        assert password not in repr(conn._conn)


# -- searches and modifies ---------------------------------------------------------------------


def test_paged_search_sends_one_request_per_page(samba_lab: LabDirectory) -> None:
    accounts = samba_lab.users(5, prefix="page")
    names = "".join(f"(sAMAccountName={a.sam})" for a in accounts)
    with samba_lab.dc.admin_connection() as conn:
        entries = conn.search_paged(
            samba_lab.users_dn, f"(|{names})", ["sAMAccountName"], page_size=2
        )
        assert sorted(e.text("sAMAccountName") for e in entries) == sorted(a.sam for a in accounts)
        assert conn.searches == 3  # 2 + 2 + 1


def test_search_under_a_missing_base_is_empty(samba_lab: LabDirectory) -> None:
    missing = f"OU=Nowhere,{samba_lab.base_dn}"
    assert samba_lab.conn.search_paged(missing, "(objectClass=*)", ["cn"]) == []
    assert samba_lab.conn.read_entry(missing, ["cn"]) is None


def test_read_ranged_follows_every_slice(samba_lab: LabDirectory) -> None:
    members = samba_lab.users(5, prefix="rng")
    group = samba_lab.group(members=[m.dn for m in members])
    with samba_lab.dc.admin_connection() as conn:
        values = conn.read_ranged(group.dn, "member", step=2)
        assert conn.searches == 3  # range=0-1, 2-3, 4-5 (answered as 4-*)
    assert {v.decode() for v in values} == {m.dn for m in members}


def test_failed_modify_says_what_failed(samba_lab: LabDirectory) -> None:
    group = samba_lab.group()
    nobody = f"CN=nobody,{samba_lab.users_dn}"
    with pytest.raises(LDAPOperationError) as caught:
        samba_lab.conn.modify(group.dn, {"member": [(ldap3.MODIFY_ADD, [nobody])]})
    assert caught.value.result == "noSuchObject"
    assert f"modify {group.dn} failed" in str(caught.value)


# -- the lab fixture itself --------------------------------------------------------------------


def test_missing_samba_fails_under_ci_and_skips_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI needs a real Samba AD DC"):
        samba_unavailable("Samba AD DC unavailable: test")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="Samba AD DC unavailable"):
        samba_unavailable("Samba AD DC unavailable: test")


# -- DN keys -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dn",
    [
        "CN=Jane Doe,OU=Staff,DC=nfon,DC=test",
        "cn=jane doe, ou=Staff , DC=nfon,dc=TEST",
        "CN=Straße,OU=Lab Users,DC=nfon,DC=test",
        "CN=Doe\\, Jane,OU=Staff,DC=nfon,DC=test",
        'CN="Doe, Jane",DC=nfon',
        "CN=a+UID=b,DC=nfon",
        "CN=a=b,DC=nfon",
        "CN=#04024869,DC=nfon",
        "CN=x,,DC=nfon",
        "not a dn",
        "",
    ],
)
def test_dn_key_of_a_plain_dn_is_what_the_full_parse_gives(dn: str) -> None:
    try:
        parts = parse_dn(dn, strip=True)
    except LDAPInvalidDnError:
        expected = dn.lower()
    else:
        expected = ",".join(f"{attr.lower()}={value.lower()}" for attr, value, _ in parts)
    assert dn_key(dn) == expected


def test_dn_key_ignores_case_and_spacing() -> None:
    assert dn_key("CN=Jane Doe, OU=Staff,DC=nfon,DC=test") == dn_key(
        "cn=jane doe,ou=staff,dc=NFON,dc=test"
    )
