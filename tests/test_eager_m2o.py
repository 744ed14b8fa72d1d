"""Eager loads of scalar relationships (many-to-one, ``uselist=False``
one-to-one) against stock's: ``joinedload`` (the parent's new-row and
existing-row populators as ``_instances.JoinedScalar``) and ``selectinload``
(``_load_via_child`` and ``_load_via_parent``'s scalar step, the value set as
committed on the loop).

Each scenario runs on stock ``sqlalchemy.orm.Session`` and on turbosession's
Session (compiled, and pure with its loop switched on; SQLite and
PostgreSQL).  After every load the record holds each object of the identity
map in its order with its state (``committed_state``,
``expired_attributes``, ``callables``, ``expired``, ``modified``, the
instance dict, with related objects by identity key), the result, the
``load`` / ``refresh`` events and their arguments, the warnings, the SQL
sent; then the lazy loads that follow.  The records must be equal; the
counters then say which steps took the loop.
"""

import warnings

import pytest
from sqlalchemy import ForeignKey, String, event, inspect, select
from sqlalchemy.orm import (
    DeclarativeBase,
    Mapped,
    joinedload,
    mapped_column,
    relationship,
    selectinload,
)

import turbosession
from support import assert_same_as_stock, normalize_error, scrub, selectin_hook_sides
from turbosession import instances


class Base(DeclarativeBase):
    pass


class Owner(Base):
    __tablename__ = "tm_owner"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    pets: Mapped[list["Pet"]] = relationship(back_populates="owner", order_by="Pet.id")
    # a one-to-one: the passport whose owner_id is this owner's
    passport: Mapped["Passport"] = relationship(back_populates="owner", uselist=False)


class Pet(Base):
    __tablename__ = "tm_pet"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    owner_id: Mapped[int] = mapped_column(ForeignKey("tm_owner.id"), nullable=True)
    owner: Mapped["Owner"] = relationship(back_populates="pets")


class Passport(Base):
    __tablename__ = "tm_passport"
    id: Mapped[int] = mapped_column(primary_key=True)
    number: Mapped[str] = mapped_column(String(20))
    owner_id: Mapped[int] = mapped_column(ForeignKey("tm_owner.id"), nullable=True)
    owner: Mapped["Owner"] = relationship(back_populates="passport")


class Node(Base):
    """Self-referential many-to-one."""

    __tablename__ = "tm_node"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    parent_id: Mapped[int] = mapped_column(ForeignKey("tm_node.id"), nullable=True)
    parent: Mapped["Node"] = relationship(remote_side=[id])


def seed(session):
    session.add_all([Owner(id=i, name=f"owner {i}") for i in range(1, 5)])
    session.flush()
    session.add_all([
        Pet(id=10 * o + p, name=f"pet {o}.{p}", owner_id=o)
        for o in range(1, 4) for p in range(1, 4)
    ])
    # a pet without an owner (a NULL foreign key)
    session.add(Pet(id=99, name="stray", owner_id=None))
    # owner 1 and 3 have a passport, owner 2 two of them (uselist=False warns)
    session.add_all([
        Passport(id=1, number="p1", owner_id=1),
        Passport(id=2, number="p2a", owner_id=2),
        Passport(id=3, number="p2b", owner_id=2),
        Passport(id=4, number="p3", owner_id=3),
        Passport(id=5, number="none", owner_id=None),
    ])
    session.add_all([Node(id=1, name="root", parent_id=None)])
    session.flush()
    session.add_all([Node(id=2, name="a", parent_id=1), Node(id=3, name="b", parent_id=1)])
    session.flush()
    session.add_all([Node(id=4, name="a.a", parent_id=2)])
    session.commit()


def _value(value):
    if isinstance(value, Base):
        return ("object", type(value).__name__, inspect(value).key)
    if isinstance(value, list):
        return [_value(v) for v in value]
    return value


def state_record(obj):
    state = inspect(obj)
    return (
        type(obj).__name__,
        sorted((k, scrub(repr(_value(v)))) for k, v in state.committed_state.items()),
        sorted(state.expired_attributes),
        sorted((k, type(v).__name__) for k, v in state.callables.items()),
        [(k, _value(v)) for k, v in vars(obj).items() if k != "_sa_instance_state"],
        sorted(state.unloaded),
        state.modified,
        state.expired,
        state.load_path is not None and repr(state.load_path.path),
    )


def session_record(session):
    return [(repr(key), state_record(obj)) for key, obj in list(session.identity_map.items())]


def listen(log):
    def on_load(target, context):
        log.note("load", type(target).__name__, inspect(target).key,
                 sorted(k for k in vars(target) if not k.startswith("_")))

    def on_refresh(target, context, attrs):
        log.note("refresh", type(target).__name__, inspect(target).key, attrs and sorted(attrs))

    def on_set(target, value, oldvalue, initiator):
        log.note("set", type(target).__name__, inspect(target).key, _value(value))

    listeners = [(Base, "load", on_load), (Base, "refresh", on_refresh)]
    for cls, name, fn in listeners:
        event.listen(cls, name, fn, propagate=True)
    for attr in (Pet.owner, Passport.owner, Owner.passport, Node.parent):
        event.listen(attr, "set", on_set)
        listeners.append((attr, "set", on_set))

    def unlisten():
        for target, name, fn in listeners:
            event.remove(target, name, fn)

    return unlisten


def _expire_owners_then(load):
    """The owners in the identity map and expired (or one attribute of them
    expired) before the load that meets them as related objects."""

    def run(s):
        owners = s.scalars(select(Owner).order_by(Owner.id)).all()
        s.expire(owners[0])
        s.expire(owners[1], ["name"])
        return load(s)

    return run


def _pets(*opts):
    def run(s):
        return s.scalars(select(Pet).options(*opts).order_by(Pet.id)).unique().all()

    return run


LOADS = [
    ("joined m2o", _pets(joinedload(Pet.owner))),
    ("joined m2o innerjoin", _pets(joinedload(Pet.owner, innerjoin=True))),
    ("joined m2o again", _pets(joinedload(Pet.owner))),
    ("joined m2o over expired", _expire_owners_then(_pets(joinedload(Pet.owner)))),
    ("selectin m2o", _pets(selectinload(Pet.owner))),
    ("selectin m2o over expired", _expire_owners_then(_pets(selectinload(Pet.owner)))),
    ("joined one-to-one", lambda s: s.scalars(
        select(Owner).options(joinedload(Owner.passport)).order_by(Owner.id)).unique().all()),
    ("selectin one-to-one", lambda s: s.scalars(
        select(Owner).options(selectinload(Owner.passport)).order_by(Owner.id)).all()),
    ("joined o2o back", lambda s: s.scalars(
        select(Passport).options(joinedload(Passport.owner).joinedload(Owner.passport))
        .order_by(Passport.id)).unique().all()),
    ("joined self m2o", lambda s: s.scalars(
        select(Node).options(joinedload(Node.parent).joinedload(Node.parent))
        .order_by(Node.id)).unique().all()),
    ("selectin self m2o", lambda s: s.scalars(
        select(Node).options(selectinload(Node.parent).selectinload(Node.parent))
        .order_by(Node.id)).all()),
    ("joined through collection", lambda s: s.scalars(
        select(Owner).options(joinedload(Owner.pets).joinedload(Pet.owner))
        .order_by(Owner.id)).unique().all()),
    ("selectin then joined", lambda s: s.scalars(
        select(Owner).options(selectinload(Owner.pets).joinedload(Pet.owner))
        .order_by(Owner.id)).all()),
    ("tuples with joined m2o", lambda s: s.execute(
        select(Pet, Owner).join(Pet.owner).options(joinedload(Pet.owner))
        .order_by(Pet.id)).unique().all()),
    ("lazy after", lambda s: [(p.owner, p.owner and p.owner.passport)
                              for p in s.scalars(select(Pet).order_by(Pet.id)).all()]),
]


def _fresh(session_cls, engine):
    with session_cls(engine) as session:
        for table in reversed(Base.metadata.sorted_tables):
            session.execute(table.delete())
        session.commit()
        seed(session)


def _load(log, session, label, load, held):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = load(session)
            held.append(result)
            log.note(label, [tuple(map(_value, r)) if isinstance(r, tuple) or hasattr(r, "_fields")
                             else _value(r) for r in result])
        except Exception as exc:
            log.note(label, "raises", normalize_error(exc))
    log.note(label, "warnings", [scrub(str(w.message)) for w in caught])
    log.note(label, "session", session_record(session))


def scalar_loads(session_cls, engine, log):
    """Each load in a fresh session, then all of them in one session (objects
    met again, loaded before, expired, at another path), events recorded."""
    for label, load in LOADS:
        _fresh(session_cls, engine)
        held = []
        with session_cls(engine) as session:
            unlisten = listen(log)
            try:
                _load(log, session, label, load, held)
                # the lazy loads that follow, after an expiry of the related
                # attributes
                for item in held[-1] if held else ():
                    items = item if isinstance(item, tuple) or hasattr(item, "_fields") else (item,)
                    for obj in items:
                        if isinstance(obj, Base):
                            session.expire(obj)
                _load(log, session, label + ", lazy", LOADS[-1][1], held)
            finally:
                unlisten()
    _fresh(session_cls, engine)
    held = []
    with session_cls(engine) as session:
        unlisten = listen(log)
        try:
            for label, load in LOADS:
                _load(log, session, label, load, held)
        finally:
            unlisten()


@pytest.fixture
def pure_loop(impl, monkeypatch):
    """The pure twin runs its loop in these tests (see test_instances)."""
    monkeypatch.setattr(instances, "PURE_LOOP", True)
    return impl


def test_scalar_eager_loads_match_stock(session_cls, engine, pure_loop):
    """Joined and selectin many-to-one / one-to-one loads: objects, states,
    dicts, events, warnings, SQL and the lazy loads after as stock's; the
    scalar steps counted on the loop, none sent to stock."""
    turbosession.reset_stats()
    assert_same_as_stock(scalar_loads, session_cls, engine, Base.metadata)
    loaded = turbosession.stats()["loads"]["instances"]
    assert loaded["scalars"] > 0, loaded
    assert loaded["collections_to_stock"] == {}, loaded


def _counted(session_cls, engine, load):
    Base.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            seed(session)
        with session_cls(engine) as session:
            turbosession.reset_stats()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = load(session)
            loaded = turbosession.stats()["loads"]["instances"]
            return result, loaded
    finally:
        Base.metadata.drop_all(engine)


def test_joined_m2o_rows_take_the_loop(session_cls, engine, pure_loop):
    """A fresh joinedload of a many-to-one: every row (the owners' later rows
    too) by the loop, each pet's owner stored by a JoinedScalar step."""
    pets, loaded = _counted(session_cls, engine, _pets(joinedload(Pet.owner)))
    assert [(p.id, p.owner and p.owner.id) for p in pets] == [
        (11, 1), (12, 1), (13, 1), (21, 2), (22, 2), (23, 2), (31, 3), (32, 3), (33, 3),
        (99, None)]
    # ten pets, nine owner column sets (three owners, three times each)
    assert loaded["rows_to_stock"] == 0 and loaded["rows"] == 19, loaded
    assert loaded["scalars"] == 10, loaded


def test_selectin_m2o_steps_take_the_loop(session_cls, engine, pure_loop):
    """A fresh selectinload of a many-to-one (``_load_via_child``): each
    pet's owner set as committed on the loop (the stray's None too)."""
    pets, loaded = _counted(session_cls, engine, _pets(selectinload(Pet.owner)))
    assert [(p.id, p.owner and p.owner.id) for p in pets][-2:] == [(33, 3), (99, None)]
    assert all(inspect(p).committed_state == {} for p in pets)
    assert loaded["scalars"] == 10 and loaded["collections_to_stock"] == {}, loaded
    owners, loaded = _counted(session_cls, engine, lambda s: s.scalars(
        select(Owner).options(selectinload(Owner.passport)).order_by(Owner.id)).all())
    assert [o.passport and o.passport.id for o in owners] == [1, 2, 4, None]
    assert loaded["scalars"] == 4 and loaded["collections_to_stock"] == {}, loaded


def test_selectin_hooks_hand_over_only_turbosession_sessions(session_cls, engine, monkeypatch):
    """The ``_load_via_child`` hook: a stock session runs stock's method, a
    turbosession session the bundle's ``load_via_child`` (pure only with
    its loop on); the objects are the same."""
    from sqlalchemy.orm import strategies

    assert strategies._SelectInLoader._load_via_child is instances.load_via_child
    loaded, compiled = selectin_hook_sides(
        monkeypatch, session_cls, engine, Base.metadata, seed,
        "STOCK_LOAD_VIA_CHILD", "load_via_child",
        lambda session: [p.owner and p.owner.id for p in _pets(selectinload(Pet.owner))(session)],
    )
    owners = [1, 1, 1, 2, 2, 2, 3, 3, 3, None]
    assert loaded == {
        "stock": (owners, ["stock"]),
        "turbosession": (owners, ["turbosession" if compiled else "stock"]),
        "turbosession, loop on": (owners, ["turbosession"]),
    }


def test_patched_scalar_impl_goes_to_stock(session_cls, engine, pure_loop, monkeypatch):
    """A patched ``set_committed_value`` of the object attribute: the
    selectin scalar step calls it, counted under ``scalar_impl``."""
    from sqlalchemy.orm import attributes

    seen = []
    stock = attributes._ScalarObjectAttributeImpl.set_committed_value

    def patched(self, state, dict_, value):
        seen.append((self.key, _value(value)))
        return stock(self, state, dict_, value)

    monkeypatch.setattr(attributes._ScalarObjectAttributeImpl, "set_committed_value", patched)
    pets, loaded = _counted(session_cls, engine, _pets(selectinload(Pet.owner)))
    assert [p.owner and p.owner.id for p in pets] == [1, 1, 1, 2, 2, 2, 3, 3, 3, None]
    assert len(seen) == 10, seen
    assert loaded["collections_to_stock"] == {"scalar_impl": 10}, loaded
    assert loaded["scalars"] == 0, loaded
