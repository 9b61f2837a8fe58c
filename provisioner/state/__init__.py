"""The state store: every plan, apply and rollout, each batch's intent and each change's result."""
