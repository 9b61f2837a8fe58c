"""The manifest language: load, validate and expand the YAML that describes an estate."""

from provisioner.manifest.validate import Estate, load_estate

__all__ = ["Estate", "load_estate"]
