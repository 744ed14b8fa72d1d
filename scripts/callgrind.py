"""Instructions per operation of one benchmark workload, counted by callgrind.

    python scripts/callgrind.py WORKLOAD [WORKLOAD ...] [--impl compiled,pure] [-n N]

For each workload (``turbosession.benchmarks.workloads``; ``all`` for every
one) and each implementation (``stock``, ``compiled``, ``pure``), it runs
this script again under ``valgrind --tool=callgrind``: one warm-up round
(setup, run, verify, teardown), then a measured round whose setup, verify and
teardown are not counted (``--collect-atstart=no``; collection is toggled on
for the duration of ``sys.call_tracing(run, ...)``, a C function nothing else
calls).  It prints the instructions of that run divided by the workload's
operations.  Unlike times on a shared machine, the count moves by well under
1% from run to run (``PYTHONHASHSEED`` is fixed), so it can compare two
builds: run it with each build's interpreter (``--python``).

The measured process imports the turbosession installed for the interpreter
it runs with, so measure an installed build (``pip install .``), not the tree.
"""

import argparse
import gc
import os
import re
import subprocess
import sys
import tempfile

VALGRIND = os.environ.get("VALGRIND", "valgrind")
DEFAULT_N = 2000


def measure_in_process(workload_name, implementation, n, db_url):
    """Under callgrind: warm up, then run once inside ``sys.call_tracing``."""
    from turbosession.benchmarks import implementations as impls
    from turbosession.benchmarks.database import SQLITE_URL, Database
    from turbosession.benchmarks.workloads import BY_NAME

    db = Database(db_url or SQLITE_URL)
    workload = BY_NAME[workload_name](db, n)
    case = workload.case(implementation, impls.session_classes())
    for measured in (False, True):
        state = case.setup()
        gc.collect()
        if measured:
            sys.call_tracing(case.run, (state,))
        else:
            case.run(state)
        try:
            case.verify(state)
        finally:
            case.teardown(state)
    db.dispose()
    print(case.ops)


def instructions(workload_name, implementation, n, python, db_url):
    """(instructions of the measured run, operations it handled)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        command = [
            VALGRIND, "--tool=callgrind", "--collect-atstart=no",
            "--toggle-collect=sys_call_tracing", f"--callgrind-out-file={out}",
            python, os.path.abspath(__file__), "--inner", workload_name,
            "--impl", implementation, "-n", str(n),
        ]
        if db_url:
            command += ["--db", db_url]
        env = dict(os.environ, PYTHONHASHSEED="0")
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.stderr.write(done.stderr)
            raise SystemExit(f"{workload_name} {implementation}: exit {done.returncode}")
        ops = int(done.stdout.split()[-1])
        with open(out) as f:
            text = f.read()
    found = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    return int(found.group(1)), ops


def main():
    from turbosession.benchmarks.workloads import BY_NAME

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workloads", nargs="+", help=f"'all' or some of: {', '.join(BY_NAME)}")
    parser.add_argument("--impl", default="compiled,pure",
                        help="comma-separated: stock, compiled, pure (default compiled,pure)")
    parser.add_argument("-n", type=int, default=DEFAULT_N, help=f"objects (default {DEFAULT_N})")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter whose installed turbosession is measured")
    parser.add_argument("--db", default=None, help="database URL (default in-memory SQLite)")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        measure_in_process(args.workloads[0], args.impl, args.n, args.db)
        return
    names = list(BY_NAME) if args.workloads == ["all"] else args.workloads
    for name in names:
        if name not in BY_NAME:
            parser.error(f"unknown workload {name!r}")
    print(f"{'workload':<22} {'impl':<9} {'instructions/op':>16}")
    for name in names:
        for implementation in args.impl.split(","):
            total, ops = instructions(name, implementation, args.n, args.python, args.db)
            print(f"{name:<22} {implementation:<9} {total / ops:>16.0f}", flush=True)


if __name__ == "__main__":
    main()
