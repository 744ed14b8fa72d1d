"""Bad input gets exactly what stock SQLAlchemy gives it.

Every public Session method that takes an object or a class is called with
an unmapped instance, an unmapped class, None, a detached object and an
object still attached to another session; the exception type and message
(or the success) must match stock's.
"""

import pytest
from sqlalchemy import orm, select

from models import Base, User
from support import normalize_error


class Unmapped:
    pass


CALLS = {
    "add": lambda s, x: s.add(x),
    "add_all": lambda s, x: s.add_all([x]),
    "delete": lambda s, x: s.delete(x),
    "merge": lambda s, x: s.merge(x),
    "merge_noload": lambda s, x: s.merge(x, load=False),
    "expunge": lambda s, x: s.expunge(x),
    "refresh": lambda s, x: s.refresh(x),
    "expire": lambda s, x: s.expire(x),
    "expire_attrs": lambda s, x: s.expire(x, ["name"]),
    "is_modified": lambda s, x: s.is_modified(x),
    "enable_relationship_loading": lambda s, x: s.enable_relationship_loading(x),
    "flush_objects": lambda s, x: s.flush([x]),
    "contains": lambda s, x: x in s,
    "get": lambda s, x: s.get(x, 1),
    "get_one": lambda s, x: s.get_one(x, 1),
    "select": lambda s, x: s.scalars(select(x)).all(),
    "query": lambda s, x: s.query(x).all(),
    "get_bind": lambda s, x: s.get_bind(x),
    "bulk_save_objects": lambda s, x: s.bulk_save_objects([x]),
    "object_session": lambda s, x: orm.object_session(x),
}

INPUTS = ["unmapped instance", "unmapped class", "None", "detached", "other session", "mapped class"]


def make_input(kind, session_cls, engine):
    """The bad input, plus whatever must stay referenced while it is used."""
    if kind == "unmapped instance":
        return Unmapped(), None
    if kind == "unmapped class":
        return Unmapped, None
    if kind == "None":
        return None, None
    if kind == "mapped class":
        return User, None
    other = session_cls(engine)
    user = other.get(User, 1)
    if kind == "detached":
        other.close()
    return user, other


def outcome(call, session_cls, engine, kind):
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with session_cls(engine) as seeding:
        seeding.add(User(id=1, name="ed"))
        seeding.commit()
    value, keep_alive = make_input(kind, session_cls, engine)
    session = session_cls(engine)
    try:
        result = call(session, value)
    except Exception as exc:
        return ("raised",) + normalize_error(exc)
    finally:
        session.close()
        if keep_alive is not None:
            keep_alive.close()
    if isinstance(result, orm.Session):
        return ("returned", "a session")
    return ("returned", type(result).__name__)


@pytest.mark.parametrize("kind", INPUTS)
@pytest.mark.parametrize("name", sorted(CALLS))
def test_same_outcome_as_stock(name, kind, session_cls, engine):
    call = CALLS[name]
    expected = outcome(call, orm.Session, engine, kind)
    actual = outcome(call, session_cls, engine, kind)
    assert actual == expected


def test_bad_input_is_really_rejected(session_cls, engine):
    """The comparison above is not vacuous: these raise on both."""
    for name, kind in [("add", "unmapped instance"), ("get", "unmapped class"),
                       ("add", "None"), ("add", "other session"), ("refresh", "detached")]:
        result = outcome(CALLS[name], session_cls, engine, kind)
        assert result[0] == "raised", (name, kind, result)
