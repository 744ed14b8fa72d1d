"""Mapper hierarchies and multi-table mappers on turbosession's unit of work.

Joined- and single-table inheritance, a subclass whose primary key column
has its own attribute (kept equal to the base's by stock's synchronisation
after each INSERT), a mapper against a join, row switches and a
``connection_callable``: each scenario runs on stock ``Session`` and on
turbosession's (each twin) and compares SQL with parameters, events with
their arguments and mappers, warnings and object states, and asserts that
the flushes took the fast path.
"""

import warnings

from sqlalchemy import (
    Column,
    ForeignKey,
    Integer,
    String,
    Table,
    event,
    join,
    orm,
    select,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from turbosession import fastpath
from support import normalize_error, object_state, run, scrub, set_order_sorted


class Base(DeclarativeBase):
    pass


class Employee(Base):
    """Joined inheritance with a discriminator."""

    __tablename__ = "ih_employee"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    type: Mapped[str] = mapped_column(String(20))
    rank: Mapped[int] = mapped_column(default=1)
    __mapper_args__ = {"polymorphic_on": "type", "polymorphic_identity": "employee"}


class Engineer(Employee):
    __tablename__ = "ih_engineer"
    id: Mapped[int] = mapped_column(ForeignKey("ih_employee.id"), primary_key=True)
    language: Mapped[str | None] = mapped_column(String(20))
    level: Mapped[int] = mapped_column(server_default=text("3"))
    __mapper_args__ = {"polymorphic_identity": "engineer"}


class Manager(Employee):
    """Its primary key column has an attribute of its own: synchronised."""

    __tablename__ = "ih_manager"
    manager_id: Mapped[int] = mapped_column(ForeignKey("ih_employee.id"), primary_key=True)
    budget: Mapped[int] = mapped_column(default=100)
    __mapper_args__ = {"polymorphic_identity": "manager"}


class Lead(Engineer):
    """Single-table subclass of a joined one."""

    team: Mapped[str | None] = mapped_column(String(20), use_existing_column=True)
    __mapper_args__ = {"polymorphic_identity": "lead"}


class Vehicle(Base):
    """Single-table inheritance."""

    __tablename__ = "ih_vehicle"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    wheels: Mapped[int] = mapped_column(default=4)
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "vehicle"}


class Car(Vehicle):
    seats: Mapped[int | None] = mapped_column(use_existing_column=True)
    __mapper_args__ = {"polymorphic_identity": "car"}


class Truck(Vehicle):
    load: Mapped[int | None] = mapped_column(use_existing_column=True)
    __mapper_args__ = {"polymorphic_identity": "truck"}


account = Table(
    "ih_account", Base.metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("owner", String(20)),
)
balance = Table(
    "ih_balance", Base.metadata,
    Column("account_id", Integer, ForeignKey("ih_account.id"), primary_key=True),
    Column("amount", Integer),
)


class Account(Base):
    """A mapper against a join of two tables."""

    __table__ = join(account, balance)
    id = orm.column_property(account.c.id, balance.c.account_id)


class Unbatched(Base):
    """``batch=False``: stock saves each state on its own, events around
    each INSERT or UPDATE."""

    __tablename__ = "ih_unbatched"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"batch": False, "polymorphic_on": "kind", "polymorphic_identity": "u"}


class UnbatchedSub(Unbatched):
    __mapper_args__ = {"polymorphic_identity": "sub"}


class Part(Base):
    """Joined inheritance whose INSERTs fetch nothing back (every column
    given): after each base-table INSERT stock copies the key to the
    subclass table's column (``sync._populate``), on turbosession's loop."""

    __tablename__ = "ih_part"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(20))
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "part"}


class Gear(Part):
    __tablename__ = "ih_gear"
    id: Mapped[int] = mapped_column(ForeignKey("ih_part.id"), primary_key=True)
    teeth: Mapped[int]
    __mapper_args__ = {"polymorphic_identity": "gear"}


class Bolt(Part):
    """The subclass table's key has an attribute of its own."""

    __tablename__ = "ih_bolt"
    bolt_id: Mapped[int] = mapped_column(ForeignKey("ih_part.id"), primary_key=True)
    size: Mapped[int]
    __mapper_args__ = {"polymorphic_identity": "bolt"}


class Housing(Base):
    """``passive_updates=False`` (inherited by its subclasses): stock flags
    no cascaded key."""

    __tablename__ = "ih_housing"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {
        "polymorphic_on": "kind", "polymorphic_identity": "housing", "passive_updates": False,
    }


class Nut(Housing):
    __tablename__ = "ih_nut"
    id: Mapped[int] = mapped_column(ForeignKey("ih_housing.id"), primary_key=True)
    thread: Mapped[str] = mapped_column(String(10))
    __mapper_args__ = {"polymorphic_identity": "nut"}


EVENT_NAMES = ["before_insert", "after_insert", "before_update", "after_update",
               "before_delete", "after_delete"]
SESSION_EVENTS = ["pending_to_persistent", "persistent_to_deleted", "deleted_to_detached"]
SET_ORDER_EVENTS = {name: name for name in SESSION_EVENTS}


def describe(obj):
    if isinstance(obj, Base):
        return (type(obj).__name__, object_state(obj), {
            k: scrub(repr(v)) for k, v in sorted(vars(obj).items()) if not k.startswith("_")
        })
    return scrub(repr(obj))


def listen_all(session, log, classes):
    """Mapper events (propagated from each base, and one subclass's own),
    session events; returns what to remove."""
    handles = []
    for cls, propagate in classes:
        for name in EVENT_NAMES:
            def on_mapper(mapper, connection, target, _name=name, _cls=cls.__name__):
                log.note("event", _name, _cls, mapper.class_.__name__, describe(target))
            event.listen(cls, name, on_mapper, propagate=propagate)
            handles.append((cls, name, on_mapper))
    for name in SESSION_EVENTS:
        def on_session(sess, instance, _name=name):
            log.note("event", _name, describe(instance))
        event.listen(session, name, on_session)
    return handles


def unlisten(handles):
    for cls, name, fn in handles:
        event.remove(cls, name, fn)


def guarded(log, action):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            action()
        except Exception as exc:
            log.note("raised", *normalize_error(exc))
    for w in caught:
        log.note("warned", w.category.__name__, scrub(str(w.message)))


def compare(scenario, session_cls, engine, expect_fast=True):
    expected = set_order_sorted(run(scenario, orm.Session, engine, Base.metadata), SET_ORDER_EVENTS)
    fastpath.reset_stats()
    actual = set_order_sorted(run(scenario, session_cls, engine, Base.metadata), SET_ORDER_EVENTS)
    stats = fastpath.stats()
    assert actual == expected
    if expect_fast:
        assert stats["fast"] > 0 and not stats["fallback"], stats
    return actual


EMPLOYEE_EVENTS = [(Employee, True), (Manager, False)]


def scenario_joined(session_cls, engine, log):
    session = session_cls(engine)
    handles = listen_all(session, log, EMPLOYEE_EVENTS)
    try:
        people = [
            Engineer(id=1001, name="e1", language="py"),
            Manager(id=1002, name="m1"),
            Engineer(id=1003, name="e2"),
            Engineer(id=1004, name="e3", language="c"),
            Employee(id=1005, name="plain"),
            Lead(id=1006, name="l1", team="core"),
            Manager(name="auto manager", budget=5),
            Engineer(name="auto engineer"),
            Employee(name="auto plain"),
        ]
        session.add_all(people)
        guarded(log, session.flush)
        log.note("inserted", [describe(o) for o in people])
        session.commit()
        log.note("reloaded", [describe(o) for o in people])
        people[0].name = "e1 renamed"            # base table only
        people[0].language = "rust"             # and the subclass table
        people[1].budget = 7                    # subclass table only
        people[2].language = "go"
        people[3].rank = 9
        people[5].team = "infra"
        people[6].name = "renamed manager"
        guarded(log, session.flush)
        log.note("updated", [describe(o) for o in people])
        session.delete(people[2])
        session.delete(people[1])
        session.delete(people[4])
        session.delete(people[5])
        guarded(log, session.flush)
        session.commit()
        log.note("rows", session.execute(
            select(Employee.id, Employee.name, Employee.type).order_by(Employee.id)).all())
        log.note("engineers", session.execute(text(
            "SELECT id, language, level FROM ih_engineer ORDER BY id")).all())
        log.note("managers", session.execute(text(
            "SELECT manager_id, budget FROM ih_manager ORDER BY manager_id")).all())
    finally:
        unlisten(handles)
        session.close()


def test_joined_inheritance(session_cls, engine):
    entries = compare(scenario_joined, session_cls, engine)
    assert any(e[:3] == ("event", "after_insert", "Manager") for e in entries)


def scenario_single(session_cls, engine, log):
    session = session_cls(engine)
    handles = listen_all(session, log, [(Vehicle, True), (Truck, False)])
    try:
        vehicles = [Car(id=2001, seats=5), Truck(id=2002, load=10), Car(id=2003),
                    Vehicle(id=2004, wheels=3), Truck(load=3), Car(seats=2)]
        session.add_all(vehicles)
        guarded(log, session.flush)
        log.note("inserted", [describe(o) for o in vehicles])
        vehicles[0].seats = 4
        vehicles[1].load = 11
        vehicles[2].wheels = 6
        vehicles[3].wheels = 2
        guarded(log, session.flush)
        session.delete(vehicles[1])
        session.delete(vehicles[2])
        guarded(log, session.commit)
        log.note("rows", session.execute(text(
            "SELECT id, kind, wheels, seats, load FROM ih_vehicle ORDER BY id")).all())
    finally:
        unlisten(handles)
        session.close()


def test_single_table_inheritance(session_cls, engine):
    compare(scenario_single, session_cls, engine)


def scenario_identity_warning(session_cls, engine, log):
    """A discriminator the mapper does not accept warns, before or after a
    ``before_insert`` listener changed it, as stock warns."""
    session = session_cls(engine)
    handles = listen_all(session, log, [(Vehicle, True)])
    try:
        odd = Car(id=1)
        odd.kind = "truck"
        session.add_all([Car(id=2), odd, Truck(id=3)])
        guarded(log, session.flush)
        log.note("rows", session.execute(text("SELECT id, kind FROM ih_vehicle ORDER BY id")).all())
    finally:
        unlisten(handles)

    def relabel(mapper, connection, target):
        target.kind = "vehicle"

    event.listen(Truck, "before_insert", relabel)
    try:
        session.add_all([Truck(id=4), Car(id=5)])
        guarded(log, session.flush)
    finally:
        event.remove(Truck, "before_insert", relabel)
    session.rollback()
    session.close()


def test_polymorphic_identity_warning(session_cls, engine):
    entries = compare(scenario_identity_warning, session_cls, engine)
    assert sum(e[0] == "warned" for e in entries) == 2


def scenario_row_switch(session_cls, engine, log):
    """A new object takes the identity of one deleted in the same flush:
    stock updates the row (both tables of a joined subclass)."""
    session = session_cls(engine)
    session.add_all([Engineer(id=1, name="old", language="py"), Engineer(id=2, name="gone"),
                     Car(id=1, seats=2)])
    session.commit()
    handles = listen_all(session, log, EMPLOYEE_EVENTS + [(Vehicle, True)])
    try:
        old = [session.get(Engineer, 1), session.get(Engineer, 2), session.get(Car, 1)]
        for obj in old:
            session.delete(obj)
        replacement = Engineer(id=1, name="new", language="c")
        car = Car(id=1, seats=7)
        added = Engineer(id=3, name="added")
        session.add_all([replacement, car, added])
        guarded(log, session.flush)
        log.note("objects", [describe(o) for o in (replacement, car, added)])
        session.commit()
        log.note("rows", session.execute(text(
            "SELECT e.id, e.name, g.language FROM ih_employee e JOIN ih_engineer g ON g.id = e.id "
            "ORDER BY e.id")).all())
    finally:
        unlisten(handles)
        session.close()


def test_row_switch(session_cls, engine):
    entries = compare(scenario_row_switch, session_cls, engine)
    assert any(e[0] == "sql" and e[1].startswith("UPDATE ih_engineer") for e in entries)


def scenario_join_mapper(session_cls, engine, log):
    session = session_cls(engine)
    accounts = [Account(id=1, owner="a", amount=10), Account(id=2, owner="b")]
    session.add_all(accounts)
    session.flush()
    accounts[0].amount = 11
    accounts[1].owner = "bb"
    session.flush()
    session.delete(accounts[0])
    session.commit()
    log.note("rows", session.execute(text("SELECT * FROM ih_account ORDER BY id")).all(),
             session.execute(text("SELECT * FROM ih_balance ORDER BY account_id")).all())
    log.note("objects", [describe(o) for o in accounts])
    session.close()


def test_mapper_against_a_join(session_cls, engine):
    compare(scenario_join_mapper, session_cls, engine)


def scenario_connection_callable(session_cls, engine, log):
    """A session choosing a connection per object (as ShardedSession does)."""
    session = session_cls(engine)
    calls = []

    def choose(mapper, instance):
        calls.append((mapper.class_.__name__, type(instance).__name__))
        return session.connection()

    session.connection_callable = choose
    handles = listen_all(session, log, EMPLOYEE_EVENTS)
    try:
        people = [Engineer(id=1, name="a"), Manager(id=2, name="b"), Employee(id=3, name="c")]
        session.add_all(people)
        guarded(log, session.flush)
        people[0].language = "py"
        session.delete(people[1])
        guarded(log, session.flush)
        log.note("calls", calls)
        log.note("objects", [describe(o) for o in people])
        session.commit()
    finally:
        unlisten(handles)
        session.close()


def test_connection_callable(session_cls, engine):
    compare(scenario_connection_callable, session_cls, engine)


def scenario_unbatched(session_cls, engine, log):
    session = session_cls(engine)
    handles = listen_all(session, log, [(Unbatched, True)])
    try:
        # ids far above what a PostgreSQL sequence hands out here, and one it hands out
        objects = [Unbatched(id=1001, name="a"), UnbatchedSub(id=1002, name="b"), Unbatched(name="c")]
        session.add_all(objects)
        guarded(log, session.flush)
        objects[0].name = "a2"
        objects[1].name = "b2"
        session.delete(objects[2])
        guarded(log, session.flush)
        log.note("objects", [describe(o) for o in objects])
        session.commit()
    finally:
        unlisten(handles)
        session.close()


def test_batch_false(session_cls, engine):
    compare(scenario_unbatched, session_cls, engine)


def scenario_key_sync(session_cls, engine, log):
    """The key copied between a joined subclass's tables after its INSERTs:
    the object's committed state and history seen by ``after_insert``, the
    flush's ``pk_cascaded`` flags (``after_flush``), a ``set`` listener on
    the copied attribute (stock's attribute events), then an expired key."""
    session = session_cls(engine)

    def on_insert(mapper, connection, target):
        insp = orm.attributes.instance_state(target)
        log.note(
            "after_insert", type(target).__name__,
            sorted((k, scrub(repr(v))) for k, v in insp.committed_state.items()),
            sorted(insp.dict.get(k) for k in ("id", "bolt_id") if k in insp.dict),
            [tuple(map(list, orm.attributes.get_history(target, k)))
             for k in ("id", "bolt_id") if hasattr(type(target), k)],
        )

    def on_flush(sess, flush_context):
        log.note("pk_cascaded", sorted(
            (type(key[1].obj()).__name__, key[1].dict.get("id"), str(key[2]))
            for key in flush_context.attributes if key[0] == "pk_cascaded"
        ))

    def on_set(target, value, oldvalue, initiator):
        log.note("set", type(target).__name__, value, scrub(repr(oldvalue)))

    event.listen(Part, "after_insert", on_insert, propagate=True)
    event.listen(Housing, "after_insert", on_insert, propagate=True)
    event.listen(session, "after_flush", on_flush)
    try:
        parts = [Gear(id=1, name="g1", teeth=10), Bolt(id=2, name="b1", size=5),
                 Nut(id=3, thread="m5"), Part(id=4, name="p"),
                 Gear(id=5, name="g2", teeth=12), Bolt(id=6, name="b2", size=6)]
        session.add_all(parts)
        guarded(log, session.flush)
        log.note("objects", [describe(o) for o in parts])
        event.listen(Bolt.bolt_id, "set", on_set)
        try:
            more = [Bolt(id=7, name="b3", size=7), Gear(id=8, name="g3", teeth=3)]
            session.add_all(more)
            guarded(log, session.flush)
            log.note("objects", [describe(o) for o in more])
        finally:
            event.remove(Bolt.bolt_id, "set", on_set)
        session.commit()
        log.note("rows", session.execute(text("SELECT * FROM ih_bolt ORDER BY bolt_id")).all(),
                 session.execute(text("SELECT * FROM ih_gear ORDER BY id")).all(),
                 session.execute(text("SELECT * FROM ih_nut ORDER BY id")).all())
    finally:
        event.remove(Part, "after_insert", on_insert)
        event.remove(Housing, "after_insert", on_insert)
        session.close()


def test_key_sync_between_tables(session_cls, engine):
    entries = compare(scenario_key_sync, session_cls, engine)
    cascaded = [e for e in entries if e[0] == "pk_cascaded"]
    assert cascaded and ("Bolt", 2, "ih_bolt.bolt_id") in cascaded[0][1]
    assert not any(name == "Nut" for name, _, _ in cascaded[0][1])
    assert any(e[0] == "set" for e in entries)
