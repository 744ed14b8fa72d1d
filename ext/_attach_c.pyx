# cython: language_level=3
"""Attaching objects to a session, compiled twin of ``turbosession._attach_py``.

Same decisions (see the pure twin for which objects take the fast path and
why the rest go through stock's ``Session.add`` / ``Session.delete``); here
the per-object loop is C, with the session's ``_new`` / ``_deleted`` dicts
typed and the mapper's cascade verdict kept in locals.
"""

from sqlalchemy import orm

__all__ = ["add_all", "delete_all"]

cdef object _stock_add = orm.Session.add
cdef object _stock_delete = orm.Session.delete

cdef tuple _ADD_EVENTS = ("before_attach", "after_attach", "transient_to_pending")
cdef tuple _DELETE_EVENTS = ("before_attach", "after_attach", "detached_to_persistent")


def _is_compiled():
    return True


cdef bint _listened(dispatch, tuple names) except -1:
    for name in names:
        if getattr(dispatch, name):
            return True
    return False


cdef bint _cascades(mapper, str cascade) except -1:
    """Whether ``mapper.cascade_iterator(cascade, ...)`` could yield: the
    test stock makes on each of the mapper's properties before following it."""
    for prop in mapper._props.values():
        options = prop.cascade
        if options and cascade in options:
            return True
    return False


cdef inline object _state_of(instance):
    try:
        return instance._sa_instance_state
    except (AttributeError, KeyError):  # stock's NO_STATE: it raises for us
        return None


cdef inline object _mapper_of(state):
    try:
        return state.manager.mapper
    except Exception:  # unmapped class: stock raises its own error
        return None


def add_all(session, instances):
    cdef dict new = session._new
    cdef int listened = -1  # unknown until the first object needs attaching
    cdef bint fast, attach
    cdef object last_mapper = None
    cdef bint last_cascades = False
    hash_key = session.hash_key
    for instance in instances:
        state = _state_of(instance)
        fast = state is not None and state.key is None and session._transaction is not None
        if fast:
            mapper = _mapper_of(state)
            if mapper is None:
                fast = False
            else:
                if mapper is not last_mapper:
                    last_cascades = _cascades(mapper, "save-update")
                    last_mapper = mapper
                fast = not last_cascades
        attach = False
        if fast:
            session_id = state.session_id
            if session_id is None:
                if listened < 0:
                    listened = _listened(session.dispatch, _ADD_EVENTS)
                attach = fast = not listened
            elif session_id != hash_key:
                fast = False
        if not fast:
            _stock_add(session, instance, _warn=False)
            new = session._new
            listened = -1
            last_mapper = None
            continue

        state._orphaned_outside_of_session = False
        obj = state.obj()
        if state not in new:
            new[state] = obj
            state.insert_order = len(new)
        if attach:
            state.session_id = hash_key
            if state.modified and state._strong_obj is None:
                state._strong_obj = obj


def delete_all(session, instances):
    cdef dict deleted = session._deleted
    cdef int listened = -1
    cdef bint fast, attach
    cdef object last_mapper = None
    cdef bint last_cascades = False
    hash_key = session.hash_key
    for instance in instances:
        state = _state_of(instance)
        fast = state is not None and state.key is not None and session._transaction is not None
        if fast:
            mapper = _mapper_of(state)
            if mapper is None:
                fast = False
            else:
                if mapper is not last_mapper:
                    last_cascades = _cascades(mapper, "delete")
                    last_mapper = mapper
                fast = not last_cascades
        attach = False
        if fast:
            session_id = state.session_id
            if session_id is None:
                if listened < 0:
                    listened = _listened(session.dispatch, _DELETE_EVENTS)
                attach = fast = not listened
            elif session_id != hash_key:
                fast = False
        if not fast:
            _stock_delete(session, instance)
            deleted = session._deleted
            listened = -1
            last_mapper = None
            continue

        if state in deleted:
            continue
        session.identity_map.add(state)
        if attach:
            state.session_id = hash_key
            if state.modified and state._strong_obj is None:
                state._strong_obj = instance
        deleted[state] = instance
