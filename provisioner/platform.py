"""The platform profile: vendor facts no public source states, each in one overridable place.

The defaults live in ``platform_profile.yaml`` beside this module, every entry marked as an
assumption. A Site's ``platform:`` block overrides them for its hosts, a TapiServer's for itself::

    Profile(tsp_file="NFONTSP.TSP", instance_file_pattern="NFONTSP_{instance}.TSP", ...)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from provisioner.errors import ProvisionerError

if TYPE_CHECKING:  # validate reads the profile's keys and needs no host contract
    from provisioner.remote.contract import Timeouts

TIMEOUT_KEYS = ("msiexec_timeout_seconds", "command_timeout_seconds", "service_timeout_seconds")


@dataclass(frozen=True)
class Profile:
    tsp_file: str
    instance_file_pattern: str
    instance_provider_name: str
    instance_settings_key: str
    cti_engine_service: str
    package_name: str
    msi_properties: str
    telephony_service: str
    firewall_group: str
    verpatch_path: str
    msiexec_timeout_seconds: str
    command_timeout_seconds: str
    service_timeout_seconds: str

    def instance_file(self, instance: str) -> str:
        return self.instance_file_pattern.format(instance=instance)

    def provider_name(self, instance: str) -> str:
        return self.instance_provider_name.format(instance=instance)

    def settings_key(self, instance: str) -> str:
        return self.instance_settings_key.format(instance=instance)

    def msi_property_map(self) -> dict[str, str]:
        pairs = (item.split("=", 1) for item in self.msi_properties.split() if "=" in item)
        return {key: value for key, value in pairs}

    def timeouts(self) -> Timeouts:
        """The native-command timeouts (the manifest checks keep them positive integers)."""
        from provisioner.remote.contract import Timeouts

        return Timeouts(
            msiexec=int(self.msiexec_timeout_seconds),
            command=int(self.command_timeout_seconds),
            service=int(self.service_timeout_seconds),
        )

    def overridden(self, overrides: Mapping[str, str]) -> Profile:
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ProvisionerError(
                f"platform: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})"
            )
        return replace(self, **dict(overrides))


@cache
def default_profile() -> Profile:
    from ruamel.yaml import YAML  # here: validate starts without a YAML library when it can

    data = YAML(typ="safe").load(Path(__file__).with_name("platform_profile.yaml").read_text())
    return Profile(**{key: str(value) for key, value in data.items()})
