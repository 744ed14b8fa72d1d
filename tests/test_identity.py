"""turbosession's identity map against SQLAlchemy's _WeakInstanceDict.

Two worlds run the same operation sequence: stock's map with one set of
objects, turbosession's map (each implementation) with a second set.  Every observable
result (return values, exceptions, contents, order, the _modified set, what
garbage collection removes) must match.
"""

import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.orm.base import instance_state
from sqlalchemy.orm.identity import IdentityMap, _WeakInstanceDict
from sqlalchemy.orm.util import identity_key

from support import scrub


class Base(DeclarativeBase):
    pass


class Thing(Base):
    __tablename__ = "thing"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


KEYS = 2


class World:
    """One identity map and the objects (by index) it is exercised with."""

    def __init__(self, identity_map):
        self.map = identity_map
        self.objects = []  # index -> object (None once dropped)
        self.states = []   # index -> state (kept: states outlive objects)

    def new(self, key_index):
        obj = Thing(id=key_index, name="n")
        state = instance_state(obj)
        state.key = identity_key(Thing, key_index)
        # a loaded object starts clean: forget the constructor's changes
        state._commit_all(state.dict)
        self.objects.append(obj)
        self.states.append(state)

    def describe(self, value):
        """Replace objects and states by their indexes so worlds compare."""
        if isinstance(value, (list, tuple, set, frozenset)) or type(value).__name__ == "dict_keys":
            items = [self.describe(v) for v in value]
            return sorted(items, key=repr) if isinstance(value, (set, frozenset)) else items
        for index, state in enumerate(self.states):
            if value is state:
                return ("state", index)
            if value is not None and value is self.objects[index]:
                return ("object", index)
        return value

    def snapshot(self):
        m = self.map
        return {
            "len": len(m),
            "keys": self.describe(list(m.keys())),
            "iter": self.describe(list(iter(m))),
            "values": self.describe(m.values()),
            "items": self.describe(m.items()),
            "all_states": self.describe(m.all_states()),
            "modified": self.describe(m._modified),
            "dirty": self.describe(m._dirty_states()),
            "check_modified": m.check_modified(),
            "contains": [identity_key(Thing, k) in m for k in range(KEYS)],
            "contains_state": [m.contains_state(s) for s in self.states],
        }


def outcome(world, call):
    try:
        return ("ok", world.describe(call()))
    except Exception as exc:  # compared across worlds, so keep type and text
        return ("raised", type(exc), scrub(str(exc)))


def apply(world, op):
    name, a = op
    states, m = world.states, world.map
    key = identity_key(Thing, a % KEYS)
    if name == "new":
        world.new(a % KEYS)
        return None
    if not states:
        return None
    index = a % len(states)
    state = states[index]
    if name == "drop":
        world.objects[index] = None
        gc.collect()
        return None
    if name == "modify":
        obj = world.objects[index]
        if obj is None:
            return None
        obj.name = f"changed {a}"
        return None
    if name == "commit":
        state._commit_all(state.dict, m)
        return None
    calls = {
        "add": lambda: m.add(state),
        "replace": lambda: m.replace(state),
        "safe_discard": lambda: m.safe_discard(state),
        "discard": lambda: m.discard(state),
        "fast_discard": lambda: m._fast_discard(state),
        "add_unpresent": lambda: m._add_unpresent(state, state.key),
        "kill": lambda: m._kill(),
        "get": lambda: m.get(key),
        "get_default": lambda: m.get(key, "default"),
        "getitem": lambda: m[key],
        "fast_get_state": lambda: m.fast_get_state(key),
        "has_key": lambda: m.has_key(key),
    }
    return outcome(world, calls[name])


# weighted: creating states and putting them in the map must be frequent so
# that keys collide (replace, conflicting add) within short sequences
OPS = ["new"] * 4 + ["add"] * 4 + ["replace"] * 2 + ["drop", "modify", "commit",
       "safe_discard", "discard", "fast_discard", "add_unpresent", "kill",
       "get", "get_default", "getitem", "fast_get_state", "has_key"]

op_lists = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, 7)), min_size=5, max_size=60)


def run_differential(impl, ops):
    stock = World(_WeakInstanceDict())
    ours = World(impl.identity.WeakIdentityMap())
    for op in ops:
        assert apply(ours, op) == apply(stock, op), op
        assert ours.snapshot() == stock.snapshot(), op


@settings(max_examples=300, deadline=None)
@given(ops=op_lists)
def test_same_behaviour_as_weak_instance_dict(impl, ops):
    run_differential(impl, ops)


@pytest.mark.parametrize(
    "ops",
    [
        # an object nobody holds leaves the map when it is collected
        [("new", 0), ("add", 0), ("drop", 0), ("get", 0), ("getitem", 0)],
        # a modified object stays in _modified until discarded
        [("new", 0), ("add", 0), ("modify", 0), ("safe_discard", 0)],
        # replace() swaps the state for the same key and returns the old one
        [("new", 1), ("new", 1), ("add", 0), ("modify", 0), ("replace", 1), ("get", 1)],
        # add() of a second live state for the same key is refused
        [("new", 2), ("new", 2), ("add", 0), ("add", 1)],
        # ... but allowed once the first object was collected
        [("new", 2), ("new", 2), ("add", 0), ("drop", 0), ("add", 1)],
        # after _kill() (expunge_all/close) loading into the map fails
        [("new", 3), ("kill", 0), ("add_unpresent", 0), ("add", 0), ("get", 3)],
    ],
)
def test_named_sequences(impl, ops):
    run_differential(impl, ops)


def test_is_an_identity_map(impl):
    identity_map = impl.identity.WeakIdentityMap()
    assert isinstance(identity_map, IdentityMap)
    assert impl.identity._is_compiled() is (impl.name == "compiled")


def test_killed_map_message(impl):
    identity_map = impl.identity.WeakIdentityMap()
    identity_map._kill()
    thing = Thing(id=1, name="x")
    state = instance_state(thing)
    state.key = identity_key(Thing, 1)
    with pytest.raises(sa_exc.InvalidRequestError, match="identity map is no longer valid") as info:
        identity_map._add_unpresent(state, state.key)
    assert info.value.code == "lkrp"


def test_unhashable_key_raises_like_stock(impl):
    for identity_map in (_WeakInstanceDict(), impl.identity.WeakIdentityMap()):
        with pytest.raises(TypeError):
            identity_map.get([1])
        with pytest.raises(TypeError):
            [1] in identity_map


@pytest.mark.parametrize("key", [None, 1, (Thing, (1,), None), "x"])
def test_missing_key_error_like_stock(impl, key):
    raised = []
    for identity_map in (_WeakInstanceDict(), impl.identity.WeakIdentityMap()):
        with pytest.raises(KeyError) as info:
            identity_map[key]
        raised.append((info.value.args, str(info.value)))
    assert raised[1] == raised[0]


@settings(max_examples=200, deadline=None)
@given(
    ops=st.lists(st.tuples(st.sampled_from(["new", "add", "modify", "drop"]), st.integers(0, 7)), max_size=30),
    chosen=st.lists(st.integers(0, 7), max_size=6),
)
def test_discard_deleted_is_safe_discard_per_state(impl, ops, chosen):
    """``discard_deleted`` (the flush's loop of ``_remove_newly_deleted``)
    leaves the map, the ``deleted`` dict and the states as stock's
    ``safe_discard``, ``pop`` and ``_deleted = True`` per state leave them."""
    stock = World(_WeakInstanceDict())
    ours = World(impl.identity.WeakIdentityMap())
    for op in ops:
        assert apply(ours, op) == apply(stock, op), op
    worlds = []
    for world in (stock, ours):
        states = [world.states[i % len(world.states)] for i in chosen] if world.states else []
        deleted = {state: world.objects[i] for i, state in enumerate(world.states) if i % 2 == 0}
        if world is stock:
            for state in states:
                world.map.safe_discard(state)
                deleted.pop(state, None)
                state._deleted = True
        else:
            world.map.discard_deleted(states, deleted)
        worlds.append(
            (
                world.snapshot(),
                world.describe(list(deleted)),
                [state._deleted for state in world.states],
                ["_instance_dict" in state.__dict__ for state in world.states],
            )
        )
    assert worlds[1] == worlds[0]


def test_flush_shortcuts_follow_overrides(impl):
    """``replace_dict`` and ``discards_as_core`` (the flush reads the map's
    dict instead of calling ``replace`` / ``safe_discard`` per state) give
    way to a ``replace`` or ``safe_discard`` of the map's class or of the
    map itself."""
    identity_map = impl.identity.WeakIdentityMap()
    assert identity_map.replace_dict() is identity_map._dict
    assert identity_map.discards_as_core()

    class Replacing(impl.identity.WeakIdentityMap):
        def replace(self, state):
            return super().replace(state)

    class Discarding(impl.identity.WeakIdentityMap):
        def safe_discard(self, state):
            super().safe_discard(state)

    assert Replacing().replace_dict() is None and Replacing().discards_as_core()
    assert Discarding().replace_dict() is not None and not Discarding().discards_as_core()
    patched = impl.identity.WeakIdentityMap()
    patched.replace = patched.replace
    patched.safe_discard = patched.safe_discard
    assert patched.replace_dict() is None
    assert not patched.discards_as_core()
