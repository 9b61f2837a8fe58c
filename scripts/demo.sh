#!/usr/bin/env bash
# Sets up the provisioner, then runs the lab demo: a simulated estate for the example manifests,
# plan, apply, plan again (nothing left to do), a change behind the tool's back, a drift report.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
lab_dir="$PWD/lab"
export PROVISIONER_STATE_DIR="$lab_dir/state"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() {  # run a command, show it, and report its exit code without stopping the demo
  printf '$ %s\n' "$*"
  set +e; "$@"; local code=$?; set -e
  printf '(exit %s)\n' "$code"
}

provisioner lab down --dir "$lab_dir" >/dev/null
trap 'provisioner lab down --dir "$lab_dir" >/dev/null' EXIT
step "Start the lab: simulated Windows hosts and a simulated NFON CTI API"
provisioner lab up --dir "$lab_dir"

for example in manifests/examples/multi-tenant manifests/examples/client-tapi; do
  # the lab writes an inventory per example: a run refuses one that names other hosts
  export PROVISIONER_INVENTORY="$lab_dir/inventory-$(basename "$example").yaml"
  step "validate $example"
  run provisioner validate "$example"
  step "plan $example (exit 2: there are changes)"
  run provisioner plan "$example" --detailed-exitcode
  step "apply $example"
  run provisioner apply "$example" --auto-approve
  step "plan $example again (exit 0: nothing left to do)"
  run provisioner plan "$example" --detailed-exitcode
done

step "What the TAPI server looks like now"
run provisioner facts manifests/examples/client-tapi --server tapi01

step "Someone changes the server by hand"
provisioner lab tamper tapi01 remove-firewall-rule nfon-tapi-in-smb --dir "$lab_dir"
provisioner lab tamper tapi01 unassign-user 'NFON\jdoe' --dir "$lab_dir"

step "drift (exit 2: drift found)"
run provisioner drift manifests/examples/client-tapi
run provisioner drift manifests/examples/client-tapi --format html --output "$lab_dir/drift.html"

step "apply puts it back; drift is clean again"
run provisioner apply manifests/examples/client-tapi --auto-approve
run provisioner drift manifests/examples/client-tapi

step "Messages per host (one gather per plan, one batch per apply)"
provisioner lab status --dir "$lab_dir"
