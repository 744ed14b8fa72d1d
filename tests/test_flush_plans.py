"""Flushes whose sorted steps are known for their shape (turbosession.plans).

A flush whose postsort actions are only each mapper hierarchy's save and
delete steps runs them in the order computed for its set of hierarchies
the first time, instead of searching and sorting its graph.  Each scenario
mixes inserts, updates and deletes over one or several hierarchies (with
and without relationships having work, inheritance, a row switch), runs on
stock's Session and on turbosession's, and compares SQL down to the
cursor, the mapper events in order, and what a flush listener sees of the
flush context (its actions, dependencies, cycles and states).
"""

import contextlib
import warnings

import pytest
from sqlalchemy import ForeignKey, String, event, select
from sqlalchemy.orm import DeclarativeBase, Mapped, column_property, mapped_column, relationship

import turbosession
from support import assert_same_as_stock, unwatched
from turbosession import plans


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "tsp_note"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(50))


class Tag(Base):
    __tablename__ = "tsp_tag"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(50))


class Person(Base):
    __tablename__ = "tsp_person"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(50))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "person"}


class Boss(Person):
    __tablename__ = "tsp_boss"
    id: Mapped[int] = mapped_column(ForeignKey("tsp_person.id"), primary_key=True)
    budget: Mapped[int] = mapped_column()
    __mapper_args__ = {"polymorphic_identity": "boss"}


class Folder(Base):
    __tablename__ = "tsp_folder"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    items: Mapped[list["Item"]] = relationship(
        back_populates="folder", cascade="all, delete-orphan", order_by="Item.id"
    )


class Item(Base):
    __tablename__ = "tsp_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    folder_id: Mapped[int] = mapped_column(ForeignKey("tsp_folder.id"))
    folder: Mapped[Folder] = relationship(back_populates="items")


MAPPED = (Note, Tag, Person, Boss, Folder, Item)
MAPPER_EVENTS = (
    "before_insert", "after_insert", "before_update", "after_update",
    "before_delete", "after_delete",
)


def _target(obj):
    return (type(obj).__name__, getattr(obj, "id", None))


class Watch:
    """Mapper events of every class, and what flush listeners see of the
    flush context (public attributes of stock's UOWTransaction)."""

    def __init__(self, log):
        self.log = log
        self.listeners = []

    def attach(self, session):
        for cls in MAPPED:
            for name in MAPPER_EVENTS:
                self._listen(cls, name, self._mapper_event(name), propagate=False)
        for name in ("before_flush", "after_flush", "after_flush_postexec"):
            self._listen(session, name, self._flush_event(name))

    def _listen(self, target, name, fn, **kw):
        event.listen(target, name, fn, **kw)
        self.listeners.append((target, name, fn))

    def detach(self):
        for target, name, fn in self.listeners:
            event.remove(target, name, fn)

    def _mapper_event(self, name):
        def listener(mapper, connection, target):
            self.log.note("event", name, mapper.class_.__name__, _target(target))

        return listener

    def _flush_event(self, name):
        def listener(session, flush_context, *args):
            self.log.note(
                "flush context",
                name,
                sorted(repr(action) for action in flush_context.postsort_actions.values()),
                len(flush_context.dependencies),
                getattr(flush_context, "cycles", "unset"),
                sorted(
                    (_target(state.obj()), flags) for state, flags in flush_context.states.items()
                ),
                sorted(
                    (type(action).__name__, action.disabled, repr(action.sort_key))
                    for action in flush_context.postsort_actions.values()
                ),
                sorted(
                    (key[0].__name__, repr(key[1:]), repr(action))
                    for key, action in flush_context.postsort_actions.items()
                ),
            )

        return listener


def _rows(session):
    return [
        [(type(o).__name__, o.id) for o in session.scalars(select(cls).order_by(cls.id))]
        for cls in (Note, Tag, Person, Folder, Item)
    ]


@contextlib.contextmanager
def _session(session_cls, engine, log, watch):
    """A session (watched unless ``watch`` is false) whose flushes the
    scenario runs; committed, and the rows noted, at the end."""
    session = session_cls(engine)
    w = Watch(log)
    if watch:
        w.attach(session)
    try:
        yield session
        session.commit()
        log.note("rows", _rows(session))
    finally:
        w.detach()
        session.close()


def mixes_of_one_hierarchy(session_cls, engine, log, watch=True):
    with _session(session_cls, engine, log, watch) as session:
        session.add(Note(id=1, text="a"))
        session.flush()
        session.add_all([Note(id=2, text="b"), Note(id=3, text="c")])
        session.flush()
        n1 = session.get(Note, 1)
        n1.text = "a2"
        session.flush()
        n2 = session.get(Note, 2)
        session.delete(n2)
        session.flush()
        # insert, update and delete in one flush
        session.add(Note(id=4, text="d"))
        session.get(Note, 3).text = "c2"
        session.delete(n1)
        session.flush()
        # a row switch: a new object takes the identity of a deleted one
        session.delete(session.get(Note, 4))
        session.flush()
        n3 = session.get(Note, 3)
        session.delete(n3)
        session.add(Note(id=3, text="again"))
        session.flush()


def several_hierarchies(session_cls, engine, log, watch=True):
    with _session(session_cls, engine, log, watch) as session:
        session.add_all([Note(id=1, text="a"), Tag(id=1, label="x")])
        session.flush()
        session.add_all([Tag(id=2, label="y"), Person(id=1, kind="person", name="p")])
        session.get(Note, 1).text = "a2"
        session.flush()
        session.add(Boss(id=2, name="b", budget=10))
        session.delete(session.get(Tag, 1))
        session.flush()
        session.get(Boss, 2).budget = 20
        session.delete(session.get(Person, 1))
        session.add(Note(id=2, text="b"))
        session.flush()
        session.delete(session.get(Boss, 2))
        session.delete(session.get(Note, 2))
        session.flush()


def relationships_with_and_without_work(session_cls, engine, log, watch=True):
    """The same hierarchies flushed with the relationship having work
    (sorted as stock sorts) and without (steps known for the shape)."""
    with _session(session_cls, engine, log, watch) as session:
        folder = Folder(id=1, name="f", items=[Item(id=1, name="i1")])
        session.add(folder)
        session.flush()
        folder.name = "f2"
        session.flush()
        folder.items.append(Item(id=2, name="i2"))
        session.flush()
        session.get(Item, 1).name = "i1b"
        session.add(Note(id=1, text="n"))
        session.flush()
        folder.items.remove(session.get(Item, 2))
        session.flush()
        session.add(Note(id=2, text="m"))
        session.flush()
        session.delete(folder)
        session.flush()


SCENARIOS = [mixes_of_one_hierarchy, several_hierarchies, relationships_with_and_without_work]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_same_as_stock(scenario, session_cls, engine):
    entries = assert_same_as_stock(scenario, session_cls, engine, Base.metadata)
    assert any(entry[0] == "sql" for entry in entries)
    assert any(entry[0] == "flush context" for entry in entries)
    assert any(entry[0] == "event" for entry in entries)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_same_as_stock_without_listeners(scenario, session_cls, engine):
    assert_same_as_stock(unwatched(scenario), session_cls, engine, Base.metadata)


def _sorted_steps(scenario, session_cls, engine):
    turbosession.reset_stats()
    assert_same_as_stock(unwatched(scenario), session_cls, engine, Base.metadata)
    return turbosession.stats()["sorted_steps"]


def test_shapes_counted(session_cls, engine):
    # every flush of one hierarchy without relationships (7, and the
    # autoflush of a get() that misses)
    assert _sorted_steps(mixes_of_one_hierarchy, session_cls, engine) == {
        "cached": 8,
        "sorted": {},
        "recorded": {},
    }
    # 5, and the autoflushes of get()s that miss
    assert _sorted_steps(several_hierarchies, session_cls, engine) == {
        "cached": 9,
        "sorted": {},
        "recorded": {},
    }
    # a flush with the folder or its items: the relationship processors
    # set up their steps (the folder's loaded items are registered with
    # it); the flush of a note alone has steps known for its shape
    assert _sorted_steps(relationships_with_and_without_work, session_cls, engine) == {
        "cached": 1,
        "sorted": {"actions": 6},
        "recorded": {},
    }


def test_steps_kept_with_the_mapper_until_reconfigured(session_cls, engine):
    from sqlalchemy.orm.unitofwork import _DeleteAll, _SaveUpdateAll

    class OwnBase(DeclarativeBase):
        pass

    class Memo(OwnBase):
        __tablename__ = "tsp_memo"
        id: Mapped[int] = mapped_column(primary_key=True)
        text: Mapped[str] = mapped_column(String(50))

    OwnBase.metadata.create_all(engine)
    try:
        mapper = Memo.__mapper__
        with session_cls(engine) as session:
            # two objects: a flush of one new object is run without asking
            # for its steps (fastpath.insert_single)
            session.add_all([Memo(id=1, text="a"), Memo(id=3, text="c")])
            session.commit()
        source, cache = mapper._memoized_values[plans._KEY]
        assert source is mapper._sorted_tables
        assert cache == {mapper: ((_SaveUpdateAll, mapper), (_DeleteAll, mapper))}
        # a property added resets the mapper's memoized values: the steps
        # are computed again for the next flush
        mapper.add_property("shout", column_property(Memo.__table__.c.text + "!"))
        plans.reset_stats()
        with session_cls(engine) as session:
            session.add(Memo(id=2, text="b"))
            session.commit()
            assert session.get(Memo, 2).shout == "b!"
        assert plans.stats() == {"cached": 1, "sorted": {}, "recorded": {}}
        source, rebuilt = mapper._memoized_values[plans._KEY]
        assert source is mapper._sorted_tables
        assert rebuilt is not cache
        assert rebuilt == {mapper: ((_SaveUpdateAll, mapper), (_DeleteAll, mapper))}
    finally:
        OwnBase.metadata.drop_all(engine)


def test_same_sort_key_is_sorted_as_stock(session_cls, engine):
    # two classes made by one function share module and qualified name,
    # hence the sort key: stock's order then follows set iteration
    class OtherBase(DeclarativeBase):
        pass

    def make(name):
        class Twin(OtherBase):
            __tablename__ = name
            id: Mapped[int] = mapped_column(primary_key=True)

        return Twin

    with warnings.catch_warnings():
        # the second class replaces the first in the string-lookup table
        warnings.simplefilter("ignore")
        first, second = make("tsp_twin_a"), make("tsp_twin_b")
    assert first.__mapper__._sort_key == second.__mapper__._sort_key
    OtherBase.metadata.create_all(engine)
    try:
        plans.reset_stats()
        with session_cls(engine) as session:
            session.add_all([first(id=1), second(id=1)])
            session.commit()
            session.add(first(id=2))
            session.commit()
        assert plans.stats() == {"cached": 1, "sorted": {"sort_key": 1}, "recorded": {}}
    finally:
        OtherBase.metadata.drop_all(engine)


def test_listener_edge_is_sorted_as_stock(session_cls, engine):
    """A before_flush listener adding an edge to the flush context: the
    graph is searched and sorted (here: the deletes of one hierarchy before
    the saves of another, as the edge asks)."""
    from sqlalchemy.orm.unitofwork import _DeleteAll, _SaveUpdateAll

    def scenario(session_cls, engine, log):
        with session_cls(engine) as session:
            session.add_all([Note(id=1, text="a"), Tag(id=1, label="x")])
            session.commit()

            @event.listens_for(session, "before_flush")
            def edge(session, flush_context, instances):
                flush_context.register_object(
                    __import__("sqlalchemy").inspect(session.get(Note, 1))
                )
                flush_context.dependencies.add(
                    (
                        _DeleteAll(flush_context, Tag.__mapper__),
                        _SaveUpdateAll(flush_context, Note.__mapper__),
                    )
                )

            session.delete(session.get(Tag, 1))
            session.get(Note, 1).text = "b"
            session.flush()
            session.commit()
            log.note("rows", _rows(session))

    plans.reset_stats()
    assert_same_as_stock(scenario, session_cls, engine, Base.metadata)
    # the autoflush of the expired objects' get() and the flush
    assert plans.stats()["sorted"] == {"dependencies": 2}


@pytest.mark.parametrize("method", ["__init__", "__new__"])
def test_patched_step_class_is_called(session_cls, engine, method, monkeypatch):
    """The flush makes a hierarchy's save and delete steps itself only while
    their classes' ``__new__`` and ``__init__`` are stock's; a patched one
    is called for each step, as stock calls it, with the same records."""
    from sqlalchemy.orm import unitofwork

    Base.metadata.create_all(engine)
    made = []
    cls = unitofwork._SaveUpdateAll
    if method == "__init__":
        stock_init = cls.__init__

        def patched(self, uow, mapper):
            made.append(mapper.class_.__name__)
            stock_init(self, uow, mapper)

    else:
        stock_new = unitofwork._PostSortRec.__new__

        def patched(klass, uow, *args):
            made.append(args[0].class_.__name__)
            return stock_new(klass, uow, *args)

    monkeypatch.setattr(cls, method, patched)
    seen = []

    def after_flush(session, flush_context):
        seen.extend(
            (type(action).__name__, action.sort_key, action.disabled)
            for action in flush_context.postsort_actions.values()
        )

    with session_cls(engine) as session:
        event.listen(session, "after_flush", after_flush)
        session.add(Note(id=1, text="a"))
        session.commit()
    assert made == ["Note"]
    key = Note.__mapper__._sort_key
    assert seen == [
        ("_SaveUpdateAll", ("SaveUpdateAll", key), False),
        ("_DeleteAll", ("DeleteAll", key), False),
    ]
