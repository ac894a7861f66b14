#!/usr/bin/env bash
# One-time set-up for a fresh Debian machine (or a developer's): the virtualenv with pinned
# packages, and Mosquitto for the tests' own brokers. Safe to run again: it skips what is done.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 &&
       "$cand" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null; then
      PYTHON=$cand; break
    fi
  done
fi
[ -n "$PYTHON" ] || { echo "setup: Python >= 3.11 is needed (apt-get install python3)" >&2; exit 1; }

# --- virtualenv and pinned packages (re-installed only when the pins change)
stamp=.venv/.setup-stamp
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
  echo "$want" > "$stamp"
fi

# --- MicroPython type stubs (edgepay tooling): pyright checks firmware/ against them, not CPython's
# typeshed (pyrightconfig.json: typeshedPath/stubPath .venv/typings; rp2 beside it, for hal/flash.py).
# Installed into plain directories, never into the venv, where they would shadow CPython's stubs.
if [ "$(cat .venv/typings/.stamp 2>/dev/null)" != "$want" ]; then
  echo "setup: installing MicroPython stubs into .venv/typings"
  rm -rf .venv/typings .venv/typings-rp2
  .venv/bin/python -m pip install -q --no-user --target .venv/typings -c constraints.txt micropython-esp32-stubs
  .venv/bin/python -m pip install -q --no-user --no-deps --target .venv/typings-rp2 -c constraints.txt micropython-rp2-stubs
  echo "$want" > .venv/typings/.stamp
fi

# --- Mosquitto: the tests start their own broker on a free loopback port
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing mosquitto with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
    # The tests run their own brokers; a system broker on 1883 is not needed.
    (command -v systemctl >/dev/null && systemctl disable --now mosquitto >/dev/null 2>&1) || true
  else
    echo "setup: Mosquitto is not installed and cannot be installed here (need root and apt-get)." >&2
    echo "       Install it yourself: sudo apt-get install mosquitto  (macOS: brew install mosquitto)" >&2
    exit 1
  fi
fi
# --- PostgreSQL (edgepay: ledger scale-out backend) -------------------------------------------
# The ledger tests and bench start their own private cluster (host_tools/pgserver.py: initdb into a
# temp dir, pg_ctl on a unix socket); they need only the server binaries, never a running service.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing postgresql with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    # the tests run their own clusters; the packaged one is not needed
    (command -v systemctl >/dev/null && systemctl disable --now postgresql >/dev/null 2>&1) || true
  else
    echo "setup: PostgreSQL is not installed and cannot be installed here (need root and apt-get)." >&2
    echo "       The PostgreSQL ledger tests will be skipped locally and FAIL in CI (CI=true)." >&2
    echo "       Install it yourself: sudo apt-get install postgresql  (macOS: brew install postgresql)" >&2
  fi
fi
# --- end PostgreSQL ------------------------------------------------------------------------------
echo "setup: ok ($(.venv/bin/python --version), $(.venv/bin/micropython -c 'import sys; print(sys.implementation.name, sys.version.split(";")[1].strip())' 2>/dev/null), mosquitto $( (mosquitto -h 2>/dev/null || /usr/sbin/mosquitto -h) | head -1 | awk '{print $3}'))"
