"""A short transaction's connection, from acquisition to its return to the pool.

turbosession acquires the root transaction's first connection and commits
and closes it in stock's steps without the session transaction's state
machine (``turbosession.transaction``).  Each scenario runs on stock's
Session and on turbosession's, with no engine listener (so that the session
takes its direct steps, which ``stats()`` confirms) and, separately, with
engine and pool listeners recording their arguments; compared: the DBAPI
connection's ``commit()`` / ``rollback()`` calls (SQLite), the pool's state
and each connection record's after every transaction, the session's
connection and Core transaction as they are left, exceptions.
"""

import sqlite3
import weakref

import pytest
from sqlalchemy import create_engine, event, exc, select
from sqlalchemy.pool import QueuePool, SingletonThreadPool
from sqlalchemy.pool.base import _finalize_fairy

import turbosession
from models import Base, User
from support import (
    RecordingSQLiteConnection,
    assert_same_as_stock,
    normalize_error,
    object_state,
    scrub,
)
from turbosession import transaction

# the log the SQLite connections below note their commit() / rollback() in
_dbapi_log = []
# per DBAPI method, what its next calls do: None succeeds, an exception is
# raised (a test sets the outcomes of the calls it means to fail)
_fail_next = {}


def _outcome(name):
    outcomes = _fail_next.get(name)
    if outcomes:
        failure = outcomes.pop(0)
        if failure is not None:
            raise failure


class TransactionRecordingConnection(RecordingSQLiteConnection):
    """sqlite3's connection noting each ``commit()`` and ``rollback()``
    (whether a transaction was open), failing those a test asks to fail."""

    def commit(self):
        _dbapi_log.append(("dbapi", "commit", self.in_transaction))
        _outcome("commit")
        return super().commit()

    def rollback(self):
        _dbapi_log.append(("dbapi", "rollback", self.in_transaction))
        _outcome("rollback")
        return super().rollback()


@pytest.fixture(params=["rollback", "commit", None], ids=["reset_rollback", "reset_commit", "reset_none"])
def sqlite_engine(request):
    """SQLite in memory whose DBAPI connections note their commits and
    rollbacks, with each reset-on-return the pool offers."""
    engine = create_engine(
        "sqlite://",
        connect_args={"factory": TransactionRecordingConnection},
        pool_reset_on_return=request.param,
    )
    try:
        yield engine
    finally:
        engine.dispose()
        _fail_next.clear()


class Connections:
    """Notes, by ``after_begin`` (a session listener the direct steps keep
    to: it runs where stock runs it), each connection a session begins, and
    describes it later as public API and the pool show it."""

    def __init__(self, log):
        self.log = log
        self.seen = []

    def attach(self, session):
        event.listen(session, "after_begin", self.after_begin)

    def after_begin(self, session, trans, connection):
        self.seen.append((connection, connection.get_transaction()))
        self.log.note("after_begin", connection.in_transaction(), connection.closed)

    def note(self, where):
        for connection, core_trans in self.seen:
            self.log.note(
                where,
                connection.closed,
                connection.invalidated,
                connection._dbapi_connection is None,
                connection.get_transaction() is None,
                core_trans.is_active,
            )
        self.seen.clear()


def _live_proxy_finalizers():
    """The pool proxies' garbage-collection finalizers still armed."""
    count = 0
    for finalizer in list(weakref.finalize._registry):
        found = finalizer.peek()
        if found is not None and found[1] is _finalize_fairy:
            count += 1
    return count


def note_pool(log, where, pool):
    """What is left of the pool after a transaction: its status, each
    record's state (in use, its DBAPI connection, info, finalize callbacks,
    freshness, invalidation) and the live garbage-collection finalizers of
    pool proxies."""
    if isinstance(pool, SingletonThreadPool):
        records = list(pool._all_conns)
        held = hasattr(pool._fairy, "current")
        status = (len(records), held)
    elif isinstance(pool, QueuePool):
        records = list(pool._pool.queue)
        status = (pool.checkedin(), pool.checkedout(), pool.overflow())
    else:
        records = []
        status = scrub(pool.status())
    log.note(
        "pool",
        where,
        status,
        sorted(
            (
                rec.in_use,
                rec.fairy_ref is None,
                rec.dbapi_connection is not None,
                sorted(rec.info),
                len(rec.finalize_callback),
                rec.fresh,
                rec._soft_invalidate_time,
            )
            for rec in records
        ),
        _live_proxy_finalizers(),
    )


def _dbapi_calls(log):
    log.entries.extend(_dbapi_log)
    _dbapi_log.clear()


def lifecycle(session_cls, engine, log):
    """Sessions that commit a new object, commit after only reading, roll
    back, close without committing, and use begin(); the pool and the
    session's connections after each."""
    _dbapi_log.clear()
    watched = Connections(log)
    # (the records' state at the start is the other run's end, which
    # differs where that run's listeners marked a record not fresh)
    for name in ("ed", "wendy"):
        with session_cls(engine) as session:
            watched.attach(session)
            session.add(User(name=name))
            session.commit()
            watched.note("after commit")
            _dbapi_calls(log)
        note_pool(log, "committed " + name, engine.pool)
    with session_cls(engine) as session:
        watched.attach(session)
        log.note("users", [u.name for u in session.scalars(select(User).order_by(User.id))])
        session.commit()
        watched.note("after read-only commit")
        session.add(User(name="jack"))
        session.rollback()
        watched.note("after rollback")
        session.add(User(name="fred"))
        session.flush()
        _dbapi_calls(log)
    watched.note("closed with a transaction")
    _dbapi_calls(log)
    note_pool(log, "closed uncommitted", engine.pool)
    with session_cls(engine) as session:
        watched.attach(session)
        with session.begin():
            session.add(User(name="mary"))
        watched.note("after begin() block")
        log.note("users", [u.name for u in session.scalars(select(User).order_by(User.id))])
        session.commit()
    _dbapi_calls(log)
    note_pool(log, "end", engine.pool)


def _engine_of_its_own(engine):
    # engine listeners stay on the engine they were added to: an option
    # engine takes them (it shares the pool, whose listeners are removed)
    return engine.execution_options()


def lifecycle_listened(session_cls, engine, log):
    """The same sessions with engine and pool listeners noting each event
    and what it is given."""
    engine = _engine_of_its_own(engine)

    def engine_listener(name):
        def listener(conn, *args):
            log.note("engine", name, conn.in_transaction(), [type(a).__name__ for a in args])

        return listener

    def on_checkout(dbapi_connection, record, proxy):
        log.note("pool event", "checkout", record.in_use, type(proxy).__name__)

    def on_checkin(dbapi_connection, record):
        log.note("pool event", "checkin", record.in_use)

    def on_reset(dbapi_connection, record, state):
        log.note(
            "pool event", "reset", record.in_use,
            (state.transaction_was_reset, state.terminate_only, state.asyncio_safe),
        )

    listeners = [(engine, name, engine_listener(name)) for name in ("engine_connect", "begin", "commit", "rollback")]
    listeners += [
        (engine.pool, "checkout", on_checkout),
        (engine.pool, "checkin", on_checkin),
        (engine.pool, "reset", on_reset),
    ]
    for target, name, fn in listeners:
        event.listen(target, name, fn)
    try:
        lifecycle(session_cls, engine, log)
    finally:
        for target, name, fn in listeners:
            event.remove(target, name, fn)


def commit_fails(session_cls, engine, log):
    """The DBAPI connection's commit() fails: the error as Core wraps it,
    the session's and objects' state, a rollback, the pool afterwards; then
    the pool's reset fails on return (the record is invalidated)."""
    _dbapi_log.clear()
    watched = Connections(log)
    with session_cls(engine) as session:
        watched.attach(session)
        ed = User(name="ed")
        session.add(ed)
        _fail_next["commit"] = [sqlite3.OperationalError("disk I/O error")]
        with pytest.raises(exc.OperationalError) as caught:
            session.commit()
        log.note("commit failed", normalize_error(caught.value))
        log.note("state", object_state(ed), session.in_transaction(), session.is_active)
        watched.note("after failed commit")
        session.rollback()
        log.note("state", object_state(ed), session.in_transaction())
        note_pool(log, "after rollback", engine.pool)
        session.add(ed)
        try:
            session.commit()
        except exc.DBAPIError as err:
            # with commit on return, the pool committed what the failed
            # COMMIT left (ed's row): the retry's INSERT conflicts
            log.note("retry failed", normalize_error(err))
            session.rollback()
        log.note("users", [u.name for u in session.scalars(select(User))])
        session.commit()
    _dbapi_calls(log)
    note_pool(log, "after retry", engine.pool)
    with session_cls(engine) as session:
        watched.attach(session)
        session.add(User(name="wendy"))
        # the transaction's COMMIT succeeds, the pool's reset on return
        # (its rollback, or its commit) fails: logged, the record
        # invalidated (SQLite in memory: the next connection is a new,
        # empty database)
        _fail_next["rollback"] = [sqlite3.OperationalError("reset failed")]
        _fail_next["commit"] = [None, sqlite3.OperationalError("reset failed")]
        session.commit()
        watched.note("after commit with a failing reset")
        _fail_next.clear()
    _dbapi_calls(log)
    note_pool(log, "after failed reset", engine.pool)
    with session_cls(engine) as session:
        try:
            log.note("users", sorted(u.name for u in session.scalars(select(User))))
        except exc.DBAPIError as err:
            log.note("read failed", normalize_error(err))
    _dbapi_calls(log)


@pytest.mark.parametrize("scenario", [lifecycle, commit_fails], ids=["lifecycle", "commit_fails"])
def test_sqlite_same_as_stock_and_direct(scenario, session_cls, sqlite_engine):
    transaction.reset_stats()
    entries = assert_same_as_stock(scenario, session_cls, sqlite_engine, Base.metadata, engine_events=False)
    assert any(entry[0] == "dbapi" for entry in entries)
    assert any(entry[0] == "pool" for entry in entries)
    stats = turbosession.stats()["transactions"]
    # every commit of turbosession's sessions took the direct steps
    assert stats["commits"]["fast"] >= 4
    assert stats["commits"]["fallback"] == {}


def test_sqlite_listened_same_as_stock(session_cls, sqlite_engine):
    entries = assert_same_as_stock(lifecycle_listened, session_cls, sqlite_engine, Base.metadata, engine_events=False)
    events = [entry[1] for entry in entries if entry[0] == "pool event"]
    assert {"checkout", "checkin", "reset"} <= set(events)
    assert any(entry[0] == "engine" and entry[1] == "commit" for entry in entries)


@pytest.mark.parametrize("scenario", [lifecycle, lifecycle_listened], ids=["quiet", "listened"])
def test_backends_same_as_stock(scenario, session_cls, engine):
    """The pool (SQLite's SingletonThreadPool, PostgreSQL's QueuePool) and
    the connections after each transaction, on each backend."""
    entries = assert_same_as_stock(scenario, session_cls, engine, Base.metadata, engine_events=False)
    assert [entry for entry in entries if entry[0] == "pool"]
