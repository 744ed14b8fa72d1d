"""pytest-benchmark configuration for bench/: options, databases, the ratio summary.

Run with ``pytest bench``.  ``--bench-n`` sets N (default 10,000),
``--pg-url`` / ``TURBOSESSION_PG_URL`` adds PostgreSQL next to SQLite,
``--bench-rounds`` / ``--bench-warmup`` set the pedantic rounds.  On a busy
shared machine, ``--benchmark-timer time.process_time`` times SQLite in CPU
time as ``python -m turbosession bench`` does (not for PostgreSQL, whose
server works in another process).  At the end a
summary gives, per group, every implementation's median per unit and its
ratio to the stock Session measured in the same run.
"""

import os

import pytest

from turbosession.benchmarks import implementations as impls
from turbosession.benchmarks.cli import DEFAULT_N, DEFAULT_ROUNDS, DEFAULT_WARMUP
from turbosession.benchmarks.database import SQLITE_URL, Database


def pytest_addoption(parser):
    group = parser.getgroup("turbosession benchmarks")
    group.addoption("--bench-n", type=int, default=DEFAULT_N, help="objects per workload")
    group.addoption("--bench-rounds", type=int, default=DEFAULT_ROUNDS, help="timed rounds")
    group.addoption("--bench-warmup", type=int, default=DEFAULT_WARMUP, help="warm-up rounds")
    group.addoption("--pg-url", default=os.environ.get("TURBOSESSION_PG_URL"),
                    help="PostgreSQL URL (psycopg 3) to run next to SQLite")


def database_urls(config):
    urls = {"sqlite": SQLITE_URL}
    if config.getoption("--pg-url"):
        urls["postgresql"] = config.getoption("--pg-url")
    return urls


@pytest.fixture(scope="session")
def bench_settings(request):
    config = request.config
    return {
        "n": config.getoption("--bench-n"),
        "rounds": config.getoption("--bench-rounds"),
        "warmup_rounds": config.getoption("--bench-warmup"),
    }


@pytest.fixture(scope="session")
def databases(request):
    """name -> Database, opened on first use and dropped at the end."""
    urls = database_urls(request.config)
    opened = {}

    def get(name):
        if name not in opened:
            opened[name] = Database(urls[name])
        return opened[name]

    yield get
    for db in opened.values():
        db.dispose()


@pytest.fixture(scope="session")
def session_classes():
    return impls.session_classes()


def pytest_terminal_summary(terminalreporter, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not session.benchmarks:
        return
    groups = {}
    for bench in session.benchmarks:
        if bench.stats and "implementation" in bench.extra_info:
            groups.setdefault(bench.group, {})[bench.extra_info["implementation"]] = bench
    if not groups:
        return
    write = terminalreporter.write_line
    terminalreporter.section("turbosession: median per unit, ratio to stock (same run)")
    for group, benches in groups.items():
        stock = benches.get(impls.STOCK)
        cells = []
        for name in impls.ORDER:
            bench = benches.get(name)
            if bench is None:
                continue
            ops = bench.extra_info["ops"]
            cell = f"{name} {bench.stats.median * 1e6 / ops:,.3f} us"
            if stock is not None and name != impls.STOCK:
                cell += f" ({stock.stats.median / bench.stats.median:.2f}x)"
            cells.append(cell)
        unit = next(iter(benches.values())).extra_info["unit"]
        write(f"{group} (per {unit}): " + "; ".join(cells))
