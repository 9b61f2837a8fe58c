#!/usr/bin/env bash
# Sets up the provisioner, then runs the lab demo: a simulated estate for the example manifests,
# a saved plan applied as reviewed, the preflight, a rollout in waves, plans with nothing left to
# do, a change behind the tool's back, a drift report, and the repair.
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

client=manifests/examples/client-tapi
hosting=manifests/examples/multi-tenant
# the lab writes an inventory per example: a run refuses one that names other hosts
export PROVISIONER_INVENTORY="$lab_dir/inventory-client-tapi.yaml"
step "validate $client"
run provisioner validate "$client"
step "plan $client, saved for review (exit 2: there are changes)"
run provisioner plan "$client" --detailed-exitcode --out "$lab_dir/client-tapi.plan.json"
step "apply exactly the reviewed plan"
run provisioner apply --plan "$lab_dir/client-tapi.plan.json" --auto-approve
step "plan $client again (exit 0: nothing left to do)"
run provisioner plan "$client" --detailed-exitcode
step "doctor: the read-only preflight of a server, one gather (exit 0: every check passed)"
run provisioner doctor "$client" --server tapi01

export PROVISIONER_INVENTORY="$lab_dir/inventory-multi-tenant.yaml"
step "validate $hosting"
run provisioner validate "$hosting"
step "roll the three tenants out in waves: the servers first, then a canary, then the rest"
run provisioner rollout "$hosting" --waves 1,50%,100% --auto-approve
step "plan $hosting again (exit 0: nothing left to do)"
run provisioner plan "$hosting" --detailed-exitcode

export PROVISIONER_INVENTORY="$lab_dir/inventory-client-tapi.yaml"
step "What the TAPI server looks like now"
run provisioner facts "$client" --server tapi01

step "Someone changes the server by hand"
provisioner lab tamper tapi01 remove-firewall-rule nfon-tapi-in-smb --dir "$lab_dir"
provisioner lab tamper tapi01 unassign-user 'NFON\jdoe' --dir "$lab_dir"

step "drift (exit 2: drift found)"
run provisioner drift "$client"
run provisioner drift "$client" --format html --output "$lab_dir/drift.html"

step "apply puts it back; drift is clean again"
run provisioner apply "$client" --auto-approve
run provisioner drift "$client"

step "Messages per host (one gather per plan, one batch per apply)"
provisioner lab status --dir "$lab_dir"
