#!/usr/bin/env bash
# The whole test suite, from a fresh Debian machine with Python 3.11: installs what the tests need
# into .venv, then runs ruff, mypy --strict and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "missing: Python 3.11 or newer as '$PYTHON' (apt-get install python3 python3-venv)" >&2
    exit 1
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv || {
        echo "missing: the venv module (apt-get install python3-venv)" >&2
        exit 1
    }
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e '.[test]'

# The Redis tests run real servers (redis-server, redis-sentinel, redis-cli) and make TLS
# certificates with openssl.
PACKAGES="redis-server redis-sentinel redis-tools openssl"
missing=""
for tool in redis-server redis-sentinel redis-cli openssl; do
    command -v "$tool" >/dev/null || missing="$missing $tool"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
        echo "== installing $PACKAGES (missing:$missing)"
        export DEBIAN_FRONTEND=noninteractive
        # shellcheck disable=SC2086 # the package list is meant to split
        apt-get install -y -qq $PACKAGES >/dev/null \
            || { apt-get update -qq && apt-get install -y -qq $PACKAGES >/dev/null; } \
            || { echo "could not install: apt-get install -y $PACKAGES" >&2; exit 1; }
    else
        echo "missing:$missing - as root, run: apt-get install -y $PACKAGES" >&2
        exit 1
    fi
fi

echo "== ruff"
.venv/bin/ruff check .
echo "== mypy --strict"
.venv/bin/mypy
echo "== pytest"
.venv/bin/pytest -q "$@"
