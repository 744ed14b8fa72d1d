"""A state whose ``obj`` is not a weakref reads as collected, in every map.

SQLAlchemy replaces ``InstanceState.obj`` by ``lambda: None`` when it
dereferences a state (``_force_dereference``, unpickling a state without its
object).  The compiled map reads live objects straight from the weakref and
must fall back to calling ``obj`` for anything else: every lookup has to give
what ``_WeakInstanceDict`` gives, while the live neighbour is still found.
"""

import pytest
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.orm.base import instance_state
from sqlalchemy.orm.identity import _WeakInstanceDict
from sqlalchemy.orm.util import identity_key


class Base(DeclarativeBase):
    pass


class Thing(Base):
    __tablename__ = "thing_dereferenced"
    id: Mapped[int] = mapped_column(primary_key=True)


def observe(identity_map):
    """Fill a map with a live object and a dereferenced one; report every lookup."""
    live, gone = Thing(id=1), Thing(id=2)
    for obj in (live, gone):
        state = instance_state(obj)
        state.key = identity_key(Thing, obj.id)
        state._commit_all(state.dict)
        identity_map.add(state)
    instance_state(gone).obj = lambda: None
    gone_key, live_key = identity_key(Thing, 2), identity_key(Thing, 1)
    with pytest.raises(KeyError) as missing:
        identity_map[gone_key]
    replacement = Thing(id=2)
    replacement_state = instance_state(replacement)
    replacement_state.key = gone_key
    return {
        "get": (identity_map.get(live_key) is live, identity_map.get(gone_key, "default")),
        "getitem": (identity_map[live_key] is live, missing.value.args),
        "contains": (live_key in identity_map, gone_key in identity_map),
        "values": [o.id for o in identity_map.values()],
        "items": [(k, o.id) for k, o in identity_map.items()],
        # add over a dereferenced state is allowed: it counts as collected
        "add": identity_map.add(replacement_state),
        "after add": identity_map.get(gone_key) is replacement,
    }


def test_dereferenced_state_matches_stock(impl):
    assert observe(impl.identity.WeakIdentityMap()) == observe(_WeakInstanceDict())
