"""Side-by-side runs of one scenario on stock SQLAlchemy and on turbosession.

A scenario is a function ``(session_cls, engine, log) -> None`` that drives a
session and calls ``log.note(...)`` with whatever a program could observe.
The recorder also captures every statement and its parameters sent to the
database, twice: as Core's ``before_cursor_execute`` event reports them, and
as the DBAPI cursor itself receives them (``execute`` or ``executemany``, the
statement, the parameters), through the cursor classes the test engines'
DBAPI connections are made with (tests/backends.py).  With
``engine_events=False`` only the cursor's record is kept and the engine has
no listener at all, as in an application, so that turbosession's direct
emission (``turbosession.emission``) is what the record shows.
``assert_same_as_stock`` runs the scenario on fresh tables with stock
``sqlalchemy.orm.Session`` and with the session class under test and
compares the two records entry by entry.
"""

import importlib
import itertools
import os
import re
import sqlite3

import pytest
from sqlalchemy import event, inspect, orm

REQUIRE_ALL_TESTS = bool(os.environ.get("TURBOSESSION_REQUIRE_ALL_TESTS"))


def optional_package(name, extra):
    """Import a test dependency that the lean ``test`` extra leaves out.

    Without it the test (or, at module level, the module) skips, naming the
    extra that brings it: the wheels' tests install only pure-Python packages.
    ``TURBOSESSION_REQUIRE_ALL_TESTS`` (CI) turns the skip into the ImportError.
    """
    if REQUIRE_ALL_TESTS:
        return importlib.import_module(name)
    return pytest.importorskip(name, reason=f"{name} is not installed (turbosession[{extra}])")


def object_state(obj):
    """The ORM state name of an object, as ``inspect()`` reports it."""
    insp = inspect(obj)
    for name in ("transient", "pending", "persistent", "deleted", "detached"):
        if getattr(insp, name):
            return name
    raise AssertionError(f"{obj!r} is in no known state")


# where the recording cursors note what they receive: the entries of the
# Recorder in use, else None (tests run one at a time in a process)
_cursor_entries = None


def _record_cursor_call(method, args):
    if _cursor_entries is not None:
        statement, parameters = args[0], args[1] if len(args) > 1 else None
        if isinstance(parameters, (list, tuple, dict)) or parameters is None:
            shown = repr(parameters)
        else:
            shown = f"<{type(parameters).__name__}>"
        _cursor_entries.append(("cursor", method, statement, shown))


class RecordingSQLiteCursor(sqlite3.Cursor):
    """sqlite3's cursor, noting each ``execute``/``executemany`` first, and
    each read of ``lastrowid``."""

    def execute(self, *args):
        _record_cursor_call("execute", args)
        return super().execute(*args)

    def executemany(self, *args):
        _record_cursor_call("executemany", args)
        return super().executemany(*args)

    @property
    def lastrowid(self):
        # Core reads it after each single-row INSERT into a table with an
        # autoincrement column, whether or not the key was given
        if _cursor_entries is not None:
            _cursor_entries.append(("cursor", "lastrowid"))
        return sqlite3.Cursor.lastrowid.__get__(self)


class RecordingSQLiteConnection(sqlite3.Connection):
    """sqlite3's connection whose cursors record (``factory`` of ``connect``)."""

    def cursor(self, factory=RecordingSQLiteCursor):
        return super().cursor(factory)


def recording_psycopg_cursor():
    """psycopg's cursor class, noting each ``execute``/``executemany`` first
    (``cursor_factory`` of ``psycopg.connect``)."""
    global _RecordingPsycopgCursor
    if _RecordingPsycopgCursor is None:
        import psycopg

        class RecordingPsycopgCursor(psycopg.Cursor):
            def execute(self, *args, **kw):
                _record_cursor_call("execute", args)
                return super().execute(*args, **kw)

            def executemany(self, *args, **kw):
                _record_cursor_call("executemany", args)
                return super().executemany(*args, **kw)

        _RecordingPsycopgCursor = RecordingPsycopgCursor
    return _RecordingPsycopgCursor


_RecordingPsycopgCursor = None


class Recorder:
    def __init__(self, engine, engine_events=True):
        self.entries = []
        self.engine = engine
        self.engine_events = engine_events

    def note(self, *what):
        self.entries.append(what)

    def states(self, session, **objects):
        """Note each named object's state and membership, and the session's sets."""
        for name, obj in objects.items():
            self.note(name, object_state(obj), obj in session)
        for label in ("new", "dirty", "deleted"):
            members = getattr(session, label)
            self.note(label, sorted(_label(o, objects) for o in members))

    def __enter__(self):
        global _cursor_entries
        if self.engine_events:
            event.listen(self.engine, "before_execute", self._execute)
            event.listen(self.engine, "before_cursor_execute", self._sql)
        _cursor_entries = self.entries
        return self

    def __exit__(self, *exc):
        global _cursor_entries
        _cursor_entries = None
        if self.engine_events:
            event.remove(self.engine, "before_execute", self._execute)
            event.remove(self.engine, "before_cursor_execute", self._sql)

    def cursor_calls(self):
        """The entries the DBAPI cursors noted."""
        return [entry for entry in self.entries if entry[0] == "cursor"]

    def _execute(self, conn, clauseelement, multiparams, params, execution_options):
        # the key order of the parameter dictionaries a listener gets (their
        # values and row order are in the "sql" entry: stock orders the rows
        # of relationship statements by set order, which is by memory address)
        self.note("execute keys", sorted({tuple(p) for p in multiparams}), list(params))

    def _sql(self, conn, cursor, statement, parameters, context, executemany):
        self.note("sql", statement, repr(parameters), executemany)


def _label(obj, objects):
    for name, candidate in objects.items():
        if candidate is obj:
            return name
    return repr(obj)


def scrub(text):
    """``text`` without memory addresses, which differ from run to run."""
    return re.sub(r"0x[0-9a-fA-F]+", "0x?", text)


def normalize_error(exc):
    """Exception type and message without memory addresses or session ids."""
    text = scrub(str(exc))
    text = re.sub(r"session '\d+'", "session '?'", text)
    text = re.sub(r"is '\d+'", "is '?'", text)
    return type(exc), text


def run(scenario, session_cls, engine, metadata, engine_events=True):
    metadata.drop_all(engine)
    metadata.create_all(engine)
    try:
        with Recorder(engine, engine_events) as log:
            scenario(session_cls, engine, log)
        return log.entries
    finally:
        orm.close_all_sessions()
        metadata.drop_all(engine)


def unwatched(scenario):
    """``scenario`` run with ``watch=False``: the same work with no listener
    of the scenario's own, for ``assert_same_as_stock``."""
    def run(session_cls, engine, log):
        scenario(session_cls, engine, log, watch=False)

    run.__name__ = scenario.__name__
    return run


def assert_same_as_stock(scenario, session_cls, engine, metadata, engine_events=True):
    expected = run(scenario, orm.Session, engine, metadata, engine_events)
    actual = run(scenario, session_cls, engine, metadata, engine_events)
    assert actual == expected
    return actual


def set_order_sorted(entries, groups):
    """``entries`` with each run of set-ordered events sorted.

    Stock fires some events for a set of states, so their order among
    themselves follows memory addresses.  ``groups`` maps such an event name
    to the name of its group; a run of consecutive ``("event", name, ...)``
    entries of one group is compared sorted.
    """

    def group_of(entry):
        return groups.get(entry[1]) if entry[0] == "event" else None

    out = []
    for group, run_ in itertools.groupby(entries, key=group_of):
        run_ = list(run_)
        out.extend(sorted(run_, key=repr) if group else run_)
    return out


def selectin_hook_sides(monkeypatch, session_cls, engine, metadata, seed, stock_attr, method, load):
    """Which side of an import-time selectin hook runs, and what it loads.

    Spies on ``turbosession.instances.<stock_attr>`` (stock's method, which
    the hook calls for other sessions) and on the session bundle's
    ``instances.<method>``; seeds fresh tables with a stock session, then runs
    ``load(session)`` with a stock session, a turbosession session and one
    with the pure loop on.  Returns ``{label: (load's value, [sides run])}``
    and whether the bundle's loop is compiled."""
    from sqlalchemy.orm import Session
    from turbosession import instances

    calls = []
    stock = getattr(instances, stock_attr)
    ours = getattr(session_cls._turbo.instances, method)

    def spy_stock(*args):
        calls.append("stock")
        return stock(*args)

    def spy_ours(*args):
        calls.append("turbosession")
        return ours(*args)

    monkeypatch.setattr(instances, stock_attr, spy_stock)
    monkeypatch.setattr(session_cls._turbo.instances, method, spy_ours)
    compiled = session_cls._turbo.instances._is_compiled()
    metadata.create_all(engine)
    try:
        with Session(engine) as session:
            seed(session)
        loaded = {}
        for label, cls, loop in (("stock", Session, False), ("turbosession", session_cls, False),
                                 ("turbosession, loop on", session_cls, True)):
            monkeypatch.setattr(instances, "PURE_LOOP", loop)
            calls.clear()
            with cls(engine) as session:
                loaded[label] = (load(session), list(calls))
    finally:
        metadata.drop_all(engine)
    return loaded, compiled
