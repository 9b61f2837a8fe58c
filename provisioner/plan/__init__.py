"""Plans: what would change, as plain data. Rendering lives in :mod:`provisioner.render`."""

from provisioner.plan.model import Action, Change, Plan

__all__ = ["Action", "Change", "Plan"]
