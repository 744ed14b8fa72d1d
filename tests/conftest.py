"""Fixtures shared by turbosession's tests.

``impl`` runs a test once per implementation (compiled and pure); compiled
cases skip with the reason when the extension is not built, unless
``TURBOSESSION_REQUIRE_EXTENSIONS`` is set (CI), where that is a failure.
``session_cls`` is turbosession's Session pinned to that implementation.
``engine`` runs a test once per database backend (tests/backends.py).
"""

import pytest

import backends
import turbosession
from turbosession import _impl
from turbosession._env import flag

REQUIRE_EXTENSIONS = flag("TURBOSESSION_REQUIRE_EXTENSIONS")

# an application's own suite, which test_testing_plugin.py runs in a subprocess
collect_ignore = ["example_project"]


@pytest.fixture(scope="session", params=["compiled", "pure"])
def impl(request):
    bundle = getattr(_impl, request.param)
    if bundle is None:
        reason = f"compiled extensions not built: {_impl.compiled_import_error}"
        if REQUIRE_EXTENSIONS:
            pytest.fail(reason)
        pytest.skip(reason)
    return bundle


@pytest.fixture(scope="session")
def session_cls(impl):
    return type(f"Session_{impl.name}", (turbosession.Session,), {"_turbo": impl})


@pytest.fixture(params=backends.BACKENDS)
def engine(request):
    """An empty database: SQLite in memory, and PostgreSQL when configured.

    The PostgreSQL case gets a schema of its own that is dropped afterwards
    (see tests/backends.py); it skips when no server is configured, or fails
    when ``TURBOSESSION_REQUIRE_PG`` is set.
    """
    with backends.backend_engine(request.param) as eng:
        yield eng


def pytest_terminal_summary(terminalreporter):
    """The fault sweep's totals (tests/test_fault_sweep.py), summed over its
    tests; under pytest-xdist the workers' records arrive with the reports."""
    cases = divergences = order_dependent = tests = 0
    for outcome in ("passed", "failed"):
        for report in terminalreporter.stats.get(outcome, []):
            if getattr(report, "when", None) != "call":
                continue
            for name, value in report.user_properties:
                if name == "fault_sweep":
                    tests += 1
                    cases += value["cases"]
                    divergences += value["divergences"]
                    order_dependent += value["order_dependent"]
    if tests:
        terminalreporter.write_line(
            f"fault sweep: {cases} cases (scenario x fault x k) in {tests} tests, "
            f"{divergences} divergences from stock ({order_dependent} cases compared up to the "
            f"failure: stock's own outcome depends on set order there)"
        )
