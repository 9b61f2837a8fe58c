#!/usr/bin/env bash
# Sets up the provisioner, then runs the lab demo over the example manifests.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
for example in manifests/examples/*/; do
  echo "== provisioner validate $example"
  provisioner validate "$example"
done
