"""One new object per session (``Session(engine)``, ``add()``, ``commit()``,
``close()``), over and over, against stock.

This is the shape of the ``one_new_per_session`` workload: each session's
first connection is acquired by ``persist.provision`` (counted as
``stats()["transactions"]["first_connections"]``), and its one INSERT,
whose key the database generates, is sent by one compiled call
(``_emit.insert_one_lastrowid``) where ``emission.insert_autoincrement``
would send it directly, or by that function's path otherwise (counted in
``emission.stats()``).  Each scenario runs on stock's Session and on
turbosession's, both implementations and both backends, and compares
what the DBAPI cursor received, the engine, pool and session events with
their arguments, the objects' states and dictionaries after commit
(``expire_on_commit`` on and off), failures and what a rollback leaves.
"""

import pytest
from sqlalchemy import Integer, String, UniqueConstraint, event, inspect, select
from sqlalchemy import orm
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import turbosession
from support import assert_same_as_stock, normalize_error, object_state
from turbosession import emission, transaction


class Base(DeclarativeBase):
    pass


class Note(Base):
    """A single-table mapper without relationships: the flush of one new
    object takes the single-object path (``fastpath.insert_single``)."""

    __tablename__ = "ts_one_note"
    __table_args__ = (UniqueConstraint("name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    qty: Mapped[int | None]


SESSION_EVENTS = ("after_begin", "after_commit", "after_transaction_end", "after_rollback")
ENGINE_EVENTS = ("begin", "commit", "rollback")
POOL_EVENTS = ("checkout", "checkin", "reset")


def _own_engine(engine):
    # engine and pool listeners stay on an engine; each run of a scenario
    # listens on a copy with a pool of its own
    return engine.execution_options()


def _kind(arg):
    # the session's class is the test's subclass on turbosession's side
    return "Session" if isinstance(arg, orm.Session) else type(arg).__name__


def _listen(log, target, names, listeners):
    for name in names:
        def listener(*args, _name=name):
            log.note("event", _name, [_kind(arg) for arg in args])

        event.listen(target, name, listener)
        listeners.append((target, name, listener))


def _forget(listeners):
    for target, name, listener in listeners:
        event.remove(target, name, listener)
    listeners.clear()


def _committed(log, session, note):
    """What the application sees of the object once its session committed."""
    log.note("state", object_state(note), sorted(inspect(note).expired_attributes))
    log.note("dict", sorted((k, v) for k, v in vars(note).items() if not k.startswith("_sa")))


def _notes(session):
    return [tuple(row) for row in session.execute(select(Note.id, Note.name, Note.qty).order_by(Note.id))]


def sessions_with_pool_events(session_cls, engine, log, expire_on_commit=True):
    """Five sessions of one new object each, the pool's checkout, checkin
    and reset listened to (the INSERT is still sent directly), then one
    with session listeners (after_begin, after_commit, after_transaction_end)."""
    engine = _own_engine(engine)
    listeners = []
    _listen(log, engine.pool, POOL_EVENTS, listeners)
    try:
        for i in range(5):
            with session_cls(engine, expire_on_commit=expire_on_commit) as session:
                note = Note(name=f"n{i}", qty=i)
                session.add(note)
                session.commit()
                _committed(log, session, note)
            log.note("closed", object_state(note))
        with session_cls(engine, expire_on_commit=expire_on_commit) as session:
            _listen(log, session, SESSION_EVENTS, listeners)
            note = Note(name="watched", qty=9)
            session.add(note)
            session.commit()
            _committed(log, session, note)
            log.note("notes", _notes(session))
    finally:
        _forget(listeners)


def sessions_with_engine_events(session_cls, engine, log):
    """Engine begin / commit listeners: the INSERT goes through Core
    (``engine_events``), the events as stock's."""
    engine = _own_engine(engine)
    listeners = []
    _listen(log, engine, ENGINE_EVENTS, listeners)
    _listen(log, engine.pool, POOL_EVENTS, listeners)
    try:
        for i in range(3):
            with session_cls(engine) as session:
                session.add(Note(name=f"e{i}", qty=i))
                session.commit()
        with session_cls(engine) as session:
            log.note("notes", _notes(session))
    finally:
        _forget(listeners)


def failing_insert(session_cls, engine, log):
    """The second session's INSERT violates the unique constraint: the
    error as stock raises it, the object pending again after the rollback,
    the connection back in the pool, and the session usable afterwards."""
    engine = _own_engine(engine)
    listeners = []
    _listen(log, engine.pool, POOL_EVENTS, listeners)
    try:
        with session_cls(engine) as session:
            session.add(Note(name="same", qty=1))
            session.commit()
        with session_cls(engine) as session:
            twin = Note(name="same", qty=2)
            session.add(twin)
            try:
                session.commit()
            except Exception as err:  # the driver's IntegrityError, wrapped
                log.note("failed", normalize_error(err))
            log.note("after failure", object_state(twin), session.is_active)
            session.rollback()
            log.note("after rollback", object_state(twin), twin in session, vars(twin).get("id"))
            twin.name = "other"
            session.commit()
            _committed(log, session, twin)
            log.note("notes", _notes(session))
    finally:
        _forget(listeners)


def bound_to_a_connection(session_cls, engine, log):
    """Sessions bound to a Connection (stock's provisioning: the session
    joins the connection's transaction) each adding one object."""
    engine = _own_engine(engine)
    listeners = []
    _listen(log, engine.pool, POOL_EVENTS, listeners)
    try:
        with engine.connect() as conn:
            for i in range(2):
                with session_cls(bind=conn) as session:
                    session.add(Note(name=f"c{i}", qty=i))
                    session.commit()
                log.note("in transaction", conn.in_transaction())
            conn.commit()
        with session_cls(engine) as session:
            log.note("notes", _notes(session))
    finally:
        _forget(listeners)


def listeners_added_after_first_session(session_cls, engine, log):
    """A session before any listener, then listeners on the engine, the
    pool and a session (each seen by the next session: nothing decided by
    the first session is kept past them), then none again."""
    engine = _own_engine(engine)
    listeners = []
    try:
        with session_cls(engine) as session:
            session.add(Note(name="before", qty=0))
            session.commit()
        _listen(log, engine, ("before_cursor_execute", "commit"), listeners)
        _listen(log, engine.pool, ("checkout", "checkin"), listeners)
        with session_cls(engine) as session:
            _listen(log, session, ("after_begin", "after_commit"), listeners)
            session.add(Note(name="listened", qty=1))
            session.commit()
        _forget(listeners)
        with session_cls(engine) as session:
            session.add(Note(name="after", qty=2))
            session.commit()
            log.note("notes", _notes(session))
    finally:
        _forget(listeners)


def _stats_of(scenario, session_cls, engine):
    """Run the scenario side by side with stock (no recording engine
    listener, so that the direct path can be taken) and return the
    turbosession run's emission and first-connection counts."""
    emission.reset_stats()
    transaction.reset_stats()
    entries = assert_same_as_stock(scenario, session_cls, engine, Base.metadata, engine_events=False)
    assert any(entry[0] == "cursor" for entry in entries)
    return emission.stats(), turbosession.stats()["transactions"]


def _sqlite(engine):
    return engine.dialect.name == "sqlite"


@pytest.mark.parametrize("expire_on_commit", [True, False], ids=["expire", "keep"])
def test_sessions_with_pool_events(session_cls, engine, expire_on_commit):
    def scenario(session_cls, engine, log):
        sessions_with_pool_events(session_cls, engine, log, expire_on_commit)

    sent, transactions = _stats_of(scenario, session_cls, engine)
    # six sessions, each acquiring its connection directly, the last one
    # again for its SELECT after the commit
    assert transactions["first_connections"] == 7
    if _sqlite(engine):
        # each INSERT sent directly (lastrowid)
        assert sent["direct"] == 6
        assert sent["fallback"] == {}
    else:
        # PostgreSQL returns the key by RETURNING: Core's
        assert sent["direct"] == 0


def test_sessions_with_engine_events(session_cls, engine):
    sent, transactions = _stats_of(sessions_with_engine_events, session_cls, engine)
    assert transactions["first_connections"] == 4
    assert sent["direct"] == 0
    if _sqlite(engine):
        assert sent["fallback"] == {"engine_events": 3}


def test_failing_insert(session_cls, engine):
    entries = assert_same_as_stock(failing_insert, session_cls, engine, Base.metadata, False)
    assert any(entry[0] == "failed" for entry in entries)


def test_bound_to_a_connection(session_cls, engine):
    sent, transactions = _stats_of(bound_to_a_connection, session_cls, engine)
    # only the last session, bound to the engine, acquires a connection
    assert transactions["first_connections"] == 1
    if _sqlite(engine):
        assert sent["direct"] == 2


def test_listeners_added_after_first_session(session_cls, engine):
    sent, transactions = _stats_of(listeners_added_after_first_session, session_cls, engine)
    # three sessions, the last one again for its SELECT after the commit
    assert transactions["first_connections"] == 4
    if _sqlite(engine):
        # the first session's INSERT sent directly; once the engine has
        # had listeners (Core keeps _has_events set after their removal)
        # the INSERTs go through Core
        assert sent["direct"] == 1
        assert sent["fallback"] == {"engine_events": 2}
