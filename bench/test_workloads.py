"""The unit-of-work workloads under pytest-benchmark, every implementation side by side.

The workloads are ``turbosession.benchmarks.workloads`` (shared with
``python -m turbosession bench``).  Each round: setup untimed, the step timed,
then the result verified (a wrong result fails the benchmark) and torn down.
"""

import gc

from turbosession.benchmarks import implementations as impls
from turbosession.benchmarks.workloads import WORKLOADS


def pytest_generate_tests(metafunc):
    if "workload_cls" not in metafunc.fixturenames:
        return
    available = impls.session_classes()
    params, ids = [], []
    databases = ["sqlite"] + (["postgresql"] if metafunc.config.getoption("--pg-url") else [])
    for database in databases:
        for workload_cls in WORKLOADS:
            for name in workload_cls(None, 1).implementations(available):
                if name == impls.PONY and database != "sqlite":
                    continue  # Pony's PostgreSQL provider needs psycopg2
                params.append((database, workload_cls, name))
                ids.append(f"{database}-{workload_cls.name}-{name}")
    metafunc.parametrize(("database", "workload_cls", "implementation"), params, ids=ids)


def test_workload(benchmark, databases, session_classes, bench_settings,
                  database, workload_cls, implementation):
    workload = workload_cls(databases(database), bench_settings["n"])
    case = workload.case(implementation, session_classes)
    benchmark.group = f"{database}-{workload.name}"
    benchmark.extra_info.update(implementation=implementation, ops=case.ops, unit=workload.unit)

    def setup():
        state = case.setup()
        gc.collect()
        return (state,), {}

    def verify_and_teardown(state):
        try:
            case.verify(state)
        finally:
            case.teardown(state)

    benchmark.pedantic(
        case.run,
        setup=setup,
        teardown=verify_and_teardown,
        rounds=bench_settings["rounds"],
        warmup_rounds=bench_settings["warmup_rounds"],
    )
