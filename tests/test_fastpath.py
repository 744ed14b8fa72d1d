"""turbosession's own unit of work against stock's, side by side.

Every scenario runs on stock ``Session`` and on turbosession's (each twin),
on fresh tables, and compares SQL with parameters, events with their
arguments, warnings, exceptions and object states.  Each scenario also
asserts that turbosession really took the fast path (or fell back for the
named reason), so a green run cannot hide a fallback.
"""

import warnings

import pytest
from sqlalchemy import (
    Column,
    Integer,
    Table,
    Computed,
    ForeignKey,
    String,
    delete,
    event,
    func,
    literal,
    null,
    orm,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import turbosession
from turbosession import fastpath
from support import normalize_error, object_state, run, scrub


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "fp_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    qty: Mapped[int] = mapped_column(default=0)
    note: Mapped[str | None] = mapped_column(String(50))


class Code(Base):
    """Natural primary key, client and server defaults of every kind."""

    __tablename__ = "fp_code"
    code: Mapped[str] = mapped_column(String(10), primary_key=True)
    label: Mapped[str | None] = mapped_column(String(50), default=lambda: "generated")
    counter: Mapped[int] = mapped_column(default=7, onupdate=lambda: 99)
    stamp: Mapped[str] = mapped_column(String(30), server_default=text("'server'"))
    bumped: Mapped[int | None] = mapped_column(server_onupdate=text("1"))
    doubled: Mapped[int | None] = mapped_column(Computed("counter * 2", persisted=True))
    expr_default: Mapped[int] = mapped_column(default=literal(40) + 2)


class Other(Base):
    __tablename__ = "fp_other"
    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[str | None] = mapped_column(String(20), default="dflt")


class Pair(Base):
    """Composite key that may be partly NULL (allow_partial_pks, the default)."""

    __tablename__ = "fp_pair"
    a: Mapped[int | None] = mapped_column(primary_key=True, autoincrement=False, nullable=True)
    b: Mapped[str | None] = mapped_column(String(10), primary_key=True, nullable=True)


class StrictPair(Base):
    __tablename__ = "fp_strict_pair"
    __mapper_args__ = {"allow_partial_pks": False}
    a: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    b: Mapped[str | None] = mapped_column(String(10), primary_key=True, nullable=True)


class Owner(Base):
    """Has a relationship: flushes that involve it fall back to stock."""

    __tablename__ = "fp_owner"
    id: Mapped[int] = mapped_column(primary_key=True)
    pets: Mapped[list["Pet"]] = relationship(cascade="all")


class Pet(Base):
    __tablename__ = "fp_pet"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id = Column(ForeignKey("fp_owner.id"))


EVENTS = {
    Item: ["before_insert", "after_insert", "before_update", "after_update",
           "before_delete", "after_delete"],
}
SESSION_EVENTS = ["before_flush", "after_flush", "after_flush_postexec",
                  "pending_to_persistent", "persistent_to_deleted",
                  "deleted_to_detached", "transient_to_pending"]


def value(v):
    """A value as a program sees it, with memory addresses left out."""
    return scrub(repr(v))


def describe(obj):
    if isinstance(obj, Base):
        return (type(obj).__name__, object_state(obj), {
            k: value(v) for k, v in sorted(vars(obj).items()) if not k.startswith("_")
        })
    return value(obj)


def listen_all(session, log):
    """Record mapper and session events with their arguments."""
    handles = []
    for cls, names in EVENTS.items():
        for name in names:
            def on_mapper(mapper, connection, target, _name=name):
                log.note("event", _name, mapper.class_.__name__, describe(target))
            event.listen(cls, name, on_mapper)
            handles.append((cls, name, on_mapper))
    for name in SESSION_EVENTS:
        def on_session(sess, *args, _name=name):
            log.note("event", _name, [describe(a.obj()) if hasattr(a, "obj") else type(a).__name__ for a in args])
        event.listen(session, name, on_session)
    return handles


def unlisten(handles):
    for cls, name, fn in handles:
        event.remove(cls, name, fn)


# stock fires these for a set of states, so their order among themselves
# follows memory addresses: compared as a sorted run
SET_ORDER_EVENTS = {"pending_to_persistent", "persistent_to_deleted", "deleted_to_detached"}


def set_order_sorted(entries):
    out, run_ = [], []
    for entry in entries + [None]:
        if entry is not None and entry[0] == "event" and entry[1] in SET_ORDER_EVENTS:
            if run_ and run_[0][1] != entry[1]:
                out.extend(sorted(run_, key=repr))
                run_ = []
            run_.append(entry)
            continue
        out.extend(sorted(run_, key=repr))
        run_ = []
        if entry is not None:
            out.append(entry)
    return out


def compare(scenario, session_cls, engine, expect_fast=True):
    """Run on stock and on ``session_cls``; the records must be equal."""
    expected = set_order_sorted(run(scenario, orm.Session, engine, Base.metadata))
    fastpath.reset_stats()
    actual = set_order_sorted(run(scenario, session_cls, engine, Base.metadata))
    stats = fastpath.stats()
    assert actual == expected
    if expect_fast is True:
        assert stats["fast"] > 0 and not stats["fallback"], stats
    elif expect_fast:
        assert expect_fast in stats["fallback"], stats
    return actual


def guarded(log, action):
    """Note an exception and the warnings an action raises."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            action()
        except Exception as exc:
            log.note("raised", *normalize_error(exc))
    for w in caught:
        # type and text; where a warning points is compared in test_flush_order
        # for turbosession's own warnings (SQLAlchemy's emitters, called from
        # turbosession's frames, point at those: a known difference)
        log.note("warned", w.category.__name__, value(str(w.message)))


def scenario_inserts(session_cls, engine, log):
    session = session_cls(engine)
    handles = listen_all(session, log)
    try:
        # explicit ids far above what a PostgreSQL sequence hands out here
        given = [Item(id=i, name=f"given {i}", qty=i) for i in range(1001, 1006)]
        auto = [Item(name=f"auto {i}") for i in range(3)]
        mixed = [Item(id=1050, name="x", note="n"), Item(name="y", note=None), Item(id=1060, name="z")]
        session.add_all(given + auto + mixed)
        session.flush()
        log.note("objects", [describe(o) for o in given + auto + mixed])
        session.commit()
        log.note("reloaded", [describe(o) for o in given + auto + mixed])
    finally:
        unlisten(handles)
        session.close()


def scenario_updates(session_cls, engine, log):
    session = session_cls(engine)
    session.add_all([Item(id=i, name=f"n{i}", qty=i) for i in range(1, 8)])
    session.commit()
    handles = listen_all(session, log)
    try:
        items = session.scalars(select(Item).order_by(Item.id)).all()
        items[0].qty = 100                      # one column
        items[1].qty, items[1].name = 5, "two"  # two columns: another batch
        items[2].name = items[2].name           # set back: no UPDATE
        items[3].qty = Item.qty + 10            # SQL expression: own statement
        items[4].note = "note"
        items[5].qty = 42
        items[6].id = 70                        # primary key change
        log.note("dirty", sorted(o.id for o in session.dirty))
        session.flush()
        log.note("objects", [describe(o) for o in items])
        log.note("expression expired", "qty" in items[3].__dict__, items[3].qty)
        session.commit()
        log.note("rows", session.execute(select(Item.id, Item.qty, Item.name).order_by(Item.id)).all())
    finally:
        unlisten(handles)
        session.close()


def scenario_deletes(session_cls, engine, log):
    session = session_cls(engine)
    session.add_all([Item(id=i, name=f"n{i}") for i in range(1, 6)])
    session.add_all([Other(id=i) for i in range(1, 4)])
    session.commit()
    handles = listen_all(session, log)
    try:
        for item in session.scalars(select(Item).where(Item.id > 2)):
            session.delete(item)
        session.delete(session.get(Other, 2))
        session.get(Other, 3).value = "kept"
        session.add(Other(id=9))
        session.flush()
        log.note("rows", session.scalars(select(Item.id)).all(), session.scalars(select(Other.id)).all())
        session.commit()
    finally:
        unlisten(handles)
        session.close()


def scenario_defaults(session_cls, engine, log):
    session = session_cls(engine)
    codes = [Code(code="a"), Code(code="b", label="given", counter=1),
             Code(code="c", stamp="mine"), Code(code="d", label=null())]
    session.add_all(codes)
    session.flush()
    log.note("after insert", [sorted(c.__dict__) for c in codes])
    log.note("loaded", [describe(c) for c in codes])
    codes[0].label = "changed"
    codes[1].counter = 5
    session.flush()
    log.note("after update", [sorted(c.__dict__) for c in codes])
    log.note("loaded", [describe(c) for c in codes])
    session.commit()
    session.close()


def scenario_integrity_error(session_cls, engine, log):
    session = session_cls(engine)
    session.add(Item(id=1, name="first"))
    session.commit()
    first = session.get(Item, 1)
    first.name = "renamed"
    dup = Item(id=1, name="duplicate")
    new = Item(id=2, name="fine")
    session.add_all([new, dup])
    guarded(log, session.flush)
    log.note("states", [describe(o) for o in (first, dup, new)], sorted(map(repr, session.new)))
    session.rollback()
    log.note("after rollback", [describe(o) for o in (first, dup, new)])
    session.close()


def scenario_listener_raises(session_cls, engine, log):
    session = session_cls(engine)

    def boom(mapper, connection, target):
        if target.name == "bad":
            raise ValueError("listener refused")

    event.listen(Item, "before_insert", boom)
    try:
        good, bad = Item(id=1, name="good"), Item(id=2, name="bad")
        session.add_all([good, bad])
        guarded(log, session.commit)
        log.note("states", [describe(o) for o in (good, bad)], session.in_transaction())
        session.rollback()
        log.note("rows", session.scalars(select(Item.id)).all())
    finally:
        event.remove(Item, "before_insert", boom)
        session.close()


def scenario_connection_lost(session_cls, engine, log):
    """The connection dies under the flush's INSERT: rolled back, invalidated."""
    session = session_cls(engine)
    session.add(Item(id=1, name="a"))
    session.commit()
    item = session.get(Item, 1)
    item.name = "changed"
    new = Item(id=2, name="b")
    session.add(new)

    def cut(conn, cursor, statement, parameters, context, executemany):
        if statement.startswith("INSERT"):
            conn.connection.dbapi_connection.close()

    event.listen(engine, "before_cursor_execute", cut)
    try:
        guarded(log, session.flush)
    finally:
        event.remove(engine, "before_cursor_execute", cut)
    log.note("after failure", describe(item), describe(new), session.is_active,
             sorted(map(repr, session.new)), sorted(map(repr, session.dirty)))
    session.rollback()
    log.note("after rollback", describe(item), describe(new), sorted(map(repr, session.new)))
    session.close()


def scenario_stale_and_null(session_cls, engine, log):
    session = session_cls(engine)
    session.add_all([Item(id=1, name="a"), Item(id=2, name="b")])
    session.commit()
    one, two = session.get(Item, 1), session.get(Item, 2)
    session.execute(delete(Item).where(Item.id == 1))
    session.delete(one)
    guarded(log, session.flush)                 # confirm_deleted_rows warning
    two.name = "changed"
    session.execute(delete(Item).where(Item.id == 2))
    guarded(log, session.flush)                 # StaleDataError on UPDATE
    session.rollback()
    conflict = Item(id=2, name="same identity")
    session.add(conflict)
    guarded(log, session.flush)                 # conflicts-with-persistent warning
    session.rollback()
    session.close()


def scenario_null_identity_keys(session_cls, engine, log):
    """Primary keys flushed as NULL: a partial key is an identity unless the
    mapper forbids it; an all-NULL key never is (FlushError, or the
    database refuses the row first)."""
    session = session_cls(engine)
    for obj in (Pair(a=1, b=None), Pair(a=2, b="x"), StrictPair(a=1, b="y"),
                StrictPair(a=2, b=None), Pair(a=None, b=None)):
        session.add(obj)
        guarded(log, session.flush)
        log.note("state", describe(obj), sorted(map(repr, session.identity_map.keys())))
        session.rollback()
    session.close()


def scenario_listener_changes(session_cls, engine, log):
    """Listeners that set values, including SQL expressions, in before_*."""

    def stamp(mapper, connection, target):
        target.note = func.upper(literal("stamped"))

    event.listen(Item, "before_insert", stamp)
    event.listen(Item, "before_update", stamp)
    session = session_cls(engine)
    try:
        items = [Item(id=i, name=f"n{i}") for i in range(1, 4)]
        session.add_all(items)
        session.flush()
        items[0].qty = 9
        session.flush()
        log.note("rows", session.execute(select(Item.id, Item.note, Item.qty).order_by(Item.id)).all())
        session.commit()
    finally:
        event.remove(Item, "before_insert", stamp)
        event.remove(Item, "before_update", stamp)
        session.close()


def scenario_flush_objects_and_nested(session_cls, engine, log):
    session = session_cls(engine)
    a, b = Item(id=1, name="a"), Item(id=2, name="b")
    session.add_all([a, b])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        session.flush([a])
    log.note("states", describe(a), describe(b))
    nested = session.begin_nested()
    b.qty = 3
    session.flush()
    nested.rollback()
    log.note("after savepoint rollback", describe(a), describe(b))
    session.commit()
    log.note("rows", session.execute(select(Item.id, Item.qty)).all())
    session.close()


FAST = [scenario_inserts, scenario_updates, scenario_deletes, scenario_defaults,
        scenario_integrity_error, scenario_listener_raises, scenario_connection_lost,
        scenario_stale_and_null, scenario_null_identity_keys,
        scenario_listener_changes, scenario_flush_objects_and_nested]


@pytest.mark.parametrize("scenario", FAST, ids=[s.__name__ for s in FAST])
def test_fast_path_same_as_stock(scenario, session_cls, engine):
    entries = compare(scenario, session_cls, engine)
    assert any(e[0] == "sql" for e in entries)


def scenario_relationship(session_cls, engine, log):
    session = session_cls(engine)
    handles = listen_all(session, log)
    try:
        owner = Owner(id=1, pets=[Pet(id=1), Pet(id=2)])
        session.add(owner)
        session.commit()
        log.note("rows", session.execute(select(Pet.id, Pet.owner_id).order_by(Pet.id)).all())
        owner.pets.pop()                    # FK set to NULL by the relationship
        owner.pets.append(Pet(id=3))
        session.flush()
        log.note("rows", session.execute(select(Pet.id, Pet.owner_id).order_by(Pet.id)).all())
        session.delete(owner)               # cascade deletes the pets
        session.commit()
        log.note("rows", session.scalars(select(Pet.id)).all(), session.scalars(select(Owner.id)).all())
    finally:
        unlisten(handles)
        session.close()


def scenario_property_added_after_flush(session_cls, engine, log):
    """A column mapped after the mapper's first flush takes part in the next
    flushes (turbosession's per-mapper precomputations follow the mapper)."""
    reg = orm.registry()
    table = Table(
        "fp_late", reg.metadata,
        Column("id", Integer, primary_key=True),
        Column("name", String(20)),
        Column("late", String(20)),
    )

    class Late:
        pass

    reg.map_imperatively(Late, table, exclude_properties=["late"])
    reg.metadata.create_all(engine)
    session = session_cls(engine)
    try:
        first = Late()
        first.id, first.name = 1, "a"
        session.add(first)
        session.flush()
        first.name = "b"
        session.flush()
        Late.__mapper__.add_property("late", table.c.late)
        second = Late()
        second.id, second.late = 2, "x"
        session.add(second)
        session.flush()
        second.late = "y"
        session.flush()
        log.note("rows", session.execute(select(table).order_by(table.c.id)).all())
    finally:
        session.close()
        reg.metadata.drop_all(engine)
        reg.dispose()


def test_property_added_after_flush(session_cls, engine):
    entries = compare(scenario_property_added_after_flush, session_cls, engine)
    assert ("rows", [(1, "b", None), (2, None, "y")]) in entries


def test_relationship_flush_is_fast(session_cls, engine):
    """Relationship work stays stock's; the mappers' steps are turbosession's."""
    compare(scenario_relationship, session_cls, engine)


class Node(Base):
    __tablename__ = "fp_node"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id = Column(ForeignKey("fp_node.id"))
    children: Mapped[list["Node"]] = relationship()


def scenario_cycle(session_cls, engine, log):
    """A self-referential tree: the flush is split per state, and the
    per-state save and delete steps run on turbosession's unit of work."""
    session = session_cls(engine)
    handles = []
    for name in ("before_insert", "after_insert", "before_update", "after_update",
                 "before_delete", "after_delete"):
        def on_node(mapper, connection, target, _name=name):
            log.note("event", _name, target.id, target.parent_id)
        event.listen(Node, name, on_node)
        handles.append((Node, name, on_node))
    try:
        root = Node(id=1, children=[Node(id=2), Node(id=3, children=[Node(id=4)])])
        session.add(root)
        session.commit()
        log.note("rows", session.execute(select(Node.id, Node.parent_id).order_by(Node.id)).all())
        two, three = session.get(Node, 2), session.get(Node, 3)
        two.children.append(Node(id=5, children=[Node(id=6)]))
        three.children.clear()                  # 4 loses its parent: an UPDATE
        session.flush()
        log.note("rows", session.execute(select(Node.id, Node.parent_id).order_by(Node.id)).all())
        # one delete per flush: with two, stock lazy-loads their children
        # in set order, which is by memory address
        session.delete(session.get(Node, 4))
        session.flush()
        session.delete(session.get(Node, 6))
        session.commit()
        log.note("rows", session.execute(select(Node.id, Node.parent_id).order_by(Node.id)).all())
    finally:
        unlisten(handles)
        session.close()


def test_self_referential_flush_is_fast(session_cls, engine):
    entries = compare(scenario_cycle, session_cls, engine)
    assert any(e[:2] == ("event", "after_delete") for e in entries)


def scenario_both_insert_and_delete(session_cls, engine, log):
    session = session_cls(engine)
    session.add(Item(id=1, name="old"))
    session.commit()
    session.delete(session.get(Item, 1))
    session.add(Item(id=1, name="row switch"))
    session.commit()
    log.note("rows", session.execute(select(Item.id, Item.name)).all())
    session.close()


def test_row_switch_falls_back(session_cls, engine):
    compare(scenario_both_insert_and_delete, session_cls, engine, expect_fast="row_switch_possible")


def test_fast_flush_can_be_disabled(impl, engine):
    class Careful(turbosession.Session):
        _turbo = impl
        _fast_flush = False

    compare(scenario_inserts, Careful, engine, expect_fast="disabled")


def test_stats_are_public():
    assert turbosession.stats() == fastpath.stats()
    assert set(fastpath.FALLBACK_REASONS) >= {"inheritance", "row_switch_possible"}
