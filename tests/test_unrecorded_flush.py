"""A flush of one new object registered without its steps' records.

A flush of one new object of a single-table mapper without relationship
processors registers its state without the save and delete steps' records
and their dependency (``flush.UOWTransaction.unrecorded_mapper``) and runs
its INSERT by ``fastpath.insert_unrecorded``; a session listener given the
flush context keeps stock's records (counted in
``plans.stats()["recorded"]``), and a mapper with relationships, or one
another mapper's many-to-one puts a processor on, keeps them too.  Each
scenario runs on stock's Session and on turbosession's and compares what
the DBAPI cursor receives, the events with their arguments (a flush
listener notes what it reads of the flush context through public API), and
the objects' states.
"""

import pytest
from sqlalchemy import ForeignKey, String, event, exc, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import turbosession
from turbosession import fastpath, flush as turbo_flush

from support import assert_same_as_stock, normalize_error


class Base(DeclarativeBase):
    pass


class Note(Base):
    __tablename__ = "tuf_note"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(50))


class Folder(Base):
    __tablename__ = "tuf_folder"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    pages: Mapped[list["Page"]] = relationship(back_populates="folder")


class Page(Base):
    __tablename__ = "tuf_page"
    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int | None] = mapped_column(ForeignKey("tuf_folder.id"))
    folder: Mapped[Folder | None] = relationship(back_populates="pages")


class Tag(Base):
    """No relationship of its own; a many-to-one to it without passive
    updates puts a key-switch processor on its mapper."""

    __tablename__ = "tuf_tag"
    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(String(50))


class Label(Base):
    __tablename__ = "tuf_label"
    id: Mapped[int] = mapped_column(primary_key=True)
    tag_id: Mapped[int | None] = mapped_column(ForeignKey("tuf_tag.id"))
    tag: Mapped[Tag | None] = relationship(passive_updates=False)


def _state(obj):
    from sqlalchemy import inspect

    insp = inspect(obj)
    return ("transient", "pending", "persistent", "deleted", "detached")[
        [insp.transient, insp.pending, insp.persistent, insp.deleted, insp.detached].index(True)
    ]


def _mapper_events(log, classes):
    """before_insert / after_insert listeners noting their arguments."""
    added = []
    for cls in classes:
        for name in ("before_insert", "after_insert"):
            def listener(mapper, connection, target, name=name):
                log.note("event", name, mapper.class_.__name__, target.id,
                         connection.in_transaction())
            event.listen(cls, name, listener)
            added.append((cls, name, listener))
    return added


def _remove(added):
    for target, name, fn in added:
        event.remove(target, name, fn)


def one_per_session(expire_on_commit):
    def scenario(session_cls, engine, log):
        """One new object per session, with mapper events."""
        added = _mapper_events(log, [Note])
        try:
            for i in range(3):
                with session_cls(engine, expire_on_commit=expire_on_commit) as session:
                    note = Note(id=i + 1, text=f"n{i}")
                    session.add(note)
                    session.commit()
                    log.note("after commit", _state(note), sorted(note.__dict__.keys() - {"_sa_instance_state"}))
                    log.note("text", note.text)
                log.note("closed", _state(note))
            with session_cls(engine) as session:
                log.note("rows", session.execute(select(Note.id, Note.text).order_by(Note.id)).all())
        finally:
            _remove(added)

    scenario.__name__ = f"one_per_session_expire_{expire_on_commit}"
    return scenario


def flush_context_listeners(session_cls, engine, log):
    """before_flush, after_flush and after_flush_postexec listeners read the
    flush context: its session, transaction, the session's new / dirty /
    deleted, the attribute history of the new object."""

    def reader(name):
        def listener(session, flush_context, *args):
            note = next(iter(session.new), None) or next(iter(session.identity_map.values()))
            from sqlalchemy import inspect

            state = inspect(note)
            history = flush_context.get_attribute_history(state, "text")
            log.note(
                "event", name,
                flush_context.session is session,
                flush_context.transaction is not None if name != "before_flush" else None,
                sorted(n.id for n in session.new), sorted(n.id for n in session.dirty),
                sorted(n.id for n in session.deleted),
                (list(history.added), list(history.unchanged), list(history.deleted)),
                flush_context.is_deleted(state),
            )
        return listener

    with session_cls(engine) as session:
        listeners = [(name, reader(name)) for name in
                     ("before_flush", "after_flush", "after_flush_postexec")]
        for name, fn in listeners:
            event.listen(session, name, fn)
        note = Note(id=1, text="watched")
        session.add(note)
        session.commit()
        log.note("state", _state(note))
        note.text = "changed"
        session.commit()
        log.note("text", note.text)


def failing_insert(session_cls, engine, log):
    """A one-object flush whose INSERT fails rolls back: stock's error and
    states; the session goes on with the next object."""
    with session_cls(engine) as session:
        session.add(Note(id=1, text="first"))
        session.commit()
    with session_cls(engine) as session:
        duplicate = Note(id=1, text="again")
        session.add(duplicate)
        with pytest.raises(exc.IntegrityError) as raised:
            session.commit()
        log.note("error", normalize_error(raised.value))
        log.note("states", _state(duplicate), duplicate in session, session.in_transaction())
        session.rollback()
        log.note("after rollback", _state(duplicate), duplicate in session, list(session.new))
        fresh = Note(id=2, text="fresh")
        session.add(fresh)
        session.commit()
        log.note("fresh", _state(fresh), fresh.text)


def relationship_mappers(session_cls, engine, log):
    """One new object of mappers with relationships, alone in its flush
    (and a mapper that a many-to-one's key-switch processor is on)."""
    added = _mapper_events(log, [Folder, Page, Tag])
    try:
        with session_cls(engine) as session:
            folder = Folder(id=1, name="f")
            session.add(folder)
            session.commit()
            page = Page(id=1, folder=folder)
            session.add(page)
            session.commit()
            log.note("pages", [p.id for p in folder.pages])
            tag = Tag(id=1, label="t")
            session.add(tag)
            session.commit()
            session.add(Label(id=1, tag=tag))
            session.commit()
            session.add(Tag(id=2, label="u"))
            session.commit()
            log.note("label", session.scalars(select(Label.tag_id)).all())
    finally:
        _remove(added)


SCENARIOS = [
    one_per_session(True), one_per_session(False), flush_context_listeners,
    failing_insert, relationship_mappers,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_same_as_stock(scenario, session_cls, engine):
    entries = assert_same_as_stock(scenario, session_cls, engine, Base.metadata)
    assert any(entry[0] == "cursor" for entry in entries)
    assert any(entry[0] == "sql" for entry in entries)


@pytest.fixture
def unrecorded(monkeypatch):
    """The mappers whose one new object was flushed by ``insert_unrecorded``."""
    taken = []
    insert_unrecorded = fastpath.insert_unrecorded

    def spy(uow, mapper):
        assert not uow.postsort_actions and not uow.dependencies
        done = insert_unrecorded(uow, mapper)
        taken.append((mapper.class_.__name__, done))
        return done

    monkeypatch.setattr(fastpath, "insert_unrecorded", spy)
    return taken


def test_taken_only_where_it_applies(session_cls, engine, unrecorded):
    Base.metadata.create_all(engine)
    try:
        turbosession.reset_stats()
        with session_cls(engine) as session:
            session.add(Note(id=1, text="a"))
            session.commit()
            session.add(Folder(id=1, name="f"))
            session.commit()
            session.add(Page(id=1))
            session.commit()
            session.add(Tag(id=1, label="t"))
            session.commit()
            session.add_all([Note(id=2, text="b"), Note(id=3, text="c")])
            session.commit()
        # a listener given the flush context keeps the records, counted
        with session_cls(engine) as session:
            event.listen(session, "after_flush", lambda s, ctx: None)
            session.add(Note(id=4, text="d"))
            session.commit()
        assert unrecorded == [("Note", True)]
        assert turbosession.stats()["sorted_steps"]["recorded"] == {"flush_context_listeners": 1}
    finally:
        Base.metadata.drop_all(engine)


def test_records_made_when_the_session_asks_for_steps(session_cls, engine, unrecorded):
    """A session that disables the fast path after registration still has
    its steps made (as registering would have made them) and runs them."""
    Base.metadata.create_all(engine)
    try:
        class Slow(session_cls):
            _fast_flush = False

        turbosession.reset_stats()
        with Slow(engine) as session:
            session.add(Note(id=1, text="a"))
            session.commit()
        assert unrecorded == [("Note", False)]
        assert turbosession.stats()["fallback"] == {"disabled": 1}
        with session_cls(engine) as session:
            assert session.get(Note, 1).text == "a"
    finally:
        Base.metadata.drop_all(engine)


def test_relationship_added_after_the_first_flush(session_cls, engine, unrecorded):
    """A mapper flushed without records, then given a relationship by a
    mapper configured afterwards: its kept plan is made again and its
    flushes keep their records (same SQL and states as stock)."""

    class OwnBase(DeclarativeBase):
        pass

    class Box(OwnBase):
        __tablename__ = "tuf_box"
        id: Mapped[int] = mapped_column(primary_key=True)
        name: Mapped[str] = mapped_column(String(50))

    OwnBase.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            session.add(Box(id=1, name="a"))
            session.commit()
        assert unrecorded == [("Box", True)]

        class Item(OwnBase):
            __tablename__ = "tuf_item"
            id: Mapped[int] = mapped_column(primary_key=True)
            box_id: Mapped[int | None] = mapped_column(ForeignKey("tuf_box.id"))
            box: Mapped[Box | None] = relationship(backref="items")

        OwnBase.metadata.create_all(engine)

        def scenario(cls, engine_, log):
            with cls(engine_) as session:
                box = Box(id=2, name="b")
                session.add(box)
                session.commit()
                item = Item(id=1, box=box)
                session.add(item)
                session.commit()
                log.note("items", [i.id for i in box.items], _state(item))

        unrecorded.clear()
        from support import Recorder
        from sqlalchemy import orm

        results = []
        for cls in (orm.Session, session_cls):
            with Recorder(engine) as log:
                scenario(cls, engine, log)
            results.append(log.entries)
            with engine.begin() as conn:
                conn.execute(Item.__table__.delete())
                conn.execute(Box.__table__.delete().where(Box.id == 2))
        assert results[0] == results[1]
        assert any(entry[0] == "sql" for entry in results[0])
        # Box now has the items backref: not taken for it or for Item
        assert unrecorded == []
        assert Box.__mapper__._memoized_values[fastpath._PLAN_KEY][1].unrecorded is False
    finally:
        OwnBase.metadata.drop_all(engine)
        OwnBase.registry.dispose()


def test_flush_context_holds_what_stock_constructs(session_cls, engine):
    """The flush context made by ``_unitofwork.new_flush_context`` holds
    stock's attributes, of stock's types, with what stock's holds at
    ``after_flush``."""
    from sqlalchemy import orm

    assert turbo_flush._NEW_FLUSH_CONTEXT
    Base.metadata.create_all(engine)
    try:
        seen = []
        for cls in (orm.Session, session_cls):
            with cls(engine) as session:
                @event.listens_for(session, "after_flush")
                def after_flush(session_, flush_context):
                    seen.append({
                        name: (type(value), len(value) if hasattr(value, "__len__") else None)
                        for name, value in vars(flush_context).items()
                        if not name.startswith("_") and name not in ("session", "transaction")
                    })
                    assert flush_context.session is session_
                    assert flush_context.transaction is session_._transaction
                    seen[-1]["post_update_default"] = flush_context.post_update_states.default_factory()
                    seen[-1]["mappers_default"] = flush_context.mappers.default_factory()

                session.add(Note(id=1 if cls is orm.Session else 2, text="a"))
                session.commit()
        assert seen[0] == seen[1]
        assert set(seen[0]) >= {"attributes", "states", "postsort_actions", "dependencies"}
    finally:
        Base.metadata.drop_all(engine)


def test_flush_context_makes_two_collections_on_first_use(session_cls, engine):
    """``deps`` and ``post_update_states``, which most flushes never read,
    are made on first use (``flush._MadeOnFirstUse``) as stock's
    constructor makes them, and kept in the instance; a flush no listener
    is given reads neither, and one a listener is given holds both
    (before_flush, after_flush, after_flush_postexec)."""
    from collections import defaultdict

    impl = session_cls._turbo
    with session_cls(engine) as session:
        uow = impl.unitofwork.new_flush_context(turbo_flush.UOWTransaction, session, impl)
        assert "deps" not in vars(uow) and "post_update_states" not in vars(uow)
        deps = uow.deps
        assert type(deps) is defaultdict and deps.default_factory is set and not deps
        assert vars(uow)["deps"] is deps and uow.deps is deps
        updates = uow.post_update_states
        assert type(updates) is defaultdict and not updates
        assert updates.default_factory() == (set(), set())
        assert vars(uow)["post_update_states"] is updates

    Base.metadata.create_all(engine)
    try:
        made = []
        original = turbo_flush.UOWTransaction.finalize_flush_changes

        def held(uow):
            return sorted({"deps", "post_update_states"} & set(vars(uow)))

        def finalize(uow):
            made.append(("finalize", held(uow)))
            return original(uow)

        def listener(name):
            return lambda session, flush_context, *args: made.append((name, held(flush_context)))

        turbo_flush.UOWTransaction.finalize_flush_changes = finalize
        try:
            for i, name in enumerate(("", "before_flush", "after_flush", "after_flush_postexec")):
                with session_cls(engine) as session:
                    if name:
                        event.listen(session, name, listener(name))
                    session.add(Note(id=10 + i, text="a"))
                    session.commit()
        finally:
            turbo_flush.UOWTransaction.finalize_flush_changes = original
        both = ["deps", "post_update_states"]
        assert made == [
            ("finalize", []),
            ("before_flush", both), ("finalize", both),
            ("after_flush", both), ("finalize", both),
            ("finalize", []), ("after_flush_postexec", both),
        ]
    finally:
        Base.metadata.drop_all(engine)
