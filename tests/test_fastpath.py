"""turbosession's own unit of work against stock's, side by side.

Every scenario runs on stock ``Session`` and on turbosession's (each implementation),
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
    Enum,
    FetchedValue,
    ForeignKey,
    TypeDecorator,
    String,
    delete,
    event,
    func,
    literal,
    literal_column,
    null,
    orm,
    select,
    text,
    update,
)
from sqlalchemy.exc import SADeprecationWarning
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    MappedAsDataclass,
    column_property,
    mapped_column,
    relationship,
)

import turbosession
from turbosession import fastpath
from support import normalize_error, object_state, run, scrub, set_order_sorted


class Base(DeclarativeBase):
    pass


RANKS = ["low", "mid", "high"]


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


class Ranked(Base):
    """A primary key whose type sorts by a function of its own: stock's flush
    orders persistent states by it."""

    __tablename__ = "fp_ranked"
    rank: Mapped[str] = mapped_column(
        Enum("low", "mid", "high", native_enum=False, sort_key_function=RANKS.index),
        primary_key=True,
    )
    value: Mapped[int | None]


class StrKey(TypeDecorator):
    """Sends every key as a string: the identity keys keep the values given."""

    impl = String(20)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else str(value)


class Keyed(Base):
    __tablename__ = "fp_keyed"
    key = mapped_column(StrKey, primary_key=True)
    value: Mapped[int | None]


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
# follows memory addresses: compared as a sorted run of each
SET_ORDER_EVENTS = {
    name: name for name in ("pending_to_persistent", "persistent_to_deleted", "deleted_to_detached")
}


def compare(scenario, session_cls, engine, expect_fast=True):
    """Run on stock and on ``session_cls``; the records must be equal."""
    expected = set_order_sorted(run(scenario, orm.Session, engine, Base.metadata), SET_ORDER_EVENTS)
    fastpath.reset_stats()
    actual = set_order_sorted(run(scenario, session_cls, engine, Base.metadata), SET_ORDER_EVENTS)
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


def scenario_key_orders(session_cls, engine, log):
    """Objects whose attributes were set in different orders, interleaved in
    one flush: each INSERT's parameters are gathered in the order stock
    gathers them (the recorder notes the key order a listener sees)."""
    session = session_cls(engine)
    handles = listen_all(session, log)
    try:
        objects = []
        for i in range(12):
            shape = i % 4
            if shape == 0:
                obj = Item(id=2000 + i, name=f"a{i}", qty=i)
            elif shape == 1:
                obj = Item(qty=i, name=f"b{i}", id=2000 + i)
            elif shape == 2:
                obj = Item(name=f"c{i}", id=2000 + i)
            else:
                obj = Item(id=2000 + i, note="n", name=f"d{i}", qty=i)
                # set again after another attribute: the dict's order changes
                del obj.id
                obj.id = 2000 + i
            objects.append(obj)
        session.add_all(objects)
        session.flush()
        log.note("objects", [describe(o) for o in objects])
        session.commit()
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


def scenario_sort_orders(session_cls, engine, log):
    """States are flushed in stock's order: new ones as they were added,
    persistent ones by primary key, by the key type's sort function where
    it has one; keys that cannot be compared fail the flush as in stock."""
    session = session_cls(engine)
    session.add_all([Ranked(rank=r) for r in ("high", "low", "mid")])
    session.add_all([Item(id=i, name=f"n{i}") for i in (5, 3, 9, 1)])
    keyed = [Keyed(key="b"), Keyed(key=1)]
    session.add_all(keyed)
    session.commit()
    handles = listen_all(session, log)
    try:
        for obj in session.scalars(select(Ranked)):
            obj.value = RANKS.index(obj.rank)
        for obj in session.scalars(select(Item)):
            obj.qty = obj.id * 2
        session.add_all([Item(id=i, name="new") for i in (8, 2, 7)])
        session.flush()
        for obj in session.scalars(select(Item).where(Item.id > 6)):
            session.delete(obj)
        guarded(log, session.flush)
        for obj in keyed:
            obj.value = 1
        try:
            session.flush()
        except Exception as exc:
            # which two keys sorted() compares first depends on where the
            # objects are in memory (the states come from a set), in stock too
            message = str(exc).replace("'int' and 'str'", "'str' and 'int'")
            log.note("raised", type(exc).__name__, message)
        log.note("states", [object_state(o) for o in keyed])
        session.rollback()
    finally:
        unlisten(handles)
        session.close()


def scenario_pending_keys(session_cls, engine, log):
    """New objects flushed with no before_insert listener (organizing skips
    the identity key of a key the database is to generate): keys absent,
    a composite key with one part absent, keys given, a given key that
    conflicts with a persistent object, and a pending object whose key
    attribute is expired (private API: stock's loader callable runs)."""
    session = session_cls(engine)
    session.add_all([Item(id=2001, name="given"), Item(name="auto")])
    session.commit()
    existing = session.get(Item, 2001)
    objects = [Item(name="auto 2"), Item(id=2010, name="given 2"), Pair(a=7), Item(name="auto 3")]
    session.add_all(objects)
    guarded(log, session.flush)
    log.note("objects", [describe(o) for o in objects],
             sorted(map(repr, session.identity_map.keys())))
    session.rollback()
    conflict = Item(id=2001, name="conflict")
    session.add(conflict)
    guarded(log, session.flush)                 # conflicts-with-persistent warning
    log.note("conflict", describe(conflict), describe(existing))
    session.rollback()
    expired = Item(name="expired key")
    session.add(expired)
    state = orm.attributes.instance_state(expired)
    state._expire_attributes(state.dict, ["id"])
    guarded(log, session.flush)
    log.note("expired", describe(expired), sorted(map(repr, session.identity_map.keys())))
    session.rollback()
    session.close()


FAST = [scenario_inserts, scenario_updates, scenario_deletes, scenario_defaults,
        scenario_integrity_error, scenario_listener_raises, scenario_connection_lost,
        scenario_stale_and_null, scenario_null_identity_keys,
        scenario_listener_changes, scenario_flush_objects_and_nested,
        scenario_sort_orders, scenario_key_orders, scenario_pending_keys]


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


def scenario_listener_added_after_flush(session_cls, engine, log):
    """A refresh_flush listener added after the mapper's first flush (its
    flush plan is built then) is called on the next flushes, and no longer
    once removed: listeners are not part of the cached plan."""

    def refreshed(target, flush_context, attrs):
        log.note("refresh_flush", describe(target), sorted(attrs))

    session = session_cls(engine)
    try:
        session.add(Item(id=1, name="a"))
        session.flush()
        event.listen(Item, "refresh_flush", refreshed)
        try:
            session.add_all([Item(id=2, name="b"), Item(id=3, name="c", qty=4)])
            session.flush()
        finally:
            event.remove(Item, "refresh_flush", refreshed)
        session.add(Item(id=4, name="d"))
        session.flush()
        session.commit()
        log.note("rows", session.execute(select(Item.id, Item.qty).order_by(Item.id)).all())
    finally:
        session.close()


def test_listener_added_after_flush(session_cls, engine):
    entries = compare(scenario_listener_added_after_flush, session_cls, engine)
    # Item 2 has its qty default prefetched, Item 3 a qty given: one call
    assert [e[0] for e in entries].count("refresh_flush") == 1


def scenario_subclass_mapped_after_flush(session_cls, engine, log):
    """A subclass mapped (single-table inheritance) after its base mapper's
    first flush takes part in the next flushes with its own columns and
    events: the hierarchy's flush plan is rebuilt with it."""
    reg = orm.registry()
    table = Table(
        "fp_late_base", reg.metadata,
        Column("id", Integer, primary_key=True),
        Column("kind", String(10)),
        Column("name", String(20)),
        Column("extra", String(20)),
        Column("tag", String(10), default="t"),
    )

    class Animal:
        pass

    class Dog(Animal):
        pass

    reg.map_imperatively(
        Animal, table, polymorphic_on=table.c.kind, polymorphic_identity="animal",
        exclude_properties=["extra"],
    )
    reg.metadata.create_all(engine)
    session = session_cls(engine)
    try:
        first = Animal()
        first.id, first.name = 1, "a"
        session.add(first)
        session.flush()
        reg.map_imperatively(Dog, inherits=Animal, polymorphic_identity="dog",
                             properties={"extra": table.c.extra})
        orm.configure_mappers()

        def inserted(mapper, connection, target):
            log.note("after_insert", mapper.class_.__name__, target.id)

        def refreshed(target, flush_context, attrs):
            log.note("refresh_flush", type(target).__name__, target.id, sorted(attrs))

        event.listen(Dog, "after_insert", inserted)
        event.listen(Dog, "refresh_flush", refreshed)
        dog = Dog()
        dog.id, dog.name, dog.extra = 2, "d", "x"
        other = Animal()
        other.id, other.name = 3, "o"
        session.add_all([dog, other])
        session.flush()
        dog.extra = "y"
        session.delete(first)
        session.flush()
        session.commit()
        log.note("rows", session.execute(select(table).order_by(table.c.id)).all())
    finally:
        session.close()
        reg.metadata.drop_all(engine)
        reg.dispose()


def test_subclass_mapped_after_flush(session_cls, engine):
    entries = compare(scenario_subclass_mapped_after_flush, session_cls, engine)
    assert ("rows", [(2, "dog", "d", "y", "t"), (3, "animal", "o", None, "t")]) in entries
    assert ("after_insert", "Dog", 2) in entries
    assert ("refresh_flush", "Dog", 2, ["tag"]) in entries


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
    """A new object takes a deleted one's identity (a "row switch"): stock
    updates the row, and the other new object is inserted."""
    session = session_cls(engine)
    session.add_all([Item(id=1, name="old", note="kept?"), Item(id=2, name="gone")])
    session.commit()
    old = [session.get(Item, 1), session.get(Item, 2)]
    handles = listen_all(session, log)
    try:
        for obj in old:
            session.delete(obj)
        switched, added = Item(id=1, name="row switch"), Item(id=3, name="new")
        session.add_all([switched, added])
        session.flush()
        log.note("objects", [describe(o) for o in old + [switched, added]])
        session.commit()
        log.note("rows", session.execute(select(Item.id, Item.name, Item.note)).all())
    finally:
        unlisten(handles)
        session.close()


def test_row_switch(session_cls, engine):
    entries = compare(scenario_both_insert_and_delete, session_cls, engine)
    assert any(e[0] == "sql" and e[1].startswith("UPDATE fp_item") for e in entries)


def test_fast_flush_can_be_disabled(impl, engine):
    class Careful(turbosession.Session):
        _turbo = impl
        _fast_flush = False

    compare(scenario_inserts, Careful, engine, expect_fast="disabled")


def test_overridden_contains_state_is_asked(impl, engine):
    """A session overriding _contains_state is asked by the flush's
    registration as stock's flush asks it, per class and per instance."""

    def flush_calls(session_cls, per_instance):
        Base.metadata.drop_all(engine)
        Base.metadata.create_all(engine)
        calls = []
        session = session_cls(engine)
        loaded = Item(id=1, name="a")
        session.add(loaded)
        session.commit()
        loaded.qty = 5
        session.add(Item(id=2, name="b"))
        watch = (lambda state: calls.append(state.key) or True) if per_instance else None
        if per_instance:
            session._contains_state = watch
        else:
            session.watch = calls
        session.flush()
        session.close()
        return calls

    class Stock(orm.Session):
        def _contains_state(self, state):
            getattr(self, "watch", []).append(state.key)
            return super()._contains_state(state)

    class Turbo(turbosession.Session):
        _turbo = impl

        def _contains_state(self, state):
            getattr(self, "watch", []).append(state.key)
            return super()._contains_state(state)

    for per_instance, stock_cls, turbo_cls in (
        (False, Stock, Turbo),
        (True, orm.Session, type("Plain", (turbosession.Session,), {"_turbo": impl})),
    ):
        expected = flush_calls(stock_cls, per_instance)
        assert sorted(map(repr, expected)) == sorted(map(repr, flush_calls(turbo_cls, per_instance)))
        assert len(expected) == 2


def test_stats_are_public():
    stats = turbosession.stats()
    assert stats.pop("loads") == turbosession.loads.stats()
    assert stats.pop("emission") == turbosession.emission.stats()
    assert stats.pop("attach") == turbosession.attaching.stats()
    assert stats.pop("transactions") == turbosession.transaction.stats()
    assert stats.pop("sorted_steps") == turbosession.plans.stats()
    assert stats.pop("relationships") == turbosession.relationships.stats()
    assert stats.pop("cycles") == turbosession.flush.cycle_stats()
    assert stats == fastpath.stats()
    assert set(fastpath.FALLBACK_REASONS) >= {"not_tables", "disabled"}


# -- what issue 6 put on the fast path: version counters, eager defaults,
# read-only properties, refresh_flush listeners, ORM-level defaults


class Versioned(Base):
    """An integer version counter, generated by the ORM."""

    __tablename__ = "fp_versioned"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    qty: Mapped[int] = mapped_column(default=0)
    version: Mapped[int] = mapped_column(nullable=False)
    __mapper_args__ = {"version_id_col": version}


class ServerVersioned(Base):
    """The database sets the version (RETURNING where there is one)."""

    __tablename__ = "fp_server_versioned"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    ver: Mapped[int] = mapped_column(
        server_default=text("1"), onupdate=literal_column("ver + 1")
    )
    __mapper_args__ = {"version_id_col": ver, "version_id_generator": False}


class ServerVersionedSelect(Base):
    """As ServerVersioned, without RETURNING: the version is SELECTed after."""

    __tablename__ = "fp_server_versioned_select"
    __table_args__ = {"implicit_returning": False}
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    ver: Mapped[int] = mapped_column(
        server_default=text("1"), onupdate=literal_column("ver + 1")
    )
    __mapper_args__ = {"version_id_col": ver, "version_id_generator": False}


def next_tag(current):
    return "v1" if current is None else f"v{int(current[1:]) + 1}"


class Tagged(Base):
    """A version made by a callable generator."""

    __tablename__ = "fp_tagged"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    tag: Mapped[str] = mapped_column(String(10))
    __mapper_args__ = {"version_id_col": tag, "version_id_generator": next_tag}


class Manual(Base):
    """version_id_generator=False: the application sets the version."""

    __tablename__ = "fp_manual"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    rev: Mapped[int | None] = mapped_column()
    __mapper_args__ = {"version_id_col": rev, "version_id_generator": False}


def scenario_version_counter(session_cls, engine, log):
    session = session_cls(engine)
    try:
        given = [Versioned(id=i, name=f"v{i}") for i in range(1001, 1005)]
        auto = [Versioned(name="auto")]
        session.add_all(given + auto)
        session.flush()
        log.note("inserted", [describe(o) for o in given + auto])
        given[0].qty = 5                       # one column: one row per UPDATE
        given[1].qty = 6
        given[2].name, given[2].qty = "two", 7
        given[3].qty = Versioned.qty + 1       # SQL expression
        auto[0].name = auto[0].name            # no net change: no UPDATE, no bump
        session.flush()
        log.note("updated", [describe(o) for o in given + auto])
        session.delete(given[0])
        session.delete(given[1])
        session.flush()
        session.commit()
        log.note("rows", session.execute(
            select(Versioned.id, Versioned.qty, Versioned.version).order_by(Versioned.id)).all())
    finally:
        session.close()


def scenario_version_stale(session_cls, engine, log):
    session = session_cls(engine)
    session.add_all([Versioned(id=i, name=f"v{i}") for i in range(1, 4)])
    session.commit()
    one, two, three = (session.get(Versioned, i) for i in range(1, 4))
    # another transaction bumps the versions of rows 2 and 3 (a Core
    # statement on the table: the session's objects keep the old versions)
    table = Versioned.__table__
    session.execute(update(table).where(table.c.id > 1).values(version=table.c.version + 1))
    one.qty = 1
    two.qty = 2
    guarded(log, session.flush)                 # StaleDataError on UPDATE
    log.note("after stale update", describe(one), sorted(map(repr, session.dirty)))
    session.rollback()
    log.note("loaded", three.version, one.version)
    session.execute(update(table).where(table.c.id == 3).values(version=9))
    session.delete(three)
    guarded(log, session.flush)                 # StaleDataError on DELETE
    log.note("after stale delete", describe(three), session.is_active)
    session.rollback()
    log.note("loaded", one.version)
    session.execute(delete(table).where(table.c.id == 1))
    session.delete(one)
    guarded(log, session.flush)                 # confirm_deleted_rows: a versioned row raises
    session.rollback()
    session.close()


def scenario_server_version(session_cls, engine, log):
    for cls in (ServerVersioned, ServerVersionedSelect):
        session = session_cls(engine)
        # explicit ids far above what a PostgreSQL sequence hands out here
        objects = [cls(id=1001, name="a"), cls(id=1002, name="b"), cls(name="c")]
        session.add_all(objects)
        session.flush()
        log.note("inserted", [sorted(o.__dict__) for o in objects], [describe(o) for o in objects])
        objects[0].name = "a2"
        objects[1].name = "b2"
        session.flush()
        log.note("updated", [sorted(o.__dict__) for o in objects], [describe(o) for o in objects])
        session.commit()
        log.note("loaded", objects[1].ver)
        table = cls.__table__
        session.execute(update(table).where(table.c.id == 1002).values(ver=50))
        objects[1].name = "b3"
        guarded(log, session.flush)             # StaleDataError: the version moved
        session.rollback()
        log.note("rows", session.execute(select(cls.id, cls.ver).order_by(cls.id)).all())
        session.close()


def scenario_version_generators(session_cls, engine, log):
    session = session_cls(engine)
    tagged = [Tagged(id=i, name=f"t{i}") for i in range(1, 4)]
    manual = [Manual(id=1, name="m1", rev=1), Manual(id=2, name="m2", rev=10)]
    session.add_all(tagged + manual)
    session.flush()
    log.note("inserted", [describe(o) for o in tagged + manual])
    tagged[0].name = "changed"
    tagged[1].tag = "v7"                        # set by hand: not generated
    manual[0].name = "m1 changed"               # located by rev, rev unchanged
    manual[1].rev = 11
    session.flush()
    log.note("updated", [describe(o) for o in tagged + manual])
    session.delete(tagged[2])
    session.delete(manual[1])
    session.flush()
    session.commit()
    session.add(Manual(id=3, name="no rev"))
    guarded(log, session.flush)                 # a NULL version is refused
    session.rollback()
    log.note("rows", session.execute(select(Tagged.id, Tagged.tag).order_by(Tagged.id)).all(),
             session.execute(select(Manual.id, Manual.rev).order_by(Manual.id)).all())
    session.close()


class Eager(Base):
    """eager_defaults=True: server values come back with RETURNING."""

    __tablename__ = "fp_eager"
    __mapper_args__ = {"eager_defaults": True}
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    created: Mapped[str] = mapped_column(String(20), server_default=text("'created'"))
    touched: Mapped[str | None] = mapped_column(String(20), onupdate=literal_column("'touched'"))
    fetched: Mapped[str | None] = mapped_column(String(20), server_onupdate=FetchedValue())


class EagerSelect(Base):
    """eager_defaults=True without RETURNING: a SELECT after the flush."""

    __tablename__ = "fp_eager_select"
    __table_args__ = {"implicit_returning": False}
    __mapper_args__ = {"eager_defaults": True}
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    created: Mapped[str] = mapped_column(String(20), server_default=text("'created'"))
    touched: Mapped[str | None] = mapped_column(String(20), onupdate=literal_column("'touched'"))
    fetched: Mapped[str | None] = mapped_column(String(20), server_onupdate=FetchedValue())


def scenario_eager_defaults(session_cls, engine, log):
    for cls in (Eager, EagerSelect):
        session = session_cls(engine)
        objects = [cls(id=1001, name="a"), cls(id=1002, name="b"),
                   cls(id=1003, name="c", created="given"), cls(name="auto")]
        session.add_all(objects)
        session.flush()
        log.note("inserted", [sorted(o.__dict__) for o in objects], [describe(o) for o in objects])
        objects[0].name = "a2"
        objects[1].name = "b2"
        objects[2].name, objects[2].touched, objects[2].fetched = "c2", "mine", "mine too"
        session.flush()
        log.note("updated", [sorted(o.__dict__) for o in objects], [describe(o) for o in objects])
        session.commit()
        session.close()


class Priced(Base):
    """Read-only column properties, expired by the flush."""

    __tablename__ = "fp_priced"
    id: Mapped[int] = mapped_column(primary_key=True)
    qty: Mapped[int] = mapped_column()
    price: Mapped[int] = mapped_column()
    total: Mapped[int] = column_property(qty * price)
    deferred_total: Mapped[int] = column_property(qty + price, deferred=True)
    kept_total: Mapped[int] = column_property(qty - price, expire_on_flush=False)
    items: Mapped[int] = column_property(
        select(func.count()).select_from(Item.__table__).scalar_subquery()
    )


def scenario_readonly_props(session_cls, engine, log):
    session = session_cls(engine)
    session.add(Item(id=1, name="counted"))
    priced = [Priced(id=1, qty=2, price=3), Priced(id=2, qty=4, price=5)]
    session.add_all(priced)
    session.flush()
    log.note("inserted", [sorted(o.__dict__) for o in priced])
    log.note("loaded", [(o.total, o.deferred_total, o.kept_total, o.items) for o in priced])
    priced[0].qty = 10
    session.flush()
    log.note("updated", [sorted(o.__dict__) for o in priced], [describe(o) for o in priced])
    log.note("loaded", [(o.total, o.deferred_total, o.kept_total, o.items) for o in priced])
    session.commit()
    session.close()


def scenario_refresh_flush(session_cls, engine, log):
    def refreshed(target, flush_context, attrs):
        log.note("refresh_flush", type(target).__name__, describe(target), sorted(attrs))

    targets = (Code, Versioned, Eager, ServerVersioned)
    for cls in targets:
        event.listen(cls, "refresh_flush", refreshed)
    session = session_cls(engine)
    try:
        codes = [Code(code="a"), Code(code="b", label="given", counter=1)]
        versioned = [Versioned(id=1, name="v"), Versioned(id=2, name="w")]
        eager = [Eager(id=1001, name="e"), Eager(name="f")]
        server = [ServerVersioned(id=1, name="s")]
        session.add_all(codes + versioned + eager + server)
        session.flush()
        codes[0].label = "changed"
        versioned[0].qty = 3
        eager[0].name = "e2"
        server[0].name = "s2"
        session.flush()
        log.note("objects", [describe(o) for o in codes + versioned + eager + server])
        session.commit()
    finally:
        for cls in targets:
            event.remove(cls, "refresh_flush", refreshed)
        session.close()


class DataclassBase(MappedAsDataclass, DeclarativeBase):
    metadata = Base.metadata


with warnings.catch_warnings():
    # the ORM-level default on a column_property is deprecated, and still
    # delivered to the INSERT by stock
    warnings.simplefilter("ignore", SADeprecationWarning)

    class Gadget(DataclassBase):
        """ORM dataclass defaults, one the column's own default cannot deliver."""

        __tablename__ = "fp_gadget"
        id: Mapped[int] = mapped_column(primary_key=True)
        label: Mapped[str] = column_property(Column(String(50)), default="orm default")
        size: Mapped[int] = mapped_column(default=3)
        note: Mapped[str | None] = mapped_column(String(20), default=None)


def scenario_dataclass_defaults(session_cls, engine, log):
    session = session_cls(engine)
    gadgets = [Gadget(id=1), Gadget(id=2, size=9), Gadget(id=3, note="n")]
    gadgets[1].label = "given"                  # column_property: not in __init__
    session.add_all(gadgets)
    session.flush()
    log.note("inserted", [sorted(o.__dict__) for o in gadgets], [describe(o) for o in gadgets])
    gadgets[0].size = 4
    session.flush()
    session.commit()
    log.note("rows", session.execute(
        select(Gadget.id, Gadget.label, Gadget.size, Gadget.note).order_by(Gadget.id)).all())
    session.close()


SCOPE = [scenario_version_counter, scenario_version_stale, scenario_server_version,
         scenario_version_generators, scenario_eager_defaults, scenario_readonly_props,
         scenario_refresh_flush, scenario_dataclass_defaults]


@pytest.mark.parametrize("scenario", SCOPE, ids=[s.__name__ for s in SCOPE])
def test_issue6_features_on_fast_path(scenario, session_cls, engine):
    """Version counters, eager defaults, read-only properties, refresh_flush
    and ORM-level defaults: stock's SQL, events and states, on the fast path."""
    entries = compare(scenario, session_cls, engine)
    assert any(e[0] == "sql" for e in entries)


class Region(Base):
    """A natural primary key that the database cascades to its cities."""

    __tablename__ = "fp_region"
    code: Mapped[str] = mapped_column(String(10), primary_key=True)
    cities: Mapped[list["City"]] = relationship(passive_updates=True)


class City(Base):
    __tablename__ = "fp_city"
    region_code: Mapped[str] = mapped_column(
        String(10), ForeignKey("fp_region.code", onupdate="CASCADE"), primary_key=True
    )
    name: Mapped[str] = mapped_column(String(20), primary_key=True)
    size: Mapped[int] = mapped_column(default=0)


def scenario_cascaded_primary_key(session_cls, engine, log):
    """A primary key the database cascades: a child in the flush with no
    other change has no UPDATE, as with stock."""
    session = session_cls(engine)
    if engine.dialect.name == "sqlite":
        session.execute(text("PRAGMA foreign_keys=ON"))
    region = Region(code="n", cities=[City(name="a"), City(name="b")])
    session.add(region)
    session.commit()
    log.note("cities", [describe(c) for c in region.cities])
    region.code = "north"
    region.cities[0].size = 0                   # modified, to its own value: in the flush
    region.cities[1].size = 5                   # a change of its own
    session.flush()
    log.note("cities", [describe(c) for c in region.cities])
    session.commit()
    log.note("rows", session.execute(
        select(City.region_code, City.name, City.size).order_by(City.name)).all())
    session.close()


def test_cascaded_primary_key_is_fast(session_cls, engine):
    compare(scenario_cascaded_primary_key, session_cls, engine)
