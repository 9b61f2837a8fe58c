"""The lab's Windows rules and the model that enforces them stay together."""

from __future__ import annotations

import re
from pathlib import Path

from provisioner.lab import windows_host
from provisioner.lab.windows_rules import RULE_NAMES, RULES

MODEL = Path(windows_host.__file__).read_text(encoding="utf-8")


def test_every_rule_has_a_public_source_and_a_behaviour() -> None:
    assert len(RULE_NAMES) == len(RULES)
    for rule in RULES:
        assert re.fullmatch(r"[A-Z][A-Z0-9_]+", rule.name)
        assert rule.behaviour.endswith((".", ")"))
        assert "https://" in rule.source or "manual" in rule.source, rule.name


def test_the_model_cites_every_rule_and_only_rules_that_exist() -> None:
    cited = set(re.findall(r"# rule: ([A-Z][A-Z0-9_]+)", MODEL))
    assert cited == RULE_NAMES
