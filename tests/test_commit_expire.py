"""Commit's expiry of every object, turbosession against stock.

turbosession's sessions create turbosession's SessionTransaction, whose
commit expires objects through ``turbosession._expire``.  The scenarios of
test_attach's style run on stock and on turbosession (both implementations)
and compare what each object's InstanceState holds after commit: expired
attributes, committed state, the modified set, lazy-load callables, pending
collection mutations, parents, invalidated collections, and the ``expire``
instance event when listened.
"""

from contextlib import contextmanager

import pytest
from sqlalchemy import event, inspect, orm, select
from sqlalchemy.orm import defer

import turbosession
from support import run, set_order_sorted
from test_attach import (
    Base,
    Child,
    Parent,
    Plain,
    bookkeeping,
    SET_ORDER_EVENTS,
    stock_methods_called,
    with_listeners,
)


def expiry(session, log, **objects):
    """What commit's expiry changes on each object's InstanceState."""
    for name, obj in objects.items():
        st = inspect(obj)
        log.note(
            name,
            st.expired,
            sorted(st.expired_attributes),
            sorted(st.committed_state),
            st.modified,
            st in session.identity_map._modified,
            sorted(st.callables),
            "_pending_mutations" in st.__dict__,
            "parents" in st.__dict__,
            st._last_known_values,
            sorted(k for k in st.dict if k != "_sa_instance_state"),
        )
    bookkeeping(session, log, **objects)


def seeded(session_cls, engine):
    # held until the session closes: an object only the session holds may be
    # collected during commit's expiry, at a point that follows addresses
    # ids from the tables' own sequences (1, 2, ... on fresh tables, in the
    # order added): explicit ids would collide with them on PostgreSQL when a
    # scenario inserts more
    p = Parent(name="p", children=[Child(name="c1"), Child(name="c2")])
    held = [Plain(name="x", qty=1), Plain(name="y", qty=2), p, *p.children]
    with session_cls(engine) as s:
        s.add_all(held)
        s.commit()


def sc_commit_expires(session_cls, engine, log):
    seeded(session_cls, engine)
    session = session_cls(engine)
    x = session.get(Plain, 1)
    y = session.scalars(select(Plain).where(Plain.id == 2).options(defer(Plain.name))).one()
    p = session.get(Parent, 1)
    children = p.children
    c1 = children[0]
    newcomer = Child(name="c3")
    children.append(newcomer)
    x.qty = 10
    session.expire(y, ["qty"])  # fewer values loaded than the class maps
    expiry(session, log, x=x, y=y, p=p, c1=c1, newcomer=newcomer)

    @event.listens_for(session, "after_commit")
    def touch(sess):
        x.name = "changed after commit"  # modified when commit expires it

    session.commit()
    expiry(session, log, x=x, y=y, p=p, c1=c1, newcomer=newcomer)
    log.note("collection invalidated", children._sa_adapter.invalidated)
    log.note("reloaded", x.name, x.qty, y.name, [c.name for c in p.children])
    expiry(session, log, x=x, y=y, p=p, c1=c1, newcomer=newcomer)
    session.close()


def sc_pending_mutations(session_cls, engine, log):
    seeded(session_cls, engine)
    session = session_cls(engine)
    p = session.get(Parent, 1)  # children not loaded
    late = Child(name="late", parent=p)  # backref: a pending mutation on p
    session.add(late)
    expiry(session, log, p=p, late=late)
    session.commit()
    expiry(session, log, p=p, late=late)
    log.note("children", [c.name for c in p.children])
    session.close()


def sc_no_expiry(session_cls, engine, log):
    seeded(session_cls, engine)
    session = session_cls(engine, expire_on_commit=False)
    x = session.get(Plain, 1)
    x.qty = 3
    session.commit()
    expiry(session, log, x=x)
    session.close()
    session = session_cls(engine)
    x = session.get(Plain, 1)
    with session.begin_nested():
        x.qty = 4
        fresh = Plain(name="fresh")
        session.add(fresh)
    expiry(session, log, x=x, fresh=fresh)  # a savepoint's commit expires nothing
    nested = session.begin_nested()
    x.qty = 5
    nested.rollback()
    expiry(session, log, x=x, fresh=fresh)
    session.commit()
    expiry(session, log, x=x, fresh=fresh)
    session.rollback()
    x.qty = 6
    session.flush()
    session.rollback()
    expiry(session, log, x=x, fresh=fresh)
    session.close()


def sc_explicit_begin(session_cls, engine, log):
    seeded(session_cls, engine)
    session = session_cls(engine, autobegin=False)
    with session.begin():
        x = session.get(Plain, 1)
        x.qty = 7
    expiry(session, log, x=x)
    with session.begin():
        session.delete(x)
    expiry(session, log, x=x)
    session.close()


SCENARIOS = [sc_commit_expires, sc_pending_mutations, sc_no_expiry, sc_explicit_begin]


@pytest.mark.parametrize("listened", [False, True], ids=["quiet", "listened"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__[3:])
def test_same_as_stock(scenario, listened, session_cls, engine):
    if listened:
        scenario = with_listeners(scenario)
    expected = set_order_sorted(run(scenario, orm.Session, engine, Base.metadata), SET_ORDER_EVENTS)
    entries = set_order_sorted(run(scenario, session_cls, engine, Base.metadata), SET_ORDER_EVENTS)
    assert entries == expected
    assert any(e[1] is True for e in entries if len(e) > 2 and e[0] in ("x", "p"))


def test_one_listened_class_among_plain_ones(session_cls, engine):
    """Plain's expire event is listened, Parent's and Child's are not."""

    def scenario(session_cls, engine, log):
        seeded(session_cls, engine)

        def on_expire(target, attrs):
            log.note("expire", target.__dict__.get("id"), attrs)

        event.listen(Plain, "expire", on_expire)
        try:
            session = session_cls(engine)
            p = session.get(Parent, 1)
            x, y = session.scalars(select(Plain).order_by(Plain.id)).all()
            c1 = p.children[0]
            x.qty = 8
            session.commit()
            expiry(session, log, x=x, y=y, p=p, c1=c1)
            session.close()
        finally:
            event.remove(Plain, "expire", on_expire)

    expected = run(scenario, orm.Session, engine, Base.metadata)
    assert run(scenario, session_cls, engine, Base.metadata) == expected
    assert sum(1 for e in expected if e[0] == "expire") == 2


def test_plain_states_skip_stocks_expire(session_cls, engine):
    Base.metadata.create_all(engine)
    seeded(session_cls, engine)
    session = session_cls(engine)
    x = session.get(Plain, 1)
    x.qty = 9
    assert "_expire" not in stock_methods_called(session.commit)
    assert inspect(x).expired and "qty" not in x.__dict__
    session.close()
    with orm.Session(engine) as stock:
        held = stock.get(Plain, 1)
        assert "_expire" in stock_methods_called(stock.commit)
        assert inspect(held).expired
    Base.metadata.drop_all(engine)


def test_every_transaction_is_turbosessions(session_cls, engine):
    Base.metadata.create_all(engine)
    created = []
    session = session_cls(engine)
    event.listen(session, "after_transaction_create", lambda s, t: created.append(t))
    session.get(Plain, 1)  # autobegin
    session.begin_nested()
    session.add(Plain(name="a"))
    session.flush()  # the flush's subtransaction
    session.commit()
    session.close()
    with session_cls(engine, autobegin=False) as explicit:
        event.listen(explicit, "after_transaction_create", lambda s, t: created.append(t))
        with explicit.begin():
            pass
    origins = [t.origin.name for t in created]
    assert origins == ["AUTOBEGIN", "BEGIN_NESTED", "SUBTRANSACTION", "BEGIN"]
    for trans in created:
        assert type(trans) is turbosession.transaction.SessionTransaction
        assert isinstance(trans, orm.SessionTransaction)
    with orm.Session(engine) as stock:
        stock.get(Plain, 1)
        assert type(stock.get_transaction()) is orm.SessionTransaction
    Base.metadata.drop_all(engine)


def test_a_patched_expire_or_detach_is_called(session_cls, engine):
    """A patched InstanceState._expire / _detach_states runs as in stock."""
    from unittest import mock

    from sqlalchemy.orm.state import InstanceState

    Base.metadata.create_all(engine)
    seeded(session_cls, engine)
    session = session_cls(engine)
    x, y = session.scalars(select(Plain).order_by(Plain.id)).all()
    session.delete(y)
    with mock.patch.object(InstanceState, "_expire", autospec=True,
                           side_effect=InstanceState._expire) as expire:
        session.commit()
    assert [c.args[0] for c in expire.call_args_list] == [inspect(x)]
    assert inspect(x).expired and inspect(y).detached
    session.delete(x)
    detach = InstanceState._detach_states
    with mock.patch.object(InstanceState, "_detach_states",
                           side_effect=detach) as detach_states:
        session.commit()
    assert detach_states.call_args.args == ([inspect(x)], session)
    session.close()
    Base.metadata.drop_all(engine)


@contextmanager
def recording_properties(cls, defaults, stores, shown):
    """Each of ``defaults``' names patched onto ``cls`` as a property that
    keeps its value in the instance's ``__dict__`` (``defaults`` giving what
    it reads before a store) and appends ``(name, shown(value))`` to
    ``stores`` on every store; the class attributes put back afterwards."""

    def recording(name, default):
        def get(self):
            return self.__dict__.get(name, default)

        def set_(self, value):
            stores.append((name, shown(value)))
            self.__dict__[name] = value

        return property(get, set_)

    for name, default in defaults.items():
        setattr(cls, name, recording(name, default))
    try:
        yield
    finally:
        for name, default in defaults.items():
            setattr(cls, name, default)


def test_state_attributes_patched_as_descriptors_are_set_through_them(session_cls, engine):
    """Flush and commit store ``modified``, ``expired`` and ``_strong_obj``
    in the state's own ``__dict__`` only while InstanceState has no data
    descriptor of those names: with properties patched onto the class, every
    store goes through them, in stock's order."""
    from sqlalchemy.orm.state import InstanceState

    def recorded(session_cls):
        stores = []

        Base.metadata.create_all(engine)
        seeded(session_cls, engine)
        session = session_cls(engine)
        x = session.get(Plain, 1)
        x.qty = 5
        session.add(Plain(name="new", qty=3))
        patched = {"modified": False, "expired": False, "_strong_obj": None}

        def shown(value):
            return value if value is None or type(value) is bool else "object"

        with recording_properties(InstanceState, patched, stores, shown):
            session.commit()
        states = (inspect(x).expired, inspect(x).modified, "qty" in x.__dict__)
        session.close()
        Base.metadata.drop_all(engine)
        return stores, states

    expected = recorded(orm.Session)
    assert recorded(session_cls) == expected
    assert ("expired", True) in expected[0] and ("modified", False) in expected[0]


def test_register_persistent_stores_through_patched_descriptors(session_cls, engine):
    """A flush reads and stores each flushed state's ``key`` and
    ``_orphaned_outside_of_session`` in its own ``__dict__`` only while
    InstanceState has no data descriptor of those names: with properties
    patched onto the class, every store goes through them: the same stores
    as stock's (a new object's key, both objects' orphan flags; sorted, as
    the states come in a set's order)."""
    from sqlalchemy.orm.state import InstanceState

    def recorded(session_cls):
        stores = []

        Base.metadata.create_all(engine)
        seeded(session_cls, engine)
        session = session_cls(engine)
        x = session.get(Plain, 1)
        x.qty = 5
        new = Plain(name="new", qty=3)
        session.add(new)
        patched = {"key": None, "_orphaned_outside_of_session": False}

        def shown(value):
            return value if value is None or type(value) is bool else value[1]

        with recording_properties(InstanceState, patched, stores, shown):
            session.flush()
        states = (inspect(x).key[1], inspect(new).key[1], inspect(new).persistent)
        session.close()
        Base.metadata.drop_all(engine)
        return sorted(stores, key=repr), states

    expected = recorded(orm.Session)
    assert recorded(session_cls) == expected
    assert ("_orphaned_outside_of_session", False) in expected[0]
    assert any(name == "key" for name, _ in expected[0])
