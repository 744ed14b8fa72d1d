# cython: language_level=3
"""Identity map, compiled twin of ``turbosession._identity_py``.

The same semantics as ``sqlalchemy.orm.identity._WeakInstanceDict``; the map
itself is a ``cdef class`` so that lookups made by loading, ``Session.get()``
and the flush are C calls on a typed dict.  ``WeakIdentityMap`` adds
SQLAlchemy's ``IdentityMap`` as a second base so that ``isinstance`` checks
and the base class's helpers keep working.
"""

import weakref

from cpython.object cimport PyObject
from cpython.ref cimport Py_DECREF
from cpython.weakref cimport PyWeakref_GetRef
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm.base import state_str
from sqlalchemy.orm.identity import IdentityMap

__all__ = ["WeakIdentityMap"]


def _is_compiled():
    return True


cdef object WeakRefType = weakref.ref


cdef inline object _object_of(state):
    """``state.obj()``, without calling the weakref through Python.

    Every lookup ends here, and the Python-level call was a third of the cost
    of ``get``.  ``state.obj`` is a ``weakref.ref`` except on a state that
    SQLAlchemy dereferenced, where it is a function returning None.
    """
    cdef PyObject* obj
    ref = state.obj
    if type(ref) is not WeakRefType:
        return ref()
    if PyWeakref_GetRef(ref, &obj) != 1:
        return None
    result = <object>obj  # takes a reference of its own: give back GetRef's
    Py_DECREF(result)
    return result


cdef _raise_killed(state):
    raise sa_exc.InvalidRequestError(
        "Object %s cannot be converted to 'persistent' state, as this "
        "identity map is no longer valid.  Has the owning Session "
        "been closed?" % state_str(state),
        code="lkrp",
    )


cdef _raise_conflict(state):
    raise sa_exc.InvalidRequestError(
        "Can't attach instance "
        "%s; another instance with key %s is already "
        "present in this session." % (state_str(state), state.key)
    )


cdef class WeakIdentityMapCore:
    cdef public dict _dict
    cdef public set _modified
    cdef public object _wr
    cdef public bint _killed
    cdef object __weakref__

    def __cinit__(self):
        self._dict = {}
        self._modified = set()
        self._wr = weakref.ref(self)
        self._killed = False

    def __init__(self):
        # all set up in __cinit__; IdentityMap.__init__ must not run
        pass

    def _kill(self):
        # after expunge_all()/close(), loading into this map must fail
        self._killed = True

    def _add_unpresent(self, state, key):
        if self._killed:
            _raise_killed(state)
        self._dict[key] = state
        state._instance_dict = self._wr

    def __getitem__(self, key):
        obj = _object_of(self._dict[key])
        if obj is None:
            raise KeyError(key)
        return obj

    def __contains__(self, key):
        state = self._dict.get(key)
        return state is not None and _object_of(state) is not None

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
        cdef list objects = []
        for state in list(self._dict.values()):
            obj = _object_of(state)
            if obj is not None:
                objects.append(obj)
        return objects

    def items(self):
        cdef list pairs = []
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

    # the flush registers every state through replace(): these two run as
    # C calls there, and stay methods for IdentityMap's API

    cdef inline _incoming(self, state):
        state._instance_dict = self._wr
        if state.modified:
            self._modified.add(state)

    cdef inline _removed(self, state):
        del state._instance_dict
        if state.modified:
            self._modified.discard(state)

    def _manage_incoming_state(self, state):
        self._incoming(state)

    def _manage_removed_state(self, state):
        self._removed(state)

    def _fast_discard(self, state):
        # weakref callback of a collected object: no _modified bookkeeping,
        # a modified state is strongly held and cannot be collected
        key = state.key
        if self._dict.get(key) is state:
            del self._dict[key]

    def safe_discard(self, state):
        key = state.key
        if self._dict.get(key) is state:
            del self._dict[key]
            self._removed(state)

    def discard(self, state):
        self.safe_discard(state)

    def _dirty_states(self):
        return self._modified

    def check_modified(self):
        return bool(self._modified)

    def has_key(self, key):
        return key in self


class WeakIdentityMap(WeakIdentityMapCore, IdentityMap):
    pass
