"""Run SQLAlchemy's own ``test/orm`` and ``test/ext`` against turbosession (issue 3).

    python tests/conformance/run.py --mode stock|compiled|pure|all|compiled,pure \
        [--dburi URL] [--workers N] [--tests test/orm test/ext] [-- extra pytest args]

Why this shape: the strongest evidence that turbosession is a drop-in Session is
SQLAlchemy's own ORM suite passing with it.  The sdist of exactly the installed
SQLAlchemy version is downloaded and unpacked once into a cache outside the
repository (``$TURBOSESSION_CONFORMANCE_CACHE``, default
``~/.cache/turbosession``); its tests run with ``python -s -m pytest`` from the
unpacked root, so SQLAlchemy's conftest does not put the sdist's ``lib/`` on
``sys.path`` and the installed SQLAlchemy (with its compiled extensions) is
the one tested (``PYTHONNOUSERSITE=1`` carries ``-s`` to the xdist workers,
which are started without it).  ``conformance_plugin`` (loaded with ``-p``)
does the substitution and proves it took.

Each mode prints one summary line, a line of session counts and, when
turbosession has ``stats()``, its flush counters (fast path, fallbacks by
reason) summed over the workers.  When the control ran too, the tests that pass
in it but not with turbosession are listed.  The exit status is 1 when any mode
has a failure or error that ``known_differences.txt`` does not list (or pytest
did not complete, or the plugin saw no session or a session of the wrong
kind), else 0.  ``--dburi`` goes to SQLAlchemy's plugin, e.g. the URL that
``scripts/pg.sh`` exports as ``TURBOSESSION_PG_SQLA_URL``.
"""

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

HERE = Path(__file__).resolve().parent
KNOWN_DIFFERENCES = HERE / "known_differences.txt"
MODES = ("stock", "compiled", "pure")
TURBO_MODES = ("compiled", "pure")


def cache_dir():
    env = os.environ.get("TURBOSESSION_CONFORMANCE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "turbosession"


def sdist_root(version):
    """The unpacked sdist of SQLAlchemy ``version``, downloading it once."""
    cache = cache_dir()
    root = cache / f"sqlalchemy-{version}"
    done = root / ".turbosession-unpacked"
    if done.exists():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"sqlalchemy-{version}.tar.gz"
    if not archive.exists():
        print(f"downloading the sdist of sqlalchemy {version} into {cache}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-binary", ":all:",
             "--no-deps", "--dest", str(cache), f"sqlalchemy=={version}"],
            check=True,
        )
    with tarfile.open(archive) as tar:
        tar.extractall(cache, filter="data")
    if not (root / "test" / "orm").is_dir():
        sys.exit(f"{archive} did not unpack to {root}/test/orm")
    done.touch()
    return root


def load_known_differences():
    """``{pattern: reason}`` from known_differences.txt (``pattern  # reason``)."""
    known = {}
    for line in KNOWN_DIFFERENCES.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        pattern, sep, reason = line.partition(" # ")
        if not sep or not reason.strip():
            sys.exit(f"known_differences.txt: entry without a reason: {line!r}")
        known[pattern.strip()] = reason.strip()
    return known


def known_reason(nodeid, known):
    for pattern, reason in known.items():
        if fnmatch.fnmatchcase(nodeid, pattern):
            return reason
    return None


def outcomes(results_file):
    """nodeid -> passed|failed|error|skipped|xfailed|xpassed from the phase records.

    Like pytest's own summary: a failing setup or teardown is an error, a failing
    call is a failure.
    """
    result = {}
    for line in results_file.read_text().splitlines():
        rec = json.loads(line)
        nodeid, when, outcome = rec["nodeid"], rec["when"], rec["outcome"]
        current = result.get(nodeid)
        if outcome == "failed":
            new = "failed" if when == "call" else "error"
        elif outcome == "skipped":
            new = "xfailed" if rec["xfail"] else "skipped"
        elif when == "call":
            new = "xpassed" if rec["xfail"] else "passed"
        else:
            new = None  # passing setup/teardown says nothing alone
        if new is None:
            continue
        if current in ("error", "failed") and new not in ("error", "failed"):
            continue
        if current == "failed" and new == "error":
            continue  # keep the call failure; pytest counts both, we name one
        result[nodeid] = new
    return result


def session_counts(results_file):
    """nodeid -> how many Sessions the test constructed (setup to teardown)."""
    counts = {}
    for line in results_file.read_text().splitlines():
        rec = json.loads(line)
        if "sessions" in rec:
            counts[rec["nodeid"]] = rec["sessions"]
    return counts


def sum_stats(stats_dir):
    """Add up the per-process counters (and turbosession.stats(), when it exists)."""
    counters, turbo = Counter(), Counter()
    files = sorted(stats_dir.glob("*.json"))
    for path in files:
        payload = json.loads(path.read_text())
        counters.update(payload["counters"])
        turbo.update(_flatten(payload.get("turbosession_stats", {})))
    return len(files), counters, turbo


def _flatten(stats, prefix=""):
    """``{"fast": 3, "fallback": {"inheritance": 2}}`` -> ``fast``, ``fallback.inheritance``."""
    flat = {}
    for key, value in stats.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float)):
            flat[f"{prefix}{key}"] = value
    return flat


def share_lines(turbo):
    """The share of flushes and of each kind of load that took turbosession's
    path, and the fallbacks by reason, from the summed ``stats()``."""
    lines = []
    for label, prefix in (
        ("flushes", ""),
        ("loads: get()", "loads.get."),
        ("loads: query entities (row loop)", "loads.instances."),
    ):
        # get(): "fast" (identity-map hits) plus "loaded" (misses loaded
        # with turbosession's per-mapper statement)
        hits, loaded = turbo.get(f"{prefix}fast", 0), turbo.get(f"{prefix}loaded", 0)
        fast = hits + loaded
        fallbacks = {
            key[len(f"{prefix}fallback."):]: n
            for key, n in turbo.items()
            if key.startswith(f"{prefix}fallback.")
        }
        total = fast + sum(fallbacks.values())
        share = f"{100 * fast / total:.0f}%" if total else "-"
        reasons = ", ".join(f"{k} {n}" for k, n in sorted(fallbacks.items(), key=lambda kv: -kv[1]))
        direct = turbo.get(f"{prefix}direct", 0)
        cursor = turbo.get(f"{prefix}cursor", 0)
        cursor_fallbacks = ", ".join(
            f"{key[len(f'{prefix}cursor_fallback.'):]} {n}"
            for key, n in sorted(turbo.items(), key=lambda kv: -kv[1])
            if key.startswith(f"{prefix}cursor_fallback.")
        )
        detail = (
            f" ({hits} from the identity map, {loaded} loaded, {direct} of them without "
            f"Session.execute's per-call setup, {cursor} of those straight to the DBAPI "
            f"cursor" + (f"; the others by {cursor_fallbacks}" if cursor_fallbacks else "") + ")"
            if loaded else ""
        )
        lines.append(
            f"{label}: {fast} of {total} on turbosession's path ({share}){detail}"
            + (f"; fallbacks: {reasons}" if reasons else "")
        )
    direct = turbo.get("loads.execute.direct", 0)
    execute_fallbacks = {
        key[len("loads.execute.fallback."):]: n
        for key, n in turbo.items()
        if key.startswith("loads.execute.fallback.")
    }
    total = direct + sum(execute_fallbacks.values())
    if total:
        reasons = ", ".join(
            f"{k} {n}" for k, n in sorted(execute_fallbacks.items(), key=lambda kv: -kv[1])
        )
        lines.append(
            f"loads: Session.execute(): {direct} of {total} without stock's "
            f"_execute_internal setup ({100 * direct / total:.0f}%)"
            + (f"; the others by {reasons}" if reasons else "")
        )
    rows, to_stock = turbo.get("loads.instances.rows", 0), turbo.get("loads.instances.rows_to_stock", 0)
    if rows or to_stock:
        lines.append(
            f"loads: rows of those entities: {rows} by turbosession's loop, "
            f"{to_stock} handed to stock's closure"
        )
    collections = turbo.get("loads.instances.collections", 0)
    scalars = turbo.get("loads.instances.scalars", 0)
    steps = "loads.instances.collections_to_stock."
    others = {key[len(steps):]: n for key, n in turbo.items() if key.startswith(steps)}
    if collections or scalars or others:
        lines.append(
            f"loads: eager steps: {collections} collection and {scalars} scalar steps "
            f"on the loop, {sum(others.values())} not"
            + (" (" + ", ".join(f"{k} {n}" for k, n in sorted(others.items())) + ")"
               if others else "")
        )
    return lines


def run_mode(mode, root, args, version, workdir):
    results = workdir / f"{mode}.results.jsonl"
    log = workdir / f"{mode}.log"
    stats_dir = workdir / f"{mode}.stats"
    stats_dir.mkdir()
    env = dict(os.environ)
    env.pop("TURBOSESSION_NO_EXTENSIONS", None)
    if mode == "pure":
        env["TURBOSESSION_NO_EXTENSIONS"] = "1"
    env["TURBOSESSION_CONFORMANCE_MODE"] = mode
    env["TURBOSESSION_CONFORMANCE_RESULTS"] = str(results)
    env["TURBOSESSION_CONFORMANCE_STATS_DIR"] = str(stats_dir)
    env["TURBOSESSION_CONFORMANCE_SQLALCHEMY_VERSION"] = version
    # `-s` for the xdist workers too, which are started without the flag:
    # SQLAlchemy's conftest puts the sdist's lib/ first unless no_user_site
    env["PYTHONNOUSERSITE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE), env.get("PYTHONPATH")) if p
    )
    cmd = [
        sys.executable, "-s", "-m", "pytest", *args.tests,
        "-p", "conformance_plugin", "-p", "no:cacheprovider", "-p", "no:benchmark",
        "-q", "--maxfail=0",
    ]
    if args.workers:
        cmd += ["-n", str(args.workers)]
    if args.dburi:
        cmd += ["--dburi", args.dburi]
    cmd += args.pytest_args
    print(f"[{mode}] {' '.join(cmd)}\n[{mode}] log: {log}", flush=True)
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run(cmd, cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    elapsed = time.monotonic() - start
    per_test = outcomes(results) if results.exists() else {}
    counts = Counter(per_test.values())
    print(
        f"[{mode}] {counts['passed']} passed, {counts['failed']} failed, "
        f"{counts['error']} errors, {counts['skipped']} skipped, "
        f"{counts['xfailed']} xfailed, {counts['xpassed']} xpassed "
        f"in {elapsed:.0f}s (pytest exit {proc.returncode})",
        flush=True,
    )
    processes, counters, turbo = sum_stats(stats_dir)
    print(
        f"[{mode}] sessions: {counters['sessions_created']} created "
        f"({counters['sessions_turbosession']} turbosession, "
        f"{counters['sessions_stock']} stock), "
        f"{counters['identity_maps_checked']} identity maps checked, "
        f"{processes} test processes",
        flush=True,
    )
    if turbo:
        print(f"[{mode}] turbosession.stats(): "
              + ", ".join(f"{k}={v}" for k, v in sorted(turbo.items())), flush=True)
        for line in share_lines(turbo):
            print(f"[{mode}] {line}", flush=True)
    return {
        "returncode": proc.returncode, "outcomes": per_test, "log": log,
        "sessions": session_counts(results) if results.exists() else {},
        "counters": counters, "processes": processes, "seconds": elapsed,
        "turbo": turbo,
    }


def verdict(mode, run, known, control):
    """Problems that make this mode fail (empty list: the mode is green)."""
    problems = []
    if run["returncode"] not in (0, 1):
        problems.append(f"pytest exited {run['returncode']} (see {run['log']})")
    if not run["outcomes"]:
        problems.append("no test results were recorded")
    counters = run["counters"]
    if run["processes"] == 0 or counters["sessions_created"] == 0:
        problems.append("the plugin recorded no sessions: substitution unverified")
    elif mode in TURBO_MODES and counters["sessions_stock"]:
        problems.append(f"{counters['sessions_stock']} stock sessions were made")
    elif mode == "stock" and counters["sessions_turbosession"]:
        problems.append("the control made turbosession sessions")
    took_turbo_path = {k: v for k, v in run.get("turbo", {}).items() if v}
    if mode == "stock" and took_turbo_path:
        problems.append(f"stock sessions took turbosession's paths: {took_turbo_path}")
    bad = sorted(n for n, o in run["outcomes"].items() if o in ("failed", "error"))
    unexplained = [n for n in bad if mode == "stock" or known_reason(n, known) is None]
    if run["returncode"] == 1 and not bad:
        problems.append(f"pytest reported failures that were not recorded (see {run['log']})")
    for nodeid in unexplained:
        problems.append(f"{run['outcomes'][nodeid]}: {nodeid}")
    if mode in TURBO_MODES:
        for pattern in known:
            ran = [n for n in run["outcomes"] if fnmatch.fnmatchcase(n, pattern)]
            if ran and all(run["outcomes"][n] == "passed" for n in ran):
                print(f"[{mode}] known difference now passes, drop it: {pattern}")
        if control is None:  # else the comparison below names them
            for nodeid in bad:
                reason = known_reason(nodeid, known)
                if reason:
                    print(f"[{mode}] known difference: {nodeid} ({reason})")
        else:
            lost = sorted(
                n for n, o in control["outcomes"].items()
                if o == "passed" and run["outcomes"].get(n) != "passed"
            )
            print(f"[{mode}] {len(lost)} tests pass in the control but not here"
                  + (":" if lost else ""))
            for nodeid in lost:
                got = run["outcomes"].get(nodeid, "not run")
                note = known_reason(nodeid, known)
                print(f"    {got}: {nodeid}" + (f"  [known: {note}]" if note else ""))
            # informational: a test that passes both ways but builds a different
            # number of sessions hints at a behaviour difference worth a look
            differing = sorted(
                n for n, c in control.get("sessions", {}).items()
                if control["outcomes"].get(n) == "passed"
                and run["outcomes"].get(n) == "passed"
                and run.get("sessions", {}).get(n, c) != c
            )
            if differing:
                print(f"[{mode}] {len(differing)} passing tests made a different "
                      "number of sessions than in the control:")
                for nodeid in differing:
                    print(f"    {control['sessions'][nodeid]} -> "
                          f"{run['sessions'][nodeid]}: {nodeid}")
            missing = [n for n in lost if n not in run["outcomes"]]
            if missing:
                problems.append(f"{len(missing)} tests of the control did not run")
    return problems


def _modes(text):
    if text == "all":
        return MODES
    modes = tuple(text.split(","))
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise argparse.ArgumentTypeError(f"unknown mode {','.join(unknown)!r}")
    return tuple(m for m in MODES if m in modes)  # the control first


def parse_args(argv):
    if "--" in argv:
        split = argv.index("--")
        argv, extra = argv[:split], argv[split + 1:]
    else:
        extra = []
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", type=_modes, default=MODES,
                        help="stock, compiled, pure, a comma list of them, or all (default)")
    parser.add_argument("--dburi", help="database URL, passed to SQLAlchemy's plugin")
    parser.add_argument("--workers", type=int, default=2,
                        help="pytest-xdist workers (0: no xdist); default 2")
    # test/ext: the extensions on the ORM (sharding, association proxies,
    # hybrids, mutable types, baked queries, automap); its asyncio tests need
    # an async driver and skip on the default one (`--tests test/ext/asyncio
    # -- --db aiosqlite` runs them)
    parser.add_argument("--tests", nargs="+", default=["test/orm", "test/ext"],
                        help="paths inside the sdist; default test/orm test/ext")
    parser.add_argument("--workdir", help="where logs and results go (default: a temp dir)")
    args = parser.parse_args(argv)
    args.pytest_args = extra
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    version = metadata.version("sqlalchemy")
    root = sdist_root(version)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="turbosession-conformance-"))
    workdir.mkdir(parents=True, exist_ok=True)
    known = load_known_differences()
    modes = args.mode
    print(f"sqlalchemy {version} suite at {root}; results in {workdir}", flush=True)

    runs = {mode: run_mode(mode, root, args, version, workdir) for mode in modes}
    failed = False
    print("\n=== turbosession conformance summary ===")
    for mode, run in runs.items():
        problems = verdict(mode, run, known, runs.get("stock"))
        status = "FAIL" if problems else "ok"
        print(f"[{mode}] {status} ({run['seconds']:.0f}s)")
        for problem in problems[:200]:
            print(f"    {problem}")
        if len(problems) > 200:
            print(f"    ... and {len(problems) - 200} more")
        failed |= bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
