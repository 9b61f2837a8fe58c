"""Changes made "behind the provisioner's back", for drift demos, doctor and tests.

Each action changes a running lab the way an admin clicking in a console (or a policy, or time)
would, without going through the provisioner::

    tamper(lab, "tapi01", "remove-firewall-rule", "nfon-tapi-in-smb")
    tamper(lab, "tapi01", "set-system", "language_mode=ConstrainedLanguage")

Every ``doctor`` check has an action that makes it fail (``docs/first-contact.md`` lists them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

from provisioner.errors import ProvisionerError
from provisioner.lab.estate import Lab
from provisioner.lab.windows_host import (
    LAB_PACKAGES,
    FirewallRuleRecord,
    ProductRecord,
    SystemRecord,
    WindowsHost,
    WinRMConfigRecord,
    inherited_software_acl,
)
from provisioner.manifest.models import domain_user_key

ACTIONS = {
    "remove-firewall-rule": "delete a firewall rule by name",
    "stop-service": "stop a service by name (MpsSvc: the firewall)",
    "disable-service": "set a service's start mode to disabled and stop it",
    "revoke-logon-right": "take 'Log on as a service' from an account (DOMAIN\\name)",
    "remove-file": "delete a file (verpatch.exe, or tsecimp.exe/tcmsetup.exe in System32)",
    "install-package": "install another version of the lab's NFON package by hand (ARG: 1.1.0)",
    "open-instance-key": "give a TSP instance's settings key the inherited HKLM ACL (ARG: K6732)",
    "open-rpc-port": "add an enabled rule outside the managed group opening a port to anyone",
    "set-system": "change a preflight fact (ARG: field=value, e.g. elevated=false)",
    "set-winrm": "change a WinRM quota, also on the lab's listener (ARG: max_envelope_size_kb=100)",
    "forge-line-name": "rename an extension so its line's name forges a listing entry "
    "(ARG: K-account/extension)",
    "unassign-user": "drop every line of a domain user (as tapimgmt.msc would)",
    "remove-extension": "delete an extension from a PBX (ARG: K-account/extension)",
}


def tamper(lab: Lab, host: str, action: str, argument: str) -> str:
    if action not in ACTIONS:
        raise ProvisionerError(f"unknown tamper action {action!r} (known: {', '.join(ACTIONS)})")
    if action in _PBX_ACTIONS:
        k_account, _, extension = argument.partition("/")
        return _PBX_ACTIONS[action](lab, k_account, extension)
    if host not in lab.hosts:
        raise ProvisionerError(f"lab has no host {host!r} (known: {', '.join(lab.hosts)})")
    windows = lab.hosts[host].windows
    try:
        with windows.lock:
            if action == "set-winrm":
                _set_winrm(lab, host, argument)
            else:
                _HOST_ACTIONS[action](windows, argument)
    except _Refused as exc:
        raise ProvisionerError(f"lab: {host} {exc}") from None
    return f"{host}: {action} {argument}"


class _Refused(Exception):
    """The host cannot be changed so: the message reads after the host's name."""


def _remove_firewall_rule(windows: WindowsHost, name: str) -> None:
    rules = windows.state.firewall_rules
    if not any(rule.name == name for rule in rules):
        raise _Refused(f"has no firewall rule {name!r}")
    windows.state.firewall_rules = [rule for rule in rules if rule.name != name]


def _service(windows: WindowsHost, name: str) -> None:
    if name.casefold() not in windows.state.services:
        raise _Refused(f"has no service {name!r}")


def _stop_service(windows: WindowsHost, name: str) -> None:
    _service(windows, name)
    windows.state.services[name.casefold()].state = "stopped"


def _disable_service(windows: WindowsHost, name: str) -> None:
    _stop_service(windows, name)
    windows.state.services[name.casefold()].start_mode = "disabled"


def _revoke_logon_right(windows: WindowsHost, account: str) -> None:
    sid = windows.sid_of(account)
    if sid is None or sid not in windows.state.logon_rights:
        raise _Refused(f"grants no logon right to {account!r}")
    windows.state.logon_rights.remove(sid)


def _remove_file(windows: WindowsHost, path: str) -> None:
    directory, _, name = path.casefold().rpartition("\\")
    state = windows.state
    if directory.endswith("\\system32") and state.system32.pop(name, None) is not None:
        return
    if path.casefold() not in state.files:
        raise _Refused(f"has no file {path!r}")
    state.files.remove(path.casefold())


def _install_package(windows: WindowsHost, version: str) -> None:
    package = next((p for p in LAB_PACKAGES if p.version == version), None)
    if package is None:
        known = ", ".join(p.version for p in LAB_PACKAGES)
        raise _Refused(f"knows no package of version {version!r} (known: {known})")
    state = windows.state
    state.products = [p for p in state.products if p.name != package.name]
    state.products.append(ProductRecord(package.product_code, package.name, version))


def _open_instance_key(windows: WindowsHost, instance: str) -> None:
    record = windows.settings_of(instance)
    if record is None:
        raise _Refused(f"has no settings key of TSP instance {instance!r}")
    record.acl = inherited_software_acl()


def _open_rpc_port(windows: WindowsHost, port: str) -> None:
    if not port.isdigit():
        raise _Refused(f"cannot open {port!r}: not a port number")
    windows.state.firewall_rules.append(
        FirewallRuleRecord(
            name=f"Opened by hand: TCP {port}",
            description="",
            group="",
            direction=1,
            action=1,
            protocol=6,
            local_ports=port,
            remote_ports="*",
            remote_addresses="*",
            profiles=0x7FFFFFFF,
            enabled=True,
        )
    )


def _assign(record: object, argument: str) -> None:
    """``field=value`` into a dataclass record, the value read as the field's type."""
    name, separator, text = argument.partition("=")
    types = {f.name: f.type for f in fields(record)}  # type: ignore[arg-type]
    if not separator or name not in types:
        raise _Refused(f"takes field=value, a field of: {', '.join(types)}")
    kind = str(types[name])
    value: object = text
    if kind == "bool":
        value = text.casefold() in ("1", "true", "yes")
    elif kind == "int":
        if not text.isdigit():
            raise _Refused(f"takes a whole number for {name}, not {text!r}")
        value = int(text)
    elif kind.startswith("list"):
        value = [part.strip() for part in text.split(",") if part.strip()]
    setattr(record, name, value)


def _set_system(windows: WindowsHost, argument: str) -> None:
    assert isinstance(windows.state.system, SystemRecord)
    _assign(windows.state.system, argument)


def _set_winrm(lab: Lab, host: str, argument: str) -> None:
    winrm = lab.hosts[host].windows.state.winrm
    assert isinstance(winrm, WinRMConfigRecord)
    _assign(winrm, argument)
    server = lab.hosts[host].server  # the listener enforces what the host reports
    server.max_envelope_kb = winrm.max_envelope_size_kb
    server.max_shells = winrm.max_shells_per_user
    server.max_operations = winrm.max_concurrent_operations_per_user


def _unassign_user(windows: WindowsHost, user: str) -> None:
    entry = windows.state.tsec_users.get(domain_user_key(user))
    if entry is None:
        raise _Refused(f"has no tsecimp user {user!r}")
    entry.lines.clear()


def _remove_extension(lab: Lab, k_account: str, extension: str) -> str:
    assert lab.cti is not None
    try:
        lab.cti.pbx(k_account).remove_extension(extension)
    except (KeyError, ValueError) as exc:
        raise ProvisionerError(f"lab: {exc}") from None
    return f"removed extension {extension} from PBX {k_account}"


def _forge_line_name(lab: Lab, k_account: str, extension: str) -> str:
    """The attack the listing parser must not fall for: a line name holding a line break and a
    copy of another line's entry, so that line appears twice (the copy after the real one)."""
    assert lab.cti is not None
    try:
        pbx = lab.cti.pbx(k_account)
    except KeyError as exc:
        raise ProvisionerError(f"lab: {exc}") from None
    entries = {e["number"]: e for e in pbx.extensions}
    others = [number for number in entries if number != extension]
    if extension not in entries or not others:
        raise ProvisionerError(f"lab: PBX {k_account} has no extension {extension!r} and another")
    victim = others[0]
    entries[extension]["name"] += (
        f"\r\n  Line: {victim} {entries[victim]['name']}\r\n    Addresses:\r\n      {victim}"
    )
    return f"renamed extension {extension} of PBX {k_account} to forge line {victim}"


_HOST_ACTIONS: dict[str, Callable[[WindowsHost, str], None]] = {
    "remove-firewall-rule": _remove_firewall_rule,
    "stop-service": _stop_service,
    "disable-service": _disable_service,
    "revoke-logon-right": _revoke_logon_right,
    "remove-file": _remove_file,
    "install-package": _install_package,
    "open-instance-key": _open_instance_key,
    "open-rpc-port": _open_rpc_port,
    "set-system": _set_system,
    "unassign-user": _unassign_user,
}
_PBX_ACTIONS: dict[str, Callable[[Lab, str, str], str]] = {
    "remove-extension": _remove_extension,
    "forge-line-name": _forge_line_name,
}
