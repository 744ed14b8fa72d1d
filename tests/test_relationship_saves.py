"""One-to-many and many-to-one ``process_saves`` on turbosession's loops
(``turbosession._relationships``), against stock.

Each scenario runs on stock's Session and on turbosession's (pinned to one
implementation) and records SQL with parameters, attribute ``set`` events
on the foreign-key columns, warnings, exceptions, object states and the
foreign-key values: new parents with children, children moved between
parents, children removed (keys nulled), a natural primary key changed
(``passive_updates`` off: children updated), a child not in the session
(stock warns) and None in a collection (stock raises).
"""

import warnings

import pytest
from sqlalchemy import ForeignKey, String, event, orm, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from support import normalize_error, object_state, run, set_order_sorted
from test_attach import stock_methods_called


class Base(DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "ts_rel_parent"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    children: Mapped[list["Child"]] = relationship(back_populates="parent", order_by="Child.id")

    def __repr__(self):
        return f"Parent({self.__dict__.get('name')!r})"


class Child(Base):
    __tablename__ = "ts_rel_child"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("ts_rel_parent.id"))
    parent: Mapped[Parent | None] = relationship(back_populates="children")

    def __repr__(self):
        return f"Child({self.__dict__.get('name')!r})"


class Owner(Base):
    """A natural primary key; its one-to-many updates children's keys itself."""

    __tablename__ = "ts_rel_owner"
    code: Mapped[str] = mapped_column(String(20), primary_key=True)
    pets: Mapped[list["Pet"]] = relationship(passive_updates=False, order_by="Pet.id")

    def __repr__(self):
        return f"Owner({self.__dict__.get('code')!r})"


class Pet(Base):
    __tablename__ = "ts_rel_pet"
    id: Mapped[int] = mapped_column(primary_key=True)
    # ON UPDATE CASCADE: with passive_updates off SQLAlchemy updates the
    # owner before its pets, which PostgreSQL's foreign key refuses otherwise
    owner_code: Mapped[str | None] = mapped_column(
        ForeignKey("ts_rel_owner.code", onupdate="CASCADE")
    )

    def __repr__(self):
        return f"Pet({self.__dict__.get('id')!r})"


def listen_fk_sets(log):
    def on_set(target, value, oldvalue, initiator):
        log.note("event", "set", repr(target), value)

    targets = [(Child.parent_id, on_set), (Pet.owner_code, on_set)]
    for attr, fn in targets:
        event.listen(attr, "set", fn)

    def undo():
        for attr, fn in targets:
            event.remove(attr, "set", fn)
    return undo


def guarded(log, action):
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            action()
        log.note("warnings", [str(w.message) for w in caught])
    except Exception as exc:
        log.note("raised", *normalize_error(exc))


def sc_parents_and_children(session_cls, engine, log):
    undo = listen_fk_sets(log)
    try:
        session = session_cls(engine)
        parents = [Parent(name=f"p{i}", children=[Child(name=f"c{i}.{j}") for j in range(3)])
                   for i in range(3)]
        orphan_parent = Child(name="up", parent=Parent(name="via many-to-one"))
        session.add_all(parents + [orphan_parent])
        guarded(log, session.flush)
        log.note("keys", [(c.name, c.parent_id) for p in parents for c in p.children])
        # move a child, remove one (its key is nulled), set a many-to-one
        moved = parents[0].children[0]
        parents[1].children.append(moved)
        removed = parents[2].children.pop()
        parents[2].children[0].parent = parents[0]
        guarded(log, session.flush)
        log.note("keys", moved.parent_id, removed.parent_id,
                 [(c.name, c.parent_id) for c in session.scalars(select(Child))])
        session.commit()
        log.note("states", [object_state(o) for o in parents + [moved, removed]])
        session.close()
    finally:
        undo()


def sc_natural_key_change(session_cls, engine, log):
    undo = listen_fk_sets(log)
    try:
        session = session_cls(engine)
        owner = Owner(code="a", pets=[Pet(id=1), Pet(id=2)])
        session.add(owner)
        session.commit()
        owner.code = "b"
        owner.pets.append(Pet(id=3))
        guarded(log, session.commit)
        log.note("pets", session.execute(select(Pet.id, Pet.owner_code).order_by(Pet.id)).all())
        session.close()
    finally:
        undo()


def sc_child_not_in_session(session_cls, engine, log):
    session = session_cls(engine)
    p = Parent(name="p")
    session.add(p)
    session.flush()
    with session.no_autoflush:
        c = Child(name="outside")
        session.add(c)
        c.parent = p
        session.expunge(p)
        guarded(log, session.flush)  # many-to-one to an object not in the session
    log.note("keys", c.parent_id, object_state(c))
    session.rollback()
    session.close()


def sc_bad_collection_members(session_cls, engine, log):
    session = session_cls(engine)
    p = Parent(name="p")
    session.add(p)
    p.children.append(None)
    guarded(log, session.flush)
    log.note("state", object_state(p))
    session.rollback()
    session.close()


SCENARIOS = [
    sc_parents_and_children,
    sc_natural_key_change,
    sc_child_not_in_session,
    sc_bad_collection_members,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__[3:])
def test_same_as_stock(scenario, session_cls, engine):
    # a step's states come from a set: the order of their "set" events
    # among themselves follows memory addresses
    groups = {"set": "set"}
    expected = set_order_sorted(run(scenario, orm.Session, engine, Base.metadata), groups)
    entries = set_order_sorted(run(scenario, session_cls, engine, Base.metadata), groups)
    assert entries == expected
    assert any(e[0] == "sql" for e in entries)


def test_saves_run_on_turbosessions_loops(session_cls, engine):
    Base.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            session.add_all([Parent(name="p", children=[Child(name="c")]),
                             Child(name="d", parent=Parent(name="q"))])
            called = stock_methods_called(session.flush)
            assert not called & {"process_saves", "_synchronize", "_populate"}
            assert sorted(session.scalars(select(Child.parent_id)).all()) == [1, 2]
        with orm.Session(engine) as stock:
            stock.add(Parent(name="p", children=[Child(name="c")]))
            assert "process_saves" in stock_methods_called(stock.flush)
    finally:
        Base.metadata.drop_all(engine)
