# cython: language_level=3
"""Dirty-attribute tracking, compiled twin of ``turbosession._tracking_py``.

Same functions, same rules (see the pure twin for why each one answers the way
stock SQLAlchemy does); here the per-state and per-attribute loops are C
loops over typed dicts and sets.
"""

from sqlalchemy.orm.attributes import _ScalarAttributeImpl
from sqlalchemy.orm.base import NO_VALUE, PassiveFlag
from sqlalchemy.orm.instrumentation import ClassManager
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.util import EMPTY_DICT

__all__ = [
    "collect_column_changes",
    "column_changes",
    "commit_all_states",
    "dirty_objects",
    "has_net_changes",
    "is_clean",
]

cdef object _NO_CHANGE = PassiveFlag.NO_CHANGE
cdef object _NO_VALUE = NO_VALUE
cdef object _ScalarImpl = _ScalarAttributeImpl
cdef object _ClassManager = ClassManager
cdef object _ClauseElement = ClauseElement
cdef object _NO_VALUES = EMPTY_DICT


def _is_compiled():
    return True


def is_clean(identity_map, new, deleted):
    """``Session._is_clean``: no modified state, nothing pending or deleted."""
    return not identity_map.check_modified() and not deleted and not new


def dirty_objects(dirty_states, deleted):
    """Objects of the modified states that are not marked deleted."""
    cdef list objects = []
    for state in dirty_states:
        if state not in deleted:
            objects.append(state.obj())
    return objects


cdef inline bint _scalar_changed(object impl, object key, dict committed, object dict_) except -1:
    if key not in dict_:
        return True
    current = dict_[key]
    if current is _NO_VALUE:
        return True
    return impl.is_equal(current, committed[key]) is not True


def has_net_changes(state, include_collections):
    """True when an attribute of ``state`` has a net change (``is_modified``)."""
    if not state.modified:
        return False
    manager = state.manager
    attrs = manager.values() if type(manager) is _ClassManager else manager.attributes
    cdef dict committed = state.committed_state
    dict_ = None
    for attr in attrs:
        impl = attr.impl
        if type(impl) is _ScalarImpl:
            key = impl.key
            if key in committed:
                if dict_ is None:
                    dict_ = state.dict
                if _scalar_changed(impl, key, committed, dict_):
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
    """Net column changes of ``(state, state_dict)`` pairs for one table."""
    cdef frozenset keys = frozenset(propkey_to_col)
    return [
        column_changes(state, state_dict, keys, propkey_to_col)
        for state, state_dict in states
    ]


cdef inline bint _is_plain(object value):
    cdef type t = type(value)
    return (
        value is None or t is int or t is str or t is float or t is bool or t is bytes
    )


def column_changes(state, state_dict, frozenset keys, propkey_to_col):
    """The net column changes of one state: ``(params, value_params)``."""
    cdef dict params = {}
    cdef dict value_params = {}
    cdef dict committed = state.committed_state
    if committed:
        for propkey in keys.intersection(committed):
            value = state_dict[propkey]
            col = propkey_to_col[propkey]
            # a plain value is neither a SQL expression nor stands for one
            if not _is_plain(value):
                if hasattr(value, "__clause_element__"):
                    value_params[col] = value.__clause_element__()
                    continue
                if isinstance(value, _ClauseElement):
                    value_params[col] = value
                    continue
            if state.manager[propkey].impl.is_equal(value, committed[propkey]) is not True:
                params[col.key] = value
    # the flush keeps each state's result until its batch is sent: one
    # shared empty mapping when there are no SQL expressions
    return params, value_params or _NO_VALUES


def commit_all_states(states_and_dicts, instance_dict=None):
    """``InstanceState._commit_all_states``: mark states clean after a flush."""
    cdef bint track_modified = bool(instance_dict)
    cdef set modified = instance_dict._modified if track_modified else None
    cdef dict state_dict
    cdef set expired_attributes
    for state, dict_ in states_and_dicts:
        state_dict = state.__dict__
        (<dict?>state.committed_state).clear()
        if "_pending_mutations" in state_dict:
            del state_dict["_pending_mutations"]
        expired_attributes = state.expired_attributes
        if expired_attributes:  # nothing to take out of an empty set
            expired_attributes.difference_update(dict_)
        if track_modified and state.modified:
            modified.discard(state)
        state.modified = state.expired = False
        state._strong_obj = None
