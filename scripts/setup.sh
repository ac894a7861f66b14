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
  echo "setup: installing the pinned packages (constraints.txt; about a minute on a fresh machine)..."
  t0=$SECONDS
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
  echo "setup: packages installed in $((SECONDS - t0)) s"
  echo "$want" > "$stamp"
else
  echo "setup: .venv is up to date with the pins"
fi

# --- MicroPython type stubs (edgepay tooling): pyright checks firmware/ against them, not CPython's
# typeshed (pyrightconfig.json: typeshedPath/stubPath .venv/typings; rp2 beside it, for hal/flash.py).
# Installed into plain directories, never into the venv, where they would shadow CPython's stubs.
if [ "$(cat .venv/typings/.stamp 2>/dev/null)" != "$want" ]; then
  echo "setup: installing MicroPython stubs into .venv/typings (for pyright)..."
  rm -rf .venv/typings .venv/typings-rp2
  .venv/bin/python -m pip install -q --no-user --target .venv/typings -c constraints.txt micropython-esp32-stubs
  .venv/bin/python -m pip install -q --no-user --no-deps --target .venv/typings-rp2 -c constraints.txt micropython-rp2-stubs
  echo "$want" > .venv/typings/.stamp
fi

# --- Servers the tests run privately (their own config, port and data dir): only the binaries
# are needed, never the packaged system service.
apt_install() {  # PACKAGE
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing $1 with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$1" >/dev/null
    (command -v systemctl >/dev/null && systemctl disable --now "$1" >/dev/null 2>&1) || true
    return 0
  fi
  echo "setup: $1 is not installed and cannot be installed here (need root and apt-get)." >&2
  echo "       Install it yourself: sudo apt-get install $1  (macOS: brew install $1)" >&2
  return 1
}

# Mosquitto: every MQTT test starts its own broker on a free loopback port.
echo "setup: checking Mosquitto and PostgreSQL"
if ! command -v mosquitto >/dev/null 2>&1 && [ ! -x /usr/sbin/mosquitto ]; then
  apt_install mosquitto || exit 1
fi
# PostgreSQL: the ledger's scale-out backend; tests start a private cluster (host_tools/pgserver.py).
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  apt_install postgresql || echo "       The PostgreSQL ledger tests will be skipped locally and FAIL in CI (CI=true)." >&2
fi
# RabbitMQ (with Erlang: 21 packages, ~58 MB on disk, 8 s here): the second cluster engine; the tests
# run private nodes from its scripts (host_tools/rabbitcluster.py, tests/test_rabbit_cluster.py).
if [ ! -x /usr/lib/rabbitmq/bin/rabbitmq-server ]; then
  apt_install rabbitmq-server || echo "       The RabbitMQ cluster tests will be skipped locally and FAIL in CI (CI=true)." >&2
fi
# Chromium and its driver: the console's browser tests (tests/test_console_browser.py) drive them
# through Selenium with explicit paths (Selenium's own manager would try a download).
if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  { apt_install chromium && apt_install chromium-driver; } || echo "       The console's browser tests will be skipped locally and FAIL in CI (CI=true)." >&2
fi
echo "setup: ok ($(.venv/bin/python --version), $(.venv/bin/micropython -c 'import sys; print(sys.implementation.name, sys.version.split(";")[1].strip())' 2>/dev/null), mosquitto $( (mosquitto -h 2>/dev/null || /usr/sbin/mosquitto -h) | head -1 | awk '{print $3}'))"
