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


cdef class _Gate:
    """Which objects of one ``add_all`` / ``delete_all`` call take the fast
    path: the decision the two loops share, with what it looked up kept
    until stock's code runs (its listeners may change anything)."""

    cdef object session
    cdef object hash_key
    cdef bint persistent
    cdef str cascade
    cdef tuple events
    cdef object last_mapper
    cdef bint last_cascades
    cdef int listened  # -1: not looked up yet

    def __cinit__(self, session, bint persistent, str cascade, tuple events):
        self.session = session
        self.hash_key = session.hash_key
        self.persistent = persistent
        self.cascade = cascade
        self.events = events
        self.forget()

    cdef forget(self):
        self.last_mapper = None
        self.listened = -1

    cdef int decide(self, state) except -2:
        """-1: stock's method; 0: fast, already attached; 1: fast, to attach."""
        if (
            state is None
            or (state.key is not None) != self.persistent
            or self.session._transaction is None
        ):
            return -1
        mapper = _mapper_of(state)
        if mapper is None:
            return -1
        if mapper is not self.last_mapper:
            self.last_cascades = _cascades(mapper, self.cascade)
            self.last_mapper = mapper
        if self.last_cascades:
            return -1
        session_id = state.session_id
        if session_id is None:
            if self.listened < 0:
                self.listened = _listened(self.session.dispatch, self.events)
            return -1 if self.listened else 1
        return 0 if session_id == self.hash_key else -1


def add_all(session, instances):
    cdef _Gate gate = _Gate(session, False, "save-update", _ADD_EVENTS)
    cdef dict new = session._new
    cdef int verdict
    for instance in instances:
        state = _state_of(instance)
        verdict = gate.decide(state)
        if verdict < 0:
            _stock_add(session, instance, _warn=False)
            new = session._new
            gate.forget()
            continue
        state._orphaned_outside_of_session = False
        obj = state.obj()
        if state not in new:
            new[state] = obj
            state.insert_order = len(new)
        if verdict:
            _attach(state, gate.hash_key, obj)


def delete_all(session, instances):
    cdef _Gate gate = _Gate(session, True, "delete", _DELETE_EVENTS)
    cdef dict deleted = session._deleted
    cdef int verdict
    for instance in instances:
        state = _state_of(instance)
        verdict = gate.decide(state)
        if verdict < 0:
            _stock_delete(session, instance)
            deleted = session._deleted
            gate.forget()
            continue
        if state in deleted:
            continue
        session.identity_map.add(state)
        if verdict:
            _attach(state, gate.hash_key, instance)
        deleted[state] = instance


cdef inline _attach(state, hash_key, obj):
    """Stock's ``_after_attach`` with no listener."""
    state.session_id = hash_key
    if state.modified and state._strong_obj is None:
        state._strong_obj = obj
