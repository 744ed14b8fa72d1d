"""Attaching objects to a session, pure-Python twin of ``_attach_c``.

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
"""

from sqlalchemy import orm

__all__ = ["add_all", "delete_all"]

_stock_add = orm.Session.add
_stock_delete = orm.Session.delete

_ADD_EVENTS = ("before_attach", "after_attach", "transient_to_pending")
_DELETE_EVENTS = ("before_attach", "after_attach", "detached_to_persistent")


def _is_compiled():
    return False


def _listened(dispatch, names):
    for name in names:
        if getattr(dispatch, name):
            return True
    return False


def _state_of(instance):
    try:
        return instance._sa_instance_state
    except (AttributeError, KeyError):  # stock's NO_STATE: it raises for us
        return None


def _cascades(mapper, cascade):
    """Whether ``mapper.cascade_iterator(cascade, ...)`` could yield: the
    test stock makes on each of the mapper's properties before following it."""
    for prop in mapper._props.values():
        options = prop.cascade
        if options and cascade in options:
            return True
    return False


def _mapper_of(state):
    try:
        return state.manager.mapper
    except Exception:  # unmapped class: stock raises its own error
        return None


def add_all(session, instances):
    hash_key = session.hash_key
    new = session._new
    listened = None  # looked up when the first object needs attaching
    last_mapper = None
    last_cascades = False
    for instance in instances:
        state = _state_of(instance)
        fast = (
            state is not None
            and state.key is None
            and session._transaction is not None
        )
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
                if listened is None:
                    listened = _listened(session.dispatch, _ADD_EVENTS)
                attach = fast = not listened
            elif session_id != hash_key:
                fast = False
        if not fast:
            _stock_add(session, instance, _warn=False)
            new = session._new
            listened = None
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
    hash_key = session.hash_key
    deleted = session._deleted
    listened = None
    last_mapper = None
    last_cascades = False
    for instance in instances:
        state = _state_of(instance)
        fast = (
            state is not None
            and state.key is not None
            and session._transaction is not None
        )
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
                if listened is None:
                    listened = _listened(session.dispatch, _DELETE_EVENTS)
                attach = fast = not listened
            elif session_id != hash_key:
                fast = False
        if not fast:
            _stock_delete(session, instance)
            deleted = session._deleted
            listened = None
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
