"""Rows loaded as objects: turbosession's row loop against stock's closure.

Each scenario runs on stock ``sqlalchemy.orm.Session`` and on turbosession's
Session (compiled, and pure with its loop switched on; SQLite and
PostgreSQL).  After every load the records hold, for each object of the
session, everything its state carries (the state's attributes in the order
they were set, ``key``, ``identity_token``, ``committed_state``,
``expired_attributes``, ``callables``, ``load_path``, ``load_options``,
``runid`` as the ordinal of the load that set it, ``session_id``, the
instance dict) and the identity map's contents; the SQL sent, the ``load`` /
``refresh`` / ``loaded_as_persistent`` events and their arguments, and the
lazy loads that follow are recorded too.  The records must be equal; the
counters then say that the queries took turbosession's loop, or which
fallback reason sent them to stock's closure.
"""

import collections

import pytest
from sqlalchemy import ForeignKey, Integer, String, bindparam, event, func, inspect, select, text
from sqlalchemy.orm import (
    DeclarativeBase,
    selectin_polymorphic,
    with_polymorphic,
    Mapped,
    column_property,
    defer,
    deferred,
    joinedload,
    lazyload,
    load_only,
    mapped_column,
    relationship,
    selectinload,
    undefer,
)

import turbosession
from support import assert_same_as_stock, normalize_error, scrub, selectin_hook_sides
from turbosession import instances


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "ti_author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    bio: Mapped[str] = deferred(mapped_column(String(200)))
    books: Mapped[list["Book"]] = relationship(back_populates="author", order_by="Book.id")


class Book(Base):
    __tablename__ = "ti_book"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50))
    pages: Mapped[int] = mapped_column(Integer, nullable=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("ti_author.id"), nullable=True)
    author: Mapped["Author"] = relationship(back_populates="books")


class Versioned(Base):
    __tablename__ = "ti_versioned"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    version: Mapped[int] = mapped_column(Integer)
    __mapper_args__ = {"version_id_col": version}


class Shape(Base):
    __tablename__ = "ti_shape"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "shape"}


class Circle(Shape):
    __mapper_args__ = {"polymorphic_identity": "circle"}


class Square(Shape):
    """Single-table, with a column of its own on the shape table."""

    side: Mapped[int] = mapped_column(Integer, nullable=True)
    __mapper_args__ = {"polymorphic_identity": "square"}


class Vehicle(Base):
    """Joined-table inheritance."""

    __tablename__ = "ti_vehicle"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20), nullable=True)
    name: Mapped[str] = mapped_column(String(50))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "vehicle"}


class Car(Vehicle):
    __tablename__ = "ti_car"
    id: Mapped[int] = mapped_column(ForeignKey("ti_vehicle.id"), primary_key=True)
    doors: Mapped[int] = mapped_column(Integer)
    __mapper_args__ = {"polymorphic_identity": "car"}


class Truck(Vehicle):
    """Loaded with a second SELECT after the base rows (selectin polymorphic)."""

    __tablename__ = "ti_truck"
    id: Mapped[int] = mapped_column(ForeignKey("ti_vehicle.id"), primary_key=True)
    payload: Mapped[int] = mapped_column(Integer)
    __mapper_args__ = {"polymorphic_identity": "truck", "polymorphic_load": "selectin"}


class Pair(Base):
    """A composite primary key whose columns are not next to each other in
    the row (stock's key getter is ``itemgetter(0, 2)``), and no partial keys
    (``is_not_primary_key`` is ``_none_set.intersection``)."""

    __tablename__ = "ti_pair"
    a: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(20))
    b: Mapped[int] = mapped_column(primary_key=True)
    __mapper_args__ = {"allow_partial_pks": False}


class Custom(Base):
    """A class with a ``__new__`` and a ``__setattr__`` of its own: the loop
    calls them as stock's ``new_instance`` does."""

    __tablename__ = "ti_custom"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))
    calls = []

    def __new__(cls, *args, **kw):
        Custom.calls.append(("__new__", cls.__name__))
        return super().__new__(cls)

    def __setattr__(self, key, value):
        Custom.calls.append(("__setattr__", key, type(value).__name__))
        super().__setattr__(key, value)


def seed(session):
    authors = [Author(id=i, name=f"author {i}", bio=f"bio {i}") for i in range(1, 5)]
    books = [
        Book(id=10 * a + b, title=f"book {a}.{b}", pages=None if b == 2 else 100 * b,
             author_id=a)
        for a in range(1, 4)
        for b in range(1, 4)
    ]
    books.append(Book(id=99, title="orphan", pages=1, author_id=None))
    session.add_all(authors + books)
    session.add_all([Versioned(id=1, name="v"), Shape(id=1), Circle(id=2)])
    session.commit()


class Runids:
    """Each distinct runid as the ordinal of its first appearance."""

    def __init__(self):
        self.seen = {}

    def __call__(self, runid):
        if runid is None:
            return None
        return self.seen.setdefault(runid, len(self.seen))


def _value(value, session):
    if isinstance(value, Base):
        return ("object", type(value).__name__, inspect(value).key)
    if isinstance(value, list):
        return [_value(v, session) for v in value]
    return value


def state_record(obj, session, runids):
    """All of an object's state a program (or SQLAlchemy later) can read."""
    state = inspect(obj)
    attrs = []
    for name, value in vars(state).items():
        if name in ("obj", "manager", "class_", "_instance_dict", "_strong_obj"):
            attrs.append((name, type(value).__name__))
        elif name == "runid":
            attrs.append((name, runids(value)))
        elif name == "session_id":
            attrs.append((name, value == session.hash_key))
        elif name == "load_path":
            attrs.append((name, repr(value.path)))
        elif name == "load_options":
            attrs.append((name, [scrub(repr(type(o))) for o in value]))
        elif name == "callables":
            attrs.append((name, sorted((k, type(v).__name__) for k, v in value.items())))
        elif name == "committed_state":
            attrs.append((name, sorted((k, scrub(repr(v))) for k, v in value.items())))
        elif name in ("expired_attributes", "parents"):
            attrs.append((name, sorted(map(str, value))))
        else:
            attrs.append((name, scrub(repr(value))))
    return (
        type(obj).__name__,
        attrs,
        [(k, _value(v, session)) for k, v in vars(obj).items() if k != "_sa_instance_state"],
        state._instance_dict() is session.identity_map,
        sorted(state.unloaded),
        state.modified,
        state.expired,
    )


def session_record(session, runids):
    """The identity map, in its order, with each object's state."""
    return [
        (repr(key), state_record(obj, session, runids))
        for key, obj in list(session.identity_map.items())
    ]


def listen(log, session):
    def on_load(target, context):
        log.note("load", type(target).__name__, inspect(target).key,
                 sorted(k for k in vars(target) if not k.startswith("_")))
        if type(target) is Book and target.id == 31:
            # a listener changing the object: stock commits it as loaded
            target.pages = 7

    def on_refresh(target, context, attrs):
        log.note("refresh", type(target).__name__, inspect(target).key, attrs and sorted(attrs))

    def on_persistent(sess, instance):
        log.note("loaded_as_persistent", sess is session, type(instance).__name__,
                 inspect(instance).key)

    for cls in (Author, Book, Versioned, Shape):
        event.listen(cls, "load", on_load, propagate=True)
        event.listen(cls, "refresh", on_refresh, propagate=True)
    event.listen(session, "loaded_as_persistent", on_persistent)

    def unlisten():
        for cls in (Author, Book, Versioned, Shape):
            event.remove(cls, "load", on_load)
            event.remove(cls, "refresh", on_refresh)

    return unlisten


def rows_of(result):
    """What a loaded result holds, objects by identity key."""
    out = []
    for item in result:
        if isinstance(item, tuple) or hasattr(item, "_fields"):
            out.append(tuple(_value(v, None) for v in item))
        else:
            out.append(_value(item, None))
    return out


def load_and_record(log, session, label, load, held, runids):
    """Run ``load(session)``, recording its result (or exception) and the
    whole session after it; what it loaded is kept in ``held``."""
    try:
        result = load(session)
        if not isinstance(result, list):
            result = list(result)
        held.append(result)
        log.note(label, rows_of(result))
    except Exception as exc:
        log.note(label, "raises", normalize_error(exc))
    log.note(label, "session", session_record(session, runids))


def each_load(session_cls, engine, log, loads, events=False):
    """Seed, then run each ``(label, load)`` in one session, recording its
    result and the whole session after it."""
    with session_cls(engine) as session:
        seed(session)
    runids = Runids()
    held = []  # the identity map is weak: keep what was loaded
    with session_cls(engine) as session:
        unlisten = listen(log, session) if events else None
        try:
            for label, load in loads:
                load_and_record(log, session, label, load, held, runids)
        finally:
            if unlisten:
                unlisten()


LOADS = [
    ("select", lambda s: s.scalars(select(Author).order_by(Author.id)).all()),
    ("select again (hits)", lambda s: s.scalars(select(Author).order_by(Author.id)).all()),
    ("books where", lambda s: s.scalars(select(Book).where(Book.id < 30)).all()),
    ("unique", lambda s: s.scalars(select(Book).order_by(Book.id)).unique().all()),
    ("tuples", lambda s: s.execute(select(Book, Author).join(Book.author)).all()),
    ("entity and column", lambda s: s.execute(select(Author, Author.name)).all()),
    ("outer join nulls", lambda s: s.execute(
        select(Book, Author).outerjoin(Book.author).order_by(Book.id)).all()),
    ("lazy load", lambda s: [s.get(Author, 1).books, s.get(Book, 11).author]),
    ("deferred load", lambda s: [a.bio for a in s.scalars(select(Author)).all()]),
    ("legacy query", lambda s: s.query(Book).filter(Book.pages > 100).all()),
    ("legacy query tuples", lambda s: s.query(Book.id, Book).order_by(Book.id).all()),
]


def test_loads_match_stock(session_cls, engine, pure_loop):
    turbosession.reset_stats()
    assert_same_as_stock(
        lambda cls, eng, log: each_load(cls, eng, log, LOADS), session_cls, engine, Base.metadata
    )
    loaded = turbosession.stats()["loads"]["instances"]
    assert loaded["fast"] > 0 and loaded["rows"] > 0
    # only the deferred column's load (an only_load_props refresh) is stock's
    assert set(loaded["fallback"]) == {"load_refresh"}


def fresh_loads(make_statement, label):
    """One load into a fresh session each: the rows are all new objects."""
    return [(label, lambda s: s.scalars(make_statement()).all())]


OPTION_LOADS = [
    ("load_only", lambda s: s.scalars(select(Author).options(load_only(Author.name))).all()),
    ("defer", lambda s: s.scalars(select(Book).options(defer(Book.pages))).all()),
    ("defer raiseload", lambda s: s.scalars(
        select(Book).options(defer(Book.pages, raiseload=True))).all()),
    ("undefer", lambda s: s.scalars(select(Author).options(undefer(Author.bio))).all()),
    ("lazyload option", lambda s: s.scalars(
        select(Author).options(lazyload(Author.books))).all()),
    ("touch unloaded", lambda s: [(b.pages, a.bio) for b in s.scalars(select(Book)).all()
                                  for a in [s.get(Author, 1)]]),
    ("joinedload", lambda s: s.scalars(
        select(Author).options(joinedload(Author.books)).order_by(Author.id)).unique().all()),
    ("selectinload", lambda s: s.scalars(
        select(Author).options(selectinload(Author.books)).order_by(Author.id)).all()),
    ("joinedload many-to-one", lambda s: s.scalars(
        select(Book).options(joinedload(Book.author)).order_by(Book.id)).all()),
]


@pytest.mark.parametrize("index", range(len(OPTION_LOADS)), ids=[l for l, _ in OPTION_LOADS])
def test_options_match_stock(session_cls, engine, pure_loop, index):
    """Each option on a fresh session (new objects), then the same query again
    (objects in the map, loaded differently) and a plain select after it."""
    label, load = OPTION_LOADS[index]
    loads = [(label, load), (label + " again", load),
             ("plain after", lambda s: s.scalars(select(Author)).all()),
             ("books after", lambda s: s.scalars(select(Book)).all())]
    assert_same_as_stock(
        lambda cls, eng, log: each_load(cls, eng, log, loads), session_cls, engine, Base.metadata
    )


def expire_then_load(session_cls, engine, log):
    with session_cls(engine) as session:
        seed(session)
    runids = Runids()
    with session_cls(engine) as session:
        unlisten = listen(log, session)
        try:
            authors = session.scalars(select(Author).order_by(Author.id)).all()
            log.note("first", session_record(session, runids))
            session.expire(authors[0], ["name"])
            session.expire(authors[1])
            authors[2].name = "changed"
            log.note("expired", session_record(session, runids))
            log.note("reload", rows_of(session.scalars(select(Author).order_by(Author.id))))
            held = [authors]
            log.note("reloaded", session_record(session, runids))
            session.commit()
            held.append(session.scalars(select(Author).order_by(Author.id)).all())
            log.note("reload after commit", rows_of(held[-1]))
            log.note("after commit", session_record(session, runids))
            del authors

            def kept(partitions):
                held.append(list(partitions))
                return [rows_of(p) for p in held[-1]]

            for label, load in [
                ("yield_per", lambda: kept(session.scalars(
                    select(Book).order_by(Book.id).execution_options(yield_per=3)).partitions())),
                ("partitions", lambda: kept(session.execute(
                    select(Book, Author).outerjoin(Book.author).order_by(Book.id)).partitions(4))),
                ("populate_existing", lambda: kept(session.scalars(
                    select(Author).execution_options(populate_existing=True)).partitions())),
                ("refresh", lambda: session.refresh(session.get(Author, 1))),
                ("versioned", lambda: kept(session.scalars(select(Versioned)).partitions())),
                ("versioned for update", lambda: kept(session.scalars(
                    select(Versioned).with_for_update()).partitions())),
                ("polymorphic", lambda: kept(session.scalars(
                    select(Shape).order_by(Shape.id)).partitions())),
            ]:
                try:
                    log.note(label, load())
                except Exception as exc:
                    log.note(label, "raises", normalize_error(exc))
                log.note(label, "session", session_record(session, runids))
        finally:
            unlisten()


def test_expired_and_fallbacks_match_stock(session_cls, engine, pure_loop):
    turbosession.reset_stats()
    assert_same_as_stock(expire_then_load, session_cls, engine, Base.metadata)
    loaded = turbosession.stats()["loads"]["instances"]
    assert loaded["fast"] > 0
    # expired objects were handed row by row to stock's closure
    assert loaded["rows_to_stock"] > 0
    # (the polymorphic load takes the loop: see test_polymorphic_loads_match_stock)
    assert set(loaded["fallback"]) == {"load_populate_existing", "load_refresh"}


def test_events_match_stock(session_cls, engine, pure_loop):
    assert_same_as_stock(
        lambda cls, eng, log: each_load(cls, eng, log, LOADS, events=True),
        session_cls, engine, Base.metadata,
    )


def built_states(session_cls, engine, log):
    """What a new object's state holds beyond ``vars(state)`` (its slots,
    which the compiled loop stores itself, and its weak reference's
    callback), and that the callback removes a collected object from the
    identity map; with and without a ``load`` listener that modifies the
    object (stock then commits it as loaded)."""
    import gc

    with session_cls(engine) as session:
        seed(session)

    def modify(target, context):
        target.pages = (target.pages or 0) + 1

    for listened in (False, True):
        if listened:
            event.listen(Book, "load", modify)
        try:
            with session_cls(engine) as session:
                books = session.scalars(select(Book).order_by(Book.id)).all()
                for book in books:
                    state = inspect(book)
                    log.note(
                        "state", listened, state.key,
                        state.class_ is Book, state.manager is Book._sa_class_manager,
                        type(state.committed_state).__name__, sorted(state.committed_state),
                        type(state.expired_attributes).__name__,
                        sorted(state.expired_attributes),
                        state.obj() is book,
                        state.obj.__callback__ == state._cleanup,
                        state.modified, book in session.dirty, book.pages,
                    )
                # the new states' sets of expired attribute names in use
                first = inspect(books[0])
                session.expire(books[0], ["title"])
                log.note("expired", sorted(first.expired_attributes), books[0].title,
                         sorted(first.expired_attributes))
                first.expired_attributes.add("pages")
                first.expired_attributes.discard("pages")
                session.expire(books[-1])
                log.note("expired all", sorted(inspect(books[-1]).expired_attributes),
                         books[-1].title, sorted(inspect(books[-1]).expired_attributes))
                keys = [inspect(book).key for book in books]
                del books, book, state, first
                gc.collect()
                log.note("collected", listened, len(session.identity_map),
                         [key in session.identity_map for key in keys])
        finally:
            if listened:
                event.remove(Book, "load", modify)


def test_built_states_match_stock(session_cls, engine, pure_loop):
    turbosession.reset_stats()
    assert_same_as_stock(built_states, session_cls, engine, Base.metadata)
    loaded = turbosession.stats()["loads"]["instances"]
    assert loaded["fast"] > 0 and loaded["rows"] > 0
    # only the expired attributes' loads (stock's closure, as a refresh)
    assert set(loaded["fallback"]) == {"load_refresh"}, loaded


def _tracked_after_load(session, statement):
    """The objects the collector tracks that a load leaves alive, by type
    name (counted after a full collection, as the load's objects are kept)."""
    import gc

    gc.collect()
    # the objects themselves are held, so that none of their ids is freed
    # and given to an object the load makes
    alive = gc.get_objects()
    before = {id(o) for o in alive}
    loaded = session.scalars(statement).all()
    gc.collect()
    left = collections.Counter(
        type(o).__name__ for o in gc.get_objects() if id(o) not in before
    )
    del alive
    return loaded, left


def test_loaded_objects_leave_what_stock_leaves_tracked(session_cls, pure_loop):
    """Each object the loop loads leaves the objects stock's leave tracked by
    the collector (the instance and its ``__dict__``, the state, its weak
    reference and that reference's bound ``_cleanup``, the identity key),
    except, compiled, the state's empty set of expired attribute names, which
    holds only names and is left out of the collector's generations."""
    import gc

    from sqlalchemy import create_engine
    from sqlalchemy.orm import Session as StockSession

    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    with StockSession(engine) as session:
        session.add_all([Author(id=i, name=f"a{i}") for i in range(1, 201)])
        session.commit()
    statement = select(Author).order_by(Author.id)
    counts = {}
    for cls in (StockSession, session_cls):
        with cls(engine) as session:
            # the compiled statement's setup is cached by its first execution
            session.scalars(statement).all()
            session.expunge_all()
            loaded, left = _tracked_after_load(session, statement)
            assert len(loaded) == 200
            counts[cls] = left
            for author in loaded:
                state = inspect(author)
                assert state.expired_attributes == set()
                assert gc.is_tracked(state.expired_attributes) is (
                    cls is StockSession or session_cls._turbo.name != "compiled"
                )
            del loaded, author, state
    stock, ours = counts[StockSession], counts[session_cls]
    assert stock["Author"] == stock["InstanceState"] == stock["method"] == 200, stock
    assert stock["set"] >= 200, stock
    untracked = 200 if session_cls._turbo.name == "compiled" else 0
    expected = stock - collections.Counter(set=untracked)
    # what the 200 objects leave, per object: the types made at least once
    # per two objects (a stray object of another test's thread or of a
    # cache is not the load's)
    per_object = {name for name, count in (stock + ours).items() if count >= 100}
    assert {name: ours[name] for name in per_object} == {
        name: expected[name] for name in per_object
    }, (stock, ours)
    engine.dispose()


def test_stock_sessions_get_stock_closure(engine):
    """The hook hands a stock session's queries stock's closure, uncounted."""
    from sqlalchemy.orm import Session, loading

    assert loading._instance_processor is instances.instance_processor
    Base.metadata.create_all(engine)
    try:
        turbosession.reset_stats()
        with Session(engine) as session:
            seed(session)
            session.expunge_all()
            processors = []

            def spy(*args, **kw):
                processor = instances.instance_processor(*args, **kw)
                processors.append(processor)
                return processor

            loading._instance_processor = spy
            try:
                session.execute(select(Author)).all()
                session.execute(select(Book).options(joinedload(Book.author))).all()
            finally:
                loading._instance_processor = instances.instance_processor
        assert processors and all(p.__code__ is instances._STOCK_INSTANCE_CODE
                                  for p in processors)
        assert turbosession.stats()["loads"]["instances"] == {
            "fast": 0, "fallback": {}, "rows": 0, "rows_to_stock": 0,
            "collections": 0, "scalars": 0, "collections_to_stock": {},
            "setup": {"cached": 0, "stock": {}},
        }
    finally:
        Base.metadata.drop_all(engine)


def close_on_first_load(session):
    """A ``load`` listener that closes the session when the first row's
    object is loaded: the next new object meets the killed identity map."""

    closed = []

    def on_load(target, context):
        if not closed:
            closed.append(target)
            session.close()

    event.listen(Author, "load", on_load)
    try:
        return session.scalars(select(Author).order_by(Author.id)).all()
    finally:
        event.remove(Author, "load", on_load)


ROW_SHAPE_LOADS = [
    ("non-contiguous composite key", lambda s: s.scalars(
        select(Pair).order_by(Pair.a, Pair.b)).all()),
    ("partial NULL key, no partial keys", lambda s: s.scalars(
        select(Pair).from_statement(text(
            "SELECT 7 AS a, 'x' AS label, NULL AS b UNION ALL "
            "SELECT 8 AS a, 'y' AS label, 1 AS b"))).all()),
    ("partial NULL key of text values, no partial keys", lambda s: s.scalars(
        select(Pair).from_statement(text(
            "SELECT 'k' AS a, 'x' AS label, NULL AS b UNION ALL "
            "SELECT 'm' AS a, 'y' AS label, 'n' AS b"))).all()),
    ("own __new__ and __setattr__", lambda s: s.scalars(
        select(Custom).order_by(Custom.id)).all()),
    ("Row objects (yield_per)", lambda s: s.scalars(
        select(Book).order_by(Book.id).execution_options(yield_per=3)).all()),
    ("tuple rows by text", lambda s: s.scalars(
        select(Book).from_statement(text(
            "SELECT pages, title, id, author_id FROM ti_book ORDER BY id"))).all()),
    ("closed while loading", close_on_first_load),
]


def row_shapes(session_cls, engine, log):
    Custom.calls.clear()
    with session_cls(engine) as session:
        seed(session)
        session.add_all([Pair(a=1, label="p", b=2), Pair(a=1, label="q", b=1),
                         Pair(a=2, label="r", b=1)])
        session.add_all([Custom(id=1, name="one"), Custom(id=2, name="two")])
        session.commit()
    runids = Runids()
    held = []
    with session_cls(engine) as session:
        for label, load in ROW_SHAPE_LOADS:
            Custom.calls.clear()
            load_and_record(log, session, label, load, held, runids)
            log.note(label, "Custom calls", list(Custom.calls))


def test_row_shapes_match_stock(session_cls, engine, pure_loop):
    """Rows read by position (composite keys, ``from_statement`` columns in
    another order), Row objects, NULL keys without partial keys, a class's
    own ``__new__`` / ``__setattr__``, and the identity map killed mid-load."""
    turbosession.reset_stats()
    assert_same_as_stock(row_shapes, session_cls, engine, Base.metadata)
    loaded = turbosession.stats()["loads"]["instances"]
    assert loaded["fast"] >= len(ROW_SHAPE_LOADS) and loaded["rows"] > 0, loaded
    assert loaded["fallback"] == {}, loaded


@pytest.fixture
def pure_loop(impl, monkeypatch):
    """The pure twin runs its loop in these tests (by default pure sessions
    load with stock's closure, see instances.FALLBACK_REASONS["load_pure"])."""
    monkeypatch.setattr(instances, "PURE_LOOP", True)
    return impl


def test_pure_sessions_default_to_stock_closure(engine):
    """Without PURE_LOOP, a pure session's queries get stock's closure, counted
    as load_pure, and load exactly as stock."""
    from turbosession import _impl

    pure_session = type("Session_pure", (turbosession.Session,), {"_turbo": _impl.pure})
    assert instances.PURE_LOOP is False
    turbosession.reset_stats()
    assert_same_as_stock(
        lambda cls, eng, log: each_load(cls, eng, log, LOADS[:3]),
        pure_session, engine, Base.metadata,
    )
    loaded = turbosession.stats()["loads"]["instances"]
    assert loaded["fast"] == 0 and loaded["rows"] == 0
    assert set(loaded["fallback"]) == {"load_pure"}


def _expire_first(s, attrs=None):
    objs = list(s.identity_map.values())
    if objs:
        s.expire(objs[0], attrs)
    return []


def _change_first(s):
    for obj in s.identity_map.values():
        if isinstance(obj, Author):
            obj.name = "changed"
            break
    return []


# steps of a random sequence; each returns what it loaded (kept alive)
STEPS = [
    ("authors", lambda s: s.scalars(select(Author).order_by(Author.id)).all()),
    ("authors > 2", lambda s: s.scalars(select(Author).where(Author.id > 2)).all()),
    ("books", lambda s: s.scalars(select(Book).order_by(Book.id)).all()),
    ("books load_only", lambda s: s.scalars(select(Book).options(load_only(Book.title))).all()),
    ("authors undefer", lambda s: s.scalars(select(Author).options(undefer(Author.bio))).all()),
    ("book and author", lambda s: s.execute(
        select(Book, Author).outerjoin(Book.author).order_by(Book.id)).all()),
    ("joinedload", lambda s: s.scalars(
        select(Author).options(joinedload(Author.books))).unique().all()),
    ("selectinload", lambda s: s.scalars(select(Author).options(selectinload(Author.books))).all()),
    ("populate_existing", lambda s: s.scalars(
        select(Author).execution_options(populate_existing=True)).all()),
    ("yield_per", lambda s: list(s.scalars(select(Book).execution_options(yield_per=4)))),
    ("get", lambda s: [s.get(Author, 2), s.get(Book, 21)]),
    ("expire one", _expire_first),
    ("expire name", lambda s: _expire_first(s, ["name"])),
    ("change", _change_first),
    ("commit", lambda s: s.commit() or []),
    ("expunge_all", lambda s: s.expunge_all() or []),
]


def test_random_sequences_match_stock(session_cls, engine, pure_loop):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    @settings(max_examples=25, deadline=None, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(st.lists(st.sampled_from(range(len(STEPS))), min_size=1, max_size=8))
    def check(indexes):
        loads = [STEPS[i] for i in indexes]
        assert_same_as_stock(
            lambda cls, eng, log: each_load(cls, eng, log, loads, events=True),
            session_cls, engine, Base.metadata,
        )

    check()


def test_instrumentation_decision_is_memoized_on_the_mapper(session_cls, engine):
    """The per-mapper part of the decision lives in the mapper's memoized
    values, which SQLAlchemy clears when mappers are reconfigured."""
    Base.metadata.create_all(engine)
    try:
        mapper = inspect(Author)
        mapper._memoized_values.pop(instances._MEMO_KEY, None)
        with session_cls(engine) as session:
            session.scalars(select(Author)).all()
        if session_cls._turbo.instances._is_compiled():
            assert mapper._memoized_values[instances._MEMO_KEY] is True
        else:
            # pure without PURE_LOOP decides before the per-mapper part
            assert instances._MEMO_KEY not in mapper._memoized_values
    finally:
        Base.metadata.drop_all(engine)


def repeated_executions(session_cls, engine, log):
    """One statement object executed again and again, so one compiled statement
    and one cached row setup, with what changes between executions: the bound
    parameters, the session, load and loaded_as_persistent listeners added
    and removed, populate_existing, yield_per, an identity token, an option
    (another compiled statement) and the plain statement after it."""
    with session_cls(engine) as session:
        seed(session)
    statement = select(Book).where(Book.id > bindparam("low")).order_by(Book.id)
    runids = Runids()
    held = []

    def run(label, session, low=0, **kw):
        def load(s):
            result = s.scalars(statement, {"low": low}, **kw)
            if kw.get("execution_options", {}).get("yield_per"):
                return [obj for part in result.partitions() for obj in part]
            return result.all()

        load_and_record(log, session, label, load, held, runids)

    def on_load(target, context):
        log.note("load", type(target).__name__, inspect(target).key)

    def on_persistent(sess, instance):
        log.note("loaded_as_persistent", type(instance).__name__, inspect(instance).key)

    with session_cls(engine) as session:
        run("first", session, low=20)
        run("other parameters", session, low=10)
        run("same rows again", session, low=10)
        session.expunge_all()
        event.listen(Book, "load", on_load)
        try:
            run("load listener", session, low=12)
        finally:
            event.remove(Book, "load", on_load)
        session.expunge_all()
        run("listener removed", session, low=12)
        session.expunge_all()
        event.listen(session, "loaded_as_persistent", on_persistent)
        run("loaded_as_persistent listener", session, low=30)
        run("populate_existing", session, low=30,
            execution_options={"populate_existing": True})
        session.expunge_all()
        run("yield_per", session, low=0, execution_options={"yield_per": 2})
        run("identity token", session, low=20, execution_options={"identity_token": "t"})
        held.append(session.scalars(statement.options(defer(Book.pages)), {"low": 0}).all())
        log.note("option", "session", session_record(session, runids))
    with session_cls(engine) as session:
        run("second session", session, low=0)
        session.expunge_all()
        run("second session again", session, low=0)


def test_repeated_executions_match_stock(session_cls, engine, pure_loop):
    turbosession.reset_stats()
    assert_same_as_stock(repeated_executions, session_cls, engine, Base.metadata)
    loaded = turbosession.stats()["loads"]["instances"]
    assert loaded["fast"] >= 10 and loaded["rows"] > 0, loaded
    assert loaded["fallback"] == {"load_populate_existing": 1}, loaded


@pytest.fixture
def setups(monkeypatch):
    """The RowSetups of the loaders the hook builds, in order."""
    returned = []

    def recorder(original):
        def recording(*args):
            loader = original(*args)
            setup = getattr(loader, "setup", None)
            if setup is not None:
                returned.append(setup)
            return loader

        return recording

    # built over stock's closure, or from the cached setup alone
    monkeypatch.setattr(instances, "_row_loader", recorder(instances._row_loader))
    monkeypatch.setattr(instances, "_cached_loader", recorder(instances._cached_loader))
    return returned


def test_row_setup_is_kept_per_compiled_statement(session_cls, engine, pure_loop, setups):
    """Executions of one compiled statement share one RowSetup, whatever the
    execution brings (parameters, session, listeners, yield_per); another
    compiled statement (an option, another engine's cache) has its own, and a
    reconfigured mapper gets a new one."""
    Base.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            seed(session)
        statement = select(Author).where(Author.id > bindparam("low"))
        with session_cls(engine) as session:
            session.scalars(statement, {"low": 0}).all()
            session.expunge_all()
            session.scalars(statement, {"low": 2}, execution_options={"yield_per": 1}).all()
        with session_cls(engine) as session:
            event.listen(session, "loaded_as_persistent", lambda *a: None)
            session.scalars(statement, {"low": 1}).all()
            session.expunge_all()
            session.scalars(statement.options(undefer(Author.bio)), {"low": 1}).all()
        assert len(setups) == 4
        assert setups[0] is setups[1] is setups[2]
        assert setups[3] is not setups[0]
        assert type(setups[0]) is session_cls._turbo.instances.RowSetup
        # a relationship (Author.books) sets up its populator against each
        # execution: the populators are read from each execution's closure
        assert setups[0].per_query
        with session_cls(engine) as session:
            # columns only: the cached populators
            session.scalars(select(Versioned)).all()
            session.expunge_all()
            session.scalars(select(Versioned)).all()
        assert not setups[-1].per_query and setups[-1] is setups[-2]
    finally:
        Base.metadata.drop_all(engine)


def reconfigured_between_executions(session_cls, engine, log):
    """A mapper reconfigured between two executions of one statement object:
    a column property added (the statement's compiled form and its cached
    setup must follow)."""

    class Local(DeclarativeBase):
        pass

    class Widget(Local):
        __tablename__ = "ti_widget"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50))

    Local.metadata.create_all(engine)
    runids = Runids()

    def record(session):
        # the classes are made for each run: their properties' order in the
        # mapper's property set (and so in the instance dict) is by address,
        # as are the mappers' reprs; everything else as state_record
        out = []
        for key, obj in list(session.identity_map.items()):
            kind, attrs, values, *rest = state_record(obj, session, runids)
            attrs = [(n, scrub(v) if n == "load_path" else v)
                     for n, v in attrs if n != "key"]
            out.append((key[1], kind, attrs, sorted(values), rest))
        return out

    try:
        with session_cls(engine) as session:
            session.add_all([Widget(id=i, name=f"widget {i}") for i in range(1, 4)])
            session.commit()
        statement = select(Widget).order_by(Widget.id)
        with session_cls(engine) as session:
            first = session.scalars(statement).all()
            log.note("before", [(w.id, w.name) for w in first])
            log.note("before", "session", record(session))
            session.expunge_all()
            Widget.__mapper__.add_property(
                "shout", column_property(func.upper(Widget.__table__.c.name))
            )
            second = session.scalars(statement).all()
            log.note("after", "session", record(session))
            log.note("after", [(w.id, w.name, w.shout) for w in second])
            log.note("after access", "session", record(session))
    finally:
        Local.metadata.drop_all(engine)
        Local.registry.dispose()


def test_reconfigured_between_executions_matches_stock(session_cls, engine, pure_loop, setups):
    turbosession.reset_stats()
    assert_same_as_stock(reconfigured_between_executions, session_cls, engine, Base.metadata)
    assert turbosession.stats()["loads"]["instances"]["fast"] == 2
    assert len(setups) == 2 and setups[0] is not setups[1]
    assert setups[0].source is not setups[1].source


def polymorphic_loads(session_cls, engine, log):
    """Single-table and joined-table hierarchies loaded through stock's
    polymorphic switch: base rows, subclass rows (their mapper's processor,
    set up on their first row), hits, with_polymorphic, selectin polymorphic
    loading, a subclass query, the subclass columns a base query leaves
    unloaded, events, and a NULL and an unknown discriminator."""
    with session_cls(engine) as session:
        seed(session)
        session.add_all([Square(id=3, side=4), Circle(id=4), Shape(id=5), Square(id=6)])
        session.add_all([
            Vehicle(id=1, name="cart"), Car(id=2, name="mini", doors=3),
            Truck(id=3, name="big", payload=10), Car(id=4, name="van", doors=5),
            Vehicle(id=5, name="bike"), Truck(id=6, name="small", payload=2),
        ])
        session.commit()
    runids = Runids()
    held = []

    def on_load(target, context):
        log.note("load", type(target).__name__, inspect(target).key,
                 sorted(k for k in vars(target) if not k.startswith("_")))

    def on_persistent(sess, instance):
        log.note("loaded_as_persistent", type(instance).__name__, inspect(instance).key)

    loads = [
        ("shapes", lambda s: s.scalars(select(Shape).order_by(Shape.id)).all()),
        ("shapes again (hits)", lambda s: s.scalars(select(Shape).order_by(Shape.id)).all()),
        ("circles", lambda s: s.scalars(select(Circle)).all()),
        ("squares where", lambda s: s.scalars(select(Square).where(Square.side > 1)).all()),
        ("vehicles", lambda s: s.scalars(select(Vehicle).order_by(Vehicle.id)).all()),
        ("car columns after", lambda s: [(c.id, c.doors) for c in s.scalars(
            select(Vehicle).where(Vehicle.kind == "car")).all()]),
        ("with_polymorphic", lambda s: s.scalars(
            select(with_polymorphic(Vehicle, [Car])).order_by(Vehicle.id)).all()),
        ("with_polymorphic all", lambda s: s.scalars(
            select(with_polymorphic(Vehicle, "*"))).all()),
        ("selectin_polymorphic", lambda s: s.scalars(select(Vehicle).options(
            selectin_polymorphic(Vehicle, [Car, Truck])).order_by(Vehicle.id)).all()),
        ("cars", lambda s: s.scalars(select(Car).order_by(Car.id)).all()),
        ("tuples", lambda s: s.execute(
            select(Vehicle, Shape).join(Shape, Shape.id == Vehicle.id)).all()),
    ]
    for fresh in (True, False):
        with session_cls(engine) as session:
            event.listen(Shape, "load", on_load, propagate=True)
            event.listen(Vehicle, "load", on_load, propagate=True)
            event.listen(session, "loaded_as_persistent", on_persistent)
            try:
                for label, load in loads:
                    if fresh:
                        session.expunge_all()
                    load_and_record(log, session, label, load, held, runids)
            finally:
                event.remove(Shape, "load", on_load)
                event.remove(Vehicle, "load", on_load)
    with engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO ti_vehicle (id, kind, name) VALUES (7, NULL, 'x')")
    with session_cls(engine) as session:
        load_and_record(log, session, "null discriminator",
                        lambda s: s.scalars(select(Vehicle).order_by(Vehicle.id)).all(),
                        held, runids)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE ti_vehicle SET kind = 'boat' WHERE id = 7")
    with session_cls(engine) as session:
        load_and_record(log, session, "unknown discriminator",
                        lambda s: s.scalars(select(Vehicle)).all(), held, runids)


def test_polymorphic_loads_match_stock(session_cls, engine, pure_loop):
    turbosession.reset_stats()
    assert_same_as_stock(polymorphic_loads, session_cls, engine, Base.metadata)
    loaded = turbosession.stats()["loads"]["instances"]
    # the switch's own closure and each subclass's take the loop; Truck's
    # selectin load of its columns is a refresh of the loaded objects
    assert loaded["fast"] >= 30 and loaded["rows"] > 0, loaded
    assert "load_polymorphic" not in loaded["fallback"], loaded


def _joined(*opts):
    return lambda s: s.scalars(
        select(Author).options(*opts).order_by(Author.id)).unique().all()


def _selectin_over_pending(s):
    """A book moved to an author whose books are not loaded (the backref's
    append kept as pending), then the authors loaded again with their books:
    the loaded collection gets the pending book after the modified event."""
    with s.no_autoflush:
        author = s.get(Author, 4)
        s.expire(author, ["books"])
        s.get(Book, 99).author = author
        return s.scalars(
            select(Author).options(selectinload(Author.books)).order_by(Author.id)).all()


EAGER_LOADS = [
    # the later rows of each author append through JoinedCollection
    ("joined collection", _joined(joinedload(Author.books))),
    # a join repeating each author once per book, each book once per author:
    # the appender de-duplicates by identity
    ("joined over a join", lambda s: s.scalars(
        select(Author).join(Author.books).options(joinedload(Author.books))
        .order_by(Author.id)).unique().all()),
    # the author again in the nested column set of its own rows (another
    # load path), and the books' many-to-one
    ("joined nested back", _joined(joinedload(Author.books).joinedload(Book.author))),
    ("joined then selectin", _joined(joinedload(Author.books).selectinload(Book.author))),
    # the objects now in the map with their collections: eager populators on
    # objects of an earlier load (stock's closure)
    ("joined again", _joined(joinedload(Author.books))),
    ("joined populate_existing", lambda s: s.scalars(
        select(Author).options(joinedload(Author.books)).order_by(Author.id)
        .execution_options(populate_existing=True)).unique().all()),
    ("tuples with joined", lambda s: s.execute(
        select(Book, Author).join(Book.author).options(joinedload(Author.books))
        .order_by(Book.id)).unique().all()),
    ("selectin collection", lambda s: s.scalars(
        select(Author).options(selectinload(Author.books)).order_by(Author.id)).all()),
    ("selectin nested", lambda s: s.scalars(
        select(Author).options(selectinload(Author.books).selectinload(Book.author))
        .order_by(Author.id)).all()),
    ("selectin again", lambda s: s.scalars(
        select(Author).options(selectinload(Author.books)).order_by(Author.id)).all()),
    ("selectin over pending", _selectin_over_pending),
    ("lazy after", lambda s: [b.author for a in s.scalars(select(Author)).all()
                              for b in a.books]),
]


def eager_loads(session_cls, engine, log):
    """Each eager load in a fresh session, then all of them in one session
    (objects met again, loaded before, at another path), events recorded."""
    for index, (label, load) in enumerate(EAGER_LOADS):
        log.note("fresh", label)
        if index:
            with session_cls(engine) as session:
                for table in reversed(Base.metadata.sorted_tables):
                    session.execute(table.delete())
                session.commit()
        each_load(session_cls, engine, log, [(label, load)], events=True)
    with session_cls(engine) as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())
        session.commit()
    each_load(session_cls, engine, log, EAGER_LOADS, events=True)


def test_eager_loads_match_stock(session_cls, engine, pure_loop):
    """joinedload and selectinload of a collection: the collections (their
    members, order and identity), states, events and SQL as stock's; the
    later rows of a joined load take the loop, not stock's closure."""
    turbosession.reset_stats()
    assert_same_as_stock(eager_loads, session_cls, engine, Base.metadata)
    loaded = turbosession.stats()["loads"]["instances"]
    assert loaded["fast"] > 0 and loaded["rows"] > 0, loaded


def test_joined_collection_rows_take_the_loop(session_cls, engine, pure_loop):
    """A fresh joinedload of a collection: every row (the parents' later
    rows too) is handled by the loop, none by stock's closure."""
    Base.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            seed(session)
        with session_cls(engine) as session:
            turbosession.reset_stats()
            authors = session.scalars(
                select(Author).options(joinedload(Author.books)).order_by(Author.id)
            ).unique().all()
            assert [[b.id for b in a.books] for a in authors] == [
                [11, 12, 13], [21, 22, 23], [31, 32, 33], []]
            assert all(type(a.books).__name__ == "InstrumentedList" for a in authors)
            loaded = turbosession.stats()["loads"]["instances"]
    finally:
        Base.metadata.drop_all(engine)
    # 10 rows of authors (three with three books each, one without) and the
    # 9 books in them
    assert loaded["rows_to_stock"] == 0 and loaded["rows"] == 19, loaded


def test_selectin_hook_hands_over_only_turbosession_sessions(session_cls, engine, monkeypatch):
    """The selectin loader's ``_load_via_parent`` hook: a stock session runs
    stock's method, a turbosession session the bundle's ``load_via_parent``
    (pure only with its loop on, as for the row loop); the collections are
    the same."""
    from sqlalchemy.orm import strategies

    assert strategies._SelectInLoader._load_via_parent is instances.load_via_parent
    loaded, compiled = selectin_hook_sides(
        monkeypatch, session_cls, engine, Base.metadata, seed,
        "STOCK_LOAD_VIA_PARENT", "load_via_parent",
        lambda session: [[b.id for b in a.books] for a in session.scalars(
            select(Author).options(selectinload(Author.books)).order_by(Author.id)).all()],
    )
    books = [[11, 12, 13], [21, 22, 23], [31, 32, 33], []]
    assert loaded == {
        "stock": (books, ["stock"]),
        "turbosession": (books, ["turbosession" if compiled else "stock"]),
        "turbosession, loop on": (books, ["turbosession"]),
    }


class CountsBase(DeclarativeBase):
    pass


class Shelf(CountsBase):
    """Collections the eager loaders do not fill straight on a list: a set,
    and a ``uselist=False`` one-to-one."""

    __tablename__ = "ti_shelf"
    id: Mapped[int] = mapped_column(primary_key=True)
    volumes: Mapped[set["Volume"]] = relationship(collection_class=set)
    first: Mapped["Volume"] = relationship(
        uselist=False, viewonly=True,
        primaryjoin="and_(Shelf.id == foreign(Volume.shelf_id), Volume.id == Shelf.id * 10)",
    )


class Volume(CountsBase):
    __tablename__ = "ti_volume"
    id: Mapped[int] = mapped_column(primary_key=True)
    shelf_id: Mapped[int] = mapped_column(ForeignKey("ti_shelf.id"), nullable=True)


def shelf_loads(session_cls, engine, log):
    with session_cls(engine) as session:
        session.add_all([Shelf(id=1), Shelf(id=2), Shelf(id=3)])
        session.add_all([Volume(id=10, shelf_id=1), Volume(id=11, shelf_id=1),
                         Volume(id=20, shelf_id=2)])
        session.commit()
    for label, option in (
        ("selectin set", selectinload(Shelf.volumes)),
        ("selectin uselist=False", selectinload(Shelf.first)),
        ("joined set", joinedload(Shelf.volumes)),
    ):
        with session_cls(engine) as session:
            shelves = session.scalars(
                select(Shelf).options(option).order_by(Shelf.id)).unique().all()
            for shelf in shelves:
                state = inspect(shelf)
                log.note(label, shelf.id, sorted(state.dict), sorted(state.committed_state),
                         type(state.dict.get("volumes")).__name__,
                         sorted(v.id for v in state.dict.get("volumes", ())),
                         getattr(state.dict.get("first"), "id", None))


def test_collection_steps_match_stock_and_are_counted(session_cls, engine, pure_loop):
    """The eager loaders' collection steps: a list filled on the loop is
    counted under ``collections``, a set under ``collections_to_stock`` by
    reason, a ``uselist=False`` one's value under ``scalars``; the objects
    as stock's."""
    turbosession.reset_stats()
    assert_same_as_stock(shelf_loads, session_cls, engine, CountsBase.metadata)
    loaded = turbosession.stats()["loads"]["instances"]
    # selectin: three shelves' sets; uselist=False: three shelves; joined:
    # each shelf's set initialised on the loop at its first row, then its
    # volumes (shelf 1's two, shelf 2's one) added through the set's adapter
    assert loaded["collections"] == 3, loaded
    assert loaded["scalars"] == 3, loaded
    assert loaded["collections_to_stock"] == {"collection_class": 6}, loaded
    Base.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            seed(session)
        turbosession.reset_stats()
        with session_cls(engine) as session:
            session.scalars(select(Author).options(selectinload(Author.books))).all()
            session.expunge_all()
            session.scalars(select(Author).options(joinedload(Author.books))).unique().all()
        loaded = turbosession.stats()["loads"]["instances"]
    finally:
        Base.metadata.drop_all(engine)
    # four authors' lists set by selectin; joined: four authors' lists
    # initialised at their first rows, the three first books and the six
    # later rows appended
    assert loaded["collections"] == 4 + 4 + 3 + 6, loaded
    assert loaded["collections_to_stock"] == {}, loaded


def _collection_record(author):
    """An author's loaded collection as a program can read it: its class,
    members, and its adapter's attributes."""
    state = inspect(author)
    books = state.dict.get("books")
    if books is None:
        return None
    adapter = books._sa_adapter
    return (
        type(books).__name__,
        [b.id for b in books],
        type(adapter).__name__,
        adapter.owner_state is state,
        adapter.attr is state.manager["books"].impl,
        adapter._data() is books,
        adapter._key,
        adapter.empty,
        adapter.invalidated,
        sorted(vars(books)),
    )


def collection_builds(session_cls, engine, log):
    """The collections the eager loaders make: each load in a fresh session,
    the attribute events fired on the collection (with and without
    ``init_collection`` listeners), what a child's ``load`` listener sees of
    its parent's collection, the collections and their adapters afterwards,
    the states (their ``_empty_collections`` / ``_pending_mutations`` /
    ``expired`` entries), then appends that fire events as stock's."""
    Base.metadata.create_all(engine)
    with session_cls(engine) as session:
        seed(session)
    runids = Runids()

    def on_append(target, value, initiator):
        log.note("append", inspect(target).key, inspect(value).key, initiator.op)

    def on_init(target, collection, adapter):
        log.note("init_collection", inspect(target).key, type(collection).__name__,
                 list(collection), adapter.empty, adapter._data() is collection)

    def on_book_load(target, context):
        if target.id == raising[0]:
            raise ValueError(f"book {target.id}")
        author = context.session.identity_map.get((Author, (target.author_id,), None))
        books = None if author is None else inspect(author).dict.get("books")
        log.note("book load", inspect(target).key,
                 None if books is None else [b.id for b in books])

    raising = [None]

    def raising_at(book_id, load):
        def run(session):
            raising[0] = book_id
            try:
                return load(session)
            finally:
                raising[0] = None
        return run

    def with_orm_execute_listener(load):
        def run(session):
            def on_execute(orm_execute_state):
                log.note("do_orm_execute", orm_execute_state.is_select)
            event.listen(session, "do_orm_execute", on_execute)
            return load(session)
        return run

    selectin = lambda s: s.scalars(  # noqa: E731
        select(Author).options(selectinload(Author.books)).order_by(Author.id)).all()
    loads = [
        ("joined", lambda s: s.scalars(select(Author).options(joinedload(Author.books))
                                       .order_by(Author.id)).unique().all()),
        ("selectin raising", raising_at(22, selectin)),
        ("selectin with do_orm_execute", with_orm_execute_listener(selectin)),
        ("selectin of two", lambda s: s.scalars(
            select(Author).options(selectinload(Author.books)).where(Author.id.in_([2, 4]))
            .order_by(Author.id)).all()),
        ("selectin", lambda s: s.scalars(select(Author).options(selectinload(Author.books))
                                         .order_by(Author.id)).all()),
        ("joined nested", lambda s: s.scalars(
            select(Author).options(joinedload(Author.books).joinedload(Book.author))
            .order_by(Author.id)).unique().all()),
        ("joined where", lambda s: s.scalars(
            select(Author).options(joinedload(Author.books)).where(Author.id > 2)
            .order_by(Author.id)).unique().all()),
    ]
    event.listen(Author.books, "append", on_append)
    event.listen(Book, "load", on_book_load)
    try:
        for init_listener in (False, True):
            if init_listener:
                event.listen(Author.books, "init_collection", on_init)
            for label, load in loads:
                with session_cls(engine) as session:
                    try:
                        authors = load(session)
                    except ValueError as exc:
                        log.note(label, "raises", str(exc))
                        log.note(label, "session", session_record(session, runids))
                        continue
                    log.note(label, init_listener,
                             [(a.id, _collection_record(a)) for a in authors])
                    log.note(label, "session", session_record(session, runids))
                    # the loaded collections take appends and their events
                    authors[0].books.append(Book(id=500 + len(authors), title="new"))
                    log.note(label, "after append", _collection_record(authors[0]),
                             sorted(inspect(authors[0]).committed_state))
            if init_listener:
                event.remove(Author.books, "init_collection", on_init)
    finally:
        event.remove(Author.books, "append", on_append)
        event.remove(Book, "load", on_book_load)
        Base.metadata.drop_all(engine)


def test_collections_built_as_stock(session_cls, engine, pure_loop):
    """joinedload's first row of a parent and selectinload's collections,
    initialised on the loop: the collections, adapters, events and states as
    stock's, and counted as done on the loop."""
    turbosession.reset_stats()
    assert_same_as_stock(collection_builds, session_cls, engine, Base.metadata)
    loaded = turbosession.stats()["loads"]["instances"]
    assert loaded["collections"] > 0, loaded
    assert loaded["collections_to_stock"] == {}, loaded


def remapped_between_executions(session_cls, engine, log):
    """A class mapped imperatively, its statement executed twice (one cached
    row setup), then its registry disposed (``clear_mappers`` for that
    registry) and the class mapped again to the same table, another mapper
    configured beside it, and the same shape of statement executed again with
    other parameters: the setups kept with the first mapper's compiled
    statements must not be used for the new mapper."""
    from sqlalchemy import Column, MetaData, Table
    from sqlalchemy.orm import registry as make_registry

    metadata = MetaData()
    gadget = Table(
        "ti_gadget", metadata,
        Column("id", Integer, primary_key=True), Column("name", String(50)),
        Column("size", Integer),
    )
    other = Table("ti_gadget_other", metadata, Column("id", Integer, primary_key=True))

    class Gadget:
        pass

    class Other:
        pass

    metadata.create_all(engine)
    runids = Runids()
    held = []

    def load(label, session, low):
        statement = select(Gadget).where(Gadget.id > bindparam("low")).order_by(Gadget.id)
        result = session.scalars(statement, {"low": low}).all()
        held.append(result)
        log.note(label, [inspect(g).key[1] for g in result])
        log.note(label, "session", session_record_any(session, runids))

    def on_load(target, context):
        log.note("load", type(target).__name__, inspect(target).key[1],
                 sorted(k for k in vars(target) if not k.startswith("_")))

    first = make_registry()
    second = make_registry()
    try:
        with engine.begin() as conn:
            conn.execute(gadget.insert(), [
                {"id": i, "name": f"gadget {i}", "size": i * 10} for i in range(1, 6)
            ])
        first.map_imperatively(Gadget, gadget)
        with session_cls(engine) as session:
            load("first mapper", session, 0)
            session.expunge_all()
            load("first mapper again", session, 2)
        first.dispose()
        # the class mapped again, with a deferred column and a load listener
        second.map_imperatively(
            Gadget, gadget, properties={"size": deferred(gadget.c.size)}
        )
        event.listen(Gadget, "load", on_load)
        with session_cls(engine) as session:
            load("second mapper", session, 1)
            session.expunge_all()
            load("second mapper again", session, 3)
            # a new mapper configured beside it
            second.map_imperatively(Other, other)
            second.configure()
            session.expunge_all()
            load("after another mapper", session, 0)
            log.note("deferred loads", [g.size for g in held[-1]])
            log.note("after deferred loads", "session", session_record_any(session, runids))
    finally:
        first.dispose()
        second.dispose()
        metadata.drop_all(engine)


def session_record_any(session, runids):
    """``session_record`` for objects of classes outside this module's Base."""
    out = []
    for key, obj in list(session.identity_map.items()):
        kind, attrs, values, *rest = state_record(obj, session, runids)
        attrs = [(n, scrub(v) if n == "load_path" else v) for n, v in attrs if n != "key"]
        out.append((key[1], kind, attrs, sorted(values), rest))
    return out


def test_remapped_between_executions_matches_stock(session_cls, engine, pure_loop, setups):
    turbosession.reset_stats()
    assert_same_as_stock(remapped_between_executions, session_cls, engine, Base.metadata)
    assert turbosession.stats()["loads"]["instances"]["fast"] == 5
    # one setup per mapper's compiled statement, none shared across mappers
    assert len(setups) == 5
    assert setups[0] is setups[1]
    assert setups[2] is setups[3]
    assert setups[2] is not setups[0]
    assert setups[2].source is not setups[0].source


def cached_setup_between_executions(session_cls, engine, log):
    """One statement object of a columns-only mapper (a deferred column, no
    relationship: its loader is built from the cached setup without stock's
    ``_instance_processor``) executed again and again with what changes
    between executions: objects already present (a deferred column unloaded:
    their rows go to stock's closure, made then), an expired object and an
    expired attribute (partial rows), listeners added and removed,
    populate_existing, defer / undefer / load_only options, a refresh; and a
    mapper with a lazy many-to-one (set up against each execution: stock's
    function runs) whose lazy loads follow."""
    from sqlalchemy import Column, MetaData, Table
    from sqlalchemy.orm import registry as make_registry

    metadata = MetaData()
    gadget = Table(
        "ti_cached_gadget", metadata,
        Column("id", Integer, primary_key=True), Column("name", String(50)),
        Column("size", Integer),
    )
    part = Table(
        "ti_cached_part", metadata,
        Column("id", Integer, primary_key=True), Column("label", String(50)),
        Column("gadget_id", ForeignKey("ti_cached_gadget.id")),
    )

    class Gadget:
        pass

    class Part:
        pass

    metadata.create_all(engine)
    runids = Runids()
    held = []
    mapping = make_registry()
    statement_ = []

    def load(label, session, low, query=None, **kw):
        result = session.scalars(query if query is not None else statement_[0], {"low": low},
                                 **kw).all()
        held.append(result)
        log.note(label, [(type(o).__name__, inspect(o).key[1]) for o in result])
        log.note(label, "session", scrub(repr(session_record_any(session, runids))))
        return result

    def on_load(target, context):
        log.note("load", type(target).__name__, inspect(target).key[1],
                 sorted(k for k in vars(target) if not k.startswith("_")))

    def on_refresh(target, context, attrs):
        log.note("refresh", inspect(target).key[1], attrs and sorted(attrs))

    def on_persistent(sess, instance):
        log.note("loaded_as_persistent", type(instance).__name__, inspect(instance).key[1])

    try:
        with engine.begin() as conn:
            conn.execute(gadget.insert(), [
                {"id": i, "name": f"gadget {i}", "size": i * 10} for i in range(1, 6)
            ])
            conn.execute(part.insert(), [
                {"id": i, "label": f"part {i}", "gadget_id": i % 5 + 1} for i in range(1, 5)
            ])
        mapping.map_imperatively(
            Gadget, gadget, properties={"size": deferred(gadget.c.size)}
        )
        mapping.map_imperatively(
            Part, part, properties={"gadget": relationship(Gadget, lazy="select")}
        )
        statement = select(Gadget).where(Gadget.id > bindparam("low")).order_by(Gadget.id)
        statement_.append(statement)
        with session_cls(engine) as session:
            load("first", session, 0)
            session.expunge_all()
            load("again", session, 1)
            # present objects with their deferred column unloaded
            load("present", session, 0)
            first = held[-1][0]
            session.expire(first)
            session.expire(held[-1][2], ["name"])
            load("expired", session, 0)
            log.note("deferred", [g.size for g in held[-1][:2]])
            load("after deferred loads", session, 0)
            session.expunge_all()
            event.listen(Gadget, "load", on_load)
            event.listen(Gadget, "refresh", on_refresh)
            try:
                load("load listener", session, 2)
                load("populate_existing", session, 0,
                     execution_options={"populate_existing": True})
                session.refresh(held[-1][1])
                log.note("refreshed", "session", scrub(repr(session_record_any(session, runids))))
            finally:
                event.remove(Gadget, "load", on_load)
                event.remove(Gadget, "refresh", on_refresh)
            session.expunge_all()
            load("listeners removed", session, 0)
            session.expunge_all()
            event.listen(session, "loaded_as_persistent", on_persistent)
            load("loaded_as_persistent", session, 3)
            event.remove(session, "loaded_as_persistent", on_persistent)
            for name, option in (
                ("undefer", undefer(Gadget.size)),
                ("load_only", load_only(Gadget.name)),
                ("defer", defer(Gadget.name)),
            ):
                session.expunge_all()
                load(name, session, 1, statement.options(option))
                session.expunge_all()
                load(name + " again", session, 0, statement.options(option))
                load(name + " present", session, 0, statement.options(option))
            session.expunge_all()
            load("yield_per", session, 0, execution_options={"yield_per": 2})
            load("identity token", session, 0, execution_options={"identity_token": "t"})
            parts = select(Part).where(Part.id > bindparam("low")).order_by(Part.id)
            session.expunge_all()
            load("parts", session, 0, parts)
            session.expunge_all()
            loaded = load("parts again", session, 1, parts)
            log.note("lazy loads", [(p.gadget.id, p.gadget.name) for p in loaded])
            log.note("after lazy loads", "session", scrub(repr(session_record_any(session, runids))))
            load("parts populate_existing", session, 0, parts,
                 execution_options={"populate_existing": True})
            # a loader option for the relationship: set up against each
            # execution by stock's function
            for name, option in (
                ("lazyload", lazyload(Part.gadget)),
                ("joinedload", joinedload(Part.gadget)),
                ("selectinload", selectinload(Part.gadget)),
            ):
                for again in ("", " again"):
                    session.expunge_all()
                    loaded = load("parts " + name + again, session, 1, parts.options(option))
                    log.note(name, [(p.gadget.id, p.gadget.name) for p in loaded])
            session.commit()
            # all expired by the commit: every row goes to stock's closure
            load("after commit", session, 0)

        def during(target, context):
            # changes, during the first new object's load, what stock's
            # closure read when it was set up: the rows after it that go to
            # stock's closure must not see them
            if inspect(target).key[1] == (1,) and not changed:
                changed.append(True)
                event.listen(target_session[0], "loaded_as_persistent", on_persistent)
                if close[0]:
                    target_session[0].close()

        target_session = []
        changed = []
        close = [False]
        for closing in (False, True):
            with session_cls(engine) as session:
                target_session[:] = [session]
                changed.clear()
                close[0] = closing
                # the first row's object new, the others present with their
                # deferred column unloaded (their rows go to stock's closure)
                session.expunge(load("present for listeners", session, 0)[0])
                event.listen(Gadget, "load", during)
                try:
                    try:
                        load("listeners added while loading", session, 0)
                    except Exception as error:
                        log.note("raised", normalize_error(error))
                finally:
                    event.remove(Gadget, "load", during)
                    assert changed
                    event.remove(session, "loaded_as_persistent", on_persistent)
    finally:
        mapping.dispose()
        metadata.drop_all(engine)


def test_cached_setup_between_executions_matches_stock(session_cls, engine, pure_loop, setups):
    turbosession.reset_stats()
    assert_same_as_stock(cached_setup_between_executions, session_cls, engine, Base.metadata)
    loaded = turbosession.stats()["loads"]["instances"]
    # the repeated executions of the columns-only entity and of the one with
    # a class-level lazy loader built from the cached setup alone; with a
    # loader option for the relationship, set up by stock's function
    assert loaded["setup"]["cached"] >= 20, loaded
    assert loaded["setup"]["stock"]["setup_per_query"] == 3, loaded
    assert loaded["setup"]["stock"]["setup_options"] == 2, loaded
    assert loaded["rows_to_stock"] > 0, loaded
    # the refresh and the two deferred-column loads
    assert loaded["fallback"] == {"load_populate_existing": 2, "load_refresh": 3}, loaded


def test_instance_dict_read_only_where_the_class_keeps_cpythons(impl):
    """The loop reads a new instance's ``__dict__`` where CPython keeps it only
    for a class whose ``instance.__dict__`` is that (object's attribute lookup,
    the ``__dict__`` descriptor CPython gives a class defined in Python); a
    class with its own ``__getattribute__`` or a ``__dict__`` property gets
    ``instance.__dict__`` asked."""
    plain_dict = impl.instances._plain_dict

    class Plain:
        pass

    class Looked:
        def __getattribute__(self, name):
            return object.__getattribute__(self, name)

    class Property:
        @property
        def __dict__(self):
            return {}

    class Slotted:
        __slots__ = ("a",)

    assert plain_dict(Plain) and plain_dict(Author) and plain_dict(type("Sub", (Plain,), {}))
    assert not plain_dict(Looked)
    assert not plain_dict(Property)
    assert not plain_dict(Slotted)
