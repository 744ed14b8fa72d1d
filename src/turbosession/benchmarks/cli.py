"""``python -m turbosession bench``: every workload, side by side, as a report.

It needs only the installed package and the ``bench`` extra (tqdm,
matplotlib): the workloads live in ``turbosession.benchmarks``, so the report
runs from a wheel as well as from a checkout.
"""

import argparse
import importlib
import json
import os
import sys

from . import implementations as impls
from . import memory, report
from .database import SQLITE_URL, Database, driver_version
from .timing import measure_workload
from .workloads import BY_NAME, WORKLOADS

DEFAULT_N = 10_000
DEFAULT_ROUNDS = 5
DEFAULT_WARMUP = 1
DEFAULT_MEMORY_N = 100_000
QUICK_N = 200
QUICK_MEMORY_N = 1_000
RESULT_NAME = "turbosession-bench"
# a smoke run's figures mean nothing: they never replace the full report's
QUICK_RESULT_NAME = "turbosession-bench-quick"

# what the report needs beyond turbosession itself: the bench extra
BENCH_PACKAGES = ("tqdm", "matplotlib")


def missing_bench_packages():
    missing = []
    for name in BENCH_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    return missing


def _workload_list():
    width = max(len(w.name) for w in WORKLOADS)
    lines = [f"  {w.name:<{width}}  {w.title} (per {w.unit})" for w in WORKLOADS]
    return "workloads (all by default; --only picks some):\n" + "\n".join(lines)


def add_arguments(parser):
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        _workload_list()
        + "\n\nNeeds the bench extra (tqdm, matplotlib): pip install 'turbosession[bench]'"
    )
    parser.add_argument("-n", type=int, default=None,
                        help=f"objects per workload (default {DEFAULT_N:,}; {QUICK_N} with --quick)")
    parser.add_argument("--rounds", type=int, default=None,
                        help=f"timed rounds per implementation, median reported (default {DEFAULT_ROUNDS})")
    parser.add_argument("--warmup", type=int, default=None,
                        help=f"untimed warm-up rounds (default {DEFAULT_WARMUP})")
    parser.add_argument("--pg-url", default=os.environ.get("TURBOSESSION_PG_URL"),
                        help="also run on PostgreSQL (psycopg 3); default $TURBOSESSION_PG_URL")
    parser.add_argument("--out", default=None,
                        help="directory for the JSON, table and chart (default bench/results/ "
                             "in a checkout, else the current directory)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: small N, 1 round, no warm-up; written as {QUICK_RESULT_NAME}.* "
                             "beside the full report, never over it")
    parser.add_argument("--only", nargs="+", choices=sorted(BY_NAME), metavar="WORKLOAD",
                        help="run only these workloads")
    parser.add_argument("--memory-n", type=int, default=None,
                        help=f"loaded objects for the memory figures (default {DEFAULT_MEMORY_N:,}; "
                             "0 skips them)")
    parser.add_argument("--compare", default=None, metavar="JSON",
                        help="results to check the ratios against (default: the previous "
                             "results in --out, if any)")


def _settings(args):
    quick = args.quick
    n = args.n or (QUICK_N if quick else DEFAULT_N)
    rounds = args.rounds or (1 if quick else DEFAULT_ROUNDS)
    warmup = args.warmup if args.warmup is not None else (0 if quick else DEFAULT_WARMUP)
    memory_n = args.memory_n if args.memory_n is not None else (
        QUICK_MEMORY_N if quick else DEFAULT_MEMORY_N
    )
    out = args.out or (os.path.join("bench", "results") if os.path.isdir("bench") else ".")
    return n, rounds, warmup, memory_n, out


def _load_previous(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def run(args):
    missing = missing_bench_packages()
    if missing:
        print(
            f"python -m turbosession bench needs {' and '.join(missing)}, which the "
            "bench extra brings: pip install 'turbosession[bench]' "
            "(from a checkout: pip install '.[bench]')",
            file=sys.stderr,
        )
        return 2
    from tqdm import tqdm

    n, rounds, warmup, memory_n, out = _settings(args)
    result_name = QUICK_RESULT_NAME if args.quick else RESULT_NAME
    workloads = [BY_NAME[name] for name in args.only] if args.only else list(WORKLOADS)
    classes = impls.session_classes()
    if impls.COMPILED not in classes:
        print("turbosession: compiled extensions not built; measuring stock and pure only",
              file=sys.stderr)

    databases = [Database(SQLITE_URL)]
    if args.pg_url:
        databases.append(Database(args.pg_url))
    plan = []
    for db in databases:
        for workload_cls in workloads:
            workload = workload_cls(db, n)
            names = workload.implementations(classes)
            plan.append((db, [workload.case(name, classes) for name in names]))
    total = sum(len(cases) for _, cases in plan) * (rounds + warmup)
    results = []
    try:
        with tqdm(total=total, unit="round", file=sys.stderr, dynamic_ncols=True) as progress:
            for db, cases in plan:
                measured = measure_workload(cases, db.name, rounds, warmup, progress, db.clock)
                results += [m.as_dict() for m in measured]
        memory_figures = None
        if memory_n:
            print(f"memory: loading {memory_n:,} objects per session under tracemalloc",
                  file=sys.stderr)
            memory_figures = {
                "database": databases[0].name,
                "objects": memory_n,
                "sessions": memory.measure(databases[0], classes, memory_n),
            }
        env = report.environment(
            {db.name: f"{db.server_version()} ({driver_version(db)})" for db in databases},
            n, rounds, warmup,
        )
        env["clocks"] = {db.name: db.clock_name for db in databases}
    finally:
        for db in databases:
            db.dispose()

    result = {
        "environment": env,
        "results": report.add_ratios(results),
        "memory": memory_figures,
    }
    json_path = os.path.join(out, f"{result_name}.json")
    previous = _load_previous(args.compare or json_path)
    if previous is not None and previous["environment"]["n"] == n:
        result["stability"] = report.compare(previous, result)
    elif previous is not None:
        print(f"previous results were for N = {previous['environment']['n']:,}: "
              "ratios not compared", file=sys.stderr)
    paths = report.write(result, out, result_name)
    if args.quick:
        print("--quick: a smoke run (small N, one round, no warm-up); its figures mean nothing\n")
    print(report.markdown(result))
    for kind, path in paths.items():
        print(f"{kind:6s} {path}")
    failed = [r for r in results if r["error"]]
    for r in failed:
        print(f"FAILED {r['database']} {r['workload']} {r['implementation']}: {r['error']}",
              file=sys.stderr)
    return 1 if failed else 0
