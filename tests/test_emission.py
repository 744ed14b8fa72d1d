"""Plain flush batches sent straight to the DBAPI cursor (``turbosession.emission``).

Every scenario runs side by side with stock on both implementations and both
backends, with no engine listener at all (``engine_events=False``), and the
record compared is what the DBAPI cursor received: method (``execute`` or
``executemany``), statement and parameters, plus what the program observes
(values read back, object states, exceptions and warnings).  Each test also
checks which way turbosession's batches went (``emission.stats()``): straight
to the cursor where nothing could tell, through Core where something could
(a listener, echo).
"""

import datetime
import decimal
import enum
import logging
import warnings

import pytest
from sqlalchemy import (
    JSON,
    DateTime,
    Enum,
    Integer,
    Numeric,
    String,
    TypeDecorator,
    event,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from support import assert_same_as_stock, normalize_error, object_state
from turbosession import emission


class Kind(enum.Enum):
    small = "small"
    large = "large"


class Shouting(TypeDecorator):
    """A bind processor of the application's own: upper case on the way in."""

    impl = String(40)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else value.upper()


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "ts_emit_item"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str | None] = mapped_column(String(40))
    amount: Mapped[decimal.Decimal | None] = mapped_column(Numeric(10, 2))
    created: Mapped[datetime.datetime | None] = mapped_column(DateTime)
    kind: Mapped[Kind | None] = mapped_column(Enum(Kind))
    data: Mapped[dict | None] = mapped_column(JSON)
    loud: Mapped[str | None] = mapped_column(Shouting)


class Auto(Base):
    __tablename__ = "ts_emit_auto"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str]


def _item(i, **kw):
    values = dict(
        id=i,
        name=f"n{i}",
        amount=decimal.Decimal(f"{i}.25"),
        created=datetime.datetime(2024, 1, 1 + i % 27, 12, 30, i % 60),
        kind=Kind.small if i % 2 else Kind.large,
        data={"i": i, "tags": ["a", "b"]},
        loud=f"loud {i}",
    )
    values.update(kw)
    return Item(**values)


def _rows(session):
    return [
        (o.id, o.name, o.amount, o.created, o.kind, o.data, o.loud)
        for o in session.scalars(select(Item).order_by(Item.id))
    ]


def _run(scenario, session_cls, engine):
    emission.reset_stats()
    entries = assert_same_as_stock(
        scenario, session_cls, engine, Base.metadata, engine_events=False
    )
    assert any(entry[0] == "cursor" for entry in entries)
    return emission.stats()


def scenario_batches(session_cls, engine, log):
    """Every batch shape: executemany and single rows, nulls, bind processors."""
    with session_cls(engine) as session:
        session.add_all([_item(i) for i in range(1, 6)])
        # nulls: other key sets, other batches
        session.add_all([_item(i, name=None, data=None) for i in range(6, 9)])
        session.add(_item(9, amount=None, created=None, kind=None, loud=None))
        session.commit()
        log.note("rows", _rows(session))
        items = {o.id: o for o in session.scalars(select(Item))}
        for i in range(1, 6):
            items[i].name = f"renamed {i}"
        for i in range(6, 8):
            items[i].amount = decimal.Decimal("7.50")
            items[i].loud = "quiet"
            items[i].kind = None
        items[9].data = {"changed": True}
        session.flush()
        log.note("states", sorted(object_state(o) for o in items.values()))
        for i in (1, 2, 3, 8):
            session.delete(items[i])
        session.flush()
        session.delete(items[4])
        session.commit()
        log.note("rows", _rows(session))
        session.add_all([Auto(name="a"), Auto(name="b")])
        session.commit()
        log.note("auto", [(a.id, a.name) for a in session.scalars(select(Auto).order_by(Auto.id))])


def test_batches(session_cls, engine):
    stats = _run(scenario_batches, session_cls, engine)
    assert stats["direct"] > 0
    assert "engine_events" not in stats["fallback"]


def scenario_listener_mid_session(session_cls, engine, log):
    def listener(conn, cursor, statement, parameters, context, executemany):
        log.note("listener", statement, executemany)

    # an engine of the session's own (sharing the pool): once an engine has
    # had a listener it counts as having events, and the other run of the
    # scenario must start without one
    engine = engine.execution_options()
    with session_cls(engine) as session:
        session.add_all([_item(i) for i in range(1, 4)])
        session.flush()
        event.listen(engine, "before_cursor_execute", listener)
        try:
            session.add_all([_item(i) for i in range(4, 7)])
            session.flush()
            for item in session.scalars(select(Item)):
                item.name = "x"
            session.flush()
        finally:
            event.remove(engine, "before_cursor_execute", listener)
        session.commit()
        log.note("rows", _rows(session))


def test_listener_added_mid_session_falls_back(session_cls, engine):
    stats = _run(scenario_listener_mid_session, session_cls, engine)
    assert stats["direct"] > 0
    assert stats["fallback"]["engine_events"] > 0


def scenario_echo(session_cls, engine, log):
    engine.echo = True
    try:
        with session_cls(engine) as session:
            session.add_all([_item(i) for i in range(1, 4)])
            session.flush()
            for item in session.scalars(select(Item)):
                item.name = "x"
            session.commit()
            log.note("rows", _rows(session))
    finally:
        engine.echo = False


def test_echo_falls_back(session_cls, engine, caplog):
    with caplog.at_level(logging.WARNING, logger="sqlalchemy.engine"):
        stats = _run(scenario_echo, session_cls, engine)
    assert stats["direct"] == 0
    assert stats["fallback"]["echo"] > 0


def scenario_integrity_error(session_cls, engine, log):
    with session_cls(engine) as session:
        session.add_all([_item(i) for i in range(1, 4)])
        session.commit()
        batch = [_item(i) for i in (10, 11, 2, 12)]
        session.add_all(batch)
        try:
            session.flush()
        except Exception as exc:
            log.note("raised", *normalize_error(exc), type(exc.orig).__name__)
        log.note("after", [object_state(o) for o in batch], session.is_active)
        session.rollback()
        log.note("rolled back", [object_state(o) for o in batch], _rows(session))
        one = _item(3)
        session.add(one)
        try:
            session.flush()
        except Exception as exc:
            log.note("raised", *normalize_error(exc), type(exc.orig).__name__)
        session.rollback()
        log.note("rolled back", object_state(one), _rows(session))


def test_integrity_error(session_cls, engine):
    stats = _run(scenario_integrity_error, session_cls, engine)
    assert stats["direct"] > 0


def scenario_stale_rows(session_cls, engine, log):
    with session_cls(engine) as session:
        session.add_all([_item(i) for i in range(1, 6)])
        session.commit()
        items = {o.id: o for o in session.scalars(select(Item))}
        session.execute(text("DELETE FROM ts_emit_item WHERE id IN (2, 4)"))
        for item in items.values():
            item.name = "stale"
        try:
            session.flush()
        except Exception as exc:
            log.note("raised", *normalize_error(exc))
        session.rollback()
        items = {o.id: o for o in session.scalars(select(Item))}
        session.execute(text("DELETE FROM ts_emit_item WHERE id = 3"))
        for i in (1, 3, 5):
            session.delete(items[i])
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            session.flush()
        log.note("warned", [(w.category.__name__, str(w.message)) for w in caught])
        session.commit()
        log.note("rows", _rows(session))


def test_stale_rows(session_cls, engine):
    stats = _run(scenario_stale_rows, session_cls, engine)
    assert stats["direct"] > 0


def scenario_execution_options(session_cls, engine, log):
    with session_cls(engine.execution_options(preserve_rowcount=True)) as session:
        session.add_all([_item(i) for i in range(1, 4)])
        session.commit()
        for item in session.scalars(select(Item)):
            item.name = "x"
        session.commit()
        log.note("rows", _rows(session))
    # the same engine without them
    with session_cls(engine) as session:
        session.add_all([_item(i) for i in range(4, 6)])
        session.commit()
        log.note("rows", _rows(session))


def test_execution_options(session_cls, engine):
    stats = _run(scenario_execution_options, session_cls, engine)
    assert stats["fallback"]["execution_options"] > 0
    assert stats["direct"] > 0


def scenario_dialect_method_overridden(session_cls, engine, log):
    dialect = engine.dialect
    original = dialect.do_executemany

    def do_executemany(cursor, statement, parameters, context=None):
        log.note("do_executemany", statement, type(context).__name__)
        return original(cursor, statement, parameters, context)

    dialect.do_executemany = do_executemany
    try:
        with session_cls(engine) as session:
            session.add_all([_item(i) for i in range(1, 4)])
            session.commit()
            log.note("rows", _rows(session))
    finally:
        del dialect.do_executemany


def test_dialect_method_overridden(session_cls, engine):
    stats = _run(scenario_dialect_method_overridden, session_cls, engine)
    assert stats["direct"] == 0
    assert stats["fallback"]["dialect"] > 0


class CountedKey(TypeDecorator):
    """An integer key whose result processor is the application's own:
    Core runs it on a single-row INSERT's lastrowid, even when the row
    gave the key."""

    impl = Integer
    cache_ok = True

    def process_result_value(self, value, dialect):
        return value


class CountedAuto(Base):
    __tablename__ = "ts_emit_counted_auto"
    id: Mapped[int] = mapped_column(CountedKey, primary_key=True)
    name: Mapped[str]


def scenario_single_rows_of_autoincrement_tables(session_cls, engine, log):
    """One row per flush into a table with an autoincrement key: with the key
    given (SQLite: Core still reads the cursor's lastrowid), without it
    (the key is the lastrowid), and with a key type that has a result
    processor."""
    with session_cls(engine) as session:
        for i in (1, 2):
            session.add(Auto(id=i * 10, name=f"given {i}"))
            session.flush()
        generated = Auto(name="generated")
        session.add(generated)
        session.flush()
        log.note("generated", generated.id, session.get(Auto, generated.id) is generated)
        session.add(CountedAuto(id=5, name="counted"))
        session.flush()
        session.add_all([Auto(id=40, name="many a"), Auto(id=41, name="many b")])
        session.commit()
        log.note("auto", [(a.id, a.name) for a in session.scalars(select(Auto).order_by(Auto.id))])
        log.note("counted", [(a.id, a.name) for a in session.scalars(select(CountedAuto))])


def test_single_rows_of_autoincrement_tables(session_cls, engine):
    stats = _run(scenario_single_rows_of_autoincrement_tables, session_cls, engine)
    # SQLite: the given keys (two single rows, one executemany) and the
    # generated one (the lastrowid) went directly, the key with a result
    # processor through Core; PostgreSQL: every given key directly, the
    # generated one through Core (RETURNING)
    assert stats["direct"] == 4
    assert stats["fallback"] == {"statement": 1}


class Defaulted(Base):
    """Generated keys with a Python-side default (prefetched by Core) and
    a server default (postfetched): both go through Core."""

    __tablename__ = "ts_emit_defaulted"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str]
    label: Mapped[str] = mapped_column(default="python")
    note: Mapped[str | None] = mapped_column(server_default=text("'server'"))


def scenario_generated_keys(session_cls, engine, log):
    """One new object per flush with a generated key, an after_insert
    listener reading it, the identity map keyed by it, and the tables
    whose defaults send the row through Core."""

    def after_insert(mapper, connection, target):
        log.note("after_insert", type(target).__name__, target.id)

    event.listen(Auto, "after_insert", after_insert)
    try:
        with session_cls(engine) as session:
            objects = []
            for i in range(3):
                obj = Auto(name=f"auto {i}")
                session.add(obj)
                session.flush()
                objects.append(obj)
                log.note("key", obj.id, object_state(obj), session.get(Auto, obj.id) is obj)
            defaulted = Defaulted(name="d")
            session.add(defaulted)
            session.flush()
            log.note("defaulted", defaulted.id, defaulted.label, defaulted.note)
            session.commit()
            log.note("rows", [(a.id, a.name) for a in session.scalars(select(Auto).order_by(Auto.id))])
    finally:
        event.remove(Auto, "after_insert", after_insert)


def test_generated_keys(session_cls, engine):
    stats = _run(scenario_generated_keys, session_cls, engine)
    # the Defaulted row returns its server defaults with its key (eager
    # defaults): Core's RETURNING, counted as such
    if engine.dialect.postfetch_lastrowid:
        assert stats == {"direct": 3, "fallback": {"eager_defaults": 1}}
    else:
        assert stats == {"direct": 0, "fallback": {"statement": 3, "eager_defaults": 1}}
