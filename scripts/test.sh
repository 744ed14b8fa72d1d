#!/usr/bin/env bash
# The test command: sets up a virtualenv, installs turbosession with its test
# extras (compiling the Cython extensions), and runs the project's tests in
# both modes: the default (compiled, every hot-path test also runs the same
# module uncompiled) and with TURBOSESSION_NO_EXTENSIONS=1 (pure selected at
# run time).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${TURBOSESSION_VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet ".[test,bench,postgresql]"
"$VENV/bin/python" -m turbosession info

echo "== project tests (compiled and uncompiled hot paths)"
"$VENV/bin/python" -m pytest tests -q -n 2 -p no:cacheprovider

echo "== project tests with TURBOSESSION_NO_EXTENSIONS=1"
TURBOSESSION_NO_EXTENSIONS=1 "$VENV/bin/python" -m turbosession info
TURBOSESSION_NO_EXTENSIONS=1 "$VENV/bin/python" -m pytest tests -q -n 2 -p no:cacheprovider -m "not packaging"
