"""The shared event-listener check (``turbosession.listeners``; compiled, the
same check inlined from ``_cpython.pxd`` into the hot paths).

It must answer what ``bool()`` answers for every dispatch attribute, and ask
a listener class's ``__bool__`` itself once that is no longer SQLAlchemy's.
The compiled check is not callable from Python, so it is observed through
the attach gate: a listened ``add()`` goes to stock's method, counted as
``attach_listeners``.
"""

import pytest
from sqlalchemy import create_engine, event, orm
from sqlalchemy.event import attr as event_attr
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import turbosession
from turbosession import listeners


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "listened_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


EVENTS = ("before_attach", "after_attach", "transient_to_pending", "persistent_to_deleted")


def _answers(session):
    return {
        name: (
            listeners.has_listeners(getattr(session.dispatch, name), listeners.KINDS),
            bool(getattr(session.dispatch, name)),
        )
        for name in EVENTS
    }


def test_same_answer_as_bool(session_cls):
    class Listened(session_cls):
        pass

    def noop(*args):
        pass

    session = Listened()
    try:
        # nothing listens: _EmptyListener, False
        assert {n: a for n, (a, _) in _answers(session).items()} == dict.fromkeys(EVENTS, False)
        assert all(mine == stock for mine, stock in _answers(session).values())
        # a class-level listener: still _EmptyListener, its parent's list
        event.listen(Listened, "before_attach", noop)
        # an instance-level one: _ListenerCollection
        event.listen(session, "after_attach", noop)
        answers = _answers(session)
        assert type(session.dispatch.after_attach) is event_attr._ListenerCollection
        assert answers["before_attach"] == (True, True)
        assert answers["after_attach"] == (True, True)
        assert answers["transient_to_pending"] == (False, False)
        event.remove(session, "after_attach", noop)
        assert _answers(session)["after_attach"] == (False, False)
    finally:
        event.remove(Listened, "before_attach", noop)
        session.close()


def test_a_patched_bool_is_asked(session_cls, monkeypatch):
    """``_EmptyListener.__bool__`` replaced: both checks ask it, so an event
    nothing listens to counts as listened, as with ``bool()``."""
    engine = create_engine("sqlite://")
    Base.metadata.create_all(engine)
    try:
        turbosession.reset_stats()
        with session_cls(engine) as session:
            session.add(Item(name="quiet"))
        assert turbosession.stats()["attach"] == {"fast": 1, "fallback": {}}

        monkeypatch.setattr(event_attr._EmptyListener, "__bool__", lambda self: True)
        with session_cls(engine) as session:
            assert listeners.has_listeners(session.dispatch.before_attach, listeners.KINDS)
            session.add(Item(name="asked"))
            assert session.new
        assert turbosession.stats()["attach"] == {
            "fast": 1,
            "fallback": {"attach_listeners": 1},
        }

        monkeypatch.undo()
        with session_cls(engine) as session:
            session.add(Item(name="quiet again"))
        assert turbosession.stats()["attach"] == {
            "fast": 2,
            "fallback": {"attach_listeners": 1},
        }
    finally:
        orm.close_all_sessions()
        engine.dispose()
