"""An updated object's identity key after a flush, turbosession against stock.

Registering flushed states persistent compares each state's key with the one
its dict now gives.  Compiled, a key whose values are the very objects the
dict holds is known to be unchanged without making the new key
(``_persist._key_unchanged``); any other key is made and compared as stock
does.  The scenarios run on stock and on turbosession (both implementations)
and compare the keys (values, and whether the state kept its key object),
the identity map, the states and the SQL, through flushes that keep the
key, set a key attribute to an equal but distinct value, change the key,
fail, and roll back.
"""

import pytest
from sqlalchemy import exc as sa_exc

import turbosession
from sqlalchemy import inspect, select

from support import assert_same_as_stock
from test_attach import Base, Plain, bookkeeping

# explicit ids above CPython's small-int cache: int("1000") is then an equal
# value that is not the object the key holds
FIRST, SECOND = 1000, 1001


def seeded(session_cls, engine):
    with session_cls(engine) as s:
        s.add_all([Plain(id=FIRST, name="x", qty=1), Plain(id=SECOND, name="y", qty=2)])
        s.commit()


def keys(session, log, kept, **objects):
    """Each object's key, whether it is still the key object noted in
    ``kept``, and the identity map's keys."""
    for name, obj in objects.items():
        key = inspect(obj).key
        log.note(name, key and (key[0].__name__, key[1], key[2]), key is kept.get(name))
    log.note("map", sorted(k[1] for k in session.identity_map.keys()))
    bookkeeping(session, log, **objects)


def loaded(session):
    x, y = session.scalars(select(Plain).order_by(Plain.id)).all()
    return x, y, {"x": inspect(x).key, "y": inspect(y).key}


def sc_update_keeps_key(session_cls, engine, log):
    seeded(session_cls, engine)
    with session_cls(engine) as session:
        x, y, kept = loaded(session)
        x.qty += 1
        y.name = "renamed"
        session.flush()
        keys(session, log, kept, x=x, y=y)
        session.commit()
        keys(session, log, kept, x=x, y=y)


def sc_equal_distinct_key_value(session_cls, engine, log):
    seeded(session_cls, engine)
    with session_cls(engine) as session:
        x, y, kept = loaded(session)
        x.id = int(str(FIRST))
        assert x.id is not kept["x"][1][0]
        x.qty += 1
        session.flush()
        keys(session, log, kept, x=x, y=y)
        session.commit()
        keys(session, log, kept, x=x, y=y)


def sc_key_change_then_rollback(session_cls, engine, log):
    seeded(session_cls, engine)
    with session_cls(engine) as session:
        x, y, kept = loaded(session)
        x.id = 2000
        y.qty += 1
        session.flush()
        keys(session, log, kept, x=x, y=y)
        session.rollback()
        keys(session, log, kept, x=x, y=y)
        log.note("reloaded", sorted(session.scalars(select(Plain.id))))


def sc_failed_flush(session_cls, engine, log):
    seeded(session_cls, engine)
    with session_cls(engine) as session:
        x, y, kept = loaded(session)
        x.qty += 1
        y.id = FIRST  # the row x has: the UPDATE fails
        with pytest.raises(sa_exc.IntegrityError):
            session.flush()
        log.note("flush failed")
        session.rollback()
        keys(session, log, kept, x=x, y=y)
        log.note("values", x.id, x.qty, y.id, y.qty)


@pytest.mark.parametrize(
    "scenario",
    [
        sc_update_keeps_key,
        sc_equal_distinct_key_value,
        sc_key_change_then_rollback,
        sc_failed_flush,
    ],
)
def test_same_as_stock(scenario, session_cls, engine):
    turbosession.reset_stats()
    entries = assert_same_as_stock(scenario, session_cls, engine, Base.metadata)
    assert any(entry[0] == "map" for entry in entries) and any(
        entry[0] == "cursor" for entry in entries
    )
    # every flush of the run was turbosession's, none handed to stock's
    stats = turbosession.stats()
    assert stats["fast"] >= 2 and stats["fallback"] == {}, stats
