"""``doctor --capture DIR``: what one gather read, kept as a fixture a user can attach to a report.

Four files: ``facts.json`` (everything the gather read, registry values and all, in the
contract's JSON: it loads as :class:`~provisioner.remote.contract.HostFacts`), ``listing.txt``
(``tsecimp /d`` as printed, line breaks kept), ``versions.txt`` and ``doctor.json``. Before
anything is written, placeholders replace every fingerprint (salt and HMAC), the seal key, the
lock's owner, domain SIDs and each domain account, the same account by the same placeholder in
every file (``NFON\\jdoe`` becomes ``DOMAIN\\user01``). Line names keep the PBX's extension
names: read the files before you attach them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from provisioner import __version__
from provisioner.doctor import Report, render_json
from provisioner.errors import ProvisionerError
from provisioner.manifest.validate import Estate
from provisioner.remote.contract import CONTRACT_VERSION, HostFacts
from provisioner.remote.tsecimp import parse_listing

REDACTED = "redacted"
_AUTHORITIES = {"nt authority", "builtin", "nt service", "application package authority"}
_DOMAIN_SID = re.compile(r"S-1-5-21-\d+-\d+-\d+(?=-\d+)")


class Redactor:
    """Replaces domain accounts and domain SIDs in any text, consistently."""

    def __init__(self, domains: Iterable[str], keep: str = "") -> None:
        names = sorted({d for d in domains if d and d.casefold() not in _AUTHORITIES}, key=len)
        self.domains = {d.casefold(): f"DOMAIN{i or ''}" for i, d in enumerate(names)}
        if keep:  # the host's own name, as the domain of its local accounts
            self.domains[keep.casefold()] = keep
        self.accounts: dict[str, str] = {}
        alternatives = "|".join(re.escape(d) for d in sorted(self.domains, key=len, reverse=True))
        self._pattern = (
            re.compile(rf"(?i)({alternatives})\\([^\s\\,;]+?)(?=(?:{alternatives})\\|[\s,;]|$)")
            if alternatives
            else None
        )

    def text(self, value: str) -> str:
        value = _DOMAIN_SID.sub("S-1-5-21-0-0-0", value)
        if self._pattern is None:
            return value
        return self._pattern.sub(self._account, value)

    def _account(self, match: re.Match[str]) -> str:
        key = f"{match[1]}\\{match[2]}".casefold()
        if key not in self.accounts:
            domain = self.domains[match[1].casefold()]
            self.accounts[key] = f"{domain}\\user{len(self.accounts) + 1:02d}"
        return self.accounts[key]

    def data(self, value: Any, key: str = "") -> Any:
        if isinstance(value, dict):
            if set(value) in ({"salt", "hmac"}, {"modulus", "exponent"}):
                return dict.fromkeys(value, REDACTED)
            return {k: self.data(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self.data(item, key) for item in value]
        if isinstance(value, str):
            return REDACTED if key == "owner" else self.text(value)
        return value


def domains_of(estate: Estate, facts: HostFacts) -> set[str]:
    """The NetBIOS domains whose accounts may appear: the Sites', and those the host names."""
    found = {site.directory.netbios_domain for site in estate.sites.values()}
    names: list[str] = []
    if facts.telephony is not None:
        names += [facts.telephony.service.account, *facts.telephony.administrators]
    names += [service.account for service in facts.services]
    for instance in facts.tsp_instances:
        names += [
            entry.name for entry in (instance.settings_acl.entries if instance.settings_acl else [])
        ]
    for provider in parse_listing(facts.tsecimp_listing or ""):
        names += [user for line in provider.lines for user in line.users]
    found |= {name.split("\\", 1)[0] for name in names if "\\" in name}
    return found


def write_capture(directory: Path, estate: Estate, report: Report) -> list[Path]:
    facts = report.facts
    if facts is None:
        raise ProvisionerError(
            f"{report.host.name}: the gather failed, so there is nothing to capture"
        )
    redactor = Redactor(domains_of(estate, facts), keep=facts.computer_name)
    redacted = redactor.data(facts.model_dump(mode="json"))
    system = facts.system
    versions = [
        f"provisioner {__version__}, host contract {CONTRACT_VERSION}",
        f"role {facts.role}",
    ]
    if system is not None:
        versions += [
            f"Windows {system.windows_version} ({system.windows_product})",
            f"PowerShell {system.powershell_version} {system.language_mode}",
        ]
    versions += [f"package {p.name} {p.version} {p.product_code}" for p in facts.packages]
    files = {
        "facts.json": json.dumps(redacted, indent=2, ensure_ascii=False) + "\n",
        "versions.txt": "\n".join(versions) + "\n",
        "doctor.json": json.dumps(redactor.data(json.loads(render_json(report))), indent=2) + "\n",
    }
    if redacted.get("tsecimp_listing") is not None:  # a server's
        files["listing.txt"] = redacted["tsecimp_listing"]
    try:
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, content in files.items():
            path = directory / name
            with path.open("w", encoding="utf-8", newline="") as stream:  # CRLF stays CRLF
                stream.write(content)
            written.append(path)
    except OSError as exc:
        raise ProvisionerError(f"{directory}: cannot write the capture ({exc.strerror})") from None
    return written
