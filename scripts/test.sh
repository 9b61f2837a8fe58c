#!/usr/bin/env bash
# Sets up everything the test suite needs (see setup.sh), then runs the whole suite.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
.venv/bin/ruff check provisioner tests bench
.venv/bin/mypy  # provisioner/, configured in pyproject.toml
exec .venv/bin/python -m pytest "$@"
