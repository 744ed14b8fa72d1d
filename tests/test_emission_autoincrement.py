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

import datetime
import pickle

import pytest
from sqlalchemy import (
    DateTime,
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


class Stamped(Base):
    """A server default whose type has a result processor on SQLite (a
    DateTime): Core processes the returned value, so the batch is Core's."""

    __tablename__ = "ts_ai_stamped"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    made: Mapped[datetime.datetime] = mapped_column(
        DateTime, server_default=text("'2020-01-02 03:04:05'")
    )


class Owner(Base):
    """The benchmark model's shape: a Python default, a server default and
    a delete-orphan one-to-many whose rows have keys of their own."""

    __tablename__ = "ts_ai_owner"
    __table_args__ = (UniqueConstraint("name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    score: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(20), server_default=text("'active'"))
    items: Mapped[list["Owned"]] = relationship(
        back_populates="owner", cascade="all, delete-orphan"
    )


class Owned(Base):
    __tablename__ = "ts_ai_owned"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    owner_id: Mapped[int] = mapped_column(ForeignKey("ts_ai_owner.id"))
    title: Mapped[str] = mapped_column(String(40))
    owner: Mapped[Owner] = relationship(back_populates="items")


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


class CalledDefault(Base):
    __tablename__ = "ts_ai_calleddefault"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(40))
    score: Mapped[int] = mapped_column(Integer, default=lambda: 11)


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
        # the rows returning their defaults with the key, the row with
        # every default given and the expired ones are sent directly
        assert stats == {"direct": 4, "fallback": {}}
    else:
        # PostgreSQL's insertmanyvalues batches the rows in one statement:
        # none of these goes straight to the cursor
        assert stats["direct"] == 0
        assert "eager_defaults" not in stats["fallback"]
        assert stats["fallback"]["statement"] > 0


def _owners(names, with_ids):
    owners = []
    for i, name in enumerate(names):
        owner = Owner(name=name, items=[Owned(title=f"{name} item")])
        if with_ids:
            owner.id = 100 + i
            owner.items[0].id = 200 + i
        owners.append(owner)
    return owners


def _listen_states(session, log):
    """Note the state events the session fires, each flush's (and what came
    before it) as one sorted list: stock fires them for a set of states,
    in an order that follows memory addresses."""
    fired = []

    def drain():
        log.note("state events", sorted(fired))
        fired.clear()

    for name in ("pending_to_persistent", "persistent_to_detached", "deleted_to_detached"):
        event.listen(
            session, name,
            lambda s, obj, name=name: fired.append(
                (name, type(obj).__name__, obj.__dict__.get("name"))
            ),
        )
    event.listen(session, "after_flush_postexec", lambda s, ctx: drain())
    event.listen(
        session, "after_flush",
        lambda s, ctx: log.note("after_flush", sorted(
            (type(o).__name__, o.__dict__.get("name"), o.__dict__.get("status"))
            for o in s.identity_map.values()
        )),
    )
    return drain


def scenario_returned_defaults(session_cls, engine, log, expire_on_commit=True):
    """Server defaults returned with the key for several rows, keys given
    or generated, in the benchmark model's shape (a parent returning its
    defaults, children with keys of their own): what the objects hold after
    the flush, the state events, commit's expiry (or not) and pickling of
    flushed and expired objects, a failure in the middle of such a batch
    and its rollback, and a savepoint rolled back."""
    with session_cls(engine, expire_on_commit=expire_on_commit) as session:
        drain = _listen_states(session, log)
        # every object held to the end (the identity map holds them weakly,
        # and the collector frees an unreferenced parent and child pair
        # whenever it runs)
        held = []
        for with_ids in (False, True):
            owners = _owners([f"o{i}-{with_ids}" for i in range(3)], with_ids)
            held.extend(owners)
            session.add_all(owners)
            session.flush()
            log.note("flushed", with_ids, [_seen(o) for o in owners],
                     [_seen(c) for o in owners for c in o.items])
            log.note("pickled", [sorted(pickle.loads(pickle.dumps(o)).__dict__) for o in owners])
            log.note("identity", sorted(
                (k[0].__name__, k[1]) for k in session.identity_map.keys()
            ))
        session.commit()
        log.note("committed", [_seen(o) for o in held])
        log.note("pickled expired", [
            sorted(pickle.loads(pickle.dumps(o)).__dict__) for o in held
        ])
        log.note("loaded", [(o.id, o.name, o.score, o.status) for o in held])
        # a failure in the middle of a batch that returns its defaults
        failing = _owners(["f1", "o1-False", "f2"], False)
        held.extend(failing)
        session.add_all(failing)
        _failing_flush(session, log, "returning defaults", failing)
        failing = _owners(["g1", "o1-False", "g2"], True)
        for i, owner in enumerate(failing):
            owner.id, owner.items[0].id = 300 + i, 400 + i
        held.extend(failing)
        session.add_all(failing)
        _failing_flush(session, log, "returning defaults, keys given", failing)
        # a savepoint rolled back after its batch returned the defaults
        nested = session.begin_nested()
        inner = _owners(["s1", "s2"], False)
        held.extend(inner)
        session.add_all(inner)
        session.flush()
        log.note("in savepoint", [_seen(o) for o in inner])
        nested.rollback()
        log.note("savepoint rolled back", [_seen(o) for o in inner])
        kept = _owners(["k1", "k2"], False)
        held.extend(kept)
        session.add_all(kept)
        session.commit()
        drain()
        log.note("kept", [_seen(o) for o in kept])
        log.note("rows", session.execute(
            select(Owner.id, Owner.name, Owner.score, Owner.status).order_by(Owner.id)
        ).all())


def test_returned_defaults(session_cls, engine):
    stats = _run(scenario_returned_defaults, session_cls, engine)
    if _is_sqlite(engine):
        assert stats["fallback"] == {}
        assert stats["direct"] > 0


def test_returned_defaults_without_expiry(session_cls, engine):
    def scenario(cls, engine_, log):
        scenario_returned_defaults(cls, engine_, log, expire_on_commit=False)

    stats = _run(scenario, session_cls, engine)
    if _is_sqlite(engine):
        assert stats["fallback"] == {}


def scenario_returned_defaults_refresh_flush(session_cls, engine, log):
    """A ``refresh_flush`` listener sees the returned defaults: stock's
    ``_postfetch`` runs for the rows (Core's statement)."""

    def refresh_flush(target, flush_context, attrs):
        log.note("refresh_flush", target.name, sorted(attrs))

    event.listen(Owner, "refresh_flush", refresh_flush)
    try:
        with session_cls(engine) as session:
            owners = _owners(["r1", "r2", "r3"], False)
            session.add_all(owners)
            session.commit()
            log.note("owners", [(o.id, o.status) for o in owners])
    finally:
        event.remove(Owner, "refresh_flush", refresh_flush)


def test_returned_defaults_refresh_flush(session_cls, engine):
    _run(scenario_returned_defaults_refresh_flush, session_cls, engine)


def scenario_processed_default(session_cls, engine, log):
    with session_cls(engine) as session:
        objects = [Stamped(name=f"s{i}") for i in range(3)]
        session.add_all(objects)
        session.flush()
        log.note("objects", [_seen(o) for o in objects])
        session.commit()
        log.note("made", [o.made for o in objects])


def test_processed_default_goes_through_core(session_cls, engine):
    stats = _run(scenario_processed_default, session_cls, engine)
    if _is_sqlite(engine):
        assert stats == {"direct": 0, "fallback": {"statement": 1}}


def scenario_python_default(session_cls, engine, log):
    """A Python-side scalar default is prefetched into each row (sent
    directly with RETURNING, Core's with lastrowid for a single row); a
    callable default is Core's; a value given for the column overrides the
    default, and a committed value the default replaces is forgotten."""
    with session_cls(engine) as session:
        objects = [PythonDefault(name=f"p{i}") for i in range(3)]
        objects.append(PythonDefault(name="given", score=3))
        session.add_all(objects)
        session.flush()
        log.note("objects", [_seen(o) for o in objects])
        single = PythonDefault(name="single")
        session.add(single)
        session.flush()
        log.note("single", _seen(single))
        called = [CalledDefault(name=f"c{i}") for i in range(3)]
        session.add_all(called)
        session.flush()
        log.note("called", [_seen(o) for o in called])
        session.commit()
        log.note("rows", session.execute(
            select(PythonDefault.id, PythonDefault.score).order_by(PythonDefault.id)
        ).all())


def test_python_default(session_cls, engine):
    stats = _run(scenario_python_default, session_cls, engine)
    if _is_sqlite(engine):
        # the scalar default's batch and the batch with the value given are
        # direct; the single row (lastrowid) and the callable's are Core's
        assert stats == {"direct": 2, "fallback": {"statement": 2}}


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
