"""The Session lifecycle on a real database, turbosession against stock.

Each scenario runs twice on fresh tables (stock Session, then turbosession's
pinned to one implementation) and everything observable is compared: SQL
and parameters, object states, session membership, new/dirty/deleted.
"""

import pytest
from sqlalchemy import event, select, update

from models import Address, Base, User
from support import assert_same_as_stock


def seed(session_cls, engine):
    with session_cls(engine) as session:
        session.add_all(
            [
                User(name="ed", addresses=[Address(email="ed@a"), Address(email="ed@b")]),
                User(name="wendy", addresses=[Address(email="wendy@a")]),
            ]
        )
        session.commit()


def add_flush_commit(session_cls, engine, log):
    session = session_cls(engine)
    jack = User(name="jack", addresses=[Address(email="jack@a")])
    log.states(session, jack=jack)
    session.add(jack)
    log.states(session, jack=jack, address=jack.addresses[0])
    session.flush()
    log.note("ids", jack.id, jack.addresses[0].id)
    log.states(session, jack=jack)
    jack.fullname = "Jack Jones"
    log.states(session, jack=jack)
    session.commit()
    log.states(session, jack=jack)
    log.note("reload", jack.fullname, [a.email for a in jack.addresses])
    session.close()
    log.states(session, jack=jack)


def rollback(session_cls, engine, log):
    seed(session_cls, engine)
    session = session_cls(engine)
    ed = session.scalars(select(User).filter_by(name="ed")).one()
    ed.name = "edward"
    fred = User(name="fred")
    session.add(fred)
    session.flush()
    log.states(session, ed=ed, fred=fred)
    session.rollback()
    log.states(session, ed=ed, fred=fred)
    log.note("after rollback", ed.name)
    session.close()


def expunge_and_close(session_cls, engine, log):
    seed(session_cls, engine)
    session = session_cls(engine)
    ed, wendy = session.scalars(select(User).order_by(User.id)).all()
    session.expunge(ed)
    log.states(session, ed=ed, wendy=wendy)
    log.note("identity map", sorted(u.name for u in session.identity_map.values()))
    new = User(name="new")
    session.add(new)
    session.expunge_all()
    log.states(session, ed=ed, wendy=wendy, new=new)
    log.note("identity map", len(session.identity_map))
    again = session.get(User, wendy.id)
    log.note("fresh object", again is wendy, again.name)
    session.close()
    log.states(session, again=again)


def merge(session_cls, engine, log):
    seed(session_cls, engine)
    with session_cls(engine) as session:
        ed = session.get(User, 1)
    ed.fullname = "Ed Jones"
    session = session_cls(engine)
    merged = session.merge(ed)
    log.states(session, ed=ed, merged=merged)
    log.note("merged", merged is ed, merged.fullname)
    unknown = session.merge(User(id=99, name="ghost"))
    log.states(session, unknown=unknown)
    session.commit()
    log.note("rows", session.scalars(select(User.name).order_by(User.id)).all())
    session.close()


def get_and_identity(session_cls, engine, log):
    seed(session_cls, engine)
    session = session_cls(engine)
    ed = session.get(User, 1)
    log.note("same object", session.get(User, 1) is ed, session.get(User, 42))
    users = session.scalars(select(User).order_by(User.id)).all()
    log.note("query returns identity", users[0] is ed)
    log.note("in map", (User, (1,), None) in session.identity_map, len(session.identity_map))
    session.close()


def delete_with_cascade(session_cls, engine, log):
    seed(session_cls, engine)
    session = session_cls(engine)
    ed = session.get(User, 1)
    first = ed.addresses[0]
    session.delete(ed)
    log.states(session, ed=ed, first=first)
    session.flush()
    log.states(session, ed=ed, first=first)
    session.commit()
    log.states(session, ed=ed, first=first)
    wendy = session.get(User, 2)
    wendy.addresses.remove(wendy.addresses[0])
    session.commit()
    log.note("addresses left", session.scalars(select(Address.email)).all())
    session.close()


def savepoints(session_cls, engine, log):
    seed(session_cls, engine)
    session = session_cls(engine)
    ed = session.get(User, 1)
    ed.name = "outer"
    nested = session.begin_nested()
    ed.name = "inner"
    temp = User(name="temp")
    session.add(temp)
    session.flush()
    log.states(session, ed=ed, temp=temp)
    nested.rollback()
    log.states(session, ed=ed, temp=temp)
    log.note("name after savepoint rollback", ed.name)
    with session.begin_nested():
        session.add(User(name="kept"))
    session.commit()
    log.note("rows", session.scalars(select(User.name).order_by(User.id)).all())
    session.close()


def refresh_and_expire(session_cls, engine, log):
    seed(session_cls, engine)
    session = session_cls(engine)
    ed = session.get(User, 1)
    session.execute(update(User).where(User.id == 1).values(fullname="set by core"))
    log.note("stale", ed.fullname)
    session.refresh(ed)
    log.note("refreshed", ed.fullname)
    session.expire(ed, ["name"])
    log.note("expired", "name" in ed.__dict__, ed.name)
    ed.fullname = "local"
    session.expire_all()
    log.states(session, ed=ed)
    log.note("after expire_all", ed.fullname)
    session.close()


def autoflush(session_cls, engine, log):
    session = session_cls(engine)
    session.add(User(name="auto"))
    log.note("query sees pending", session.scalars(select(User.name)).all())
    with session.no_autoflush:
        session.add(User(name="held"))
        log.note("no autoflush", session.scalars(select(User.name)).all())
    log.note("flushed later", session.scalars(select(User.name).order_by(User.id)).all())
    session.rollback()
    session.close()


def detach_listener_during_close(session_cls, engine, log):
    # persistent_to_detached / pending_to_transient listeners run while
    # close() detaches: they see the new, empty identity map
    seed(session_cls, engine)
    session = session_cls(engine)

    def seen(session_, instance):
        log.note(
            "detaching", repr(instance), len(session_.identity_map),
            list(session_.identity_map.keys()), instance in session_, len(session_.new),
        )

    event.listen(session, "persistent_to_detached", seen)
    event.listen(session, "pending_to_transient", seen)
    users = session.scalars(select(User).order_by(User.id)).all()
    session.add(User(name="pending"))
    log.note("before", len(session.identity_map), len(session.new))
    session.close()
    log.note("after", len(session.identity_map), [u.name for u in users])


SCENARIOS = [
    detach_listener_during_close,
    add_flush_commit,
    rollback,
    expunge_and_close,
    merge,
    get_and_identity,
    delete_with_cascade,
    savepoints,
    refresh_and_expire,
    autoflush,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_lifecycle_same_as_stock(scenario, session_cls, engine):
    entries = assert_same_as_stock(scenario, session_cls, engine, Base.metadata)
    assert any(entry[0] == "sql" for entry in entries)


def test_session_uses_turbosession_identity_map(impl, session_cls, engine):
    session = session_cls(engine)
    map_cls = impl.identity.WeakIdentityMap
    assert type(session.identity_map) is map_cls
    session.expunge_all()
    assert type(session.identity_map) is map_cls
    session.close()
    assert type(session.identity_map) is map_cls
    session.reset()
    assert type(session.identity_map) is map_cls


# Session construction: turbosession sets what stock's __init__ sets, in its
# order, directly for the arguments stock only stores, and runs stock's
# __init__ for any other argument or a class whose __init__ is not stock's.
CONSTRUCTIONS = [
    ((True,), {}),
    ((), {"bind": True}),
    ((True,), {"autoflush": False, "expire_on_commit": False, "autobegin": False}),
    ((), {}),
    ((True,), {"twophase": True}),
    ((True,), {"info": {"a": 1}, "join_transaction_mode": "rollback_only"}),
    ((True,), {"close_resets_only": False, "execution_options": {"x": 1}}),
]


def _members(session):
    return {
        name: value
        for name, value in vars(session).items()
        if name not in ("identity_map", "hash_key", "dispatch")
    }


@pytest.mark.parametrize("args, kw", CONSTRUCTIONS)
def test_construction_same_as_stock(args, kw, session_cls, engine):
    from sqlalchemy import orm
    from sqlalchemy.orm.session import _sessions

    args = tuple(engine if a is True else a for a in args)
    kw = {k: (engine if v is True else v) for k, v in kw.items()}
    stock = orm.Session(*args, **kw)
    ours = session_cls(*args, **kw)
    assert list(_members(ours)) == list(_members(stock))
    assert _members(ours) == _members(stock)
    names = [n for n in vars(ours) if n != "dispatch"]
    assert names == list(vars(stock))
    assert ours.hash_key == stock.hash_key + 1
    assert _sessions[ours.hash_key] is ours
    assert ours.identity_map is not None and len(ours.identity_map) == 0
    with pytest.raises(TypeError, match="multiple values for argument 'bind'"):
        session_cls(engine, bind=engine)


def test_registered_as_stock_registers(session_cls, engine, monkeypatch):
    """A session made directly registers in ``_sessions`` the entry stock's
    ``_sessions[hash_key] = session`` stores (a ``KeyedRef`` with the
    registry's callback), removed when the session is collected; pending
    removals are committed first, and a patched ``__setitem__`` is called."""
    import gc
    import weakref

    from sqlalchemy import orm
    from sqlalchemy.orm.session import _sessions

    def entry_of(session):
        entry = _sessions.data[session.hash_key]
        return type(entry), entry.key == session.hash_key, entry() is session, (
            entry.__callback__ == _sessions._remove
        )

    stock = orm.Session(engine)
    ours = session_cls(engine)
    assert entry_of(ours) == entry_of(stock) == (weakref.KeyedRef, True, True, True)
    key = ours.hash_key
    del ours
    gc.collect()
    assert key not in _sessions.data and _sessions.get(key) is None
    # a key no session has, as an iteration leaves one pending
    _sessions._pending_removals.append(-1)
    session_cls(engine).close()
    assert _sessions._pending_removals == []
    calls = []
    stock_setitem = weakref.WeakValueDictionary.__setitem__

    def setitem(registry, key, value):
        calls.append((registry is _sessions, key, type(value).__name__))
        stock_setitem(registry, key, value)

    monkeypatch.setattr(weakref.WeakValueDictionary, "__setitem__", setitem)
    session = session_cls(engine)
    assert calls == [(True, session.hash_key, type(session).__name__)]
    assert entry_of(session) == (weakref.KeyedRef, True, True, True)
    stock.close()


def test_construction_runs_overridden_and_patched_init(session_cls, engine, monkeypatch):
    from sqlalchemy import orm

    calls = []

    class Own(session_cls):
        def __init__(self, *args, **kw):
            calls.append("own")
            self.early = 1
            super().__init__(*args, **kw)

    class Stored(session_cls):
        # a data descriptor for one of the names: set through it, as stock's
        # __init__ sets it
        @property
        def autoflush(self):
            return self.__dict__["_af"]

        @autoflush.setter
        def autoflush(self, value):
            calls.append(("autoflush", value))
            self.__dict__["_af"] = value

    session = Own(engine, autoflush=False)
    assert calls == ["own"] and session.early == 1 and session.autoflush is False
    assert list(vars(session))[:2] == ["early", "identity_map"]
    session = Stored(engine, autoflush=False)
    assert calls[-1] == ("autoflush", False) and session.autoflush is False

    stock_init = orm.Session.__init__

    def patched(self, *args, **kw):
        calls.append("patched")
        stock_init(self, *args, **kw)

    monkeypatch.setattr(orm.Session, "__init__", patched)
    session = session_cls(engine)
    assert calls[-1] == "patched"
    assert type(session.identity_map).__name__ == "WeakIdentityMap"


def test_direct_construction_decided_against_stock_init(monkeypatch):
    # _init_like_stock stands in for this SQLAlchemy's Session.__init__ only;
    # an __init__ that stores another attribute or defaults an argument
    # differently makes every session run stock's __init__
    import inspect as _inspect

    from sqlalchemy import orm
    from turbosession import session as module

    assert module._INIT_LIKE_STOCK is module._init_like_stock_applies() is True
    stock_signature = _inspect.signature(orm.Session.__init__)

    def init_storing(names, signature):
        # an __init__ with this signature whose bytecode stores these names
        body = "".join(f"    self.{name} = None\n" for name in names)
        namespace = {}
        exec(f"def __init__(self, *args, **kw):\n{body}", namespace)
        function = namespace["__init__"]
        function.__signature__ = signature
        return function

    stock_names = sorted(module._stored_attributes(orm.Session.__init__))
    other_default = stock_signature.replace(parameters=[
        param.replace(default=True) if param.name == "twophase" else param
        for param in stock_signature.parameters.values()
    ])
    cases = [
        (stock_names, stock_signature, True),
        (stock_names + ["extra"], stock_signature, False),
        (stock_names, other_default, False),
    ]
    for names, signature, applies in cases:
        monkeypatch.setattr(module, "_STOCK_INIT", init_storing(names, signature))
        assert module._init_like_stock_applies() is applies, (names, signature)
