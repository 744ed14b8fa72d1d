# cython: language_level=3
"""Per-state bookkeeping of the unit of work, compiled twin of ``_unitofwork_py``.

The same functions, loop for loop (see the pure twin for why each one exists
and why its output is stock's); here the per-state and per-edge loops are C
loops over typed dicts, sets and lists.
"""

from sqlalchemy.orm import attributes
from sqlalchemy.orm.unitofwork import (
    _DeleteAll,
    _DeleteState,
    _SaveUpdateAll,
    _SaveUpdateState,
)

__all__ = ["attribute_history", "split_per_state", "states_for_mapper_hierarchy"]

cdef object _SQL_OK = attributes.SQL_OK
cdef object _RELOAD = (
    attributes.PASSIVE_OFF | attributes.LOAD_AGAINST_COMMITTED | attributes.NO_RAISE
)
cdef object _LOAD_EXTRA = attributes.LOAD_AGAINST_COMMITTED | attributes.NO_RAISE
cdef object _object_new = object.__new__

# passive flag -> (passive | LOAD_AGAINST_COMMITTED | NO_RAISE, bool(passive & SQL_OK))
cdef dict _flags = {}


def _is_compiled():
    return True


cdef inline tuple _flag_info(object passive):
    cdef object info = _flags.get(passive)
    if info is None:
        info = _flags[passive] = (passive | _LOAD_EXTRA, bool(passive & _SQL_OK))
    return <tuple>info


cdef tuple _history(object state, object key, object flags):
    cdef object impl = state.manager[key].impl
    cdef object history = impl.get_history(state, state.dict, flags)
    if history and impl.uses_objects:
        return history, history.as_state()
    return history, history


def attribute_history(uow, state, key, passive):
    """``UOWTransaction.get_attribute_history``, cached in ``uow.attributes``."""
    cdef dict cache = uow.attributes
    cdef tuple hashkey = ("history", state, key)
    cdef object cached = cache.get(hashkey)
    cdef object state_history
    if cached is not None:
        state_history = (<tuple>cached)[1]
        # a passive lookup was cached; a non-passive one loads and re-caches
        if not _flag_info((<tuple>cached)[2])[1] and _flag_info(passive)[1]:
            history, state_history = _history(state, key, _RELOAD)
            cache[hashkey] = (history, state_history, passive)
        return state_history
    history, state_history = _history(state, key, _flag_info(passive)[0])
    cache[hashkey] = (history, state_history, passive)
    return state_history


def states_for_mapper_hierarchy(uow, mapper, isdelete, listonly):
    """States of ``mapper``'s hierarchy flagged ``(isdelete, listonly)``."""
    cdef tuple checktup = (isdelete, listonly)
    cdef dict states = uow.states
    cdef object mappers = uow.mappers
    cdef list found = []
    cdef object state
    for submapper in mapper.base_mapper.self_and_descendants:
        for state in mappers[submapper]:
            if states[state] == checktup:
                found.append(state)
    return found


cdef list _state_records(uow, type cls, list states, mapper, tuple sort_key):
    """Records ``cls(uow, state)`` for ``states``, made as stock makes them."""
    cdef dict registry = uow.postsort_actions
    cdef list records = []
    cdef object record, state
    cdef tuple key
    for state in states:
        key = (cls, state)
        record = registry.get(key)
        if record is None:
            record = _object_new(cls)
            record.disabled = False
            registry[key] = record
        record.state = state
        record.mapper = mapper
        record.sort_key = sort_key
        records.append(record)
    return records


cdef set _per_state_actions(uow, rec):
    """``rec.per_state_flush_actions(uow)`` for stock's per-mapper save/delete."""
    cdef object mapper = rec.mapper
    cdef bint isdelete = type(rec) is _DeleteAll
    cdef list states = states_for_mapper_hierarchy(uow, mapper, isdelete, False)
    cdef object base_mapper = mapper.base_mapper
    cdef set dependencies = uow.dependencies
    cdef list actions
    cdef object action, other
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
        dep.per_state_flush_actions(uow, states_for_prop, isdelete)
    return set(actions)


cdef _rewrite_dependencies(set dependencies, set cycles, dict convert):
    """Point the edges of the split actions at their per-state actions."""
    cdef object edge, before, after, dep
    for edge in list(dependencies):
        before = (<tuple>edge)[0]
        after = (<tuple>edge)[1]
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
            for dep in <set>convert[before]:
                dependencies.add((dep, after))
        elif after in cycles:
            dependencies.remove(edge)
            for dep in <set>convert[after]:
                dependencies.add((before, dep))


def split_per_state(uow, set cycles):
    """Replace the actions in ``cycles`` by per-state actions, as stock does."""
    cdef dict convert = {}
    for rec in cycles:
        if type(rec) is _SaveUpdateAll or type(rec) is _DeleteAll:
            convert[rec] = _per_state_actions(uow, rec)
        else:
            convert[rec] = set(rec.per_state_flush_actions(uow))
    _rewrite_dependencies(uow.dependencies, cycles, convert)
