"""Changes made "behind the provisioner's back", for drift demos and tests.

Each function changes a running lab the way an admin clicking in a console would, without going
through the provisioner::

    tamper(lab, "tapi01", "remove-firewall-rule", "nfon-tapi-in-smb")
"""

from __future__ import annotations

from provisioner.errors import ProvisionerError
from provisioner.lab.estate import Lab

ACTIONS = {
    "remove-firewall-rule": "delete a firewall rule by name",
    "stop-service": "stop a service by name",
    "unassign-user": "drop every line of a domain user (as tapimgmt.msc would)",
    "remove-extension": "delete an extension from a PBX (ARG: K-account/extension)",
}


def tamper(lab: Lab, host: str, action: str, argument: str) -> str:
    if action not in ACTIONS:
        raise ProvisionerError(f"unknown tamper action {action!r} (known: {', '.join(ACTIONS)})")
    if action == "remove-extension":
        k_account, _, extension = argument.partition("/")
        assert lab.cti is not None
        try:
            lab.cti.pbx(k_account).remove_extension(extension)
        except (KeyError, ValueError) as exc:
            raise ProvisionerError(f"lab: {exc}") from None
        return f"removed extension {extension} from PBX {k_account}"
    if host not in lab.hosts:
        raise ProvisionerError(f"lab has no host {host!r} (known: {', '.join(lab.hosts)})")
    windows = lab.hosts[host].windows
    with windows.lock:
        state = windows.state
        if action == "remove-firewall-rule":
            before = len(state.firewall_rules)
            state.firewall_rules = [r for r in state.firewall_rules if r.name != argument]
            if len(state.firewall_rules) == before:
                raise ProvisionerError(f"lab: {host} has no firewall rule {argument!r}")
            return f"{host}: removed firewall rule {argument}"
        if action == "stop-service":
            service = state.services.get(argument.casefold())
            if service is None:
                raise ProvisionerError(f"lab: {host} has no service {argument!r}")
            service.state = "stopped"
            return f"{host}: stopped service {service.name}"
        user = state.tsec_users.get(argument.casefold())
        if user is None:
            raise ProvisionerError(f"lab: {host} has no tsecimp user {argument!r}")
        user.lines.clear()
        return f"{host}: removed every line of {user.domain_user}"
