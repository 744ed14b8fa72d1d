"""After the statements: flushed states made persistent or deleted, and
commit's expiry, side by side with stock.

``register_persistent`` maps a new state under its key itself where the
identity map is turbosession's and no state is mapped under that key
(``WeakIdentityMapCore.replace``'s work, without the call), and asks the
state's mapper again only when the class changes from one state to the
next; commit's expiry keeps each class's plan by the manager's id.  These
scenarios interleave two classes in one flush and one identity map, and
record what a program can see: the state-change events with their
arguments and order, the identity map's contents and ``_modified``, the
session's collections, the identity-map warning on a replaced identity, a
primary-key switch, rollback of a failed flush, of the transaction and of a
savepoint (with objects dereferenced before it), and what commit expires
with ``expire_on_commit`` on and off, with and without ``expire`` and
``refresh`` listeners.
"""

import gc
import pickle
import warnings

import pytest
from sqlalchemy import ForeignKey, event, inspect, select
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from support import normalize_error, run, set_order_sorted


class Base(DeclarativeBase):
    pass


class Parent(Base):
    __tablename__ = "ts_reg_parent"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str]
    score: Mapped[int] = mapped_column(default=0)
    kids: Mapped[list["Kid"]] = relationship(
        back_populates="parent", cascade="all, delete-orphan", order_by="Kid.id"
    )

    def __repr__(self):
        return f"Parent({self.__dict__.get('id')})"


class Kid(Base):
    __tablename__ = "ts_reg_kid"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str]
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("ts_reg_parent.id"))
    parent: Mapped[Parent | None] = relationship(back_populates="kids")

    def __repr__(self):
        return f"Kid({self.__dict__.get('id')})"


def _label(obj):
    return f"{obj!r}:{inspect(obj).key}"


# stock fires these for a set of states: their order among themselves
# follows memory addresses, so a run of them is compared sorted
STATE_EVENTS = {
    name: name
    for name in (
        "pending_to_persistent",
        "persistent_to_deleted",
        "deleted_to_detached",
        "persistent_to_detached",
    )
}


def _watch_states(session, log):
    """Note every state-change event of a flush and commit, in order."""
    for name in STATE_EVENTS:
        def note(session_, instance, name=name):
            state = inspect(instance)
            log.note("event", name, type(instance).__name__, state.key, state.modified)

        event.listen(session, name, note)

    @event.listens_for(session, "after_flush_postexec")
    def after_flush_postexec(session_, flush_context):
        _note_map(log, session_)


def _note_map(log, session):
    """The identity map's keys and their states' objects, and ``_modified``."""
    identity_map = session.identity_map
    log.note(
        "map",
        sorted(repr(key) for key in identity_map.keys()),
        sorted(_label(state.obj()) for state in identity_map._modified),
    )


def _note_expiry(log, objects):
    """What commit left of each object: its loaded attributes and the
    expired ones, and whether it is modified."""
    for obj in objects:
        state = inspect(obj)
        if state.key is None:
            log.note("expiry", "transient or pending", state.transient, state.pending)
            continue
        log.note(
            "expiry",
            repr(state.key),
            sorted(k for k in state.dict if not k.startswith("_sa")),
            sorted(state.expired_attributes),
            state.modified,
            state.expired,
        )


def _families(count, first=1):
    """Parents, each with two kids: states of two classes that alternate."""
    parents = []
    for i in range(first, first + count):
        parents.append(
            Parent(
                id=i,
                name=f"p{i}",
                kids=[Kid(id=10 * i, title=f"k{i}a"), Kid(id=10 * i + 1, title=f"k{i}b")],
            )
        )
    return parents


def scenario_insert_update_delete(session_cls, engine, log, expire_on_commit=True):
    session = session_cls(engine, expire_on_commit=expire_on_commit)
    _watch_states(session, log)
    parents = _families(4)
    session.add_all(parents)
    session.flush()
    log.states(session, p1=parents[0], p2=parents[1])
    session.commit()
    _note_expiry(log, parents + [k for p in parents for k in p.kids])

    # an update of both classes, interleaved in the map
    for parent in parents:
        parent.score += 1
        parent.kids[0].title += "!"
    session.flush()
    _note_map(log, session)
    session.commit()
    _note_expiry(log, parents)

    # deletes through the cascade, and a new object in the same flush
    session.delete(parents[0])
    session.delete(parents[1].kids[1])
    session.add(Parent(id=9, name="p9", kids=[Kid(id=90, title="k9")]))
    session.flush()
    log.states(session, p1=parents[0], p2=parents[1])
    session.commit()
    _note_map(log, session)
    log.note("rows", session.execute(select(Kid.id, Kid.parent_id).order_by(Kid.id)).all())
    session.close()


def scenario_insert_update_delete_no_expiry(session_cls, engine, log):
    scenario_insert_update_delete(session_cls, engine, log, expire_on_commit=False)


def scenario_modified_during_registration(session_cls, engine, log):
    """A listener changes an object while the flush makes states persistent:
    the state is modified when the map takes it, or after."""
    session = session_cls(engine)
    _watch_states(session, log)

    touched = []  # noted after the flush: the events come in set order

    @event.listens_for(session, "pending_to_persistent")
    def touch(session_, instance):
        if isinstance(instance, Parent):
            instance.name += "*"
            touched.append((_label(instance), inspect(instance).modified))

    parents = _families(3)
    session.add_all(parents)
    session.flush()
    log.note("touched", sorted(touched))
    log.states(session, p1=parents[0])
    log.note("dirty", sorted(_label(o) for o in session.dirty))
    session.commit()
    log.note("names", session.scalars(select(Parent.name).order_by(Parent.id)).all())
    session.close()


def scenario_replaced_identity_warns(session_cls, engine, log):
    """A load inside the flush maps another object under a new object's
    key: the flush replaces it, with stock's warning."""
    session = session_cls(engine)
    _watch_states(session, log)
    session.add(Parent(id=1, name="first"))
    session.commit()
    session.close()

    session = session_cls(engine)
    _watch_states(session, log)
    session.execute(Parent.__table__.delete())
    newcomer = Parent(id=1, name="again")
    session.add(newcomer)

    held = []  # the loaded object stays alive until the flush replaces it

    @event.listens_for(Parent, "after_insert")
    def load_inside(mapper, connection, target):
        loaded = session.get(Parent, 1)
        held.append(loaded)
        log.note("loaded inside", loaded is target, loaded.name)

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            session.flush()
    finally:
        event.remove(Parent, "after_insert", load_inside)
    log.note("warnings", [str(w.message) for w in caught])
    log.note("mapped", session.identity_map.get(inspect(newcomer).key) is newcomer)
    session.commit()
    session.close()


def scenario_primary_key_switch(session_cls, engine, log):
    session = session_cls(engine)
    _watch_states(session, log)
    session.add_all([Parent(id=1, name="a"), Parent(id=2, name="b")])
    session.commit()
    first, second = session.scalars(select(Parent).order_by(Parent.id)).all()
    first.id = 5
    session.flush()
    _note_map(log, session)
    second.id = 1
    session.flush()
    _note_map(log, session)
    session.rollback()
    _note_map(log, session)
    log.note("ids", inspect(first).key, inspect(second).key)
    first.id = 7
    session.commit()
    log.note("rows", session.scalars(select(Parent.id).order_by(Parent.id)).all())
    session.close()


def scenario_failed_flush_rolls_back(session_cls, engine, log):
    session = session_cls(engine)
    _watch_states(session, log)
    session.add_all(_families(2))
    session.commit()
    fresh = _families(2, first=3)
    session.add_all(fresh)
    session.flush()
    # a duplicate key fails the next flush, after its own new states
    session.add_all([Parent(id=8, name="eight"), Parent(id=1, name="dup")])
    try:
        session.flush()
    except Exception as exc:  # the outcome, compared with stock's
        log.note("raised", normalize_error(exc)[0])
    session.rollback()
    log.states(session, f3=fresh[0], f4=fresh[1])
    _note_map(log, session)
    log.note("rows", session.scalars(select(Parent.id).order_by(Parent.id)).all())
    session.close()


def scenario_savepoint_rollback(session_cls, engine, log, dereference=False):
    session = session_cls(engine)
    _watch_states(session, log)
    session.add_all(_families(1))
    session.commit()
    outer = _families(1, first=2)
    session.add_all(outer)
    session.flush()
    savepoint = session.begin_nested()
    inner = _families(2, first=3)
    session.add_all(inner)
    session.flush()
    outer[0].score = 50
    session.flush()
    if dereference:
        del inner
        gc.collect()
    savepoint.rollback()
    log.states(session, o2=outer[0])
    _note_map(log, session)
    log.note("outer score", outer[0].score)
    session.rollback()
    log.states(session, o2=outer[0])
    _note_map(log, session)
    session.close()


def scenario_savepoint_rollback_dereferenced(session_cls, engine, log):
    scenario_savepoint_rollback(session_cls, engine, log, dereference=True)


def scenario_expire_and_refresh_listeners(session_cls, engine, log):
    """Commit's expiry with an ``expire`` listener on one class of two
    whose states alternate in the map, then a ``refresh`` on loading."""
    session = session_cls(engine)

    def on_expire(target, attrs):
        log.note("event", "expire", _label(target), attrs)

    def on_refresh(target, context, attrs):
        log.note("refresh event", _label(target), sorted(attrs) if attrs else attrs)

    event.listen(Kid, "expire", on_expire)
    event.listen(Kid, "refresh", on_refresh)
    try:
        parents = _families(3)
        # held here: commit's expiry of the parents drops their collections
        kids = [k for p in parents for k in p.kids]
        session.add_all(parents)
        session.commit()
        _note_expiry(log, parents + kids)
        log.note("titles", [k.title for k in kids])
        _note_expiry(log, kids)
    finally:
        event.remove(Kid, "expire", on_expire)
        event.remove(Kid, "refresh", on_refresh)
    session.close()


def _note_pickled(log, label, objects):
    """Each object's pickled form (its state's ``__getstate__`` included),
    and what unpickling it gives back."""
    for obj in objects:
        state = inspect(obj)
        data = pickle.dumps(obj)
        copy = pickle.loads(data)
        copied = inspect(copy)
        log.note(
            "pickled",
            label,
            repr(state.key),
            data,
            repr(copied.key),
            sorted(k for k in copied.dict if not k.startswith("_sa")),
            sorted(copied.expired_attributes),
            copied.modified,
            copied.expired,
        )


def scenario_pickled_states(session_cls, engine, log):
    """Flushed objects pickled before commit, expired ones after it, and
    updated ones after a flush and after commit, with expire_on_commit."""
    session = session_cls(engine)
    _watch_states(session, log)
    parents = _families(2)
    kids = [k for p in parents for k in p.kids]
    session.add_all(parents)
    session.flush()
    _note_pickled(log, "flushed", parents + kids)
    session.commit()
    _note_pickled(log, "expired", parents + kids)
    parents[0].score += 1
    kids[0].title += "!"
    session.flush()
    _note_pickled(log, "updated", [parents[0], kids[0]])
    session.commit()
    _note_pickled(log, "committed", [parents[0], kids[0]])
    session.close()


def scenario_identity_tokens(session_cls, engine, log):
    """States whose identity token is set (as a sharded session sets it):
    the identity keys registration makes and keeps carry the token."""
    session = session_cls(engine)
    _watch_states(session, log)
    parents = _families(2)
    for obj in parents + [k for p in parents for k in p.kids]:
        inspect(obj).identity_token = "shard-a"
    session.add_all(parents)
    session.flush()
    _note_map(log, session)
    parents[0].score += 1
    parents[1].kids[0].title += "!"
    session.flush()
    _note_map(log, session)
    # a primary-key switch (of a kid: nothing references it)
    switched = parents[1].kids[1]
    switched.id = 99
    session.commit()
    _note_map(log, session)
    log.note("keys", [repr(inspect(o).key) for o in parents + [switched]])
    session.close()


SCENARIOS = [
    scenario_insert_update_delete,
    scenario_insert_update_delete_no_expiry,
    scenario_modified_during_registration,
    scenario_replaced_identity_warns,
    scenario_primary_key_switch,
    scenario_failed_flush_rolls_back,
    scenario_savepoint_rollback,
    scenario_savepoint_rollback_dereferenced,
    scenario_expire_and_refresh_listeners,
    scenario_pickled_states,
    scenario_identity_tokens,
]


# commit expires the identity map's states in the map's order, which is the
# order the flush registered them in: a set's
SET_ORDERED = {**STATE_EVENTS, "expire": "expire"}


def assert_same_as_stock(scenario, session_cls, engine):
    expected = set_order_sorted(run(scenario, Session, engine, Base.metadata), SET_ORDERED)
    entries = set_order_sorted(run(scenario, session_cls, engine, Base.metadata), SET_ORDERED)
    assert entries == expected
    return entries


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.__name__[len("scenario_"):])
def test_like_stock(scenario, session_cls, engine):
    entries = assert_same_as_stock(scenario, session_cls, engine)
    # every scenario saw objects become persistent, or commit expire them
    assert any(
        entry[:2] == ("event", "pending_to_persistent") or entry[0] == "expiry"
        for entry in entries
    )


def test_replaced_identity_warning_is_stocks(session_cls, engine):
    entries = assert_same_as_stock(scenario_replaced_identity_warns, session_cls, engine)
    (caught,) = [entry[1] for entry in entries if entry[0] == "warnings"]
    assert any("Identity map already had an identity" in text for text in caught)
