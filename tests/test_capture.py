"""What ``doctor --capture`` replaces before anything is written."""

from __future__ import annotations

from provisioner.capture import REDACTED, Redactor


def test_accounts_become_placeholders_the_same_everywhere_glued_or_not() -> None:
    redactor = Redactor(["NFON", "HOSTING"], keep="TAPI01")
    glued = redactor.text("  Line: 1200 ReceptionNFON\\receptionHOSTING\\Crm-Service")
    assert glued == "  Line: 1200 ReceptionDOMAIN\\user01DOMAIN1\\user02"
    assert redactor.text("NFON\\RECEPTION, nfon\\reception") == "DOMAIN\\user01, DOMAIN\\user01"
    assert redactor.text("TAPI01\\admin") == "TAPI01\\user03"  # a local account: the host stays
    assert redactor.text("NT AUTHORITY\\NETWORK SERVICE") == "NT AUTHORITY\\NETWORK SERVICE"


def test_domain_sids_fingerprints_seal_keys_and_lock_owners_are_replaced() -> None:
    redactor = Redactor(["NFON"])
    data = {
        "account_sid": "S-1-5-21-1004336348-1177238915-682003330-1105",
        "builtin": "S-1-5-32-544",
        "password": {"salt": "00ff", "hmac": "ab12"},
        "seal_key": {"modulus": "AQAB...", "exponent": "AQAB"},
        "lock": {"owner": "alice@ws17 pid 4711", "expires": "2026-01-01T00:00:00Z"},
    }
    assert redactor.data(data) == {
        "account_sid": "S-1-5-21-0-0-0-1105",
        "builtin": "S-1-5-32-544",
        "password": {"salt": REDACTED, "hmac": REDACTED},
        "seal_key": {"modulus": REDACTED, "exponent": REDACTED},
        "lock": {"owner": REDACTED, "expires": "2026-01-01T00:00:00Z"},
    }
