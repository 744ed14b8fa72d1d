"""Attaching objects to a session.

``add_all`` and ``delete_all`` are ``Session.add_all`` and
``Session.delete_all`` for the objects whose outcome needs none of stock's
machinery: the object's mapper has no relationship with that cascade (so
``Mapper.cascade_iterator`` could not yield anything), the session already
has a transaction, and either the object is already attached to this
session or no attach event has a listener.  Such an object gets exactly the
bookkeeping stock gives it (``_new``/``insert_order``, ``session_id``, the
strong reference of a modified object, the identity map, ``_deleted``).

Every other object goes through stock's ``Session.add`` / ``Session.delete``,
one object at a time and in its place in the sequence, so events, cascades,
autobegin and error messages are stock's own.  Stock's code may run listeners
(and they may change anything), so after it the loop forgets what it had
looked up.  The caller checks that the session class overrides none of the
methods involved and that no flush is in progress (``_warn_on_events``).

Compiled, the per-object loop is C, with the session's ``_new`` /
``_deleted`` dicts typed and the mapper's cascade verdict kept in a cclass.
"""

from __future__ import annotations

from sqlalchemy import orm

try:
    import cython
except ModuleNotFoundError:
    from turbosession import _cython_shim as cython

__all__ = ["add_all", "delete_all"]

_stock_add = cython.declare(object, orm.Session.add)
_stock_delete = cython.declare(object, orm.Session.delete)

_ADD_EVENTS = cython.declare(tuple, ("before_attach", "after_attach", "transient_to_pending"))
_DELETE_EVENTS = cython.declare(
    tuple, ("before_attach", "after_attach", "detached_to_persistent")
)


def _is_compiled():
    return cython.compiled


@cython.cfunc
@cython.exceptval(-1, check=False)
def _listened(dispatch, names: tuple) -> cython.bint:
    for name in names:
        if getattr(dispatch, name):
            return True
    return False


@cython.cfunc
@cython.exceptval(-1, check=False)
def _cascades(mapper, cascade: str) -> cython.bint:
    """Whether ``mapper.cascade_iterator(cascade, ...)`` could yield: the
    test stock makes on each of the mapper's properties before following it."""
    for prop in mapper._props.values():
        options = prop.cascade
        if options and cascade in options:
            return True
    return False


@cython.cfunc
@cython.inline
def _state_of(instance) -> object:
    try:
        return instance._sa_instance_state
    except (AttributeError, KeyError):  # stock's NO_STATE: it raises for us
        return None


@cython.cfunc
@cython.inline
def _mapper_of(state) -> object:
    try:
        return state.manager.mapper
    except Exception:  # unmapped class: stock raises its own error
        return None


@cython.cclass
class _Gate:
    """Which objects of one ``add_all`` / ``delete_all`` call take the fast
    path: the decision the two loops share, with what it looked up kept
    until stock's code runs (its listeners may change anything)."""

    session: object
    hash_key: object
    persistent: cython.bint
    cascade: str
    events: tuple
    last_mapper: object
    last_cascades: cython.bint
    listened: cython.int  # -1: not looked up yet

    def __init__(self, session, persistent: cython.bint, cascade: str, events: tuple):
        self.session = session
        self.hash_key = session.hash_key
        self.persistent = persistent
        self.cascade = cascade
        self.events = events
        self.last_cascades = False
        self.forget()

    @cython.cfunc
    def forget(self):
        self.last_mapper = None
        self.listened = -1

    @cython.cfunc
    @cython.exceptval(-2, check=False)
    def decide(self, state) -> cython.int:
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
    gate: _Gate = _Gate(session, False, "save-update", _ADD_EVENTS)
    new: dict = session._new
    verdict: cython.int
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
    gate: _Gate = _Gate(session, True, "delete", _DELETE_EVENTS)
    deleted: dict = session._deleted
    verdict: cython.int
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


@cython.cfunc
@cython.inline
def _attach(state, hash_key, obj):
    """Stock's ``_after_attach`` with no listener."""
    state.session_id = hash_key
    if state.modified and state._strong_obj is None:
        state._strong_obj = obj
