"""Instructions per operation of one benchmark workload, counted by callgrind.

    python scripts/callgrind.py WORKLOAD [WORKLOAD ...] [--impl compiled,pure] [-n N]
    python scripts/callgrind.py bench/test_topological.py [--impl ...]

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

Given a file of bench/ instead (its micro-benchmarks: identity map, dirty scan,
topological sort, tree flush), it runs each of the file's benchmarks for the
chosen implementations in a pytest process of its own under callgrind, with
``benchmark.pedantic`` replaced: the target runs as many times as the test
asks (so its checks hold), and only the last call is counted, divided by the
``ops`` the test records in ``extra_info``.

The measured process imports the turbosession installed for the interpreter
it runs with, so measure an installed build (``pip install .``), not the tree.
"""

import argparse
import functools
import gc
import os
import re
import subprocess
import sys
import tempfile

VALGRIND = os.environ.get("VALGRIND", "valgrind")
DEFAULT_N = 2000


def measure_in_process(workload_name, implementation, n, db_url, freeze):
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
            if freeze:
                gc.freeze()
            sys.call_tracing(case.run, (state,))
        else:
            case.run(state)
        try:
            case.verify(state)
        finally:
            case.teardown(state)
    db.dispose()
    print(case.ops)


def instructions(workload_name, implementation, n, python, db_url, freeze=False):
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
        if freeze:
            command.append("--gc-freeze")
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


class _MeasureLastCall:
    """pytest plugin: ``benchmark.pedantic`` counts only its last call."""

    def __init__(self, freeze, report):
        self.freeze = freeze
        self.report = report

    def pytest_configure(self, config):
        from pytest_benchmark.fixture import BenchmarkFixture

        freeze, report = self.freeze, self.report

        def pedantic(bench, target, args=(), kwargs=None, setup=None, rounds=1,
                     warmup_rounds=0, iterations=1):
            calls = (rounds + warmup_rounds) * iterations
            result = None
            for call in range(calls):
                if setup is not None:
                    args, kwargs = setup() or ((), {})
                func = functools.partial(target, **(kwargs or {}))
                if call < calls - 1:
                    result = func(*args)
                    continue
                gc.collect()
                if freeze:
                    gc.freeze()
                result = sys.call_tracing(func, tuple(args))
            with open(report, "w") as f:
                f.write(str(bench.extra_info["ops"]))
            return result

        BenchmarkFixture.pedantic = pedantic


def measure_bench_in_process(node, freeze):
    import pytest

    report = os.environ["TURBOSESSION_CALLGRIND_OPS"]
    code = pytest.main([node, "-q", "-p", "no:cacheprovider", "-p", "no:randomly"],
                       plugins=[_MeasureLastCall(freeze, report)])
    raise SystemExit(int(code))


def bench_nodes(path, implementations, python):
    """The file's test ids whose parameters name one of the implementations."""
    done = subprocess.run(
        [python, "-m", "pytest", path, "--collect-only", "-q", "-p", "no:cacheprovider"],
        capture_output=True, text=True, check=True,
    )
    nodes = []
    for line in done.stdout.splitlines():
        if "::" not in line or "[" not in line:
            continue
        params = line[line.index("[") + 1:line.rindex("]")].split("-")
        found = [impl for impl in implementations if impl in params]
        if found:
            nodes.append((line.strip(), found[0]))
    return nodes


def bench_instructions(node, python, freeze):
    """(instructions of the benchmark's last call, its ops) for one test id."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "callgrind.out")
        ops_file = os.path.join(tmp, "ops")
        command = [
            VALGRIND, "--tool=callgrind", "--collect-atstart=no",
            "--toggle-collect=sys_call_tracing", f"--callgrind-out-file={out}",
            python, os.path.abspath(__file__), "--inner", node,
        ]
        if freeze:
            command.append("--gc-freeze")
        env = dict(os.environ, PYTHONHASHSEED="0", TURBOSESSION_CALLGRIND_OPS=ops_file)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.stderr.write(done.stdout[-3000:] + done.stderr[-3000:])
            raise SystemExit(f"{node}: exit {done.returncode}")
        with open(ops_file) as f:
            ops = int(f.read())
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
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() before the measured run: full collections then "
                        "skip what existed before it (the modules, the setup's objects), "
                        "so two builds whose modules differ in size compare equal")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner and "::" in args.workloads[0]:
        measure_bench_in_process(args.workloads[0], args.gc_freeze)
        return
    if args.inner:
        measure_in_process(args.workloads[0], args.impl, args.n, args.db, args.gc_freeze)
        return
    if all(name.endswith(".py") for name in args.workloads):
        print(f"{'benchmark':<60} {'instructions/op':>16}")
        for path in args.workloads:
            for node, _ in bench_nodes(path, args.impl.split(","), args.python):
                total, ops = bench_instructions(node, args.python, args.gc_freeze)
                print(f"{node:<60} {total / ops:>16.0f}", flush=True)
        return
    names = list(BY_NAME) if args.workloads == ["all"] else args.workloads
    for name in names:
        if name not in BY_NAME:
            parser.error(f"unknown workload {name!r}")
    print(f"{'workload':<22} {'impl':<9} {'instructions/op':>16}")
    for name in names:
        for implementation in args.impl.split(","):
            total, ops = instructions(
                name, implementation, args.n, args.python, args.db, args.gc_freeze
            )
            print(f"{name:<22} {implementation:<9} {total / ops:>16.0f}", flush=True)


if __name__ == "__main__":
    main()
