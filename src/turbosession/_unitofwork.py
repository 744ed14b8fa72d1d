"""Per-state bookkeeping of the unit of work.

turbosession's ``UOWTransaction`` (``turbosession.flush``) calls these where
stock's unit of work loops over states:

- ``attribute_history``: ``UOWTransaction.get_attribute_history``, which the
  dependency processors call for every state and relationship of a flush.
  The flag arithmetic (``PassiveFlag`` is an enum: every ``|`` and ``&`` is
  a Python call) is memoized per flag value.
- ``states_for_mapper_hierarchy``: the states of a mapper hierarchy with a
  given (isdelete, listonly), in stock's order.
- ``new_flush_context``: the flush's ``UOWTransaction``, its attributes
  stored as stock's constructor and turbosession's store them.
- ``split_per_state``: when mappers form a cycle (self-referential
  relationships), stock replaces each per-mapper save/delete action in the
  cycle by one action per state and rewrites every dependency edge to point
  at them.  For a tree of thousands of objects that is tens of thousands of
  records and edges; this builds the same records, registers them in the
  same dict, and adds and removes the same edges in the same sequence (so
  even the sets iterate in stock's order).  The per-state records of
  ``_SaveUpdateAll`` / ``_DeleteAll`` are made here directly, as their
  constructors would make them; every other action (and every dependency
  processor) still makes its own through stock's code.
- ``tree_rounds``: when the cycle is one mapper's tree of new objects,
  the same records made from the states' links, and the sort's rounds
  computed from them, without the edges.

Compiled, the per-state and per-edge loops are C loops over typed dicts,
sets and lists.
"""

from __future__ import annotations

import types
from collections import defaultdict

from sqlalchemy.orm import attributes, collections
from sqlalchemy.orm import base as _base, state as _state_module
from sqlalchemy.orm.dependency import _DependencyProcessor, _ManyToOneDP, _OneToManyDP
from sqlalchemy.orm.unitofwork import (
    _DeleteAll,
    _DeleteState,
    _ProcessAll,
    _ProcessState,
    _SaveUpdateAll,
    _SaveUpdateState,
)

try:
    import cython
except ModuleNotFoundError:
    from turbosession import _cython_shim as cython

if cython.compiled:
    from cython.cimports.cpython.object import PyObject, PyTypeObject
    from cython.cimports.cpython.ref import Py_INCREF
    from cython.cimports.cpython.tuple import PyTuple_SET_ITEM
    from cython.cimports.cpython.type import PyType_GenericAlloc
    from cython.cimports.turbosession._cpython import (
        PyBaseObject_Type,
        manager_impl,
        dict_get,
        ClassSite,
        SlotSite,
        state_object,
        DictSite,
        live_state_dict,
        class_attribute_is,
        instance_dict,
        slot_value,
        store_slot,
        type_version_tag,
        class_lookup,
        writable_slot_offset,
    )
else:
    SlotSite = ClassSite = DictSite = None  # the declarations below are plain None

__all__ = [
    "attribute_history",
    "base_steps",
    "split_per_state",
    "states_for_mapper_hierarchy",
    "states_of_mappers",
    "tree_rounds",
    "collections_without_history",
]

_SQL_OK = cython.declare(object, attributes.SQL_OK)
_RELOAD = cython.declare(
    object, attributes.PASSIVE_OFF | attributes.LOAD_AGAINST_COMMITTED | attributes.NO_RAISE
)
_LOAD_EXTRA = cython.declare(object, attributes.LOAD_AGAINST_COMMITTED | attributes.NO_RAISE)
_object_new = cython.declare(object, object.__new__)
_EMPTY_TUPLE = cython.declare(tuple, ())
_tuple_new = cython.declare(object, tuple.__new__)
_History = cython.declare(object, attributes.History)
# a class statement's type allocates with PyType_GenericAlloc (tp_alloc)
_HISTORY_ALLOCATES_GENERICALLY = cython.declare(
    cython.bint, bool(attributes.History.__flags__ & (1 << 9))  # Py_TPFLAGS_HEAPTYPE
)
_CollectionAttributeImpl = cython.declare(object, attributes._CollectionAttributeImpl)
_InstrumentedList = cython.declare(object, collections.InstrumentedList)
_INCLUDE_PENDING_MUTATIONS = cython.declare(object, attributes.INCLUDE_PENDING_MUTATIONS)
_NO_HISTORY = cython.declare(object, attributes._NO_HISTORY)
_NO_VALUE = cython.declare(object, attributes.NO_VALUE)
_MISSING = cython.declare(object, object())
_MAPPER_PROPERTY = cython.declare(object, _state_module.InstanceState.__dict__["mapper"])
_MAPPER_GETTER = cython.declare(object, _MAPPER_PROPERTY.fget)
_PASSIVE_NO_INITIALIZE = cython.declare(object, attributes.PASSIVE_NO_INITIALIZE)
_PER_STATE_FLUSH_ACTIONS = cython.declare(object, _DependencyProcessor.per_state_flush_actions)
_ONE_TO_MANY_STATE_DEPENDENCIES = cython.declare(object, _OneToManyDP.per_state_dependencies)
_MANY_TO_ONE_STATE_DEPENDENCIES = cython.declare(object, _ManyToOneDP.per_state_dependencies)
_HISTORY_BLANK = cython.declare(object, attributes.HISTORY_BLANK)
_PASSIVE_NO_RESULT = cython.declare(object, attributes.PASSIVE_NO_RESULT)
_InstanceState = cython.declare(object, _state_module.InstanceState)
_PENDING_MUTATIONS = cython.declare(
    object, _state_module.InstanceState.__dict__["_pending_mutations"]
)
_INSTANCE_DICT = cython.declare(object, _base.instance_dict)
_BASE_NAMES = cython.declare(dict, _base.__dict__)
_DICT_GETITEM = cython.declare(object, dict.__getitem__)
_CALLABLES_OK = cython.declare(object, attributes.CALLABLES_OK)
_COLLECTION_HISTORY = cython.declare(object, attributes._CollectionAttributeImpl.get_history)
_ATTRIBUTE_GET = cython.declare(object, attributes._AttributeImpl.get)
_ScalarAttributeImpl = cython.declare(object, attributes._ScalarAttributeImpl)
_ScalarObjectAttributeImpl = cython.declare(object, attributes._ScalarObjectAttributeImpl)
_SCALAR_HISTORY = cython.declare(object, attributes._ScalarAttributeImpl.get_history)
_OBJECT_HISTORY = cython.declare(object, attributes._ScalarObjectAttributeImpl.get_history)

# compiled, the call sites' kept class lookups (see _cpython.slot_value and
# class_attribute_is)
_impl_site = cython.declare(SlotSite)
_dict_getitem_site = cython.declare(ClassSite)

# passive flag -> (passive | LOAD_AGAINST_COMMITTED | NO_RAISE, bool(passive & SQL_OK))
_flags = cython.declare(dict, {})
# flags -> (bool(flags & INCLUDE_PENDING_MUTATIONS), bool(flags & CALLABLES_OK))
_bits = cython.declare(dict, {})


def _is_compiled():
    return cython.compiled


@cython.cfunc
@cython.inline
def _flag_info(passive) -> tuple:
    info: tuple = _flags.get(passive)
    if info is None:
        info = _flags[passive] = (passive | _LOAD_EXTRA, bool(passive & _SQL_OK))
    return info


@cython.cfunc
def _present_scalar_history(impl, state, key, dict_, flags):
    """The ``History`` stock's ``get_history`` of a column or many-to-one
    attribute returns when its value is in the state's dict
    (``from_scalar_attribute`` / ``from_object_attribute``) or when it is
    absent, nothing is kept and ``flags`` allow no loader (``get`` answers
    ``PASSIVE_NO_RESULT``: ``HISTORY_BLANK``), or None for stock's (a
    loader may run, a many-to-one with deferred history, an implementation
    whose ``get_history`` or ``get`` is not stock's)."""
    scalar: cython.bint
    kind = type(impl)
    if kind is _ScalarAttributeImpl:
        if _ScalarAttributeImpl.get_history is not _SCALAR_HISTORY:
            return None
        scalar = True
    elif kind is _ScalarObjectAttributeImpl:
        if (
            _ScalarObjectAttributeImpl.get_history is not _OBJECT_HISTORY
            or impl._deferred_history
        ):
            return None
        scalar = False
    else:
        return None
    current = dict_get(dict_, key, _MISSING) if cython.compiled else dict_.get(key, _MISSING)
    if current is _MISSING:
        # stock's get() answers PASSIVE_NO_RESULT when nothing is kept and
        # loader callables are not allowed: HISTORY_BLANK
        if (
            kind.get is _ATTRIBUTE_GET
            and not _flag_bits(flags)[1]
            and (
                key not in state.committed_state
                if scalar
                else (
                    dict_get(state.committed_state, key, _NO_VALUE) if cython.compiled
                    else state.committed_state.get(key, _NO_VALUE)
                ) is _NO_VALUE
            )
        ):
            return _HISTORY_BLANK
        return None
    if current is _NO_VALUE or current is _PASSIVE_NO_RESULT:
        return None
    committed = state.committed_state
    original = (
        dict_get(committed, key, _NO_HISTORY) if cython.compiled
        else committed.get(key, _NO_HISTORY)
    )
    if original is _NO_HISTORY:
        return _new_history((), [current], ())
    if scalar:
        # stock compares with whatever the original is, symbols included
        if impl.is_equal(current, original) is True:
            return _new_history((), [current], ())
        unknown: cython.bint = original is _NO_VALUE or original is _PASSIVE_NO_RESULT
    else:
        if current is original:
            return _new_history((), [current], ())
        # the previous related object is not reported when unknown or None
        unknown = original is _NO_VALUE or original is _PASSIVE_NO_RESULT or original is None
    if unknown:
        return _new_history([current], (), ())
    return _new_history([current], (), [original])


@cython.cfunc
def _history(state, key, flags, passive) -> tuple:
    """The unit of work's cache entry for ``state``'s ``key`` looked up with
    ``flags``: ``(history, history as states, passive)``, made as one tuple
    (no pair to unpack per lookup)."""
    impl = _impl_of(state.manager, key) if cython.compiled else state.manager[key].impl
    dict_ = _state_dict(state)
    found = _present_scalar_history(impl, state, key, dict_, flags)
    if found is not None:
        if found is _HISTORY_BLANK:
            return (found, found, passive)
        if impl.uses_objects:
            # made here (HISTORY_BLANK is handled above): its items read as
            # a tuple's, not through the subclass's __getitem__
            parts: tuple = cython.cast(tuple, found)
            return (found, _new_history(
                _as_states(parts[0]), _as_states(parts[1]), _as_states(parts[2])
            ), passive)
        return (found, found, passive)
    if type(impl) is _CollectionAttributeImpl:
        current = dict_get(dict_, key, _MISSING) if cython.compiled else dict_.get(key, _MISSING)
        if current is not _MISSING and current is not _NO_VALUE:
            found = _loaded_collection_history(state, key, current, flags, passive)
            if found is not None:
                return found
        elif current is _MISSING and _unloaded_collection_blank(state, key, flags):
            return (_HISTORY_BLANK, _HISTORY_BLANK, passive)
    history = impl.get_history(state, dict_, flags)
    if history and impl.uses_objects:
        return (history, history.as_state(), passive)
    return (history, history, passive)


@cython.cfunc
@cython.exceptval(-1, check=False)
def _unloaded_collection_blank(state, key, flags) -> cython.bint:
    """Whether stock's ``get_history`` of a collection absent from the
    state's dict returns ``HISTORY_BLANK`` without loading it: ``get``
    answers ``PASSIVE_NO_RESULT`` (loader callables not allowed by
    ``flags``, ``_nothing_kept_or_pending``).  Stock's methods only."""
    if not _stock_collection_lookup():
        return False
    bits: tuple = _flag_bits(flags)
    if bits[1]:
        return False  # loader callables allowed: stock may load
    return _nothing_kept_or_pending(state, key, bits[0])


@cython.cfunc
@cython.exceptval(-1, check=False)
def _stock_collection_lookup() -> cython.bint:
    """Whether a collection's history is stock's
    ``_CollectionAttributeImpl.get_history`` over stock's ``get``."""
    return (
        _CollectionAttributeImpl.get_history is _COLLECTION_HISTORY
        and _CollectionAttributeImpl.get is _ATTRIBUTE_GET
    )


@cython.cfunc
@cython.exceptval(-1, check=False)
def _nothing_kept_or_pending(state, key, include_pending: cython.bint) -> cython.bint:
    """For a collection absent from the state's dict, looked up by stock's
    methods without loader callables: whether its history is
    ``HISTORY_BLANK``, i.e. no committed value is kept (``get`` answers
    ``PASSIVE_NO_RESULT``) and no pending mutations are asked for
    (``include_pending``) and recorded (``_has_pending_mutation``)."""
    committed = _committed_state(state)
    if (
        dict_get(committed, key, _NO_VALUE) if cython.compiled else committed.get(key, _NO_VALUE)
    ) is not _NO_VALUE:
        return False
    return not (include_pending and _has_pending_mutation(state, key))


@cython.cfunc
@cython.inline
def _flag_bits(flags) -> tuple:
    """``(bool(flags & INCLUDE_PENDING_MUTATIONS), bool(flags & CALLABLES_OK))``."""
    bits: tuple = _bits.get(flags)
    if bits is None:
        bits = _bits[flags] = (
            bool(flags & _INCLUDE_PENDING_MUTATIONS), bool(flags & _CALLABLES_OK)
        )
    return bits


@cython.cfunc
def _new_history(added, unchanged, deleted):
    """``History(added, unchanged, deleted)`` as ``tuple.__new__(History,
    ...)`` makes it: compiled, allocated as that does (the class's
    ``tp_alloc``, ``PyType_GenericAlloc`` for a class statement's type)
    and its three items set, without the call through ``tuple.__new__``
    and its temporary tuple."""
    if not cython.compiled or not _HISTORY_ALLOCATES_GENERICALLY:
        return _tuple_new(_History, (added, unchanged, deleted))
    history = PyType_GenericAlloc(_History, 3)
    Py_INCREF(added)
    PyTuple_SET_ITEM(history, 0, added)
    Py_INCREF(unchanged)
    PyTuple_SET_ITEM(history, 1, unchanged)
    Py_INCREF(deleted)
    PyTuple_SET_ITEM(history, 2, deleted)
    return history


@cython.cfunc
def _as_states(objects) -> list:
    """``History.as_state``'s conversion of one of its lists."""
    states: list = []
    for obj in objects:
        # stock's ``instance_state`` (``attrgetter("_sa_instance_state")``)
        states.append(None if obj is None else obj._sa_instance_state)
    return states


@cython.cfunc
@cython.exceptval(-1, check=False)
def _has_pending_mutation(state, key) -> cython.bint:
    """``key in state._pending_mutations``.  Stock's memoized property
    stores a new empty dict in the state's ``__dict__`` on its first read,
    and so does this (a flush that fails leaves it in place, as stock's
    does).  Compiled, the class's property is checked at a kept site
    (``class_attribute_is``) and the state's ``__dict__`` read and the
    entry stored without the descriptor (``_cpython.instance_dict``);
    uncompiled, or for a state of another class or a property that is not
    stock's, the attribute is read as stock reads it."""
    if not cython.compiled or type(state) is not _InstanceState:
        return key in state._pending_mutations
    if not class_attribute_is(
        _InstanceState, "_pending_mutations", _PENDING_MUTATIONS,
        cython.address(_pending_mutations_site),
    ):
        return key in state._pending_mutations
    own: dict = instance_dict(state)
    found = own.get("_pending_mutations")
    if found is None:
        found = own["_pending_mutations"] = {}
    return key in found


# compiled, _has_pending_mutation's kept class lookup (class_attribute_is)
_pending_mutations_site = cython.declare(ClassSite)


@cython.cfunc
def _loaded_collection_history(state, key, current, flags, passive) -> tuple:
    """``_CollectionAttributeImpl.get_history`` and ``History.as_state`` of
    a collection present in the state's dict (``History.from_collection``),
    as ``_history``'s cache entry, or None for stock's: pending mutations
    recorded for a loaded collection (stock's assertion), an original that
    is not a list."""
    includes_pending: cython.bint = _flag_bits(flags)[0]
    if includes_pending and _has_pending_mutation(state, key):
        return None
    committed = state.committed_state
    original = (
        dict_get(committed, key, _NO_HISTORY) if cython.compiled
        else committed.get(key, _NO_HISTORY)
    )
    # the adapter iterates a list collection of SQLAlchemy's class as the
    # list itself: its items copied as a slice copies them (a new list;
    # the class does not instrument reads), without list()'s iteration
    items: list
    if type(current) is not _InstrumentedList:
        items = list(current._sa_adapter)
    elif cython.compiled:
        items = cython.cast(list, current)[:]
    else:
        items = current[:]
    if original is _NO_HISTORY:
        return (
            _new_history((), items, ()),
            _new_history([], _as_states(items), []),
            passive,
        )
    if original is _NO_VALUE:
        return (
            _new_history(items, (), ()),
            _new_history(_as_states(items), [], []),
            passive,
        )
    if type(original) is not list:
        return None
    if not original:
        # nothing to compare with: every member is added
        return (
            _new_history(items, [], []),
            _new_history(_as_states(items), [], []),
            passive,
        )
    current_states: list = [(_state_or_none(c), c) for c in items]
    original_states: list = [(_state_or_none(c), c) for c in original]
    current_set: dict = dict(current_states)
    original_set: dict = dict(original_states)
    pair: tuple
    added: list = [pair[1] for pair in current_states if pair[0] not in original_set]
    unchanged: list = [pair[1] for pair in current_states if pair[0] in original_set]
    deleted: list = [pair[1] for pair in original_states if pair[0] not in current_set]
    history = _new_history(added, unchanged, deleted)
    return (
        history,
        _new_history(_as_states(added), _as_states(unchanged), _as_states(deleted)),
        passive,
    )


@cython.cfunc
def _state_dict(state):
    """``state.dict``: the object's ``__dict__`` (stock's ``instance_dict``
    is ``attrgetter("__dict__")``, read here as the attribute itself while
    ``orm.base`` holds that one), or a new empty dict once the object is
    gone."""
    if type(state) is not _InstanceState or _BASE_NAMES.get("instance_dict") is not _INSTANCE_DICT:
        return state.dict
    if cython.compiled:
        # the obj slot and the object's __dict__ read without their class
        # lookups (_cpython.live_state_dict)
        found = live_state_dict(
            state, cython.address(_obj_site), cython.address(_object_dict_site)
        )
        if found is None:
            return {}
        return found
    obj = state.obj()
    if obj is None:
        return {}
    return obj.__dict__


# compiled, _state_dict's kept class lookups (_cpython.live_state_dict)
_obj_site = cython.declare(SlotSite)
_object_dict_site = cython.declare(DictSite)


@cython.cfunc
def _impl_of(manager, key):
    """``manager[key].impl``, compiled without the subscript's lookup and
    call of ``__getitem__`` (``_cpython.manager_impl``)."""
    if cython.compiled:
        return manager_impl(
            manager, key, _DICT_GETITEM,
            cython.address(_dict_getitem_site), cython.address(_impl_site),
        )
    return manager[key].impl


@cython.cfunc
@cython.inline
def _state_or_none(obj):
    return None if obj is None else obj._sa_instance_state


def new_flush_context(cls, session, turbo):
    """``cls(session)`` for turbosession's ``flush.UOWTransaction``: the
    attributes stock's ``UOWTransaction.__init__`` stores, in its order,
    then those of turbosession's ``__init__``, without the two
    constructors' frames and attribute stores (``flush`` asks whether
    stock's constructor stores these).  ``deps`` and
    ``post_update_states`` are made on first use (``flush._MadeOnFirstUse``;
    ``post_update_states``' factory ``post_update_entry`` rather than a
    lambda made per flush)."""
    uow = cls.__new__(cls)
    unitofwork = turbo.unitofwork
    # one dict given as the instance's, rather than ten attribute stores
    uow.__dict__ = {
        "session": session,
        "attributes": {},
        "mappers": defaultdict(set),
        "presort_actions": {},
        "postsort_actions": {},
        "dependencies": set(),
        "states": {},
        "_topological": turbo.topological,
        "_unitofwork": unitofwork,
        "_history_lookup": unitofwork.attribute_history,
    }
    return uow


def post_update_entry():
    """A mapper's (states, columns) of ``UOWTransaction.post_update_states``."""
    return (set(), set())


def attribute_history(uow, state, key, passive):
    """``UOWTransaction.get_attribute_history``, cached in ``uow.attributes``."""
    cache: dict = uow.attributes
    hashkey: tuple = ("history", state, key)
    cached: tuple = cache.get(hashkey)
    if cached is not None:
        # a passive lookup was cached; a non-passive one loads and re-caches
        if not _flag_info(cached[2])[1] and _flag_info(passive)[1]:
            cached = _history(state, key, _RELOAD, passive)
            cache[hashkey] = cached
        return cached[1]
    entry: tuple = _history(state, key, _flag_info(passive)[0], passive)
    cache[hashkey] = entry
    return entry[1]


def collections_without_history(answers: dict, states, key, passive):
    """What ``attribute_history(uow, state, key, passive)`` of the
    collection ``key`` would say, for each of ``states`` where the state
    shows it, stored in ``answers`` for a caller that needs no cache entry:
    True where the history is ``HISTORY_BLANK`` because the collection is
    not loaded and stock's ``get_history`` answers without loading it
    (``_nothing_kept_or_pending``); the members, as states
    (``History.as_state``'s), of a loaded collection whose history has them
    all added and nothing else (a new object's list, committed as empty or
    ``NO_VALUE``, read as ``_loaded_collection_history`` reads it).  A state
    whose history is to be looked up gets no entry.  What depends on the
    flags and the classes' methods is decided once, the key's
    implementation once per class manager; pending mutations are read as
    stock's memoized property reads them (``_has_pending_mutation``).
    Compiled, the states' slots are read at their offsets
    (``_cpython.slot_value``)."""
    if not _stock_collection_lookup():
        return
    bits: tuple = _flag_bits(_flag_info(passive)[0])
    include_pending: cython.bint = bits[0]
    callables_ok: cython.bint = bits[1]
    manager = None
    collection: cython.bint = False
    committed: dict
    for state in states:
        found = (
            slot_value(state, "manager", cython.address(_manager_site)) if cython.compiled
            else state.manager
        )
        if found is not manager:
            manager = found
            impl = _impl_of(manager, key) if cython.compiled else manager[key].impl
            collection = type(impl) is _CollectionAttributeImpl
        if not collection:
            continue
        current = (
            dict_get(_state_dict(state), key, _MISSING) if cython.compiled
            else _state_dict(state).get(key, _MISSING)
        )
        if current is _MISSING:
            if not callables_ok and _nothing_kept_or_pending(state, key, include_pending):
                answers[state] = True
            continue
        if type(current) is not _InstrumentedList:
            continue
        committed = _committed_state(state)
        original = committed.get(key, _NO_HISTORY)
        if original is not _NO_VALUE and (type(original) is not list or original):
            continue
        if include_pending and _has_pending_mutation(state, key):
            continue  # stock asserts there are none
        answers[state] = _as_states(current)


# compiled, the kept slot sites of the states' ``manager`` and
# ``committed_state`` (_cpython.slot_value)
_manager_site = cython.declare(SlotSite)
_committed_site = cython.declare(SlotSite)
# compiled, the kept slot site of the states' ``key`` (tree_rounds)
_key_site = cython.declare(SlotSite)


@cython.cfunc
def _committed_state(state) -> dict:
    """``state.committed_state``, compiled read at its slot's offset."""
    if cython.compiled:
        return slot_value(state, "committed_state", cython.address(_committed_site))
    return state.committed_state


def states_for_mapper_hierarchy(uow, mapper, isdelete, listonly):
    """States of ``mapper``'s hierarchy flagged ``(isdelete, listonly)``."""
    return states_of_mappers(
        uow, tuple(mapper.base_mapper.self_and_descendants), isdelete, listonly
    )


def states_of_mappers(uow, hierarchy: tuple, isdelete, listonly) -> list:
    """``states_for_mapper_hierarchy`` given the hierarchy's mappers in
    ``self_and_descendants`` order (a ``util.WeakSequence``, whose
    iteration is a Python generator: a caller that keeps the tuple per
    base mapper passes it).  ``uow.mappers`` is read as stock reads it
    (its ``defaultdict`` gains an empty set for a mapper without states)."""
    checktup: tuple = (isdelete, listonly)
    states: dict = uow.states
    mappers = uow.mappers
    found: list = []
    for submapper in hierarchy:
        for state in mappers[submapper]:
            if states[state] == checktup:
                found.append(state)
    return found


def process_all_states(uow, mappers, isdelete) -> list:
    """The states a ``_ProcessAll`` step hands its processor, as stock's
    ``_elements`` generator yields them: for each of ``mappers`` (the
    step's ``_mappers(uow)``), its states in the unit of work whose
    ``(isdelete, listonly)`` flags have ``isdelete`` equal to the step's
    and ``listonly`` false, gathered in one loop (the relationship loops
    that take them register nothing, so the flags they are read from
    stay as they were)."""
    states: dict = uow.states
    by_mapper = uow.mappers
    found: list = []
    flags: tuple
    for mapper in mappers:
        for state in by_mapper[mapper]:
            flags = states[state]
            if flags[0] == isdelete and not flags[1]:
                found.append(state)
    return found


@cython.cfunc
def _new_record(cls):
    """``object.__new__(cls)`` for a record class of stock's unit of work
    (its ``__new__``, ``_PostSortRec``'s, makes them so).  Compiled,
    object's ``tp_new`` slot is called directly with no arguments: what
    ``object.__new__`` calls once it has checked that ``cls`` is a type
    whose nearest built-in base is ``object``, without the Python call of
    the builtin and the argument tuple it slices (a flush whose cycle is
    split per state makes two or three records per state)."""
    if cython.compiled:
        return PyBaseObject_Type.tp_new(
            cls, cython.cast(cython.pointer(PyObject), _EMPTY_TUPLE),
            cython.NULL,
        )
    return _object_new(cls)


@cython.cfunc
def _registered(registry: dict, cls, key: tuple):
    """``_PostSortRec.__new__``: the record registered under ``key``, or a
    new ``cls`` registered there with ``disabled`` False."""
    record = registry.get(key)
    if record is None:
        record = _new_record(cls)
        record.disabled = False
        registry[key] = record
    return record


# the slots a per-state record's constructor sets (with ``disabled``, which
# ``_PostSortRec.__new__`` sets on a new one), in the order of their
# offsets in ``_record_layout``'s answer
_STATE_RECORD_SLOTS = cython.declare(tuple, ("disabled", "state", "mapper", "sort_key"))
_PROCESS_RECORD_SLOTS = cython.declare(
    tuple, ("disabled", "dependency_processor", "sort_key", "isdelete", "state")
)
_MemberDescriptorType = cython.declare(object, types.MemberDescriptorType)
_OBJECT_SETATTR = cython.declare(object, object.__setattr__)
# compiled: record class -> (its version tag when read, _record_layout's answer)
_layouts = cython.declare(dict, {})


@cython.cfunc
def _record_layout(cls, names: tuple):
    """Compiled, the offsets of the slots ``names`` of the record class
    ``cls``, where ``object.__setattr__`` stores each through a plain
    writable object slot (its member descriptor, the first found in the
    class's MRO): found once per class and kept while the class keeps its
    version tag (any change to it or a base gives another), so that a
    flush making a record per state stores its fields there, without an
    attribute lookup per field.  None (the attributes are set) where the
    class sets attributes its own way or a name is something else, and
    always uncompiled."""
    if not cython.compiled:
        return None
    kept = _layouts.get(cls)
    if kept is not None:
        entry: tuple = kept
        if entry[0] == type_version_tag(cls) and entry[0] != 0:
            return entry[1]
    layout = _find_layout(cls, names)
    tag = type_version_tag(cls)
    if tag != 0:
        _layouts[cls] = (tag, layout)
    return layout


@cython.cfunc
def _find_layout(cls, names: tuple):
    """``_record_layout``'s offsets, read from the member descriptors."""
    if cls.__setattr__ is not _OBJECT_SETATTR:
        return None
    offsets: list = []
    offset: cython.Py_ssize_t
    for name in names:
        descr = class_lookup(cls, name)
        if type(descr) is not _MemberDescriptorType:
            return None
        offset = writable_slot_offset(descr)
        if offset < 0:
            return None
        offsets.append(offset)
    return tuple(offsets)


def base_steps(uow, base, steps: tuple):
    """The hierarchy's save and delete steps of stock's
    ``_per_mapper_flush_actions``: for each ``(class, label)`` of
    ``steps``, the record of ``(class, base)`` (``_registered``) given its
    ``mapper`` and ``sort_key`` as the class's ``__init__`` gives them;
    then the dependency of the first step on the second."""
    registry: dict = uow.postsort_actions
    records: list = []
    for cls, label in steps:
        record = _registered(registry, cls, (cls, base))
        record.mapper = base
        record.sort_key = (label, base._sort_key)
        records.append(record)
    uow.dependencies.add((records[0], records[1]))


@cython.cfunc
def _state_records(uow, cls: type, states: list, mapper, sort_key: tuple) -> list:
    """Records ``cls(uow, state)`` for ``states``, made as stock makes them.

    ``_PostSortRec.__new__`` returns the registered record for
    ``(cls, state)`` or registers a new one with ``disabled = False``, then
    ``__init__`` (re)sets ``state``, ``mapper`` (the base mapper, ``mapper``
    here) and ``sort_key``.
    """
    registry: dict = uow.postsort_actions
    records: list = []
    layout = _record_layout(cls, _STATE_RECORD_SLOTS)
    if layout is None:
        for state in states:
            record = _registered(registry, cls, (cls, state))
            record.state = state
            record.mapper = mapper
            record.sort_key = sort_key
            records.append(record)
        return records
    # compiled: the fields stored at their slots' offsets
    offsets: tuple = layout
    disabled_at: cython.Py_ssize_t = offsets[0]
    state_at: cython.Py_ssize_t = offsets[1]
    mapper_at: cython.Py_ssize_t = offsets[2]
    sort_key_at: cython.Py_ssize_t = offsets[3]
    key: tuple
    for state in states:
        key = (cls, state)
        record = registry.get(key)
        if record is None:
            record = _new_record(cls)
            store_slot(record, disabled_at, False)
            registry[key] = record
        store_slot(record, state_at, state)
        store_slot(record, mapper_at, mapper)
        store_slot(record, sort_key_at, sort_key)
        records.append(record)
    return records


@cython.cfunc
def _per_state_actions(uow, rec, pending) -> set:
    """``rec.per_state_flush_actions(uow)`` for stock's per-mapper save/delete."""
    mapper = rec.mapper
    isdelete: cython.bint = type(rec) is _DeleteAll
    states: list = states_for_mapper_hierarchy(uow, mapper, isdelete, False)
    base_mapper = mapper.base_mapper
    dependencies: set = uow.dependencies
    actions: list
    if isdelete:
        # saves before deletes, so that 'row switch' operations work
        other = _SaveUpdateAll(uow, base_mapper)
        actions = _state_records(
            uow, _DeleteState, states, base_mapper, ("DeleteState", base_mapper._sort_key)
        )
        for action in actions:
            dependencies.add((other, action))
    else:
        other = _DeleteAll(uow, base_mapper)
        actions = _state_records(
            uow,
            _SaveUpdateState,
            states,
            base_mapper,
            ("ProcessState", base_mapper._sort_key),
        )
        for action in actions:
            dependencies.add((action, other))
    for dep in uow.deps[mapper]:
        states_for_prop = uow.filter_states_for_dep(dep, states)
        direction: cython.int = _per_state_direction(dep)
        if direction and pending is not None:
            _dependency_per_state(uow, dep, states_for_prop, isdelete, direction == 1, pending)
        else:
            dep.per_state_flush_actions(uow, states_for_prop, isdelete)
    return set(actions)


@cython.cfunc
def _per_state_direction(dp) -> cython.int:
    """1 for a one-to-many processor, 2 for a many-to-one, whose
    ``per_state_flush_actions`` and ``per_state_dependencies`` are stock's
    and which has no ``post_update``; else 0 (stock's method is called)."""
    direction: cython.int
    kind = type(dp)
    if kind is _OneToManyDP:
        if kind.per_state_dependencies is not _ONE_TO_MANY_STATE_DEPENDENCIES:
            return 0
        direction = 1
    elif kind is _ManyToOneDP:
        if kind.per_state_dependencies is not _MANY_TO_ONE_STATE_DEPENDENCIES:
            return 0
        direction = 2
    else:
        return 0
    if (
        kind.per_state_flush_actions is not _PER_STATE_FLUSH_ACTIONS
        or dp.post_update
        or "per_state_flush_actions" in dp.__dict__
        or "per_state_dependencies" in dp.__dict__
    ):
        return 0
    return direction


@cython.cfunc
def _process_state(uow, dp, isdelete, state, sort_key: tuple):
    """``_ProcessState(uow, dp, isdelete, state)``: the registered record
    (or a new one, registered) with its fields set, as the constructor does
    (``sort_key`` is the one it makes, ``("ProcessState", dp.sort_key)``,
    made once per processor by the caller); a record registered under the
    key already has them (stock's constructor would set the same values
    again)."""
    registry: dict = uow.postsort_actions
    key: tuple = (_ProcessState, dp, isdelete, state)
    record = registry.get(key)
    if record is not None:
        return record
    record = _new_record(_ProcessState)
    registry[key] = record
    layout = _record_layout(_ProcessState, _PROCESS_RECORD_SLOTS)
    if layout is None:
        record.disabled = False
        record.dependency_processor = dp
        record.sort_key = sort_key
        record.isdelete = isdelete
        record.state = state
        return record
    # compiled: the fields stored at their slots' offsets
    offsets: tuple = layout
    store_slot(record, offsets[0], False)
    store_slot(record, offsets[1], dp)
    store_slot(record, offsets[2], sort_key)
    store_slot(record, offsets[3], isdelete)
    store_slot(record, offsets[4], state)
    return record


@cython.cfunc
def _state_record(uow, cls, state):
    """``_SaveUpdateState(uow, state)`` / ``_DeleteState(uow, state)``.  A
    record registered under the key already holds what stock's constructor
    would set again (the state, its base mapper, the sort key), so it is
    returned as it is once the state's ``mapper`` is memoized, which that
    constructor's read of ``state.mapper`` does."""
    registry: dict = uow.postsort_actions
    key: tuple = (cls, state)
    record = registry.get(key)
    if record is not None and (
        _mapper_memoized(state) if cython.compiled else "mapper" in state.__dict__
    ):
        return record
    if record is None:
        record = _new_record(cls)
        record.disabled = False
        registry[key] = record
    mapper = state.mapper.base_mapper
    record.state = state
    record.mapper = mapper
    record.sort_key = (
        "DeleteState" if cls is _DeleteState else "ProcessState", mapper._sort_key
    )
    return record


@cython.cfunc
@cython.inline
@cython.exceptval(-1, check=False)
def _mapper_memoized(state) -> cython.bint:
    """Whether a state of stock's class has read its ``mapper`` (a
    memoized property, kept in the state's ``__dict__``)."""
    if type(state) is not _InstanceState:
        return False
    instance_dict: dict = state.__dict__
    return "mapper" in instance_dict


@cython.cfunc
def _members(state, key, isdelete: cython.bint, passive, pending):
    """Stock's ``get_all_pending`` of the state's relationship ``key``:
    the (state, object) pairs a processor's per-state actions link, from
    ``pending`` where it answers (not None)."""
    impl = (
        _impl_of(slot_value(state, "manager", cython.address(_manager_site)), key)
        if cython.compiled else state.manager[key].impl
    )
    dict_ = _state_dict(state)
    sum_ = None
    if not isdelete or type(impl) is _CollectionAttributeImpl:
        # the collection's ignores the flag
        sum_ = pending(impl, state, dict_, key)
    if sum_ is None:
        sum_ = impl.get_all_pending(state, dict_, passive)
    return sum_


@cython.cfunc
def _dependency_per_state(uow, dp, states, isdelete: cython.bint, one_to_many: cython.bint, pending):
    """``dp.per_state_flush_actions(uow, states, isdelete)`` of a one-to-many
    or many-to-one processor without ``post_update``
    (``_per_state_direction``): the same records made in the same order and
    the same dependency edges added in the same sequence.  Each state's
    pending members come from ``pending`` (stock's ``get_all_pending``
    where it answers None)."""
    child_base_mapper = dp.mapper.primary_base_mapper
    child_saves = _SaveUpdateAll(uow, child_base_mapper)
    child_deletes = _DeleteAll(uow, child_base_mapper)
    after_save = before_delete = None
    if isdelete:
        before_delete = _ProcessAll(uow, dp, True, True)
        before_delete.disabled = True
    else:
        after_save = _ProcessAll(uow, dp, False, True)
        after_save.disabled = True
    cycles = uow.cycles
    child_actions: list = None
    child_in_cycles: cython.bint
    parent_in_cycles: cython.bint
    if child_saves not in cycles:
        assert child_deletes not in cycles
        child_actions = [(child_saves, False), (child_deletes, True)]
        child_in_cycles = False
    else:
        child_in_cycles = True
    if not isdelete:
        parent_saves = _SaveUpdateAll(uow, dp.parent.base_mapper)
        parent_deletes = None
        parent_in_cycles = parent_saves in cycles
    else:
        parent_deletes = _DeleteAll(uow, dp.parent.base_mapper)
        parent_saves = None
        parent_in_cycles = parent_deletes in cycles
    if not parent_in_cycles:
        # stock's method reads a variable it never set (it never gets here)
        return dp.per_state_flush_actions(uow, states, isdelete)
    key = dp.key
    passive = dp._passive_delete_flag if isdelete else _PASSIVE_NO_INITIALIZE
    process_sort_key: tuple = ("ProcessState", dp.sort_key)
    uow_states: dict = uow.states
    dependencies: set = uow.dependencies
    entry: tuple
    pair: tuple
    for state in states:
        sum_ = _members(state, key, isdelete, passive, pending)
        if not sum_:
            continue
        if isdelete:
            before_delete = _process_state(uow, dp, True, state, process_sort_key)
            parent_deletes = _state_record(uow, _DeleteState, state)
        else:
            after_save = _process_state(uow, dp, False, state, process_sort_key)
            parent_saves = _state_record(uow, _SaveUpdateState, state)
        if child_in_cycles:
            child_actions = []
            for pair in sum_:
                child_state = pair[0]
                if child_state not in uow_states:
                    child_actions.append((None, None))
                else:
                    entry = uow_states[child_state]
                    if entry[0]:
                        child_actions.append((_state_record(uow, _DeleteState, child_state), True))
                    else:
                        child_actions.append(
                            (_state_record(uow, _SaveUpdateState, child_state), False)
                        )
        for pair in child_actions:
            child_action = pair[0]
            childisdelete = pair[1]
            # stock's set.update of a list of edges: the same edges added
            # in the same sequence
            if one_to_many:
                if not isdelete:
                    dependencies.add((parent_saves, after_save))
                    dependencies.add((after_save, child_action))
                    dependencies.add((parent_saves, child_action))
                else:
                    dependencies.add((before_delete, child_action))
                    dependencies.add((child_action, parent_deletes))
            elif not isdelete:
                if not childisdelete:
                    dependencies.add((child_action, after_save))
                dependencies.add((after_save, parent_saves))
            elif childisdelete:
                dependencies.add((parent_deletes, child_action))


@cython.cfunc
def _rewrite_dependencies(dependencies: set, cycles: set, convert: dict):
    """Point the edges of the split actions at their per-state actions."""
    edge: tuple
    deps: set
    for edge in list(dependencies):
        before = edge[0]
        after = edge[1]
        if (
            before is None
            or after is None
            or before.disabled
            or after.disabled
            or (before in cycles and after in cycles)
        ):
            dependencies.remove(edge)
        elif before in cycles:
            dependencies.remove(edge)
            deps = convert[before]
            for dep in deps:
                dependencies.add((dep, after))
        elif after in cycles:
            dependencies.remove(edge)
            deps = convert[after]
            for dep in deps:
                dependencies.add((before, dep))


def split_per_state(uow, cycles: set, pending=None):
    """Replace the actions in ``cycles`` by per-state actions, as stock does.
    ``pending`` is the attach module's ``pending_pairs`` (``get_all_pending``
    of a relationship attribute, or None for stock's method); without it
    every dependency processor makes its per-state actions itself."""
    convert: dict = {}
    for rec in cycles:
        if type(rec) is _SaveUpdateAll or type(rec) is _DeleteAll:
            convert[rec] = _per_state_actions(uow, rec, pending)
        else:
            convert[rec] = set(rec.per_state_flush_actions(uow))
    _rewrite_dependencies(uow.dependencies, cycles, convert)


@cython.cfunc
def _tree_mapper(uow, cycles: set):
    """The mapper of a cycle that is one mapper's self-referential
    relationships and nothing else, or None.

    The flush's actions must be exactly that mapper's save and delete steps
    and its processors' two ``_ProcessAll`` each (so no other mapper, and
    no edge from outside the cycle, takes part), the cycle those steps and
    the processors' saves; every processor a one-to-many or many-to-one of
    the mapper to itself without ``post_update`` (``_per_state_direction``),
    relevant to the mapper's states (stock's ``filter_states_for_dep`` keeps
    them all); the mapper neither inherits nor is inherited."""
    mapper = None
    for rec in cycles:
        if type(rec) is _SaveUpdateAll:
            mapper = rec.mapper
            break
    if mapper is None or mapper.inherits is not None or mapper._inheriting_mappers:
        return None
    registry: dict = uow.postsort_actions
    processors = uow.deps.get(mapper)
    if (
        not processors
        or len(registry) != 2 + 2 * len(processors)
        or len(cycles) != 2 + len(processors)
        or registry.get((_SaveUpdateAll, mapper)) not in cycles
        or registry.get((_DeleteAll, mapper)) not in cycles
    ):
        return None
    props: dict = mapper._props
    for dp in processors:
        if (
            not _per_state_direction(dp)
            or dp.parent is not mapper
            or dp.mapper is not mapper
            or props.get(dp.key) is not dp.prop
            or registry.get((_ProcessAll, dp, False, True)) not in cycles
            or (_ProcessAll, dp, True, True) not in registry
        ):
            return None
    return mapper


def tree_rounds(uow, cycles: set, pending, answers=None):
    """The per-state actions of an all-insert self-referential flush in the
    rounds stock's ``sort_as_subsets`` gives them after ``split_per_state``,
    computed from the states' links; None for any other flush (the cycle is
    then split as stock splits it).

    The shape (``_tree_mapper``): one mapper, every state of the flush a
    new object of it to insert, its processors one-to-many and many-to-one
    to itself.  Stock then makes a ``_SaveUpdateState`` per state and a
    ``_ProcessState`` per state and processor where the relationship
    links pending states (made and registered here as ``split_per_state``
    makes them, once the shape is known, the processors' ``_ProcessAll``
    disabled), and its edges put a state's save two rounds after the save
    of every state it is linked under (through the linking processor's
    record, one round after that save).  A round being the longest chain
    of edges above an action, each save's round is twice its depth in the
    links; a state linked to one outside the flush, or links that loop,
    go back to the split, which finds stock's outcome.  A one-to-many's
    members are its presort's answers where it kept them (``answers``,
    the relationships module's ``collection_answers``: a collection not
    loaded, which ``get_all_pending`` answers empty, or the states of
    members all added, which it answers in the same order), as nothing
    between the presort and the sort of an all-insert flush changes a
    collection; the pending pairs otherwise.  The edges
    themselves are not made: nothing but the sort reads them.  The rounds
    are lists in no particular order, as the runner takes each as a set
    (as stock's ``execute`` does)."""
    if pending is None:
        return None
    mapper = _tree_mapper(uow, cycles)
    if mapper is None:
        return None
    states: list = states_for_mapper_hierarchy(uow, mapper, False, False)
    count: cython.Py_ssize_t = len(states)
    if not count or count != len(uow.states):
        return None  # a deleted or list-only state
    index: dict = {}
    position: cython.Py_ssize_t = 0
    for state in states:
        if (
            slot_value(state, "key", cython.address(_key_site)) if cython.compiled
            else state.key
        ) is not None:
            return None  # an update
        index[state] = position
        position += 1
    # by position: the states that follow each, how many each follows;
    # per processor record to make, (processor, state, positions it follows,
    # the record's sort key)
    followers: list = [[] for _ in range(count)]
    following: list = [0] * count
    processes: list = []
    linked: list
    chain: list
    here: cython.Py_ssize_t
    there: cython.Py_ssize_t
    one_to_many: cython.bint
    as_pairs: cython.bint
    answered: dict
    for dp in uow.deps[mapper]:
        one_to_many = _per_state_direction(dp) == 1
        key = dp.key
        process_sort_key: tuple = ("ProcessState", dp.sort_key)
        answered = answers(uow, dp) if one_to_many and answers is not None else None
        for state in states:
            members = None if answered is None else answered.get(state)
            if members is True:
                continue  # not loaded
            as_pairs = members is None
            if as_pairs:
                members = _members(state, key, False, _PASSIVE_NO_INITIALIZE, pending)
            if not members:
                continue
            here = index[state]
            linked = [here] if one_to_many else []
            for member in members:
                found = index.get(cython.cast(tuple, member)[0] if as_pairs else member)
                if found is None:
                    return None  # a member outside the flush
                there = found
                if one_to_many:
                    # the member is inserted after this state
                    chain = followers[here]
                    chain.append(there)
                    following[there] += 1
                else:
                    chain = followers[there]
                    chain.append(here)
                    following[here] += 1
                    linked.append(there)
            processes.append((dp, state, linked, process_sort_key))
    rounds_of: list = _longest_chains(followers, following, count)
    if rounds_of is None:
        return None  # the links loop: stock's sort raises
    records: list = _state_records(
        uow, _SaveUpdateState, states, mapper, ("ProcessState", mapper._sort_key)
    )
    _memoize_mappers(states)
    rounds: list = []
    for position in range(count):
        _add_to_round(rounds, rounds_of[position], records[position])
    entry: tuple
    round_: cython.Py_ssize_t
    after: cython.Py_ssize_t
    for entry in processes:
        round_ = 0
        linked = entry[2]
        for position in linked:
            after = rounds_of[position]
            round_ = max(round_, after + 1)
        _add_to_round(
            rounds, round_, _process_state(uow, entry[0], False, entry[1], entry[3])
        )
    registry: dict = uow.postsort_actions
    for dp in uow.deps[mapper]:
        registry[(_ProcessAll, dp, False, True)].disabled = True
        registry[(_ProcessAll, dp, True, True)].disabled = True
    return rounds


@cython.cfunc
def _memoize_mappers(states: list):
    """Each state's ``mapper`` memoized, as the read of it in stock's record
    constructor memoizes it: while that memoized property is stock's, the
    value it would keep (``state.manager.mapper``) is written into a stock
    state's ``__dict__`` as the property writes it, without its two Python
    calls.  Compiled, the state's ``__dict__`` and ``manager`` are read
    without their attribute lookups, and each manager's ``mapper`` once
    for the run of states it has."""
    stock: cython.bint = (
        _InstanceState.__dict__.get("mapper") is _MAPPER_PROPERTY
        and _MAPPER_PROPERTY.fget is _MAPPER_GETTER
    )
    own: dict
    last_manager = None
    mapper = None
    for state in states:
        if stock and type(state) is _InstanceState:
            found = instance_dict(state) if cython.compiled else None
            own = state.__dict__ if found is None else found
            if "mapper" not in own:
                manager = (
                    slot_value(state, "manager", cython.address(_manager_site))
                    if cython.compiled else state.manager
                )
                if manager is not last_manager:
                    last_manager = manager
                    mapper = manager.mapper
                own["mapper"] = mapper
        else:
            state.mapper


@cython.cfunc
def _longest_chains(followers: list, following: list, count: cython.Py_ssize_t) -> list:
    """Each state's save round: twice the longest chain of states above it
    (Kahn's order over ``followers``; ``following`` is used up), or None
    when the links loop."""
    rounds_of: list = [0] * count
    ready: list = [i for i in range(count) if not following[i]]
    done: cython.Py_ssize_t = 0
    before: cython.Py_ssize_t
    follower: cython.Py_ssize_t
    after_round: cython.Py_ssize_t
    known: cython.Py_ssize_t
    chain: list
    while done < len(ready):
        before = ready[done]
        done += 1
        after_round = rounds_of[before]
        after_round += 2
        chain = followers[before]
        for follower in chain:
            known = rounds_of[follower]
            if known < after_round:
                rounds_of[follower] = after_round
            following[follower] -= 1
            if not following[follower]:
                ready.append(follower)
    if done != count:
        return None
    return rounds_of


@cython.cfunc
def _add_to_round(rounds: list, round_: cython.Py_ssize_t, record):
    while len(rounds) <= round_:
        rounds.append([])
    members: list = rounds[round_]
    members.append(record)
