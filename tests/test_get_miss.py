"""Session.get() misses: turbosession's per-mapper primary-key load against stock's.

A ``get()`` whose identity is not in the identity map, without options, is
loaded by ``turbosession._loading`` with a statement built once per mapper
(``loads.GET_LOAD_ATTR``); anything else runs stock's ``get``.  Each scenario
runs on stock ``sqlalchemy.orm.Session`` and on turbosession's Session
(compiled and pure, SQLite and PostgreSQL) and the records must be equal:
what get() returned and which object it is, exceptions and warnings, the SQL
and its parameters (as the engine's events and as the DBAPI cursor receive
them), the objects' states, loaded and unloaded attributes, committed state,
load path and options, the identity map, ``load`` / ``refresh`` /
``loaded_as_persistent`` events, and the lazy loads that follow.  The load
counters then say which calls took turbosession's path.
"""

import warnings

import pytest
import datetime
import decimal

from sqlalchemy import (
    Column,
    DateTime,
    ForeignKey,
    Numeric,
    String,
    Table,
    TypeDecorator,
    event,
    func,
    insert,
    inspect,
    text,
)
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    column_property,
    deferred,
    loading,
    mapped_column,
    relationship,
)

import turbosession
from support import assert_same_as_stock, normalize_error, scrub
from test_loading import Base, Employee, Engineer, Manager, Pair, Tag


# test_loading's models (its metadata: the scenarios create and drop all of
# it), with an author and its books beside them

class Author(Base):
    __tablename__ = "tgm_author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    bio: Mapped[str] = deferred(mapped_column(String(200)))
    books: Mapped[list["Book"]] = relationship(back_populates="author", order_by="Book.id")


class Book(Base):
    __tablename__ = "tgm_book"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50))
    author_id: Mapped[int] = mapped_column(ForeignKey("tgm_author.id"))
    author: Mapped[Author] = relationship(back_populates="books")


def seed(session):
    session.add_all(
        [Author(id=i, name=f"author {i}", bio=f"bio {i}") for i in range(1, 6)]
        + [Book(id=i, title=f"book {i}", author_id=1 + i % 2) for i in range(1, 5)]
        + [Tag(code="py", label="Python"), Tag(code="sql", label="SQL")]
        + [Pair(a=1, b=2, value="one-two"), Pair(a=2, b=1, value="two-one")]
        + [
            Employee(id=9, name="eve"),
            Manager(id=10, name="mary", budget=5),
            Engineer(id=11, name="ed", language="python"),
            Manager(id=12, name="max", budget=7),
        ]
    )
    session.commit()


def describe(obj, known):
    """What a program sees of a get() result: which object, its state, what is
    loaded, what its state keeps of the load."""
    if obj is None:
        return None
    insp = inspect(obj)
    same = [name for name, candidate in known.items() if candidate is obj]
    return (
        type(obj).__name__,
        insp.identity,
        insp.identity_token,
        same,
        insp.persistent,
        insp.expired,
        sorted(insp.unloaded),
        sorted(insp.expired_attributes),
        dict(insp.committed_state),
        sorted((k, v) for k, v in insp.dict.items() if not k.startswith("_") and not isinstance(v, (list, Base))),
        scrub(repr(insp.load_path)),
        insp.load_options,
    )


def attempt(log, label, known, call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            obj = call()
            log.note(label, describe(obj, known))
            known.setdefault(label, obj)
        except Exception as exc:
            log.note(label, "raises", normalize_error(exc))
    log.note(label, "warnings", [(w.category, str(w.message)) for w in caught])


def listen_loads(log, session, class_events=True):
    def on_load(target, context):
        log.note("load event", type(target).__name__, inspect(target).identity)

    def on_refresh(target, context, attrs):
        log.note("refresh event", type(target).__name__, inspect(target).identity, attrs)

    def on_persistent(session_, instance):
        log.note("loaded_as_persistent", type(instance).__name__, inspect(instance).identity)

    classes = (Author, Book, Pair, Employee) if class_events else ()
    for cls in classes:
        event.listen(cls, "load", on_load, propagate=True)
        event.listen(cls, "refresh", on_refresh, propagate=True)
    event.listen(session, "loaded_as_persistent", on_persistent)

    def unlisten():
        for cls in classes:
            event.remove(cls, "load", on_load)
            event.remove(cls, "refresh", on_refresh)

    return unlisten


def identity_map_contents(session):
    return sorted(
        (cls.__name__, ident, token, type(obj).__name__)
        for (cls, ident, token), obj in session.identity_map.items()
    )


def misses(session_cls, engine, log, class_events=True):
    with session_cls(engine) as session:
        seed(session)
    with session_cls(engine) as session:
        unlisten = listen_loads(log, session, class_events)
        try:
            known = {}
            get = session.get
            cases = [
                ("found", lambda: get(Author, 1)),
                ("second get: a hit", lambda: get(Author, 1)),
                ("tuple", lambda: get(Author, (2,))),
                ("not found", lambda: get(Author, 99)),
                ("not found again", lambda: get(Author, 99)),
                ("str", lambda: get(Tag, "py")),
                ("str not found", lambda: get(Tag, "rust")),
                ("composite", lambda: get(Pair, (1, 2))),
                ("composite reversed", lambda: get(Pair, (2, 1))),
                ("composite not found", lambda: get(Pair, (5, 5))),
                ("composite list", lambda: get(Pair, [2, 1])),
                ("dict", lambda: get(Author, {"id": 3})),
                ("dict composite", lambda: get(Pair, {"b": 2, "a": 1})),
                ("dict wrong name", lambda: get(Author, {"nope": 4})),
                ("arity", lambda: get(Author, (4, 5))),
                ("composite arity", lambda: get(Pair, 1)),
                ("composite arity tuple", lambda: get(Pair, (3,))),
                ("empty tuple", lambda: get(Author, ())),
                ("none", lambda: get(Author, None)),
                ("none in tuple", lambda: get(Author, (None,))),
                ("none in composite", lambda: get(Pair, (1, None))),
                ("all none in composite", lambda: get(Pair, (None, None))),
                ("wrong type", lambda: get(Author, "4")),
                ("polymorphic base, subclass row", lambda: get(Employee, 10)),
                ("polymorphic base, base row", lambda: get(Employee, 9)),
                ("polymorphic subclass", lambda: get(Engineer, 11)),
                ("polymorphic other subclass's row", lambda: get(Engineer, 12)),
                ("polymorphic subclass of a hit", lambda: get(Manager, 10)),
                ("identity token", lambda: get(Author, 5, identity_token="x")),
                ("get_one found", lambda: session.get_one(Book, 2)),
                ("get_one not found", lambda: session.get_one(Book, 98)),
            ]
            for label, call in cases:
                attempt(log, label, known, call)

            # deferred column: unloaded after the get, loaded on access
            author = known["dict"]
            log.note("deferred before", sorted(inspect(author).unloaded))
            log.note("deferred access", author.bio)
            log.note("deferred after", describe(author, known))
            # lazy relationships after the load: one-to-many, then many-to-one
            # (the latter answered from the identity map, or loaded)
            attempt(log, "book", known, lambda: get(Book, 1))
            book = known["book"]
            log.note("many-to-one", describe(book.author, known))
            log.note("one-to-many", [describe(b, known) for b in known["found"].books])
            attempt(log, "book 3", known, lambda: get(Book, 3))
            log.note("many-to-one loaded", describe(known["book 3"].author, known))

            # a pending object: autoflush, then the row it became
            session.add(Author(id=60, name="pending", bio="b"))
            attempt(log, "pending (autoflush)", known, lambda: get(Author, 60))
            # an object modified in the session is flushed first too
            known["found"].name = "renamed"
            attempt(log, "after a change (autoflush)", known, lambda: get(Author, 4))
            log.note("identity map", identity_map_contents(session))
            log.states(session, **{k: v for k, v in known.items() if v is not None})
            session.commit()
            # after commit every object is expired: stock reloads it
            attempt(log, "after commit", known, lambda: get(Author, 1))
            session.expunge_all()
            attempt(log, "after expunge_all", {}, lambda: get(Author, 2))
            attempt(log, "after expunge_all hit", {}, lambda: get(Author, 2))
        finally:
            unlisten()


@pytest.mark.parametrize("engine_events", [True, False], ids=["engine-events", "cursor-only"])
def test_misses_same_as_stock(session_cls, engine, engine_events):
    turbosession.reset_stats()
    assert_same_as_stock(misses, session_cls, engine, Base.metadata, engine_events=engine_events)
    stats = turbosession.stats()["loads"]
    assert stats["get"]["loaded"] >= 20, stats
    for reason in ("get_ident", "get_identity_token"):
        assert stats["get"]["fallback"].get(reason), (reason, stats)
    assert stats["instances"]["fallback"].get("load_get"), stats


def misses_without_class_events(session_cls, engine, log):
    misses(session_cls, engine, log, class_events=False)


@pytest.mark.parametrize("engine_events", [True, False], ids=["engine-events", "cursor-only"])
def test_misses_without_class_events_same_as_stock(session_cls, engine, engine_events):
    """The same misses without load and refresh listeners: without engine
    listeners, those of plain mappers go straight to the cursor."""
    turbosession.reset_stats()
    assert_same_as_stock(
        misses_without_class_events, session_cls, engine, Base.metadata,
        engine_events=engine_events,
    )
    stats = turbosession.stats()["loads"]["get"]
    if engine_events:
        assert stats["cursor"] == 0, stats
    else:
        assert stats["cursor"] >= 10, stats
        assert stats["cursor_fallback"].get("cursor_polymorphic"), stats


def plain_miss_then_hit(session_cls, engine, log):
    with session_cls(engine) as session:
        seed(session)
    with session_cls(engine) as session:
        obj = session.get(Author, 1)
        log.note(describe(obj, {}))
        log.note(session.get(Author, 1) is obj)


def test_miss_is_loaded_then_hit(session_cls, engine):
    turbosession.reset_stats()
    assert_same_as_stock(plain_miss_then_hit, session_cls, engine, Base.metadata)
    assert turbosession.stats()["loads"]["get"] == {
        "fast": 1, "loaded": 1, "direct": 1, "cursor": 0, "fallback": {},
        # the first miss of a mapper on a dialect is stock's execution, which
        # sets up what the next ones read (see test_cursor_loads_same_as_stock)
        "cursor_fallback": {"cursor_first": 1},
    }
    # the statement is kept with the mapper, one per mapper
    statement = Author.__mapper__.__dict__[turbosession.loads.GET_LOAD_ATTR][0]
    assert "tgm_author.id = :pk_1" in str(statement)


def session_fallbacks(session_cls, engine, log):
    """Misses that stock's get() loads: a session with execution options, a
    session with a do_orm_execute listener."""
    with session_cls(engine) as session:
        seed(session)
    with session_cls(engine, execution_options={"compiled_cache": None}) as session:
        attempt(log, "session options", {}, lambda: session.get(Author, 1))
    with session_cls(engine) as session:

        def on_execute(state):
            log.note(
                "do_orm_execute",
                state.is_select,
                state.load_options._identity_token,
                sorted(state.execution_options),
                state.parameters,
                str(state.statement),
            )

        event.listen(session, "do_orm_execute", on_execute)
        known = {}
        attempt(log, "do_orm_execute", known, lambda: session.get(Author, 2))
        attempt(log, "do_orm_execute hit", known, lambda: session.get(Author, 2))


def test_session_fallbacks_same_as_stock(session_cls, engine):
    turbosession.reset_stats()
    assert_same_as_stock(session_fallbacks, session_cls, engine, Base.metadata)
    stats = turbosession.stats()["loads"]["get"]
    assert stats == {
        "fast": 1, "loaded": 0, "direct": 0, "cursor": 0,
        "fallback": {"get_session_options": 1, "get_orm_execute": 1},
        "cursor_fallback": {},
    }, stats


def overridden_execute(session_cls, engine, log):
    """A session class overriding execute() sees the call stock's load makes."""

    class Custom(session_cls):
        def execute(self, statement, params=None, **kw):
            log.note("execute", str(statement), params, sorted(kw), sorted(kw["execution_options"]))
            return super().execute(statement, params, **kw)

    with session_cls(engine) as session:
        seed(session)
    with Custom(engine) as session:
        attempt(log, "custom execute", {}, lambda: session.get(Author, 3))


def test_overridden_execute_same_as_stock(session_cls, engine):
    turbosession.reset_stats()
    assert_same_as_stock(overridden_execute, session_cls, engine, Base.metadata)
    # the overriding execute() is called: not the direct execution
    assert turbosession.stats()["loads"]["get"]["loaded"] == 1
    assert turbosession.stats()["loads"]["get"]["direct"] == 0


def recording_session(session_cls, log):
    """A subclass of ``session_cls`` noting its ``get_bind`` arguments and
    its autoflushes in ``log``."""

    class Binding(session_cls):
        def get_bind(self, mapper=None, *, clause=None, **kw):
            log.note("get_bind", mapper and mapper.class_.__name__, str(clause), sorted(kw))
            return super().get_bind(mapper, clause=clause, **kw)

        def _autoflush(self):
            log.note("autoflush", sorted(type(o).__name__ for o in self.new))
            return super()._autoflush()

    return Binding


def execution_seams(session_cls, engine, log):
    """What the direct execution of a miss calls of the session, against what
    stock's Session.execute calls: get_bind (its arguments), the connection,
    autoflush on and off (and no_autoflush), an instance-level execute."""

    Binding = recording_session(session_cls, log)

    with session_cls(engine) as session:
        seed(session)
    with Binding(engine) as session:
        known = {}
        attempt(log, "bind", known, lambda: session.get(Author, 1))
        session.add(Author(id=70, name="pending", bio="b"))
        attempt(log, "autoflush", known, lambda: session.get(Author, 70))
        session.add(Author(id=71, name="pending 2", bio="b"))
        with session.no_autoflush:
            attempt(log, "no_autoflush", known, lambda: session.get(Author, 71))
        attempt(log, "after no_autoflush", known, lambda: session.get(Author, 71))
        log.note("identity map", identity_map_contents(session))
        session.rollback()
    with Binding(engine, autoflush=False) as session:
        session.add(Author(id=72, name="pending 3", bio="b"))
        attempt(log, "autoflush off", {}, lambda: session.get(Author, 72))
        attempt(log, "autoflush off, in table", {}, lambda: session.get(Author, 2))
    with session_cls(engine) as session:
        stock_execute = session.execute

        def execute(statement, *args, **kw):
            log.note("instance execute", str(statement), sorted(kw))
            return stock_execute(statement, *args, **kw)

        session.execute = execute
        attempt(log, "instance execute", {}, lambda: session.get(Author, 3))


def test_execution_seams_same_as_stock(session_cls, engine):
    turbosession.reset_stats()
    assert_same_as_stock(execution_seams, session_cls, engine, Base.metadata)
    stats = turbosession.stats()["loads"]["get"]
    # all loaded here; the one through the instance's execute not directly
    assert stats["loaded"] == 7 and stats["direct"] == 6, stats


def test_patched_orm_pre_session_exec_runs_session_execute(session_cls, engine, monkeypatch):
    """A patched compile-state method is called as stock's Session.execute
    calls it: the miss then goes through session.execute."""
    from sqlalchemy.orm.context import _ORMSelectCompileState

    calls = []
    original = _ORMSelectCompileState.orm_pre_session_exec.__func__

    def patched(cls, session, statement, *args):
        calls.append(str(statement))
        return original(cls, session, statement, *args)

    def scenario(session_cls, engine, log):
        with session_cls(engine) as session:
            seed(session)
        with session_cls(engine) as session:
            attempt(log, "patched", {}, lambda: session.get(Author, 1))

    monkeypatch.setattr(_ORMSelectCompileState, "orm_pre_session_exec", classmethod(patched))
    turbosession.reset_stats()
    assert_same_as_stock(scenario, session_cls, engine, Base.metadata)
    stats = turbosession.stats()["loads"]["get"]
    assert stats["loaded"] == 1 and stats["direct"] == 0, stats
    # stock's get and turbosession's each ran it once for the miss
    assert len([c for c in calls if "tgm_author.id = :pk_1" in c]) == 2, calls
    # once the patch is undone, a miss is loaded directly again: what was
    # decided while it was in place is not kept with the mapper
    monkeypatch.undo()
    turbosession.reset_stats()
    assert_same_as_stock(scenario, session_cls, engine, Base.metadata)
    stats = turbosession.stats()["loads"]["get"]
    assert stats["loaded"] == 1 and stats["direct"] == 1, stats


def test_patched_load_on_pk_identity_runs_stock_get(session_cls, engine, monkeypatch):
    calls = []
    original = loading._load_on_pk_identity

    def patched(session, statement, primary_key_identity, **kw):
        calls.append(primary_key_identity)
        return original(session, statement, primary_key_identity, **kw)

    def scenario(session_cls, engine, log):
        with session_cls(engine) as session:
            seed(session)
        with session_cls(engine) as session:
            attempt(log, "patched", {}, lambda: session.get(Author, 1))

    monkeypatch.setattr(loading, "_load_on_pk_identity", patched)
    turbosession.reset_stats()
    assert_same_as_stock(scenario, session_cls, engine, Base.metadata)
    assert calls == [[1], [1]]
    assert turbosession.stats()["loads"]["get"]["fallback"] == {"get_overridden": 1}


def reconfigured(session_cls, engine, log):
    """A mapper reconfigured between two gets: a column property added, then a
    new subclass mapped (configured by the next get).  The classes are made
    for each run, so that stock's run and turbosession's start alike."""

    class Local(DeclarativeBase):
        pass

    class Thing(Local):
        __tablename__ = "tgm_thing"
        id: Mapped[int] = mapped_column(primary_key=True)
        kind: Mapped[str] = mapped_column(String(20))
        name: Mapped[str] = mapped_column(String(50))
        __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "thing"}

    Local.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            session.add_all([Thing(id=i, kind="thing", name=f"thing {i}") for i in range(1, 5)])
            session.commit()
        with session_cls(engine) as session:
            attempt(log, "before", {}, lambda: session.get(Thing, 1))
            Thing.__mapper__.add_property(
                "shout", column_property(func.upper(Thing.__table__.c.name))
            )
            attempt(log, "column added", {}, lambda: session.get(Thing, 2))
            log.note("shout", session.get(Thing, 2).shout)

            class Special(Thing):
                __mapper_args__ = {"polymorphic_identity": "special"}

            attempt(log, "subclass mapped", {}, lambda: session.get(Thing, 3))
            session.add(Special(id=5, name="special"))
            session.commit()
            session.expunge_all()
            attempt(log, "subclass row", {}, lambda: session.get(Thing, 5))
            attempt(log, "subclass get", {}, lambda: session.get(Special, 5))
            attempt(log, "subclass get miss", {}, lambda: session.get(Special, 4))
    finally:
        Local.metadata.drop_all(engine)
        Local.registry.dispose()


def test_reconfigured_mapper_same_as_stock(session_cls, engine):
    turbosession.reset_stats()
    assert_same_as_stock(reconfigured, session_cls, engine, Base.metadata)
    assert turbosession.stats()["loads"]["get"]["loaded"] >= 5


def test_load_is_dropped_when_the_mapper_is_reconfigured(session_cls, engine):
    class Local(DeclarativeBase):
        pass

    class Gadget(Local):
        __tablename__ = "tgm_gadget"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50))

    Local.metadata.create_all(engine)
    try:
        mapper = Gadget.__mapper__
        with session_cls(engine) as session:
            session.add(Gadget(id=1, name="g"))
            session.commit()
            session.expunge_all()
            assert session.get(Gadget, 1).name == "g"
            first = mapper.__dict__[turbosession.loads.GET_LOAD_ATTR]
            session.expunge_all()
            session.get(Gadget, 1)
            assert mapper.__dict__[turbosession.loads.GET_LOAD_ATTR] is first
            mapper.add_property("loud", column_property(func.upper(Gadget.__table__.c.name)))
            assert turbosession.loads.GET_LOAD_ATTR not in mapper.__dict__
            session.expunge_all()
            # (what the new property loads is stock's: see reconfigured())
            assert session.get(Gadget, 1).name == "g"
            assert mapper.__dict__[turbosession.loads.GET_LOAD_ATTR] is not first
    finally:
        Local.metadata.drop_all(engine)
        Local.registry.dispose()


def test_get_miss_fallbacks_are_logged(session_cls, engine, caplog):
    Base.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            seed(session)
            session.expunge_all()
            with caplog.at_level("DEBUG", logger="turbosession"):
                session.get(Author, 1, identity_token="t")
                session.get(Pair, (1, None))
                session.get(Author, 2)
        messages = [r.getMessage() for r in caplog.records if r.name == "turbosession"]
        assert any("get_identity_token" in m for m in messages), messages
        assert any("get_ident" in m for m in messages), messages
        assert any("load_get" in m for m in messages), messages
    finally:
        Base.metadata.drop_all(engine)


# misses sent straight to the DBAPI cursor (_loading._CursorLoad): models
# without load or refresh listeners, types with bind and result processors,
# a server default (expired after a flush), a deferred column and lazy
# relationships


class Prefixed(TypeDecorator):
    """A key whose bind and result processing the database cannot see."""

    impl = String(30)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else f"k:{value}"

    def process_result_value(self, value, dialect):
        return None if value is None else value[2:]


class Shelf(Base):
    __tablename__ = "tgm_shelf"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(50))
    price: Mapped[decimal.Decimal] = mapped_column(Numeric(10, 2))
    stamped: Mapped[datetime.datetime] = mapped_column(DateTime)
    made: Mapped[str] = mapped_column(String(20), server_default=text("'server'"))
    notes: Mapped[str] = deferred(mapped_column(String(50)))
    parts: Mapped[list["Part"]] = relationship(back_populates="shelf", order_by="Part.code")


class Part(Base):
    __tablename__ = "tgm_part"
    code: Mapped[str] = mapped_column(Prefixed, primary_key=True)
    shelf_id: Mapped[int] = mapped_column(ForeignKey("tgm_shelf.id"))
    shelf: Mapped[Shelf] = relationship(back_populates="parts")


STAMP = datetime.datetime(2024, 5, 6, 7, 8, 9)


def cursor_loads(session_cls, engine, log):
    with session_cls(engine) as session:
        session.add_all(
            [
                Shelf(id=i, label=f"shelf {i}", price=decimal.Decimal(f"{i}.25"),
                      stamped=STAMP, notes=f"notes {i}")
                for i in range(1, 6)
            ]
            + [Part(code=f"p{i}", shelf_id=1 + i % 2) for i in range(1, 5)]
        )
        session.commit()
    with session_cls(engine) as session:
        def on_persistent(session_, instance):
            log.note("loaded_as_persistent", type(instance).__name__, inspect(instance).identity)

        known = {}
        get = session.get
        for i in (1, 2, 3, 99):
            attempt(log, f"shelf {i}", known, lambda i=i: get(Shelf, i))
        for code in ("p1", "p2", "p3", "nope"):
            attempt(log, f"part {code}", known, lambda code=code: get(Part, code))
        attempt(log, "str for int", known, lambda: get(Shelf, "4"))
        shelf = known["shelf 1"]
        log.note("deferred", sorted(inspect(shelf).unloaded), shelf.notes)
        log.note("one-to-many", [describe(p, known) for p in shelf.parts])
        log.note("many-to-one", describe(known["part p1"].shelf, known))
        # a pending object flushed by the autoflush, its server default
        # expired: the row loads into the object the flush put in the map
        session.add(Shelf(id=7, label="pending", price=decimal.Decimal("7"), stamped=STAMP))
        attempt(log, "autoflushed", known, lambda: get(Shelf, 7))
        event.listen(session, "loaded_as_persistent", on_persistent)
        attempt(log, "loaded_as_persistent", known, lambda: get(Shelf, 5))
        event.remove(session, "loaded_as_persistent", on_persistent)
        log.note("identity map", identity_map_contents(session))
        log.states(session, **{k: v for k, v in known.items() if v is not None})
        session.commit()
        session.expunge_all()
        attempt(log, "after expunge_all", {}, lambda: get(Shelf, 2))


@pytest.mark.parametrize("engine_events", [True, False], ids=["engine-events", "cursor-only"])
def test_cursor_loads_same_as_stock(session_cls, engine, engine_events):
    turbosession.reset_stats()
    assert_same_as_stock(cursor_loads, session_cls, engine, Base.metadata, engine_events=engine_events)
    stats = turbosession.stats()["loads"]["get"]
    assert stats["loaded"] == stats["direct"] == 12, stats
    if engine_events:
        # the engine's listeners see Core's execution of every miss
        assert stats["cursor"] == 0, stats
        assert stats["cursor_fallback"] == {"cursor_first": 2, "engine_events": 10}, stats
    else:
        assert stats["cursor"] == 10, stats
        assert stats["cursor_fallback"] == {"cursor_first": 2}, stats


def cursor_fallbacks(session_cls, engine, log):
    """Misses that keep Core's execution once the cursor load is set up:
    load and refresh listeners, SQL echo, a patched loading function."""
    with session_cls(engine) as session:
        session.add_all(
            [Shelf(id=i, label=f"shelf {i}", price=decimal.Decimal(1), stamped=STAMP)
             for i in range(1, 8)]
        )
        session.commit()
    with session_cls(engine) as session:
        attempt(log, "first", {}, lambda: session.get(Shelf, 1))

        def on_load(target, context):
            log.note("load", inspect(target).identity, type(context).__name__)

        event.listen(Shelf, "load", on_load)
        try:
            attempt(log, "load listener", {}, lambda: session.get(Shelf, 2))
        finally:
            event.remove(Shelf, "load", on_load)
        # a connection logs SQL when the engine did as it was made
        session.commit()
        engine.echo = True
        try:
            attempt(log, "echo", {}, lambda: session.get(Shelf, 3))
            session.commit()
        finally:
            engine.echo = False
        attempt(log, "cursor", {}, lambda: session.get(Shelf, 4))


def test_cursor_fallbacks_same_as_stock(session_cls, engine):
    turbosession.reset_stats()
    assert_same_as_stock(cursor_fallbacks, session_cls, engine, Base.metadata, engine_events=False)
    stats = turbosession.stats()["loads"]["get"]
    assert stats["cursor"] == 1, stats
    assert stats["cursor_fallback"] == {
        "cursor_first": 1, "cursor_events": 1, "echo": 1
    }, stats


def test_patched_loading_function_keeps_core_execution(session_cls, engine, monkeypatch):
    calls = []
    original = loading._populate_full

    def patched(*args):
        calls.append(args[2].key)
        return original(*args)

    def scenario(session_cls, engine, log):
        with session_cls(engine) as session:
            session.add_all(
                [Shelf(id=i, label="s", price=decimal.Decimal(1), stamped=STAMP) for i in (1, 2)]
            )
            session.commit()
        with session_cls(engine) as session:
            attempt(log, "first", {}, lambda: session.get(Shelf, 1))
            monkeypatch.setattr(loading, "_populate_full", patched)
            attempt(log, "patched", {}, lambda: session.get(Shelf, 2))
            monkeypatch.undo()

    turbosession.reset_stats()
    assert_same_as_stock(scenario, session_cls, engine, Base.metadata, engine_events=False)
    # stock's load and turbosession's each ran the patched function once
    assert len(calls) == 2, calls
    stats = turbosession.stats()["loads"]["get"]
    assert stats["cursor_fallback"] == {"cursor_first": 1, "cursor_loading": 1}, stats


class WordBase(DeclarativeBase):
    """Models of SQLite only."""


class Word(WordBase):
    """A key without a constraint, compared without case (SQLite's NOCASE):
    one get() can match two rows of one identity, or rows of two."""

    __table__ = Table(
        "tgm_word",
        WordBase.metadata,
        Column("text", String(20, collation="NOCASE")),
        Column("meaning", String(50)),
    )
    __mapper_args__ = {"primary_key": [__table__.c.text]}


def cursor_rows_and_errors(session_cls, engine, log):
    with session_cls(engine) as session:
        session.execute(
            insert(Word.__table__),
            [{"text": t, "meaning": m} for t, m in
             [("ab", "lower"), ("AB", "upper"), ("cd", "one"), ("ef", "first"), ("ef", "second")]],
        )
        session.commit()
    with session_cls(engine) as session:
        known = {}
        attempt(log, "first", known, lambda: session.get(Word, "cd"))
        attempt(log, "two rows, one identity", known, lambda: session.get(Word, "ef"))
        attempt(log, "two identities", known, lambda: session.get(Word, "ab"))
        log.note("identity map", identity_map_contents(session))
        log.states(session, **{k: v for k, v in known.items() if v is not None})
        session.connection().exec_driver_sql("DROP TABLE tgm_word")
        # the DBAPI's error, wrapped as Core wraps it
        attempt(log, "no table", {}, lambda: session.get(Word, "xy"))
        log.note("session active", session.is_active)
        session.rollback()


@pytest.mark.parametrize("engine", ["sqlite"], indirect=True)
def test_cursor_rows_and_errors_same_as_stock(session_cls, engine):
    turbosession.reset_stats()
    assert_same_as_stock(
        cursor_rows_and_errors, session_cls, engine, WordBase.metadata, engine_events=False
    )
    stats = turbosession.stats()["loads"]["get"]
    assert stats["cursor"] == 3, stats
