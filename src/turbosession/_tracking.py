"""Dirty-attribute tracking.

What the Session API and the flush need to know about changes, answered with
SQLAlchemy's own rules so the answers are identical to stock:

- ``is_clean``: ``Session._is_clean`` (nothing modified, new or deleted).
- ``dirty_objects``: the objects behind ``Session.dirty``.
- ``has_net_changes``: ``Session.is_modified``.  Plain column attributes
  (``_ScalarAttributeImpl`` exactly) are decided inline from
  ``committed_state`` -- the same outcome ``History.from_scalar_attribute``
  gives with ``PassiveFlag.NO_CHANGE``, which never loads or initialises
  anything -- so no ``History`` tuple is built per attribute; every other
  attribute kind (relationships, collections, custom impls) still goes
  through its own ``get_history``, in the same attribute order, so the first
  change stops the scan at the same place stock's does.
- ``column_changes`` / ``collect_column_changes``: the net column changes of
  one state / of states for one mapper's table, decided exactly as
  ``persistence._collect_update_commands`` decides them (the fast flush builds
  its UPDATE parameters with ``column_changes``).
- ``commit_all_states``: ``InstanceState._commit_all_states``, the reset of
  states after a flush.

Compiled, the per-state and per-attribute loops are C loops over typed dicts
and sets.
"""

from __future__ import annotations

from types import MethodType

from sqlalchemy.orm.attributes import _ScalarAttributeImpl
from sqlalchemy.orm.base import NO_VALUE, PassiveFlag
from sqlalchemy.orm.instrumentation import ClassManager
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.sql.type_api import TypeEngine
from sqlalchemy.util import EMPTY_DICT

try:
    import cython
except ModuleNotFoundError:
    from turbosession import _cython_shim as cython

if cython.compiled:
    from cython.cimports.cpython.dict import PyDict_Next
    from cython.cimports.cpython.method import PyMethod_GET_FUNCTION
    from cython.cimports.cpython.object import PyObject
    from cython.cimports.turbosession._cpython import (
        ClassSite,
        DictSite,
        SlotSite,
        class_lookup,
        manager_impl,
        object_dict,
        own_attributes,
        own_value,
        slot_value,
    )
else:
    SlotSite = ClassSite = DictSite = None  # the declarations below are plain None

__all__ = [
    "collect_column_changes",
    "column_changes",
    "commit_all_states",
    "dirty_objects",
    "has_net_changes",
    "is_clean",
]

_NO_CHANGE = cython.declare(object, PassiveFlag.NO_CHANGE)
_NO_VALUE = cython.declare(object, NO_VALUE)
_ScalarImpl = cython.declare(object, _ScalarAttributeImpl)
_ClassManager = cython.declare(object, ClassManager)
_ClauseElement = cython.declare(object, ClauseElement)
_NO_VALUES = cython.declare(object, EMPTY_DICT)
_COMPARE_VALUES = cython.declare(object, TypeEngine.compare_values)
_MethodType = cython.declare(object, MethodType)
_DICT_GETITEM = cython.declare(object, dict.__getitem__)
# compiled, column_changes' kept lookups of manager[key].impl (_impl_of)
_impl_site = cython.declare(SlotSite)
# compiled, _equal's read of an attribute implementation's is_equal slot
_is_equal_site = cython.declare(SlotSite)
_dict_getitem_site = cython.declare(ClassSite)
_column_key_site = cython.declare(ClassSite)
# InstanceState's __slots__ members read per state (_committed_state,
# _expired_attributes, column_changes' manager)
_committed_site = cython.declare(SlotSite)
_manager_site = cython.declare(SlotSite)
_expired_site = cython.declare(SlotSite)
# compiled, commit_all_states sets and reads these in the state's own
# __dict__ while its class has no data descriptor of them (own_attributes)
_COMMIT_NAMES = cython.declare(tuple, ("modified", "expired", "_strong_obj"))
_commit_site = cython.declare(ClassSite)
# compiled, commit_all_states reads a state's ``__dict__`` through its getter
# (``_cpython.object_dict``)
_state_dict_site = cython.declare(DictSite)
# what a state's dict has under a name it does not hold
_ABSENT = cython.declare(object, object())


def _is_compiled():
    return cython.compiled


@cython.cfunc
@cython.inline
@cython.exceptval(-1, check=False)
def _plain(value) -> cython.bint:
    """A value whose ``==`` with another plain value is C's (exact types)."""
    t: type = type(value)
    return value is None or t is int or t is str or t is float or t is bool or t is bytes


@cython.cfunc
@cython.inline
def _impl_of(manager, key):
    """``manager[key].impl``, compiled without the subscript's lookup and
    call of ``__getitem__`` and the attribute's ``__getattr__`` hook
    (``_cpython.manager_impl``)."""
    if cython.compiled:
        return manager_impl(
            manager, key, _DICT_GETITEM,
            cython.address(_dict_getitem_site), cython.address(_impl_site),
        )
    return manager[key].impl


@cython.cfunc
@cython.inline
def _committed_state(state):
    """``state.committed_state`` (an ``InstanceState`` slot): compiled, read
    at the slot's offset without the class's attribute lookup
    (``_cpython.slot_value``)."""
    if cython.compiled:
        return slot_value(state, "committed_state", cython.address(_committed_site))
    return state.committed_state


@cython.cfunc
@cython.inline
def _expired_attributes(state):
    """``state.expired_attributes``, as ``_committed_state`` reads its slot."""
    if cython.compiled:
        return slot_value(state, "expired_attributes", cython.address(_expired_site))
    return state.expired_attributes


@cython.cfunc
@cython.inline
def _column_key(column):
    """``column.key``: compiled, the column's own ``__dict__`` entry read
    without the lookup through the class's ``__getattr__`` hook (a column's
    comparator proxy), while the class has no data descriptor ``key``
    (``_cpython.own_value``)."""
    if cython.compiled:
        return own_value(column, "key", cython.address(_column_key_site))
    return column.key


@cython.cfunc
@cython.exceptval(-1, check=False)
def _equal(impl, value, committed) -> cython.bint:
    """``impl.is_equal(value, committed) is True``.  A column attribute's
    ``is_equal`` is its type's ``compare_values``; TypeEngine's is
    ``x == y``, done here for two plain values without its Python frame."""
    if cython.compiled:
        # the slot read at its offset, the bound method's function read
        # from the method object
        is_equal = slot_value(impl, "is_equal", cython.address(_is_equal_site))
        compares_values: cython.bint = type(is_equal) is _MethodType and (
            PyMethod_GET_FUNCTION(is_equal) is cython.cast(cython.pointer(PyObject), _COMPARE_VALUES)
        )
    else:
        is_equal = impl.is_equal
        compares_values = type(is_equal) is _MethodType and is_equal.__func__ is _COMPARE_VALUES
    if compares_values and _plain(value) and _plain(committed):
        return value == committed
    return is_equal(value, committed) is True


def is_clean(identity_map, new, deleted):
    """``Session._is_clean``: no modified state, nothing pending or deleted."""
    return not identity_map.check_modified() and not deleted and not new


def dirty_objects(dirty_states, deleted):
    """Objects of the modified states that are not marked deleted.

    ``Session.dirty`` wraps this list in an ``IdentitySet``.
    """
    objects: list = []
    for state in dirty_states:
        if state not in deleted:
            objects.append(state.obj())
    return objects


def has_net_changes(state, include_collections):
    """True when an attribute of ``state`` has a net change (``is_modified``)."""
    if not state.modified:
        return False
    manager = state.manager
    # ClassManager.attributes is iter(self.values()); a custom
    # instrumentation manager keeps its own
    attrs = manager.values() if type(manager) is _ClassManager else manager.attributes
    committed: dict = state.committed_state
    dict_ = None  # state.dict (a property) only once an attribute needs it
    for attr in attrs:
        impl = attr.impl
        if type(impl) is _ScalarImpl:
            # get_history(NO_CHANGE) has added or deleted exactly when a
            # committed value was recorded and the current value is not
            # equal to it (a missing current value counts as a change)
            key = impl.key
            if key in committed:
                if dict_ is None:
                    dict_ = state.dict
                current = dict_[key] if key in dict_ else _NO_VALUE
                if current is _NO_VALUE or not _equal(impl, current, committed[key]):
                    return True
            continue
        if (
            not include_collections and hasattr(impl, "get_collection")
        ) or not hasattr(impl, "get_history"):
            continue
        if dict_ is None:
            dict_ = state.dict
        added, unchanged, deleted = impl.get_history(
            state, dict_, passive=_NO_CHANGE
        )
        if added or deleted:
            return True
    return False


def collect_column_changes(states, propkey_to_col):
    """Net column changes of ``(state, state_dict)`` pairs for one table.

    ``propkey_to_col`` is ``mapper._propkey_to_col[table]``.  Returns, aligned
    with ``states``, ``(params, value_params)``: ``params`` maps column key to
    the new value for every attribute whose value differs from its committed
    one (``impl.is_equal(...) is not True``), ``value_params`` maps column to
    SQL expression for attributes set to one.  Keys come in the order stock's
    ``set(propkey_to_col).intersection(committed_state)`` yields them, so the
    parameter dictionaries are identical to ``_collect_update_commands``'s.
    Primary-key and version-id handling stays with the flush.
    """
    keys: frozenset = frozenset(propkey_to_col)
    return [
        column_changes(state, state_dict, keys, propkey_to_col)
        for state, state_dict in states
    ]


@cython.cfunc
@cython.inline
def _only_key(mapping: dict) -> object:
    """The one key of a one-key dict (compiled: read in place, no tuple)."""
    if cython.compiled:
        pos: cython.Py_ssize_t = 0
        key: cython.pointer(PyObject)
        value: cython.pointer(PyObject)
        PyDict_Next(mapping, cython.address(pos), cython.address(key), cython.address(value))
        return cython.cast(object, key)
    return next(iter(mapping))


@cython.cfunc
def _add_change(
    state, state_dict, propkey, propkey_to_col, committed: dict, params: dict, value_params
) -> object:
    """``column_changes``' work for one changed attribute: its SQL
    expression into ``value_params`` (a dict, or None: made here at the
    first; returned), or its value into ``params`` when it differs from the
    committed one."""
    value = state_dict[propkey]
    col = propkey_to_col[propkey]
    # a plain value (recognised by its exact type) is neither a SQL
    # expression nor stands for one
    t: type = type(value)
    if not (
        value is None or t is int or t is str or t is float or t is bool or t is bytes
    ):
        if hasattr(value, "__clause_element__"):
            if value_params is None:
                value_params = {}
            value_params[col] = value.__clause_element__()
            return value_params
        if isinstance(value, _ClauseElement):
            if value_params is None:
                value_params = {}
            value_params[col] = value
            return value_params
    impl = (
        _impl_of(slot_value(state, "manager", cython.address(_manager_site)), propkey)
        if cython.compiled
        else state.manager[propkey].impl
    )
    if not _equal(impl, value, committed[propkey]):
        params[_column_key(col) if cython.compiled else col.key] = value
    return value_params


def column_changes(state, state_dict, keys: frozenset, propkey_to_col):
    """The net column changes of one state: ``(params, value_params)``.

    ``keys`` is ``frozenset(propkey_to_col)``, built once per table by the
    caller; the flush calls this once per state it updates.
    """
    params: dict = {}
    # made only for a SQL expression among the values (rare): the flush
    # keeps each state's result until its batch is sent
    value_params: dict = None
    committed: dict = _committed_state(state) if cython.compiled else state.committed_state
    if committed:
        if len(committed) == 1:
            # one attribute changed (the common update): the intersection's
            # one key, without a set or a tuple made per state
            propkey = _only_key(committed)
            if propkey in keys:
                value_params = _add_change(
                    state, state_dict, propkey, propkey_to_col, committed, params, value_params
                )
        else:
            for propkey in keys.intersection(committed):
                value_params = _add_change(
                    state, state_dict, propkey, propkey_to_col, committed, params, value_params
                )
    # one shared empty mapping when there are no SQL expressions
    return params, _NO_VALUES if value_params is None else value_params


def commit_all_states(states_and_dicts, instance_dict=None):
    """``InstanceState._commit_all_states``: mark states clean after a flush.

    Clears the recorded committed values and pending collection mutations,
    un-expires the attributes now present, drops the states from the
    identity map's modified set and releases their strong references.
    """
    # stock tests the map's truthiness (its length) per state; the map's
    # length does not change in this loop, so once is the same answer
    track_modified: cython.bint = bool(instance_dict)
    modified: set = instance_dict._modified if track_modified else None
    state_dict: dict
    committed: dict
    expired_attributes: set
    for state, dict_ in states_and_dicts:
        state_dict = (
            object_dict(state, cython.address(_state_dict_site))
            if cython.compiled
            else state.__dict__
        )
        committed = _committed_state(state) if cython.compiled else state.committed_state
        committed.clear()
        if "_pending_mutations" in state_dict:
            del state_dict["_pending_mutations"]
        expired_attributes = (
            _expired_attributes(state) if cython.compiled else state.expired_attributes
        )
        if expired_attributes:  # nothing to take out of an empty set
            expired_attributes.difference_update(dict_)
        if cython.compiled and own_attributes(
            type(state), _COMMIT_NAMES, cython.address(_commit_site)
        ):
            # the same reads and stores, in the same order, on the dict itself
            if track_modified:
                was_modified = state_dict.get("modified", _ABSENT)
                if was_modified is _ABSENT:
                    was_modified = class_lookup(type(state), "modified")
                if was_modified:
                    modified.discard(state)
            state_dict["modified"] = False
            state_dict["expired"] = False
            state_dict["_strong_obj"] = None
            continue
        if track_modified and state.modified:
            modified.discard(state)
        state.modified = state.expired = False
        state._strong_obj = None
