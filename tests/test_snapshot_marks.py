"""A transaction's ``_new``, ``_dirty`` and ``_deleted`` marks, against stock.

A flush marks its new, changed and deleted objects in the transaction's
``_new``, ``_dirty`` and ``_deleted`` snapshot collections, which only
rollback and a savepoint's commit read (the root's commit detaches the
deleted ones).  turbosession keeps the marks as weak references
(``transaction.StateMarks``) until one of them is read, and makes the
``WeakKeyDictionary`` then.  Each scenario runs on stock's Session and on
turbosession's, with listeners on the state-change events, and compares
what rollback restores: events (each phase's events sorted, as stock
orders them by a set's order, which follows memory addresses), object
states and keys, the session's collections, the identity map, expiry,
and the rows.  They cover a failed flush, savepoints committed and rolled
back, objects released before the rollback (enough of them for the marks
to be compacted), expire_on_commit on and off, primary key switches, a
session joined to a connection's outer transaction, and deletes marked
without a ``persistent_to_deleted`` listener (committed, rolled back, in
savepoints, an object deleted twice in one transaction).
"""

import gc

import pytest
from sqlalchemy import event, exc, inspect, orm, select

from models import Base, User
from support import assert_same_as_stock, normalize_error, object_state
from turbosession import transaction

STATE_EVENTS = (
    "transient_to_pending",
    "pending_to_persistent",
    "pending_to_transient",
    "persistent_to_transient",
    "persistent_to_detached",
    "persistent_to_deleted",
    "deleted_to_detached",
    "deleted_to_persistent",
    "detached_to_persistent",
)


class StateEvents:
    """Listeners on the session's state-change events (``names``) and on User's
    ``expire`` and ``refresh_flush`` events; ``phase`` notes what arrived
    since the last phase, sorted."""

    def __init__(self, session, log, names=STATE_EVENTS):
        self.log = log
        self.seen = []
        for name in names:
            event.listen(session, name, self._listener(name))
        self.mapper_listeners = [
            ("expire", self._expire),
            ("refresh_flush", self._refresh_flush),
        ]
        for name, fn in self.mapper_listeners:
            event.listen(User, name, fn)

    def detach(self):
        for name, fn in self.mapper_listeners:
            event.remove(User, name, fn)

    def _listener(self, name):
        def listener(session, instance):
            # the object's own dict: no attribute access that could load
            self.seen.append((name, None if instance is None else vars(instance).get("name")))

        return listener

    def _expire(self, target, attrs):
        self.seen.append(("expire", vars(target).get("name"), attrs and sorted(attrs)))

    def _refresh_flush(self, target, context, attrs):
        self.seen.append(("refresh_flush", vars(target).get("name"), sorted(attrs)))

    def phase(self, label):
        self.log.note(label, sorted(self.seen, key=repr))
        self.seen.clear()


def _key(obj):
    key = inspect(obj).key
    return key[1] if key else None


def note_objects(log, session, label, **objects):
    """States, keys, loaded attributes and membership of named objects;
    the session's sets and identity map; pending changes."""
    log.states(session, **objects)
    log.note(
        label,
        [(name, _key(obj), sorted(vars(obj)), inspect(obj).modified) for name, obj in objects.items()],
        sorted(key[1] for key in session.identity_map.keys()),
        len(session.identity_map._modified),
    )


def users(session):
    return [(u.id, u.name) for u in session.scalars(select(User).order_by(User.id))]


def failed_flush(session_cls, engine, log):
    """A flush that fails on its INSERT restores the transaction: the
    objects flushed earlier in it become transient, deleted ones
    persistent, changed ones expired; those of the failed flush stay
    pending until the rollback."""
    with session_cls(engine) as session:
        watch = StateEvents(session, log)
        try:
            session.add_all([User(id=1, name="ed"), User(id=2, name="fred")])
            session.commit()
            watch.phase("committed")
            ed, fred = session.get(User, 1), session.get(User, 2)
            ed.name = "edward"
            session.delete(fred)
            wendy = User(id=3, name="wendy")
            session.add(wendy)
            session.flush()
            watch.phase("flushed")
            jack, bad = User(id=4, name="jack"), User(id=5, name=None)
            session.add_all([jack, bad])
            with pytest.raises(exc.IntegrityError) as failed:
                session.flush()
            log.note("error", type(failed.value))
            watch.phase("failed")
            note_objects(log, session, "after failure", ed=ed, fred=fred, wendy=wendy, jack=jack, bad=bad)
            session.rollback()
            watch.phase("rolled back")
            note_objects(log, session, "rolled back", ed=ed, fred=fred, wendy=wendy, jack=jack, bad=bad)
            log.note("users", users(session))
        finally:
            watch.detach()


def savepoints(session_cls, engine, log):
    """A savepoint committed, then the root rolled back (the savepoint's
    marks become the root's); a savepoint rolled back (only what changed
    in it is expired: its ``_dirty``)."""
    with session_cls(engine) as session:
        watch = StateEvents(session, log)
        try:
            session.add_all([User(id=1, name="ed"), User(id=2, name="fred")])
            session.commit()
            ed, fred = session.get(User, 1), session.get(User, 2)
            fred.name = "frederick"
            session.flush()
            with session.begin_nested():
                jack = User(id=3, name="jack")
                session.add(jack)
                ed.name = "edward"
            watch.phase("savepoint committed")
            wendy = User(id=4, name="wendy")
            session.add(wendy)
            session.flush()
            note_objects(log, session, "flushed", ed=ed, fred=fred, jack=jack, wendy=wendy)
            session.rollback()
            watch.phase("root rolled back")
            note_objects(log, session, "rolled back", ed=ed, fred=fred, jack=jack, wendy=wendy)
            log.note("users", users(session))
            watch.phase("reloaded")

            fred.name = "frederick"
            session.flush()
            nested = session.begin_nested()
            ed.name = "edward"
            mary = User(id=5, name="mary")
            session.add(mary)
            session.flush()
            nested.rollback()
            watch.phase("savepoint rolled back")
            note_objects(log, session, "savepoint rolled back", ed=ed, fred=fred, mary=mary)
            session.commit()
            watch.phase("committed")
            log.note("users", users(session))
        finally:
            watch.detach()


def released_before_rollback(session_cls, engine, log):
    """Objects flushed new or changed, then released before the rollback:
    only those still alive are restored.  Enough objects, flushed and
    released in batches, for the marks to be compacted on the way."""
    with session_cls(engine) as session:
        watch = StateEvents(session, log)
        try:
            session.add_all([User(id=i, name=f"old {i}") for i in range(1, 11)])
            session.commit()
            kept = []
            for batch in range(6):
                objects = [User(id=1000 + batch * 500 + i, name=f"new {batch} {i}") for i in range(500)]
                session.add_all(objects)
                session.flush()
                kept.append(objects[batch])
                del objects
                gc.collect()
            old = session.scalars(select(User).where(User.id <= 10).order_by(User.id)).all()
            for user in old:
                user.name = user.name.upper()
            session.flush()
            kept_old = old[3]
            del old, user
            gc.collect()
            watch.phase("flushed")
            note_objects(log, session, "flushed", kept_old=kept_old, **{f"kept{i}": o for i, o in enumerate(kept)})
            session.rollback()
            watch.phase("rolled back")
            note_objects(log, session, "rolled back", kept_old=kept_old, **{f"kept{i}": o for i, o in enumerate(kept)})
            log.note("count", len(users(session)))
        finally:
            watch.detach()


def expire_on_commit(session_cls, engine, log, expire=True):
    """Commit's expiry, on or off, after flushes that marked objects new
    and changed, then a transaction rolled back after its flush."""
    with session_cls(engine, expire_on_commit=expire) as session:
        watch = StateEvents(session, log)
        try:
            ed, fred = User(id=1, name="ed"), User(id=2, name="fred")
            session.add_all([ed, fred])
            session.flush()
            ed.name = "edward"
            session.commit()
            watch.phase("committed")
            note_objects(log, session, "committed", ed=ed, fred=fred)
            fred.name = "frederick"
            wendy = User(id=3, name="wendy")
            session.add(wendy)
            session.flush()
            session.rollback()
            watch.phase("rolled back")
            note_objects(log, session, "rolled back", ed=ed, fred=fred, wendy=wendy)
            log.note("users", users(session))
        finally:
            watch.detach()


def expire_on_commit_off(session_cls, engine, log):
    expire_on_commit(session_cls, engine, log, expire=False)


def key_switches(session_cls, engine, log):
    """Primary keys changed by a flush, in the root and in a committed
    savepoint, switched back by the rollback, with a new object taking a
    released key."""
    with session_cls(engine) as session:
        watch = StateEvents(session, log)
        try:
            session.add_all([User(id=1, name="ed"), User(id=2, name="fred")])
            session.commit()
            ed, fred = session.get(User, 1), session.get(User, 2)
            ed.id = 10
            session.flush()
            jack = User(id=1, name="jack")
            session.add(jack)
            with session.begin_nested():
                fred.id = 20
                ed.id = 11
            note_objects(log, session, "switched", ed=ed, fred=fred, jack=jack)
            session.rollback()
            watch.phase("rolled back")
            note_objects(log, session, "rolled back", ed=ed, fred=fred, jack=jack)
            log.note("users", users(session))
        finally:
            watch.detach()


def outer_transaction(session_cls, engine, log, mode="create_savepoint"):
    """A session bound to a connection whose transaction the test began:
    the session's commits and rollbacks, then the outer rollback."""
    with engine.connect() as conn:
        outer = conn.begin()
        session = session_cls(bind=conn, join_transaction_mode=mode)
        watch = StateEvents(session, log)
        try:
            ed = User(id=1, name="ed")
            session.add(ed)
            session.commit()
            watch.phase("committed")
            ed.name = "edward"
            jack = User(id=2, name="jack")
            session.add(jack)
            session.flush()
            try:
                session.rollback()
            except exc.SQLAlchemyError as err:  # a mode may refuse: the same as stock's
                log.note("rollback error", normalize_error(err))
            watch.phase("rolled back")
            note_objects(log, session, "rolled back", ed=ed, jack=jack)
            log.note("users", users(session))
            session.close()
            watch.phase("closed")
        finally:
            watch.detach()
            if outer.is_active:
                outer.rollback()
    with engine.connect() as conn:
        log.note("after outer rollback", conn.execute(select(User.id)).all())


def outer_transaction_conditional(session_cls, engine, log):
    outer_transaction(session_cls, engine, log, mode="conditional_savepoint")


def outer_transaction_rollback_only(session_cls, engine, log):
    outer_transaction(session_cls, engine, log, mode="rollback_only")


def deletes_marked(session_cls, engine, log):
    """Deletes flushed with no ``persistent_to_deleted`` listener (the
    flush marks them without one): rolled back (they are persistent
    again), in a savepoint committed and one rolled back, an object
    deleted, made transient, added and deleted again in one transaction,
    one released before the commit; the commit detaches each once."""
    with session_cls(engine) as session:
        watch = StateEvents(session, log, names=("deleted_to_detached", "deleted_to_persistent",
                                                 "persistent_to_detached"))
        try:
            session.add_all([User(id=i, name=f"u{i}") for i in range(1, 8)])
            session.commit()
            found = {u.id: u for u in session.scalars(select(User))}
            session.delete(found[1])
            session.delete(found[2])
            session.flush()
            watch.phase("flushed")
            session.rollback()
            watch.phase("rolled back")
            note_objects(log, session, "rolled back", one=found[1], two=found[2])
            session.delete(found[1])
            session.flush()
            orm.make_transient(found[1])
            session.add(found[1])
            session.flush()
            session.delete(found[1])
            session.flush()
            with session.begin_nested():
                session.delete(found[3])
                session.flush()
            savepoint = session.begin_nested()
            session.delete(found[4])
            session.flush()
            savepoint.rollback()
            watch.phase("savepoints")
            session.delete(found[5])
            session.delete(found[6])
            session.flush()
            del found[6]
            gc.collect()
            note_objects(log, session, "before commit", **{f"u{i}": u for i, u in found.items()})
            session.commit()
            watch.phase("committed")
            note_objects(log, session, "committed", **{f"u{i}": u for i, u in found.items()})
            log.note("users", users(session))
        finally:
            watch.detach()


SCENARIOS = [
    deletes_marked,
    failed_flush,
    savepoints,
    released_before_rollback,
    expire_on_commit,
    expire_on_commit_off,
    key_switches,
    outer_transaction,
    outer_transaction_conditional,
    outer_transaction_rollback_only,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_same_as_stock(scenario, session_cls, engine):
    entries = assert_same_as_stock(scenario, session_cls, engine, Base.metadata)
    assert any(entry[0] == "sql" for entry in entries)
    assert any(entry[0] == "rolled back" and entry[1] for entry in entries)


def test_marks_kept_until_read(session_cls, engine):
    """The flush's marks wait in the root transaction as weak references;
    reading ``_new`` / ``_dirty`` makes the collection from those alive,
    in the order they were marked, and later marks go into it."""
    Base.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            session.add_all([User(id=1, name="ed"), User(id=2, name="fred")])
            session.commit()
            ed = session.get(User, 1)
            ed.name = "edward"
            wendy, jack = User(id=3, name="wendy"), User(id=4, name="jack")
            session.add_all([wendy, jack])
            session.flush()
            root = session.get_transaction()
            new_marks = vars(root)[transaction.MARKS["_new"]]
            dirty_marks = vars(root)[transaction.MARKS["_dirty"]]
            assert type(new_marks) is transaction.StateMarks
            assert "_new" not in vars(root) and "_dirty" not in vars(root)
            assert {ref() for ref in new_marks} == {inspect(wendy), inspect(jack)}
            assert [ref() for ref in dirty_marks] == [inspect(ed)]
            del jack
            gc.collect()
            made = root._new
            assert list(made) == [inspect(wendy)]
            assert transaction.MARKS["_new"] not in vars(root)
            mary = User(id=5, name="mary")
            session.add(mary)
            session.flush()
            assert list(root._new) == [inspect(wendy), inspect(mary)]
            assert list(root._dirty) == [inspect(ed)]
            session.rollback()
            assert object_state(wendy) == object_state(mary) == "transient"
    finally:
        Base.metadata.drop_all(engine)


def test_deleted_marks_kept_until_commit(session_cls, engine):
    """Without a ``persistent_to_deleted`` listener, a flush's deletes wait
    in the root transaction as weak references; the commit detaches the
    states still alive, each once, in the order they were first marked,
    without making the ``WeakKeyDictionary``.  (Making a deleted object
    transient reads the collection, which is then made from the marks.)"""
    Base.metadata.create_all(engine)
    detached = []
    try:
        with session_cls(engine) as session:
            session.add_all([User(id=i, name=f"u{i}") for i in (1, 2, 3)])
            session.commit()
            ed, fred, wendy = (session.get(User, i) for i in (1, 2, 3))
            event.listen(session, "deleted_to_detached", lambda s, o: detached.append(o.id))
            session.delete(ed)
            session.flush()
            session.delete(fred)
            session.flush()
            session.delete(wendy)
            session.flush()
            root = session.get_transaction()
            marks = vars(root)[transaction.MARKS["_deleted"]]
            assert type(marks) is transaction.StateMarks
            assert "_deleted" not in vars(root)
            marks.append(marks[0])  # a state marked twice is detached once
            assert marks.states() == [inspect(ed), inspect(fred), inspect(wendy)]
            del wendy
            gc.collect()
            assert marks.states() == [inspect(ed), inspect(fred)]
            session.commit()
            assert "_deleted" not in vars(root)
            assert transaction.MARKS["_deleted"] not in vars(root)
            assert detached == [1, 2]
            assert object_state(ed) == object_state(fred) == "detached"
    finally:
        Base.metadata.drop_all(engine)


def test_marks_compacted(session_cls, engine):
    """References to released states are dropped whenever the marks have
    doubled since they were last compacted, keeping the order: a long
    transaction that flushes and releases its objects does not keep a
    reference per object."""
    Base.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            kept = []
            for batch in range(10):
                objects = [User(id=batch * 500 + i, name="x") for i in range(1, 501)]
                session.add_all(objects)
                session.flush()
                kept.append(objects[0])
                del objects
                gc.collect()
            root = session.get_transaction()
            marks = vars(root)[transaction.MARKS["_new"]]
            assert len(marks) <= marks.compact_at <= 2 * 1024
            assert list(root._new) == [inspect(obj) for obj in kept]
    finally:
        Base.metadata.drop_all(engine)
