"""Shared test set-up: each real part (Samba, the lab, the CTI API spec) lives in tests/support."""

pytest_plugins: list[str] = [
    "tests.support.samba",
    "tests.support.cti_api",
    "tests.support.wsman",
    "tests.support.lab",
    "tests.support.postgres",
]
