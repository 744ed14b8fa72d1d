"""pytest plugin that runs SQLAlchemy's own test suite on turbosession's Session.

``run.py`` loads it with ``-p conformance_plugin`` from the root of SQLAlchemy's
unpacked sdist, so it is imported before SQLAlchemy's ``test/conftest.py`` and
before any test module.  ``TURBOSESSION_CONFORMANCE_MODE`` says what to run:

``stock``
    the control: nothing is substituted and every session the suite makes must
    be stock SQLAlchemy's;
``compiled`` / ``pure``
    turbosession's Session replaces SQLAlchemy's (``substitute()``, the one
    place that does it) and every session the suite makes must be
    turbosession's, running the hot paths of that mode.

Why so much checking: a green run that secretly exercised stock SQLAlchemy
(the plugin loaded too late, a test module holding the stock class, the
installed SQLAlchemy shadowed by the sdist's ``lib/``) would prove nothing, so
each of those is an error, not a warning.

Per test, every Session constructed is recorded (SQLAlchemy registers each one
in ``sqlalchemy.orm.session._sessions``) and checked at teardown; a wrong one
makes that test error.  Outcomes go to ``TURBOSESSION_CONFORMANCE_RESULTS``
(JSON lines, written by the xdist controller) and counters to
``TURBOSESSION_CONFORMANCE_STATS_DIR`` (one JSON file per process) for run.py
to compare and sum.  Once turbosession grows a ``stats()`` function (flushes on
the fast path / fallbacks by reason), its result is added to those counters.
"""

import json
import os
import sys
import weakref

import pytest

MODES = ("stock", "compiled", "pure")

MODE = os.environ.get("TURBOSESSION_CONFORMANCE_MODE", "")

class _Expectations:
    """What the sessions of this run must be; filled in by ``pytest_configure``."""

    # the stock classes no test module may hold once substituted
    stock_classes = ()
    session_cls = None
    identity_map_cls = None


expect = _Expectations()

# sessions constructed since the last teardown check: (class, weakref)
_constructed = []

counters = {
    "sessions_created": 0,
    "sessions_turbosession": 0,
    "sessions_stock": 0,
    "identity_maps_checked": 0,
}


class _RecordingRegistry(weakref.WeakValueDictionary):
    """``sqlalchemy.orm.session._sessions`` that also notes who was constructed.

    ``Session.__init__`` stores every new session here, so it sees sessions made
    through any path (fixture_session, a bare Session, sessionmaker, a subclass
    defined in a test); otherwise it is the same weak registry.
    """

    def __setitem__(self, key, session):
        _constructed.append((type(session), weakref.ref(session)))
        super().__setitem__(key, session)


def substitute():
    """Put turbosession's classes wherever SQLAlchemy's test suite gets a session.

    The substitution of ``turbosession.testing``, the plugin users run their
    own suites with: ``Session`` and ``sessionmaker``'s default class, and the
    shipped ``turbosession.ext.horizontal_shard.ShardedSession`` and
    ``AsyncSession``'s sync class.  It imports those extensions before
    replacing anything, so ``test/ext`` tests the classes users get; left to
    a test module's import, ``horizontal_shard`` would define its
    ``ShardedSession`` over the already substituted ``Session``, a class
    nobody ships.  A test harness: the product itself patches nothing.
    """
    from sqlalchemy.ext import horizontal_shard

    from turbosession import testing
    from turbosession.ext import horizontal_shard as ts_horizontal_shard

    stock_sharded = horizontal_shard.ShardedSession
    testing.substitute()
    if horizontal_shard.ShardedSession is not ts_horizontal_shard.ShardedSession:
        raise pytest.UsageError(
            "sqlalchemy.ext.horizontal_shard.ShardedSession was not substituted"
        )
    return stock_sharded


def _install_registry():
    # the registry object is shared (sqlalchemy.orm.state holds it too), so it
    # keeps its identity and only gains the recording __setitem__ (in place of
    # the counting one turbosession.testing's substitution gave it)
    from sqlalchemy.orm import session as orm_session
    from sqlalchemy.orm import state as orm_state

    assert orm_state._sessions is orm_session._sessions
    orm_session._sessions.__class__ = _RecordingRegistry


def _is_controller(config):
    """The xdist controller runs no tests; only workers (or a plain run) check."""
    return not hasattr(config, "workerinput") and config.getoption("dist", "no") != "no"


def pytest_configure(config):
    if MODE not in MODES:
        raise pytest.UsageError(
            f"TURBOSESSION_CONFORMANCE_MODE must be one of {MODES}, got {MODE!r}"
        )
    import sqlalchemy
    from sqlalchemy.orm import session as orm_session

    sa_dir = os.path.dirname(os.path.abspath(sqlalchemy.__file__))
    root = str(config.rootpath)
    if os.path.commonpath([sa_dir, root]) == root:
        raise pytest.UsageError(
            f"sqlalchemy was imported from the sdist ({sa_dir}), not the "
            "installed package; run pytest as `python -s -m pytest`"
        )
    wanted = os.environ.get("TURBOSESSION_CONFORMANCE_SQLALCHEMY_VERSION")
    if wanted and sqlalchemy.__version__ != wanted:
        raise pytest.UsageError(
            f"installed sqlalchemy {sqlalchemy.__version__} but the suite is {wanted}"
        )

    if MODE == "stock":
        from sqlalchemy.orm.identity import _WeakInstanceDict

        # the control runs with turbosession imported: whatever it sets up at
        # import (a hook into SQLAlchemy) must leave stock sessions as they are
        import turbosession  # noqa: F401

        expect.session_cls = orm_session.Session
        expect.identity_map_cls = _WeakInstanceDict
    else:
        import turbosession
        from turbosession import _impl

        if _impl.active.name != MODE:
            raise pytest.UsageError(
                f"mode {MODE} but turbosession's active implementation is "
                f"{_impl.active.name} (compiled import error: "
                f"{_impl.compiled_import_error}; "
                f"TURBOSESSION_NO_EXTENSIONS={os.environ.get('TURBOSESSION_NO_EXTENSIONS')!r})"
            )
        expect.session_cls = turbosession.Session
        # compiled and pure are one module, built or loaded from its source
        expect.identity_map_cls = _impl.active.identity.WeakIdentityMap
        expect.stock_classes = (orm_session.Session, substitute())
    _install_registry()


def pytest_report_header(config):
    import sqlalchemy
    from sqlalchemy.util import _has_cython

    line = (
        f"turbosession conformance: mode={MODE}; sqlalchemy {sqlalchemy.__version__} "
        f"from {os.path.dirname(sqlalchemy.__file__)} "
        f"(cython extensions: {_has_cython._CYEXTENSION_MSG}); "
        f"Session is {expect.session_cls.__module__}.{expect.session_cls.__qualname__}"
    )
    return [line]


def _is_turbosession(cls):
    # by ancestry: sessionmaker() wraps its class_ in a subclass it names after
    # it but defines in sqlalchemy.orm.session
    return any(base.__module__.startswith("turbosession") for base in cls.__mro__)


def _session_problem(cls, session):
    """Why this session is not what the mode requires, or None."""
    if MODE == "stock":
        if _is_turbosession(cls):
            return f"stock run made a turbosession session {cls!r}"
    else:
        from turbosession import TurboSessionMixin, _impl

        if not issubclass(cls, TurboSessionMixin):
            return f"made a session of class {cls!r}, which is not turbosession's"
        if cls._turbo is not _impl.active:
            return f"session class {cls!r} runs {cls._turbo.name}, not {MODE}"
    if session is not None:
        if type(session.identity_map) is not expect.identity_map_cls:
            return (
                f"session {cls!r} has identity map {type(session.identity_map)!r}, "
                f"expected {expect.identity_map_cls!r}"
            )
        counters["identity_maps_checked"] += 1
    return None


def _check_constructed():
    problems = []
    for cls, ref in _constructed:
        counters["sessions_created"] += 1
        if _is_turbosession(cls):
            counters["sessions_turbosession"] += 1
        else:
            counters["sessions_stock"] += 1
        problem = _session_problem(cls, ref())
        if problem:
            problems.append(problem)
    _constructed.clear()
    return problems


def _self_test():
    """Make sessions the ways the suite does and check each one."""
    from sqlalchemy import orm
    from sqlalchemy.ext import horizontal_shard
    from sqlalchemy.orm import session as orm_session
    from sqlalchemy.testing import config as sa_config
    from sqlalchemy.testing import fixtures

    def sharded_session():
        return horizontal_shard.ShardedSession(
            shard_chooser=lambda *args, **kw: "only",
            identity_chooser=lambda *args, **kw: ["only"],
            execute_chooser=lambda *args, **kw: ["only"],
            shards={"only": sa_config.db},
        )

    makers = {
        "fixture_session()": fixtures.fixture_session,
        "sqlalchemy.orm.Session(bind)": lambda: orm.Session(sa_config.db),
        "sqlalchemy.orm.session.Session()": lambda: orm_session.Session(),
        "sqlalchemy.orm.sessionmaker()()": lambda: orm.sessionmaker(sa_config.db)(),
        "scoped_session(sessionmaker())()": lambda: orm.scoped_session(
            orm.sessionmaker()
        )(),
        "create_session()": orm.create_session,
        "sqlalchemy.ext.horizontal_shard.ShardedSession()": sharded_session,
    }
    for how, make in makers.items():
        session = make()
        try:
            # ShardedSession: _session_problem checks it has turbosession's mixin
            if (MODE != "stock" and make is not sharded_session
                    and not isinstance(session, expect.session_cls)):
                raise pytest.UsageError(
                    f"{how} made {type(session)!r}, not turbosession's Session"
                )
            problem = _session_problem(type(session), session)
            if problem:
                raise pytest.UsageError(f"{how}: {problem}")
        finally:
            session.close()
    fixtures.close_all_sessions()
    _constructed.clear()


def _stock_names_in_test_modules(test_root):
    """Test modules that kept a reference to stock SQLAlchemy's Session."""
    offenders = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if not os.path.abspath(path).startswith(test_root + os.sep):
            continue
        for attr, value in vars(module).items():
            if any(value is stock for stock in expect.stock_classes):
                offenders.append(f"{name}.{attr}")
    return offenders


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session):
    if not _is_controller(session.config):
        _self_test()


def pytest_collection_finish(session):
    if MODE == "stock" or _is_controller(session.config):
        return
    offenders = _stock_names_in_test_modules(str(session.config.rootpath / "test"))
    if offenders:
        raise pytest.UsageError(
            "test modules imported a stock sqlalchemy Session class before the "
            "substitution: " + ", ".join(offenders)
        )


# sessions the test's call phase constructed (setup is left out: class-level
# fixtures land in whichever test of the class a worker happens to run first)
_sessions_this_test = 0


def _raise_on_wrong_sessions():
    problems = _check_constructed()
    if problems:
        raise AssertionError(
            f"turbosession conformance ({MODE}): " + "; ".join(problems)
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    # checked here too because the test's sessions (fixture_session() ones at
    # least) are still alive, so their identity maps can be looked at
    global _sessions_this_test
    before = len(_constructed)
    try:
        result = yield
    finally:
        _sessions_this_test = len(_constructed) - before
    _raise_on_wrong_sessions()
    return result


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    global _sessions_this_test
    try:
        result = yield
        _raise_on_wrong_sessions()
    finally:
        # travels with the teardown report, so run.py can compare the number of
        # sessions each test made with the control's
        item.user_properties.append(("sessions", _sessions_this_test))
        _sessions_this_test = 0
    return result


def _turbosession_stats():
    """turbosession's flush counters (fast path / fallbacks by reason), if it has them."""
    import turbosession

    stats = getattr(turbosession, "stats", None)
    if stats is None:
        try:
            from turbosession.fastpath import stats
        except ImportError:
            return None
    return stats if callable(stats) else None


def _stats_payload():
    payload = {"mode": MODE, "counters": dict(counters)}
    # in stock mode too: turbosession is imported there, and its counters
    # must stay at zero (nothing of a stock session may take its paths)
    if True:
        stats = _turbosession_stats()
        if stats is not None:
            payload["turbosession_stats"] = stats()
    return payload


def pytest_sessionfinish(session):
    stats_dir = os.environ.get("TURBOSESSION_CONFORMANCE_STATS_DIR")
    if not stats_dir or _is_controller(session.config):
        return
    worker = getattr(session.config, "workerinput", {}).get("workerid", "main")
    with open(os.path.join(stats_dir, f"{worker}.json"), "w") as f:
        json.dump(_stats_payload(), f)


def pytest_runtest_logreport(report):
    """One line per test phase, written where reports arrive (controller or plain run)."""
    path = os.environ.get("TURBOSESSION_CONFORMANCE_RESULTS")
    if not path or os.environ.get("PYTEST_XDIST_WORKER"):
        return
    record = {
        "nodeid": report.nodeid,
        "when": report.when,
        "outcome": report.outcome,
        "xfail": hasattr(report, "wasxfail"),
    }
    sessions = dict(report.user_properties).get("sessions")
    if report.when == "teardown" and sessions is not None:
        record["sessions"] = sessions
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
