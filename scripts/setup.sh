#!/usr/bin/env bash
# Installs what the provisioner needs on a Debian machine (run as root): the Python venv with the
# package, and with --test also Samba (a real AD DC for the directory tests), Chromium (the
# HTML report tests) and PostgreSQL (the state store's tests start a private server). Safe to run
# again: it only installs what is missing, and runs pip only when pyproject.toml (or the extras
# asked for) changed since the last run.
set -euo pipefail
cd "$(dirname "$0")/.."

want_test=false
[ "${1:-}" = "--test" ] && want_test=true

apt_packages=()
python3 -m venv --help >/dev/null 2>&1 || apt_packages+=(python3-venv)
python3 -c 'import ensurepip' >/dev/null 2>&1 || apt_packages+=(python3-venv)
if $want_test || [ "${PROVISIONER_LAB_AD:-1}" = "1" ]; then
  command -v samba-tool >/dev/null 2>&1 || apt_packages+=(samba samba-ad-dc samba-ad-provision)
fi
if $want_test; then
  command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)
  command -v jq >/dev/null 2>&1 || apt_packages+=(jq)     # reads the JSON plan as scripts do
  command -v git >/dev/null 2>&1 || apt_packages+=(git)   # pre-commit try-repo, saved-plan clones
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || apt_packages+=(postgresql)
fi
if [ ${#apt_packages[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${apt_packages[*]}; run as root or install them" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
fi

extras=""
$want_test && extras="[test]"
# pip runs only when pyproject.toml changed or more extras are asked for than were installed
# (offline, pip would otherwise spend a minute failing to reach PyPI): the stamp in .venv holds
# the hash of pyproject.toml and the extras of the last install
hash="$(sha256sum pyproject.toml | cut -d' ' -f1)"
installed="$(cat .venv/.provisioner-setup 2>/dev/null || true)"
if [ -x .venv/bin/python ] && { [ "$installed" = "$hash $extras" ] || [ "$installed" = "$hash [test]" ]; }; then
  exit 0
fi
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".${extras}"
echo "$hash $extras" > .venv/.provisioner-setup
