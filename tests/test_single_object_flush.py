"""Flushes of one object, side by side with stock.

A flush of one new object of a mapper writing one table, whose rows need
nothing of stock's ``_postfetch`` or ``_finalize_insert_update_commands``,
runs its save and delete steps as one call (``fastpath.insert_single``);
other one-object flushes (an update, a delete, a version counter, a
``refresh_flush`` listener, eager defaults, a SQL expression among the
values) run the planned steps as before.  Each scenario runs on stock's
Session and on turbosession's, with and without listeners, and compares
what the DBAPI cursor receives, the mapper and session events in order
with their arguments, and the objects' states and values.
"""

import contextlib

import pytest
from sqlalchemy import FetchedValue, String, event, exc, literal, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from support import assert_same_as_stock, normalize_error, unwatched


class Base(DeclarativeBase):
    pass


class Gadget(Base):
    __tablename__ = "tso_gadget"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    qty: Mapped[int] = mapped_column(default=0)


class Counter(Base):
    """A key the database generates."""

    __tablename__ = "tso_counter"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(50))


class Stamped(Base):
    """A Python-side default, a server default and a server-generated value
    to expire after the INSERT."""

    __tablename__ = "tso_stamped"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(20), default=lambda: "made")
    origin: Mapped[str] = mapped_column(String(20), server_default=text("'server'"))
    touched: Mapped[str] = mapped_column(
        String(20), server_default=text("'t'"), server_onupdate=FetchedValue()
    )


class Versioned(Base):
    __tablename__ = "tso_versioned"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    version: Mapped[int] = mapped_column()
    __mapper_args__ = {"version_id_col": version}


class Eager(Base):
    """Eager defaults: the server default is fetched back after the INSERT."""

    __tablename__ = "tso_eager"
    id: Mapped[int] = mapped_column(primary_key=True)
    origin: Mapped[str] = mapped_column(String(20), server_default=text("'server'"))
    __mapper_args__ = {"eager_defaults": True}


MAPPED = (Gadget, Counter, Stamped, Versioned, Eager)
MAPPER_EVENTS = (
    "before_insert", "after_insert", "before_update", "after_update",
    "before_delete", "after_delete",
)
SESSION_EVENTS = (
    "before_flush", "after_flush", "after_flush_postexec", "transient_to_pending",
    "pending_to_persistent", "persistent_to_deleted", "deleted_to_detached",
    "after_rollback", "after_soft_rollback",
)


def _target(obj):
    return (type(obj).__name__, obj.__dict__.get("id"))


def _loaded(obj):
    """The object's loaded attributes and their values (an SQL expression
    by its text)."""
    return sorted(
        (key, str(value) if hasattr(value, "compile") else value)
        for key, value in obj.__dict__.items()
        if key != "_sa_instance_state"
    )


@contextlib.contextmanager
def _watched(session, log):
    """Every mapper event of the models and the session events noted with
    their arguments; a flush listener notes what the flush context holds."""
    listeners = []

    def mapper_listener(name):
        def listener(mapper, connection, target):
            log.note("event", name, mapper.class_.__name__, _target(target), _loaded(target))

        return listener

    def session_listener(name):
        def listener(session_, *args):
            assert session_ is session
            shown = []
            for arg in args:
                if hasattr(arg, "states"):
                    # the flush context: its states and their flags
                    shown.append(sorted(
                        (_target(state.obj()), flags) for state, flags in arg.states.items()
                    ))
                elif hasattr(arg, "_sa_instance_state"):
                    shown.append(_target(arg))
                else:
                    shown.append(type(arg).__name__)
            log.note("event", name, shown)

        return listener

    for cls in MAPPED:
        for name in MAPPER_EVENTS:
            fn = mapper_listener(name)
            event.listen(cls, name, fn)
            listeners.append((cls, name, fn))
    for name in SESSION_EVENTS:
        fn = session_listener(name)
        event.listen(session, name, fn)
        listeners.append((session, name, fn))
    try:
        yield
    finally:
        for target, name, fn in listeners:
            event.remove(target, name, fn)


def _session(session_cls, engine, log, watch):
    session = session_cls(engine)
    stack = contextlib.ExitStack()
    if watch:
        stack.enter_context(_watched(session, log))
    return session, stack


def _values(obj, *keys):
    return tuple(getattr(obj, key) for key in keys)


def inserts(session_cls, engine, log, watch=True):
    """One new object per flush: keys given and generated, defaults of each
    kind, a version counter, eager defaults."""
    session, stack = _session(session_cls, engine, log, watch)
    with stack, session:
        gadget = Gadget(id=1, name="g")
        session.add(gadget)
        session.flush()
        log.states(session, gadget=gadget)
        log.note("gadget", _values(gadget, "id", "name", "qty"))
        counter = Counter(name="c")
        session.add(counter)
        session.flush()
        log.states(session, counter=counter)
        log.note("counter", counter.id)
        stamped = Stamped(id=1)
        session.add(stamped)
        session.flush()
        log.note("stamped loaded", _loaded(stamped))
        log.note("stamped", _values(stamped, "label", "origin", "touched"))
        versioned = Versioned(id=1, name="v")
        session.add(versioned)
        session.flush()
        log.note("versioned", _values(versioned, "version"))
        eager = Eager(id=1)
        session.add(eager)
        session.flush()
        log.note("eager", _loaded(eager))
        # a SQL expression among the values: stock's emitter
        expression = Gadget(id=2, name="e", qty=literal(3) + 1)
        session.add(expression)
        session.flush()
        log.note("expression", expression.qty)
        session.commit()
        log.note("rows", session.execute(select(Gadget.id, Gadget.qty).order_by(Gadget.id)).all())


def updates_and_deletes(session_cls, engine, log, watch=True):
    """One changed or deleted object per flush."""
    with session_cls(engine) as session:
        session.add_all([Gadget(id=1, name="a"), Versioned(id=1, name="v"), Stamped(id=1)])
        session.commit()
    session, stack = _session(session_cls, engine, log, watch)
    with stack, session:
        gadget = session.get(Gadget, 1)
        gadget.qty = 5
        session.flush()
        log.states(session, gadget=gadget)
        versioned = session.get(Versioned, 1)
        versioned.name = "w"
        session.flush()
        log.note("versioned", _values(versioned, "version", "name"))
        stamped = session.get(Stamped, 1)
        stamped.label = "changed"
        session.flush()
        log.note("stamped loaded", _loaded(stamped))
        session.delete(gadget)
        session.flush()
        log.states(session, gadget=gadget)
        session.delete(versioned)
        session.flush()
        session.commit()
        log.note("gadgets", session.scalars(select(Gadget.id)).all())


def failing_insert(session_cls, engine, log, watch=True):
    """A flush of one new object whose INSERT fails rolls back: stock's
    error, events and states."""
    with session_cls(engine) as session:
        session.add(Gadget(id=1, name="first"))
        session.commit()
    session, stack = _session(session_cls, engine, log, watch)
    with stack, session:
        duplicate = Gadget(id=1, name="again")
        session.add(duplicate)
        with pytest.raises(exc.IntegrityError) as raised:
            session.flush()
        log.note("error", normalize_error(raised.value))
        log.note("active", session.is_active, session.in_transaction())
        session.rollback()
        log.states(session, duplicate=duplicate)
        fresh = Gadget(id=2, name="fresh")
        session.add(fresh)
        session.commit()
        log.states(session, fresh=fresh)


def listener_changes_the_object(session_cls, engine, log, watch=True):
    """A ``before_insert`` listener that changes the object, and a
    ``refresh_flush`` listener (stock's post-fetch), on a flush of one."""

    def before_insert(mapper, connection, target):
        target.qty = 42
        log.note("before_insert", connection.in_transaction())

    def refresh_flush(target, flush_context, attrs):
        log.note("refresh_flush", _target(target), sorted(attrs))

    event.listen(Gadget, "before_insert", before_insert)
    event.listen(Stamped, "refresh_flush", refresh_flush)
    try:
        session, stack = _session(session_cls, engine, log, watch)
        with stack, session:
            gadget = Gadget(id=1, name="g")
            session.add(gadget)
            session.flush()
            log.note("gadget", _values(gadget, "qty"))
            stamped = Stamped(id=1)
            session.add(stamped)
            session.flush()
            session.commit()
            log.note("rows", session.execute(select(Gadget.id, Gadget.qty)).all())
    finally:
        event.remove(Gadget, "before_insert", before_insert)
        event.remove(Stamped, "refresh_flush", refresh_flush)


SCENARIOS = [inserts, updates_and_deletes, failing_insert, listener_changes_the_object]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_same_as_stock(scenario, session_cls, engine):
    entries = assert_same_as_stock(
        scenario, session_cls, engine, Base.metadata, engine_events=False
    )
    assert any(entry[0] == "cursor" for entry in entries)
    assert any(entry[0] == "event" for entry in entries)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
@pytest.mark.parametrize("engine_events", [False, True], ids=["cursor", "core_events"])
def test_same_as_stock_without_listeners(scenario, session_cls, engine, engine_events):
    entries = assert_same_as_stock(
        unwatched(scenario), session_cls, engine, Base.metadata, engine_events=engine_events
    )
    assert any(entry[0] == "cursor" for entry in entries)


def test_single_insert_taken_where_it_applies(session_cls, engine, monkeypatch):
    """The one-call path runs for the one-object INSERTs it handles (a key
    given or generated, Python-side and server defaults on a plain table,
    with or without listeners), not for a version counter, eager defaults,
    updates, deletes or a flush of two objects."""
    persist = session_cls._turbo.persist
    taken = []
    insert_one = persist.insert_one

    def spy(table, mapper, uow, connection, state):
        taken.append(mapper.class_.__name__)
        return insert_one(table, mapper, uow, connection, state)

    monkeypatch.setattr(persist, "insert_one", spy)
    Base.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            for obj in (Gadget(id=1, name="g"), Counter(name="c"), Stamped(id=1),
                        Versioned(id=1, name="v"), Eager(id=1)):
                session.add(obj)
                session.flush()
            assert taken == ["Gadget", "Counter", "Stamped"]
            session.get(Gadget, 1).qty = 3
            session.flush()
            session.delete(session.get(Counter, 1))
            session.flush()
            session.add_all([Gadget(id=2, name="b"), Gadget(id=3, name="c")])
            session.flush()
            watched = Gadget(id=4, name="d")
            with _watched(session, type("Log", (), {"note": lambda *a: None})()):
                session.add(watched)
                session.flush()
            assert taken == ["Gadget", "Counter", "Stamped", "Gadget"]
            session.commit()
    finally:
        Base.metadata.drop_all(engine)
