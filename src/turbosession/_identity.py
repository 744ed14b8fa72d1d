"""Identity map: identity key -> InstanceState, objects weakly referenced.

Behaves as ``sqlalchemy.orm.identity._WeakInstanceDict``: an InstanceState
removes itself through ``_fast_discard`` when its object is collected, and
``InstanceState._modified_event`` adds dirty states to ``_modified``.  A single
``dict.get`` replaces stock's ``in`` test plus lookup.

Compiled, the map's bookkeeping is a ``cclass`` so that the lookups made by
loading, ``Session.get()`` and the flush are C calls on a typed dict;
``WeakIdentityMap`` adds SQLAlchemy's ``IdentityMap`` as a second base so that
``isinstance`` checks and the base class's helpers keep working.
"""

from __future__ import annotations

import weakref

from sqlalchemy import exc as sa_exc
from sqlalchemy.orm.base import state_str
from sqlalchemy.orm.identity import IdentityMap

try:
    import cython
except ModuleNotFoundError:
    from turbosession import _cython_shim as cython

if cython.compiled:
    from cython.cimports.turbosession._cpython import (
        ClassSite,
        own_dict,
        own_entry,
        state_object,
    )
else:
    ClassSite = None  # the declaration below is plain None

# compiled, discard_deleted reads and sets these in the state's own
# __dict__ while its class has no descriptor of them (own_attributes)
_DISCARD_NAMES = cython.declare(tuple, ("key", "modified", "_deleted"))
_discard_site = cython.declare(ClassSite)

__all__ = ["WeakIdentityMap"]


def _is_compiled():
    return cython.compiled


@cython.cfunc
@cython.inline
def _object_of(state) -> object:
    """``state.obj()``: the object, or None once it has been collected.

    Every lookup ends here.  Compiled, the weakref is read without a Python
    call (that call was a third of the cost of ``get``).  ``state.obj`` is a
    ``weakref.ref`` except on a state SQLAlchemy dereferenced, where it is a
    function returning None.
    """
    if cython.compiled:
        return state_object(state)
    return state.obj()


def _raise_killed(state):
    raise sa_exc.InvalidRequestError(
        "Object %s cannot be converted to 'persistent' state, as this "
        "identity map is no longer valid.  Has the owning Session "
        "been closed?" % state_str(state),
        code="lkrp",
    )


def _raise_conflict(state):
    raise sa_exc.InvalidRequestError(
        "Can't attach instance "
        "%s; another instance with key %s is already "
        "present in this session." % (state_str(state), state.key)
    )


@cython.cclass
class WeakIdentityMapCore:
    _dict = cython.declare(dict, visibility="public")
    _modified = cython.declare(set, visibility="public")
    _wr = cython.declare(object, visibility="public")
    _killed = cython.declare(cython.bint, visibility="public")
    __weakref__: object

    def __init__(self):
        # what IdentityMap.__init__ sets, plus _killed; that one must not run
        # (compiled, its attributes are this class's slots)
        self._dict = {}
        self._modified = set()
        self._wr = weakref.ref(self)
        self._killed = False

    def _kill(self):
        # after expunge_all()/close(), loading into this map must fail
        self._killed = True

    def _add_unpresent(self, state, key):
        if self._killed:
            _raise_killed(state)
        self._dict[key] = state
        state._instance_dict = self._wr

    def __getitem__(self, key):
        # .get, not [key]: compiled, a typed dict's own KeyError for None has
        # no args, where Python's (and so stock's) is KeyError(None)
        state = self._dict.get(key)
        if state is None:
            raise KeyError(key)
        obj = _object_of(state)
        if obj is None:
            raise KeyError(key)
        return obj

    def __contains__(self, key):
        state = self._dict.get(key)
        if state is None:
            return False
        return _object_of(state) is not None

    def __iter__(self):
        return iter(self._dict)

    def __len__(self):
        return len(self._dict)

    def keys(self):
        return self._dict.keys()

    def get(self, key, default=None):
        state = self._dict.get(key)
        if state is None:
            return default
        obj = _object_of(state)
        return default if obj is None else obj

    def fast_get_state(self, key):
        return self._dict.get(key)

    def contains_state(self, state):
        return self._dict.get(state.key) is state

    def all_states(self):
        return list(self._dict.values())

    def values(self):
        objects: list = []
        for state in list(self._dict.values()):
            obj = _object_of(state)
            if obj is not None:
                objects.append(obj)
        return objects

    def items(self):
        pairs: list = []
        for state in list(self._dict.values()):
            obj = _object_of(state)
            if obj is not None:
                pairs.append((state.key, obj))
        return pairs

    def add(self, state):
        key = state.key
        assert key is not None
        existing = self._dict.get(key)
        if existing is state:
            return False
        if existing is not None and _object_of(existing) is not None:
            _raise_conflict(state)
        self._dict[key] = state
        self._incoming(state)
        return True

    def replace(self, state):
        key = state.key
        assert key is not None
        existing = self._dict.get(key)
        if existing is state:
            return None
        if existing is not None:
            self._removed(existing)
        self._dict[key] = state
        self._incoming(state)
        return existing

    # the flush registers every state through replace(): compiled, these two
    # are C calls there, and the _manage_* methods keep IdentityMap's API

    @cython.cfunc
    @cython.inline
    def _incoming(self, state):
        state._instance_dict = self._wr
        if state.modified:
            self._modified.add(state)

    @cython.cfunc
    @cython.inline
    def _removed(self, state):
        del state._instance_dict
        if state.modified:
            self._modified.discard(state)

    def _manage_incoming_state(self, state):
        self._incoming(state)

    def _manage_removed_state(self, state):
        self._removed(state)

    def _fast_discard(self, state):
        # weakref callback of a collected object: no _modified bookkeeping (a
        # modified state is strongly held and cannot be collected).  Stock
        # asserts a key: a state whose key a rollback removed while its entry
        # stayed makes that AssertionError, which keeps InstanceState._cleanup
        # from deleting _instance_dict, so that the stale entry can still be
        # replaced later; the same assertion keeps that outcome.
        key = state.key
        assert key is not None
        if self._dict.get(key) is state:
            del self._dict[key]

    def safe_discard(self, state):
        key = state.key
        if self._dict.get(key) is state:
            del self._dict[key]
            self._removed(state)

    def discard(self, state):
        self.safe_discard(state)

    def discard_deleted(self, states, deleted: dict):
        """For each state, ``safe_discard(state)``, ``deleted.pop(state,
        None)`` and ``state._deleted = True``: the loop of stock's
        ``Session._remove_newly_deleted`` when no ``persistent_to_deleted``
        listener runs in between (``_persist.remove_newly_deleted``), without
        a method call per state.  Compiled, the state's ``key``,
        ``modified`` and ``_deleted`` are read and stored in its own
        ``__dict__`` while its class lets them be (``_cpython.own_dict``)."""
        map_: dict = self._dict
        own: dict
        for state in states:
            own = (
                own_dict(state, _DISCARD_NAMES, cython.address(_discard_site))
                if cython.compiled
                else None
            )
            if own is None:
                key = state.key
                if map_.get(key) is state:
                    del map_[key]
                    self._removed(state)
                deleted.pop(state, None)
                state._deleted = True
                continue
            # the same reads and stores, in the same order (_removed's too)
            key = own_entry(own, state, "key")
            if map_.get(key) is state:
                del map_[key]
                del state._instance_dict
                if own_entry(own, state, "modified"):
                    self._modified.discard(state)
            deleted.pop(state, None)
            own["_deleted"] = True

    def _dirty_states(self):
        return self._modified

    def check_modified(self):
        return bool(self._modified)

    def has_key(self, key):
        return key in self


if not cython.compiled:
    # Uncompiled, _object_of is a Python call (a third of a get() hit's own
    # cost, two thirds of values()), and testing cython.compiled inside a
    # method is two lookups per call: the methods that dereference states
    # are chosen here, once, in a plain-Python form that calls state.obj()
    # itself (and lets the dict raise KeyError(key), as stock's does).

    def _getitem(self, key):
        obj = self._dict[key].obj()
        if obj is None:
            raise KeyError(key)
        return obj

    def _contains(self, key):
        state = self._dict.get(key)
        return state is not None and state.obj() is not None

    def _get(self, key, default=None):
        state = self._dict.get(key)
        if state is None:
            return default
        obj = state.obj()
        return default if obj is None else obj

    def _values(self):
        objects = []
        for state in list(self._dict.values()):
            obj = state.obj()
            if obj is not None:
                objects.append(obj)
        return objects

    def _items(self):
        pairs = []
        for state in list(self._dict.values()):
            obj = state.obj()
            if obj is not None:
                pairs.append((state.key, obj))
        return pairs

    WeakIdentityMapCore.__getitem__ = _getitem
    WeakIdentityMapCore.__contains__ = _contains
    WeakIdentityMapCore.get = _get
    WeakIdentityMapCore.values = _values
    WeakIdentityMapCore.items = _items


class WeakIdentityMap(WeakIdentityMapCore, IdentityMap):
    def contains_dict(self):
        """The dict ``contains_state`` reads (``self._dict.get(state.key) is
        state``), for the attach walk and the association rows (``_attach``,
        ``_relationships``) to read directly; None while the map's class
        overrides ``contains_state`` or the map itself holds one (the
        method is then called)."""
        if (
            type(self).contains_state is not _CORE_CONTAINS_STATE
            or "contains_state" in self.__dict__
        ):
            return None
        return self._dict

    def replace_dict(self):
        """The dict ``replace`` reads, for the flush's registration of
        persistent states (``_persist.register_persistent``) to skip the
        call where ``replace`` does nothing (the state is already the one
        mapped under its key); None while the map's class overrides
        ``replace`` or the map itself holds one."""
        if type(self).replace is not _CORE_REPLACE or "replace" in self.__dict__:
            return None
        return self._dict

    def discards_as_core(self):
        """Whether ``safe_discard`` is this module's (the map's class and
        the map itself hold no other), so that ``discard_deleted`` does what
        calling it per state would."""
        return (
            type(self).safe_discard is _CORE_SAFE_DISCARD
            and type(self).discard_deleted is _CORE_DISCARD_DELETED
            and "safe_discard" not in self.__dict__
            and "discard_deleted" not in self.__dict__
        )


_CORE_CONTAINS_STATE = WeakIdentityMapCore.contains_state
_CORE_REPLACE = WeakIdentityMapCore.replace
_CORE_SAFE_DISCARD = WeakIdentityMapCore.safe_discard
_CORE_DISCARD_DELETED = WeakIdentityMapCore.discard_deleted
