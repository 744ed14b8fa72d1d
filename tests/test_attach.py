"""add / add_all / delete / delete_all, turbosession against stock.

Each scenario runs on stock's Session and on turbosession's (pinned to one
implementation of ``turbosession._attach``) on fresh tables, and everything a
program could observe is compared: session events in order with their
arguments, object states, ``new``/``deleted``/identity map contents and
order, ``insert_order``, the attachment bookkeeping on the InstanceState,
exceptions, SQL.  Scenarios run with and without event listeners: without
them plain objects take the compiled loop, with them every attach goes
through stock's code.
"""

import os
import sys
import warnings
from unittest import mock

import pytest
from sqlalchemy import Connection, ForeignKey, String, event, inspect, orm, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from support import normalize_error, object_state, run, set_order_sorted


class Base(DeclarativeBase):
    pass


class Plain(Base):
    """No relationship: add and delete cascade nothing."""

    __tablename__ = "ts_attach_plain"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    qty: Mapped[int] = mapped_column(default=0)

    def __repr__(self):
        return f"Plain({self.__dict__.get('name')!r})"


class Parent(Base):
    """Cascades save-update and delete to its children: stock's path."""

    __tablename__ = "ts_attach_parent"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    children: Mapped[list["Child"]] = relationship(
        back_populates="parent", cascade="all, delete-orphan", order_by="Child.id"
    )

    def __repr__(self):
        return f"Parent({self.__dict__.get('name')!r})"


class Child(Base):
    """A many-to-one with the default cascade (save-update, no delete)."""

    __tablename__ = "ts_attach_child"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("ts_attach_parent.id"))
    parent: Mapped[Parent | None] = relationship(back_populates="children")

    def __repr__(self):
        return f"Child({self.__dict__.get('name')!r})"


SESSION_EVENTS = [
    "before_attach",
    "after_attach",
    "transient_to_pending",
    "pending_to_transient",
    "pending_to_persistent",
    "detached_to_persistent",
    "persistent_to_deleted",
    "deleted_to_detached",
    "deleted_to_persistent",
    "persistent_to_detached",
    "persistent_to_transient",
    "after_transaction_create",
    "after_transaction_end",
    "after_begin",
    "after_commit",
    "after_rollback",
]


def describe(arg):
    if isinstance(arg, orm.Session):
        return "session"
    if isinstance(arg, orm.SessionTransaction):
        return ("transaction", arg.nested)
    if isinstance(arg, Connection):
        return "connection"
    obj = arg.obj() if hasattr(arg, "obj") else arg
    return repr(obj)


def listen_session(session, log):
    for name in SESSION_EVENTS:
        def record(*args, _name=name):
            log.note("event", _name, [describe(a) for a in args])
        event.listen(session, name, record)


def listen_expire(log):
    """Record the ``expire`` instance event; returns what undoes it."""
    def on_expire(target, attrs):
        log.note("event", "expire", target and inspect(target).key, attrs)

    for cls in (Plain, Parent, Child):
        event.listen(cls, "expire", on_expire)

    def undo():
        for cls in (Plain, Parent, Child):
            event.remove(cls, "expire", on_expire)
    return undo


def bookkeeping(session, log, **objects):
    """States, membership and what the session keeps on each InstanceState."""
    for name, obj in objects.items():
        st = inspect(obj)
        log.note(
            name,
            object_state(obj),
            obj in session,
            st.insert_order if "insert_order" in st.__dict__ else None,
            st.session_id == session.hash_key,
            st.session_id is None,
            st._strong_obj is obj,
            st._orphaned_outside_of_session,
            st.expired,
            sorted(st.dict.keys() - {"_sa_instance_state"}),
        )
    log.note("new", [repr(s.obj()) for s in session._new])
    log.note("deleted", [repr(s.obj()) for s in session._deleted])
    log.note("identity", sorted(repr(o) for o in session.identity_map.values()))
    log.note("in transaction", session.in_transaction(), session.in_nested_transaction())


def guarded(log, action):
    try:
        action()
    except Exception as exc:
        log.note("raised", *normalize_error(exc))


def seeded(session_cls, engine, *names):
    # ids from the table's own sequence (1, 2, ... on fresh tables): explicit
    # ids would collide with it on PostgreSQL when a scenario inserts more
    held = [Plain(name=n) for n in names]
    with session_cls(engine) as s:
        s.add_all(held)
        s.commit()


def sc_add_all_then_commit(session_cls, engine, log):
    session = session_cls(engine)
    a, b, c = Plain(name="a"), Plain(name="b"), Plain(id=10, name="c")
    bookkeeping(session, log, a=a, b=b, c=c)
    session.add_all([a, b])
    bookkeeping(session, log, a=a, b=b, c=c)
    session.add(c)
    session.add_all([b, a])  # re-adding pending objects keeps their order
    bookkeeping(session, log, a=a, b=b, c=c)
    session.commit()
    bookkeeping(session, log, a=a, b=b, c=c)
    log.note("values", a.name, b.id, c.qty)
    session.add_all(iter([Plain(name="d"), Plain(name="e")]))  # an iterator, new transaction
    log.note("new", sorted(repr(o) for o in session.new))
    session.commit()
    log.note("rows", session.scalars(select(Plain.name).order_by(Plain.id)).all())
    session.close()
    bookkeeping(session, log, a=a, b=b, c=c)


def sc_rollback_after_add(session_cls, engine, log):
    seeded(session_cls, engine, "x")
    session = session_cls(engine)
    x = session.get(Plain, 1)
    a, b = Plain(name="a"), Plain(name="b")
    session.add_all([a, b])
    session.flush()
    session.add(Plain(name="c"))
    bookkeeping(session, log, a=a, b=b, x=x)
    session.rollback()
    bookkeeping(session, log, a=a, b=b, x=x)
    session.add(a)
    bookkeeping(session, log, a=a)
    session.commit()
    log.note("rows", session.scalars(select(Plain.name).order_by(Plain.id)).all())
    session.close()


def sc_mixed_cascades(session_cls, engine, log):
    session = session_cls(engine)
    p = Parent(name="p", children=[Child(name="c1"), Child(name="c2")])
    a, b = Plain(name="a"), Plain(name="b")
    orphan_child = Child(name="c3", parent=Parent(name="q"))
    session.add_all([a, p, b, orphan_child])
    # held here: an object only the session holds may be collected during
    # commit's expire loop, at a point that follows memory addresses
    everything = [*p.children, orphan_child.parent]
    bookkeeping(session, log, a=a, b=b, p=p, c1=p.children[0], c3=orphan_child,
                q=orphan_child.parent)
    session.commit()
    # load them now: the flush's SELECT order of expired objects follows
    # memory addresses in stock
    log.note("loaded", a.name, p.name, [c.name for c in p.children], orphan_child.name)
    session.delete(p)
    session.delete_all([a, orphan_child])
    bookkeeping(session, log, a=a, p=p, c1=p.children[0], c3=orphan_child)
    session.commit()
    # not c3: whether its flush loaded c3.parent follows memory addresses
    bookkeeping(session, log, a=a, p=p)
    log.note("children", session.scalars(select(Child.name).order_by(Child.id)).all())
    session.close()
    log.note("held", len(everything))


def sc_other_sessions(session_cls, engine, log):
    seeded(session_cls, engine, "x", "y")
    first = session_cls(engine)
    second = session_cls(engine)
    x = first.get(Plain, 1)
    pending = Plain(name="p")
    first.add(pending)
    guarded(log, lambda: second.add_all([Plain(name="ok"), x]))
    guarded(log, lambda: second.add(pending))
    guarded(log, lambda: second.delete(x))
    guarded(log, lambda: second.delete_all([x]))
    log.note("second new", sorted(repr(o) for o in second.new))
    first.close()  # x is detached now: second may take it
    second.add(x)
    bookkeeping(second, log, x=x)
    closed = session_cls(engine)
    y = closed.get(Plain, 2)
    closed.close()
    second.delete(y)
    bookkeeping(second, log, x=x, y=y)
    second.commit()
    bookkeeping(second, log, x=x, y=y)
    log.note("rows", second.scalars(select(Plain.name).order_by(Plain.id)).all())
    second.close()


def sc_expunge_and_readd(session_cls, engine, log):
    seeded(session_cls, engine, "x", "y")
    session = session_cls(engine)
    x, y = session.scalars(select(Plain).order_by(Plain.id)).all()
    x.name = "x2"
    session.expunge(x)
    pending = Plain(name="p")
    session.add(pending)
    session.expunge(pending)
    bookkeeping(session, log, x=x, y=y, pending=pending)
    session.add_all([pending, x])
    bookkeeping(session, log, x=x, y=y, pending=pending)
    session.expunge_all()
    session.delete(y)
    session.add(x)
    bookkeeping(session, log, x=x, y=y, pending=pending)
    session.commit()
    bookkeeping(session, log, x=x, y=y, pending=pending)
    log.note("rows", session.scalars(select(Plain.name).order_by(Plain.id)).all())
    session.close()


def sc_delete_paths(session_cls, engine, log):
    seeded(session_cls, engine, "x", "y", "z")
    session = session_cls(engine)
    x, y, z = session.scalars(select(Plain).order_by(Plain.id)).all()
    pending = Plain(name="p")
    session.add(pending)
    guarded(log, lambda: session.delete(pending))
    guarded(log, lambda: session.delete(Plain(name="transient")))
    guarded(log, lambda: session.delete_all([x, pending, y]))
    bookkeeping(session, log, x=x, y=y, z=z, pending=pending)
    session.delete(x)  # twice
    z.qty = 5
    session.delete(z)
    session.flush()
    bookkeeping(session, log, x=x, y=y, z=z, pending=pending)
    session.delete(x)  # deleted within the transaction
    session.rollback()
    bookkeeping(session, log, x=x, y=y, z=z, pending=pending)
    session.delete_all([y, z])
    session.commit()
    bookkeeping(session, log, x=x, y=y, z=z)
    guarded(log, lambda: session.add(y))  # deleted and detached
    session.delete(y)  # a detached deleted object is attached again
    bookkeeping(session, log, y=y)
    guarded(log, session.commit)
    log.note("rows", session.scalars(select(Plain.name).order_by(Plain.id)).all())
    session.close()


def sc_bad_input_mid_sequence(session_cls, engine, log):
    seeded(session_cls, engine, "x")
    session = session_cls(engine)
    x = session.get(Plain, 1)
    a, b = Plain(name="a"), Plain(name="b")
    guarded(log, lambda: session.add_all([a, object(), b]))
    guarded(log, lambda: session.add_all([None]))
    guarded(log, lambda: session.add(x))
    guarded(log, lambda: session.delete_all([x, "not mapped"]))
    guarded(log, lambda: session.delete(Plain))
    bookkeeping(session, log, a=a, b=b, x=x)
    session.rollback()
    bookkeeping(session, log, a=a, b=b, x=x)
    session.close()


def sc_no_autobegin_and_nested(session_cls, engine, log):
    seeded(session_cls, engine, "x")
    session = session_cls(engine, autobegin=False)
    guarded(log, lambda: session.add(Plain(name="nope")))
    guarded(log, lambda: session.add_all([Plain(name="nope")]))
    log.note("new", len(session.new))
    with session.begin():
        x = session.get(Plain, 1)
        a = Plain(name="a")
        session.add(a)
        with session.begin_nested():
            b = Plain(name="b")
            session.add_all([b])
            session.delete(x)
            bookkeeping(session, log, a=a, b=b, x=x)
        bookkeeping(session, log, a=a, b=b, x=x)
        nested = session.begin_nested()
        c = Plain(name="c")
        session.add(c)
        session.delete(a)
        nested.rollback()
        bookkeeping(session, log, a=a, b=b, c=c, x=x)
    bookkeeping(session, log, a=a, b=b, c=c, x=x)
    session.close()


def sc_expire_on_commit_false(session_cls, engine, log):
    session = session_cls(engine, expire_on_commit=False)
    a, b = Plain(name="a"), Plain(name="b")
    session.add_all([a, b])
    session.commit()
    bookkeeping(session, log, a=a, b=b)
    session.delete(a)
    session.commit()
    bookkeeping(session, log, a=a, b=b)
    session.close()


def sc_add_during_flush(session_cls, engine, log):
    """Inside the flush stock warns from add(), add_all() and delete()."""
    seeded(session_cls, engine, "x")
    session = session_cls(engine)
    x = session.get(Plain, 1)
    extra = []

    def before_insert(mapper, connection, target):
        if target.name == "a":
            extra.append(Plain(name="during"))
            session.add(extra[0])
            session.add_all([Plain(name="during2")])
            session.delete(x)

    event.listen(Plain, "before_insert", before_insert)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            session.add(Plain(name="a"))
            guarded(log, session.flush)
        log.note("warnings", [str(w.message) for w in caught])
        bookkeeping(session, log, x=x, extra=extra[0])
        session.commit()
        log.note("rows", session.scalars(select(Plain.name).order_by(Plain.id)).all())
    finally:
        event.remove(Plain, "before_insert", before_insert)
        session.close()


SCENARIOS = [
    sc_add_during_flush,
    sc_add_all_then_commit,
    sc_rollback_after_add,
    sc_mixed_cascades,
    sc_other_sessions,
    sc_expunge_and_readd,
    sc_delete_paths,
    sc_bad_input_mid_sequence,
    sc_no_autobegin_and_nested,
    sc_expire_on_commit_false,
]


# stock fires these for a set of states, so their order among themselves
# follows memory addresses: the flush's (as in test_fastpath), ``expire`` on
# commit, which follows the identity map the flush fills from a set, and the
# expunges of a rollback and a close; a run of one group is compared sorted
SET_ORDER_EVENTS = {
    "pending_to_persistent": "pending_to_persistent",
    "persistent_to_deleted": "persistent_to_deleted",
    "deleted_to_detached": "deleted_to_detached",
    "expire": "expire",
    "pending_to_transient": "rollback expunge",
    "persistent_to_transient": "rollback expunge",
    "deleted_to_persistent": "rollback restore",
    "persistent_to_detached": "close",
}


def with_listeners(scenario, listen_more=None):
    """``scenario`` on a session class that records every session event;
    ``listen_more(log)`` adds other listeners and returns what removes them."""
    def listened(session_cls, engine, log):
        class Listened(session_cls):
            def __init__(self, *args, **kw):
                super().__init__(*args, **kw)
                listen_session(self, log)

        undo = listen_more(log) if listen_more else None
        try:
            scenario(Listened, engine, log)
        finally:
            if undo:
                undo()

    return listened


def compare_with_stock(scenario, listened, session_cls, engine, metadata, listen_more=None):
    if listened:
        scenario = with_listeners(scenario, listen_more)
    expected = set_order_sorted(run(scenario, orm.Session, engine, metadata), SET_ORDER_EVENTS)
    entries = set_order_sorted(run(scenario, session_cls, engine, metadata), SET_ORDER_EVENTS)
    assert entries == expected
    assert len(entries) > 5
    if listened:
        assert any(e[0] == "event" for e in entries)


@pytest.mark.parametrize("listened", [False, True], ids=["quiet", "listened"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__[3:])
def test_same_as_stock(scenario, listened, session_cls, engine):
    compare_with_stock(scenario, listened, session_cls, engine, Base.metadata, listen_expire)


def stock_methods_called(action):
    """Names of the functions of SQLAlchemy's ORM package that ran."""
    called = set()
    orm_dir = os.path.dirname(orm.__file__)

    def profile(frame, what, arg):
        if what == "call" and frame.f_code.co_filename.startswith(orm_dir):
            called.add(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return called


def test_plain_objects_take_the_fast_path(session_cls, engine):
    Base.metadata.create_all(engine)
    with session_cls(engine) as session:
        session.add(Plain(name="first"))  # begins the transaction
        objs = [Plain(name=str(i)) for i in range(3)]
        assert not stock_methods_called(lambda: session.add_all(objs)) & {
            "add", "_save_or_update_state", "_save_impl", "_before_attach"}
        session.commit()
        session.delete(objs[0])  # begins the transaction
        called = stock_methods_called(lambda: session.delete(objs[1]))
        assert not called & {"delete", "_delete_impl", "_before_attach"}
        assert objs[1] in session.deleted
    with orm.Session(engine) as stock:
        stock.add(Plain(name="first"))
        assert "_save_impl" in stock_methods_called(lambda: stock.add_all([Plain(name="x")]))
    Base.metadata.drop_all(engine)


def test_cascading_objects_take_the_fast_path(session_cls, engine):
    """The cascade is walked by turbosession._attach, not stock's methods."""
    Base.metadata.create_all(engine)
    with session_cls(engine) as session:
        session.add(Plain(name="first"))
        parent = Parent(name="p", children=[Child(name="c")])
        called = stock_methods_called(lambda: session.add_all([parent]))
        assert not called & {"add", "_save_or_update_state", "_save_impl", "cascade_iterator"}
        assert parent.children[0] in session.new  # cascaded
        session.commit()
        assert parent.children  # loaded: this begins the transaction
        called = stock_methods_called(lambda: session.delete(parent))
        assert not called & {"delete", "_delete_impl", "cascade_iterator"}, called & {"delete", "_delete_impl", "cascade_iterator"}
        assert parent.children[0] in session.deleted  # cascaded
    Base.metadata.drop_all(engine)


def test_subclass_overriding_add_sees_add_all_call_it(session_cls, engine):
    calls = []

    class Recording(session_cls):
        def add(self, instance, **kw):
            calls.append((instance.name, kw))
            super().add(instance, **kw)

    Base.metadata.create_all(engine)
    with Recording(engine) as session:
        objs = [Plain(name="a"), Plain(name="b")]
        session.add_all(objs)
        session.add(Plain(name="c"))
        assert calls == [("a", {"_warn": False}), ("b", {"_warn": False}), ("c", {})]
        assert [s.obj().name for s in session._new] == ["a", "b", "c"]
        assert [inspect(o).insert_order for o in objs] == [1, 2]
    Base.metadata.drop_all(engine)


@pytest.mark.parametrize("hook", ["_before_attach", "_save_impl", "_delete_impl", "add"])
def test_a_patched_hook_is_called(hook, session_cls, engine):
    """On the class or on one session: stock's code runs and calls it."""
    Base.metadata.create_all(engine)
    seeded(session_cls, engine, "x")
    for patch_target in ("class", "instance"):
        session = session_cls(engine)
        x = session.get(Plain, 1)
        calls = []
        original = getattr(orm.Session, hook)

        def spy(*args, **kw):
            calls.append(hook)
            target_args = args if patch_target == "class" else (session,) + args
            return original(*target_args, **kw)

        if patch_target == "class":
            patcher = mock.patch.object(session_cls, hook, spy)
        else:
            patcher = mock.patch.object(session, hook, spy)
        with patcher:
            session.add_all([Plain(name="a")])
            session.delete(x)
        assert calls, (hook, patch_target)
        session.close()
    Base.metadata.drop_all(engine)


@pytest.mark.parametrize("target", ["session_class", "stock_session", "one_session"])
@pytest.mark.parametrize("hook", ["_save_impl", "_delete_impl"])
def test_a_hook_patched_after_fast_calls_is_called(hook, target, session_cls, engine):
    """A class whose hooks were found stock's is not asked again while it is
    unchanged (compiled: CPython's version tag of the class), nor a session
    whose own ``__dict__`` was found without them (compiled on CPython 3.11:
    the dict's version); a patch on the class, on a class of its MRO or on
    the session itself after fast add() / delete() calls is seen, and once
    it is undone the calls are fast again."""
    from turbosession import attaching

    Base.metadata.create_all(engine)
    seeded(session_cls, engine, "x", "y", "z")
    owner = session_cls if target == "session_class" else orm.Session
    original = getattr(orm.Session, hook)
    calls = []

    def spy(self, *args, **kw):
        calls.append(hook)
        return original(self, *args, **kw)

    with session_cls(engine) as session:
        x, y, z = (session.get(Plain, i) for i in (1, 2, 3))
        if target == "one_session":
            owner = session

            def spy(*args, **kw):
                calls.append(hook)
                return original(session, *args, **kw)

        def attach(obj, name):
            if hook == "_save_impl":
                session.add(Plain(name=name))
            else:
                session.delete(obj)

        before = attaching.stats()["fast"]
        attach(x, "a")
        assert attaching.stats()["fast"] == before + 1
        with mock.patch.object(owner, hook, spy):
            attach(y, "b")
        assert calls == [hook]
        assert attaching.stats()["fast"] == before + 1
        attach(z, "c")
        assert attaching.stats()["fast"] == before + 2
        assert calls == [hook]
        session.flush()
        names = sorted(p.name for p in session.scalars(select(Plain)))
        assert names == (
            ["a", "b", "c", "x", "y", "z"] if hook == "_save_impl" else []
        )
    Base.metadata.drop_all(engine)


def test_pinned_bundle_gets_its_own_delete(impl, session_cls, engine):
    """delete() is the bundle's function itself; a subclass overriding it
    keeps its own, which reaches turbosession's through super()."""
    assert session_cls.delete is impl.attach.session_delete
    assert type("Sub", (session_cls,), {}).delete is impl.attach.session_delete
    calls = []

    class Own(session_cls):
        def delete(self, instance):
            calls.append(instance.name)
            super().delete(instance)

    Base.metadata.create_all(engine)
    seeded(session_cls, engine, "x")
    with Own(engine) as session:
        x = session.get(Plain, 1)
        session.delete(x)
        assert calls == ["x"] and x in session.deleted
        session.flush()
        assert session.scalars(select(Plain)).all() == []
    Base.metadata.drop_all(engine)


def test_pinned_bundle_gets_its_own_add(impl, session_cls, engine):
    """add() is the bundle's function itself; a subclass overriding it
    keeps its own, which reaches turbosession's through super(), and
    add_all() then calls it per object as stock's does."""
    assert session_cls.add is impl.attach.session_add
    assert type("Sub", (session_cls,), {}).add is impl.attach.session_add
    calls = []

    class Own(session_cls):
        def add(self, instance, **kw):
            calls.append(instance.name)
            super().add(instance, **kw)

    from turbosession import attaching

    Base.metadata.create_all(engine)
    before = attaching.stats()["fast"]
    with Own(engine) as session:
        x, y = Plain(id=1, name="x"), Plain(id=2, name="y")
        session.add(x)
        session.add_all([y])
        assert calls == ["x", "y"] and set(session.new) == {x, y}
        assert attaching.stats()["fast"] == before + 2
        session.flush()
        assert sorted(session.scalars(select(Plain.name))) == ["x", "y"]
    Base.metadata.drop_all(engine)
