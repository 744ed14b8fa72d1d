"""INSERTs whose primary key the database generates, sent straight to the
DBAPI cursor (``turbosession.emission.insert_autoincrement``).

On SQLite stock sends such a batch a row at a time: several rows as one
``INSERT .. RETURNING id`` each on one cursor (insertmanyvalues, "ordered;
batch not supported"), a single row (or a table without implicit RETURNING)
as one INSERT per row read back through ``cursor.lastrowid``.  On PostgreSQL
the rows go as one batched insertmanyvalues statement, or a single-row
RETURNING, which stay Core's.  Every scenario runs side by side with stock on
both implementations and both backends with no engine listener
(``engine_events=False``), comparing what the DBAPI cursor received and what
the program observes: keys, the objects' dictionaries and states, the
identity map, failures and what a rollback leaves.  Each test also checks
which way the batches went (``emission.stats()``).
"""

import pytest
from sqlalchemy import (
    ForeignKey,
    Integer,
    String,
    TypeDecorator,
    UniqueConstraint,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from support import assert_same_as_stock, normalize_error, object_state
from turbosession import emission


class Picky(TypeDecorator):
    """A bind processor of the application's own that refuses some values."""

    impl = String(40)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value == "refused":
            raise ValueError("refused by the bind processor")
        return value


class Base(DeclarativeBase):
    pass


class Auto(Base):
    __tablename__ = "ts_ai_auto"
    __table_args__ = (UniqueConstraint("name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(Picky)
    qty: Mapped[int | None]


class NoReturning(Base):
    """A table without implicit RETURNING: stock inserts each row on its own."""

    __tablename__ = "ts_ai_noret"
    __table_args__ = (UniqueConstraint("name"), {"implicit_returning": False})
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(40))


class Defaulted(Base):
    """Server defaults, fetched back with the key (eager defaults) or expired."""

    __tablename__ = "ts_ai_defaulted"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), server_default=text("'active'"))


class Expired(Base):
    __tablename__ = "ts_ai_expired"
    __mapper_args__ = {"eager_defaults": False}
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(20), server_default=text("'active'"))


class PythonDefault(Base):
    __tablename__ = "ts_ai_pydefault"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    score: Mapped[int] = mapped_column(Integer, default=7)


class Parent(Base):
    __tablename__ = "ts_ai_parent"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    children: Mapped[list["Child"]] = relationship(
        back_populates="parent", cascade="all, delete-orphan"
    )


class Child(Base):
    __tablename__ = "ts_ai_child"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("ts_ai_parent.id"))
    name: Mapped[str] = mapped_column(String(40))
    parent: Mapped[Parent] = relationship(back_populates="children")


class Person(Base):
    """Joined inheritance: the key goes from the base table to the other."""

    __tablename__ = "ts_ai_person"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(40))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "person"}


class Engineer(Person):
    __tablename__ = "ts_ai_engineer"
    id: Mapped[int] = mapped_column(ForeignKey("ts_ai_person.id"), primary_key=True)
    language: Mapped[str | None] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_identity": "engineer"}


def _run(scenario, session_cls, engine):
    emission.reset_stats()
    entries = assert_same_as_stock(
        scenario, session_cls, engine, Base.metadata, engine_events=False
    )
    assert any(entry[0] == "cursor" for entry in entries)
    return emission.stats()


def _is_sqlite(engine):
    return engine.dialect.name == "sqlite"


def _seen(obj):
    """What the object holds without loading anything: its loaded column
    attributes, its key and its state."""
    state = inspect(obj)
    columns = state.mapper.column_attrs.keys()
    loaded = {k: v for k, v in state.dict.items() if k in columns}
    return sorted(loaded.items()), state.key and state.key[1], object_state(obj)


def scenario_keys(session_cls, engine, log):
    """Several rows (RETURNING each), one row (lastrowid), rows with and
    without keys in one flush, a table without implicit RETURNING."""
    with session_cls(engine) as session:
        many = [Auto(name=f"a{i}", qty=i) for i in range(4)]
        session.add_all(many)
        session.flush()
        log.note("many", [_seen(o) for o in many])
        one = Auto(name="one")
        session.add(one)
        session.flush()
        log.note("one", _seen(one))
        mixed = [Auto(name="m0"), Auto(id=100, name="m1", qty=1), Auto(name="m2"),
                 Auto(name="m3", qty=3), Auto(name="m4", qty=4)]
        session.add_all(mixed)
        session.flush()
        log.note("mixed", [_seen(o) for o in mixed])
        plain = [NoReturning(name=f"n{i}") for i in range(3)]
        session.add_all(plain)
        session.flush()
        log.note("no returning", [_seen(o) for o in plain])
        log.note("identity map", sorted(
            (type(o).__name__, inspect(o).key[1]) for o in session.identity_map.values()
        ))
        session.commit()
        log.note("rows", session.execute(select(Auto.id, Auto.name).order_by(Auto.id)).all())
        log.note("after commit", [_seen(o) for o in many + mixed])


def test_keys(session_cls, engine):
    stats = _run(scenario_keys, session_cls, engine)
    if _is_sqlite(engine):
        # two batches of several rows, two rows on their own, the table
        # without RETURNING, and the row with its key given (a plain INSERT
        # whose lastrowid Core reads and the ORM does not use)
        assert stats == {"direct": 6, "fallback": {}}
    else:
        # one insertmanyvalues statement or a single-row RETURNING: Core's
        assert stats["fallback"]["statement"] >= 5


def scenario_relationships(session_cls, engine, log):
    """Keys generated for parents, then synchronised into their children;
    joined inheritance, the key copied from the base table's row."""
    with session_cls(engine) as session:
        parents = [
            Parent(name=f"p{i}", children=[Child(name=f"c{i}.{j}") for j in range(i % 3)])
            for i in range(5)
        ]
        session.add_all(parents)
        people = [Person(name="plain"), Engineer(name="e1", language="c"),
                  Engineer(name="e2"), Person(name="p2")]
        session.add_all(people)
        session.flush()
        log.note("parents", [_seen(p) for p in parents])
        log.note("children", [_seen(c) for p in parents for c in p.children])
        log.note("people", [_seen(p) for p in people])
        session.commit()
        log.note("joined", session.execute(
            select(Child.name, Parent.name).join(Child.parent).order_by(Child.id)
        ).all())
        log.note("engineers", [(e.id, e.name, e.language) for e in session.scalars(
            select(Engineer).order_by(Engineer.id))])


def test_relationships(session_cls, engine):
    stats = _run(scenario_relationships, session_cls, engine)
    if _is_sqlite(engine):
        assert stats == {"direct": 4, "fallback": {}}


def scenario_server_defaults(session_cls, engine, log):
    """Eager defaults returned with the key (Core's), and server defaults
    expired instead (eager_defaults=False), read back afterwards."""
    with session_cls(engine) as session:
        returned = [Defaulted(name=f"d{i}") for i in range(3)] + [
            Defaulted(name="given", status="set")
        ]
        session.add_all(returned)
        session.flush()
        log.note("returned", [_seen(o) for o in returned])
        expired = [Expired(name=f"e{i}") for i in range(3)]
        session.add_all(expired)
        session.flush()
        single = Expired(name="single")
        session.add(single)
        session.flush()
        log.note("expired", [_seen(o) for o in expired + [single]])
        log.note("loaded", [(o.id, o.status) for o in expired + [single]])
        session.commit()


def test_server_defaults(session_cls, engine):
    stats = _run(scenario_server_defaults, session_cls, engine)
    if _is_sqlite(engine):
        # the defaults to return are Core's, the row with every default
        # given and the expired ones are sent directly
        assert stats == {"direct": 3, "fallback": {"eager_defaults": 1}}
    else:
        assert stats["fallback"]["eager_defaults"] == 1


def scenario_python_default(session_cls, engine, log):
    """A Python-side default is prefetched into each row: Core's."""
    with session_cls(engine) as session:
        objects = [PythonDefault(name=f"p{i}") for i in range(3)]
        session.add_all(objects)
        session.flush()
        log.note("objects", [_seen(o) for o in objects])
        session.commit()


def test_python_default_goes_through_core(session_cls, engine):
    stats = _run(scenario_python_default, session_cls, engine)
    assert stats["direct"] == 0
    assert stats["fallback"]["statement"] > 0


def _failing_flush(session, log, label, objects):
    try:
        session.flush()
    except Exception as exc:
        log.note("raised", label, *normalize_error(exc), type(getattr(exc, "orig", None)).__name__)
    log.note("after", label, [_seen(o) for o in objects], session.is_active)
    session.rollback()
    log.note("rolled back", label, [_seen(o) for o in objects])


def scenario_failures(session_cls, engine, log):
    """An IntegrityError in the middle of a batch of several rows, of a
    single row and of a table inserted row by row; a bind processor's
    error; then a rollback, and what it leaves of the objects."""
    with session_cls(engine) as session:
        session.add_all([Auto(name="taken"), NoReturning(name="taken")])
        session.commit()
        batch = [Auto(name="x1"), Auto(name="x2"), Auto(name="taken"), Auto(name="x3")]
        session.add_all(batch)
        _failing_flush(session, log, "many", batch)
        one = Auto(name="taken")
        session.add(one)
        _failing_flush(session, log, "one", [one])
        rows = [NoReturning(name="y1"), NoReturning(name="taken"), NoReturning(name="y2")]
        session.add_all(rows)
        _failing_flush(session, log, "row by row", rows)
        refused = [Auto(name="z1"), Auto(name="refused"), Auto(name="z2")]
        session.add_all(refused)
        _failing_flush(session, log, "processor", refused)
        refused_one = Auto(name="refused")
        session.add(refused_one)
        _failing_flush(session, log, "processor, one row", [refused_one])
        # keys given: the plain executemany (emission.execute)
        given = [Auto(id=50, name="w1"), Auto(id=51, name="refused")]
        session.add_all(given)
        _failing_flush(session, log, "processor, keys given", given)
        # the session goes on
        again = [Auto(name="x1"), Auto(name="x2")]
        session.add_all(again)
        session.commit()
        log.note("again", [_seen(o) for o in again])
        log.note("rows", session.execute(select(Auto.id, Auto.name).order_by(Auto.id)).all())


def test_failures(session_cls, engine):
    stats = _run(scenario_failures, session_cls, engine)
    if _is_sqlite(engine):
        assert stats == {"direct": 9, "fallback": {}}


def scenario_events(session_cls, engine, log):
    """A listener on the engine: Core's, and mapper events in either case."""

    def before_cursor_execute(conn, cursor, statement, parameters, context, executemany):
        log.note("listener", statement, repr(parameters), executemany)

    def after_insert(mapper, connection, target):
        log.note("after_insert", target.name, target.id)

    engine = engine.execution_options()
    event.listen(Auto, "after_insert", after_insert)
    try:
        with session_cls(engine) as session:
            session.add_all([Auto(name="a"), Auto(name="b")])
            session.flush()
            event.listen(engine, "before_cursor_execute", before_cursor_execute)
            try:
                session.add_all([Auto(name="c"), Auto(name="d")])
                session.add(NoReturning(name="e"))
                session.flush()
            finally:
                event.remove(engine, "before_cursor_execute", before_cursor_execute)
            session.commit()
            log.note("rows", session.execute(select(Auto.id, Auto.name).order_by(Auto.id)).all())
    finally:
        event.remove(Auto, "after_insert", after_insert)


def test_events_fall_back(session_cls, engine):
    stats = _run(scenario_events, session_cls, engine)
    assert stats["fallback"]["engine_events"] == 2
    if _is_sqlite(engine):
        assert stats["direct"] == 1


@pytest.mark.parametrize("count", [1, 3])
def test_stock_dialect_execution_only(session_cls, count):
    """A dialect's execution context that fetches RETURNING rows its own
    way: the batch goes through Core."""
    import backends

    with backends.sqlite_engine() as engine:
        context_cls = engine.dialect.execution_ctx_cls

        class Fetching(context_cls):
            def fetchall_for_returning(self, cursor):
                return cursor.fetchall()

            def get_lastrowid(self):
                return self.cursor.lastrowid

        engine.dialect.execution_ctx_cls = Fetching

        def scenario(cls, engine_, log):
            with cls(engine_) as session:
                objects = [Auto(name=f"a{i}") for i in range(count)]
                session.add_all(objects)
                session.commit()
                log.note("objects", [(o.id, o.name) for o in objects])

        stats = _run(scenario, session_cls, engine)
        assert stats["direct"] == 0
        assert stats["fallback"]["dialect"] > 0
