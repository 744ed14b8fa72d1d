"""A turbosession session's own event dispatcher, made when the session is
(``TurboSessionMixin.__init__``, ``_attach.open_dispatch``).

Stock makes it on first use (``dispatcher.__get__`` -> ``_for_instance`` ->
``_Dispatch.__init__``) and fills each event slot with the class's shared
``_EmptyListener`` the first time that event is asked for.  turbosession's
dispatcher must be that same object state: the same class, parent, instance
class and listener dict, each slot holding what stock's ``__getattr__``
would have stored; listeners added to the class or the session before or
after must run as with stock; and a patched SQLAlchemy method on that path
must be called (compiled, the dispatcher is otherwise made without them).
"""

import pytest
from sqlalchemy import create_engine, event, orm
from sqlalchemy.event import attr as event_attr
from sqlalchemy.event import base as event_base
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import turbosession


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "dispatched_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


@pytest.fixture
def db():
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    yield engine
    orm.close_all_sessions()
    engine.dispose()


def _slots(dispatch):
    """Each event slot's stored value (None where none is stored)."""
    values = {}
    for name in dispatch._event_names:
        try:
            values[name] = object.__getattribute__(dispatch, name)
        except AttributeError:
            values[name] = None
    return values


def _check_like_stock(session):
    dispatch = session.__dict__["dispatch"]
    stock = orm.Session()
    stock_dispatch = stock.dispatch
    assert type(dispatch) is type(stock_dispatch)
    assert dispatch._parent is stock_dispatch._parent
    assert dispatch._instance_cls is type(session)
    registry = type(dispatch)._empty_listener_reg
    assert dispatch._empty_listeners is registry[type(session)]
    # every slot holds what stock's __getattr__ stores on first use
    assert _slots(dispatch) == {
        name: dispatch._empty_listeners[name] for name in dispatch._event_names
    }
    for name in dispatch._event_names:
        getattr(stock_dispatch, name)
    assert {n: type(v) for n, v in _slots(dispatch).items()} == {
        n: type(v) for n, v in _slots(stock_dispatch).items()
    }
    assert dispatch.__dict__ == stock_dispatch.__dict__ == {}
    stock.close()


def test_dispatcher_as_stock_makes_it(session_cls, db):
    # a class's first session takes the descriptor; later ones are made
    # directly (compiled): both must be stock's object state
    for _ in range(3):
        with session_cls(db) as session:
            _check_like_stock(session)
    maker = turbosession.sessionmaker(db, class_=session_cls)
    for _ in range(2):
        with maker() as session:
            assert type(session) is maker.class_
            _check_like_stock(session)


def test_dispatcher_as_stock_makes_it_for_alternating_classes(session_cls, db):
    # what is found for a session class is kept for the next session of that
    # class: sessions of three classes in turn each get their own class's
    maker = turbosession.sessionmaker(db, class_=session_cls)
    classes = (session_cls, type("Other", (session_cls,), {}), maker)
    for _ in range(3):
        for make in classes:
            with (make(db) if make is not maker else maker()) as session:
                _check_like_stock(session)


def _record(events, log):
    def listener(name):
        def fn(*args, **kw):
            log.append(name)

        return fn

    return {name: listener(name) for name in events}


EVENTS = (
    "after_transaction_create",
    "after_begin",
    "before_attach",
    "after_attach",
    "transient_to_pending",
    "before_flush",
    "after_flush",
    "pending_to_persistent",
    "before_commit",
    "after_commit",
    "after_transaction_end",
)


def _run(session_cls, engine, class_events, instance_events):
    """A short transaction with listeners on the class (added before the
    session is made) and on the session (after): the events seen."""
    log = []
    cls = type("Listened", (session_cls,), {})
    class_fns = _record(class_events, log)
    for name, fn in class_fns.items():
        event.listen(cls, name, fn)
    try:
        with cls(engine) as session:
            for name, fn in _record(instance_events, log).items():
                event.listen(session, name, fn)
            session.add(Item(name="x"))
            session.commit()
    finally:
        for name, fn in class_fns.items():
            event.remove(cls, name, fn)
    return log


def test_listeners_run_as_with_stock(session_cls, db):
    halves = (EVENTS[::2], EVENTS[1::2])
    for class_events, instance_events in (halves, halves[::-1]):
        mine = _run(session_cls, db, class_events, instance_events)
        stock = _run(orm.Session, db, class_events, instance_events)
        assert mine == stock
        assert set(mine) == set(EVENTS)


def test_listener_added_to_class_after_the_session(session_cls, db):
    log = []

    class Late(session_cls):
        pass

    Late(db).close()  # the class's listeners are registered now
    session = Late(db)

    def fn(*args):
        log.append(args[0] is session)

    event.listen(Late, "after_begin", fn)
    try:
        session.connection()
        assert log == [True]
    finally:
        event.remove(Late, "after_begin", fn)
        session.close()


@pytest.mark.parametrize(
    "owner, name",
    [
        (event_base._Dispatch, "__init__"),
        (event_base._Dispatch, "_for_instance"),
        (event_base._Dispatch, "_for_class"),
        (event_base.dispatcher, "__get__"),
    ],
)
def test_a_patched_method_is_called(session_cls, db, monkeypatch, owner, name):
    original = owner.__dict__[name]
    calls = []

    def patched(*args, **kw):
        calls.append(name)
        return original(*args, **kw)

    session_cls(db).close()  # registered: the direct path is possible
    monkeypatch.setattr(owner, name, patched)
    with session_cls(db) as session:
        assert calls
        _check_like_stock(session)
    monkeypatch.undo()
    with session_cls(db) as session:
        _check_like_stock(session)


def test_an_instance_listener_fills_its_slot(session_cls, db):
    with session_cls(db) as session:
        seen = []
        event.listen(session, "after_begin", lambda *a: seen.append(a[0]))
        assert type(session.dispatch.after_begin) is event_attr._ListenerCollection
        # the other slots keep the class's shared _EmptyListener
        assert type(session.dispatch.before_commit) is event_attr._EmptyListener
        session.connection()
        assert seen == [session]


def test_compiled_makes_it_without_the_descriptor(session_cls, db):
    """Compiled, a registered class's sessions get their dispatcher without
    a Python call of SQLAlchemy's event code; the pure twin calls the
    descriptor (``_for_instance``) as stock does."""
    import sys

    session_cls(db).close()
    seen = []

    def profile(frame, what, arg):
        if what == "call" and frame.f_code.co_filename == event_base.__file__:
            seen.append(frame.f_code.co_name)

    sys.setprofile(profile)
    try:
        session = session_cls(db)
    finally:
        sys.setprofile(None)
    _check_like_stock(session)
    session.close()
    if session_cls._turbo.name == "compiled":
        assert "_for_instance" not in seen and "__init__" not in seen
    else:
        assert "_for_instance" in seen
