"""Expiring and detaching objects on commit.

``expire_all`` is the loop of ``SessionTransaction._remove_snapshot`` that
calls ``InstanceState._expire(state.dict, identity_map._modified)`` for each
state of the identity map.  A state of the plain ``InstanceState`` class,
instrumented by a plain ``ClassManager`` whose ``expire`` event has no
listener, gets the same changes here with what is per-class looked up once
per manager: attributes marked expired, pending changes, lazy-load callables
and loaded values dropped, collections invalidated.  Any other state goes
through its own ``_expire``, in its place in the order; its listeners may
change anything, so the loop forgets what it had looked up afterwards.

``detach_all`` is the ``InstanceState._detach_states`` call that follows,
for the objects deleted in the transaction, and the one of
``expunge_all()`` (so of ``close()``) for every object of the session.

Compiled, the per-state loop is C, with the per-manager lookups in a typed
plan.
"""

from __future__ import annotations

from sqlalchemy.orm.instrumentation import ClassManager
from sqlalchemy.orm.state import InstanceState

from . import listeners as _listeners

try:
    import cython
except ModuleNotFoundError:
    from turbosession import _cython_shim as cython

__all__ = ["detach_all", "expire_all"]

if cython.compiled:
    from cython.cimports.turbosession._cpython import (
        ClassSite,
        address,
        DictSite,
        ListenerSites,
        SlotSite,
        has_listeners,
        live_state_dict,
        object_dict,
        own_attributes,
        own_entry,
        slot_value,
    )
else:
    from .listeners import has_listeners
    # the declarations below are plain None
    ListenerSites = ClassSite = SlotSite = DictSite = None

_ClassManager = cython.declare(object, ClassManager)
_InstanceState = cython.declare(object, InstanceState)
_LISTENER_KINDS = cython.declare(tuple, _listeners.KINDS)
_listener_sites = cython.declare(ListenerSites)
# compiled, expire_all sets and reads these in the state's own __dict__
# while InstanceState has no data descriptor of them (own_attributes)
_EXPIRE_NAMES = cython.declare(
    tuple, ("expired", "modified", "_strong_obj", "callables", "_last_known_values")
)
_expire_site = cython.declare(ClassSite)
# compiled, expire_all reads a state's ``manager``, ``expired_attributes``
# and ``obj`` slots at their offsets, and the state's and its object's
# ``__dict__`` through their getters (``_cpython.slot_value``,
# ``object_dict``, ``live_state_dict``)
_manager_site = cython.declare(SlotSite)
_expired_site = cython.declare(SlotSite)
_obj_site = cython.declare(SlotSite)
# the session dispatcher's slots of the events detach_all fires
_to_detached_site = cython.declare(SlotSite)
_deleted_detached_site = cython.declare(SlotSite)
_to_transient_site = cython.declare(SlotSite)
_persistent_transient_site = cython.declare(SlotSite)
_state_dict_site = cython.declare(DictSite)
_object_dict_site = cython.declare(DictSite)
# where a manager keeps its plan (its own __dict__, beside the memoized
# attributes the plan is made from)
_PLAN_ATTR = cython.declare(str, "_turbosession_expire_plan")


def _is_compiled():
    return cython.compiled


@cython.cfunc
@cython.inline
@cython.exceptval(-1, check=False)
def _has_listeners(listeners) -> cython.bint:
    """``bool(listeners)`` of a dispatch attribute (``turbosession.listeners``)."""
    if cython.compiled:
        return has_listeners(listeners, _LISTENER_KINDS, cython.address(_listener_sites))
    return has_listeners(listeners, _LISTENER_KINDS)


@cython.cclass
class _ManagerPlan:
    """What ``_expire`` reads from a class manager, with the three
    memoized attributes of the manager it is made from (SQLAlchemy
    replaces them when the class's attributes change)."""

    loader_impls: object
    collection_impl_keys: object
    all_key_source: object
    loader_keys: list
    collection_keys: tuple
    all_keys: tuple
    all_key_set: frozenset

    def __init__(self, loader_impls, collection_impl_keys, all_key_set):
        self.loader_impls = loader_impls
        self.collection_impl_keys = collection_impl_keys
        self.all_key_source = all_key_set
        self.loader_keys = [impl.key for impl in loader_impls]
        self.collection_keys = tuple(collection_impl_keys)
        self.all_key_set = frozenset(all_key_set)
        self.all_keys = tuple(self.all_key_set)


@cython.cfunc
def _plan_for(manager) -> object:
    """The manager's plan, or None to use stock's ``_expire``.  Kept in
    the manager while the memoized attributes it reads are the same
    objects; whether ``expire`` is listened to is asked every time."""
    if type(manager) is not _ClassManager or _has_listeners(manager.dispatch.expire):
        return None
    loader_impls = manager._loader_impls
    collection_impl_keys = manager._collection_impl_keys
    all_key_set = manager._all_key_set
    own: dict = manager.__dict__
    kept = own.get(_PLAN_ATTR)
    # (the other bundle's plan, in tests running both, is replaced)
    if type(kept) is _ManagerPlan:
        plan: _ManagerPlan = kept
        if (
            plan.loader_impls is loader_impls
            and plan.collection_impl_keys is collection_impl_keys
            and plan.all_key_source is all_key_set
        ):
            return plan
    plan = _ManagerPlan(loader_impls, collection_impl_keys, all_key_set)
    own[_PLAN_ATTR] = plan
    return plan


def expire_all(session, states):
    """Expire ``states`` (the identity map's, listed) as commit does."""
    modified: object = session.identity_map._modified
    plans: dict = {}
    plan: _ManagerPlan
    dict_: dict
    own: dict
    all_keys: tuple
    all_key_set: frozenset
    direct: cython.bint
    # the plans are kept by the manager's id, not the manager, which would
    # be hashed by ClassManager.__hash__, a Python method, whenever states
    # of several classes alternate in the map (every manager is alive
    # meanwhile: ``states`` holds its states); the last manager's plan is
    # asked again without the dict
    last_manager = None
    last_plan = None
    for state in states:
        plan_or_none = None
        if type(state) is _InstanceState:
            manager = (
                slot_value(state, "manager", cython.address(_manager_site))
                if cython.compiled
                else state.manager
            )
            if manager is last_manager:
                plan_or_none = last_plan
            else:
                # (compiled, the id without calling the builtin)
                manager_id = address(manager) if cython.compiled else id(manager)
                plan_or_none = plans.get(manager_id, plans)
                if plan_or_none is plans:
                    plan_or_none = plans[manager_id] = _plan_for(manager)
                last_manager = manager
                last_plan = plan_or_none
        if plan_or_none is None:
            state._expire(state.dict, session.identity_map._modified)
            modified = session.identity_map._modified
            plans.clear()
            last_manager = None
            continue
        plan = plan_or_none

        if cython.compiled:
            # (the object's reference dropped on return)
            found = live_state_dict(
                state, cython.address(_obj_site), cython.address(_object_dict_site)
            )
            if found is None:
                found = {}
        else:
            obj = state.obj()
            found = {} if obj is None else obj.__dict__
            obj = None  # as in stock, dropping _strong_obj may free the object
        if cython.compiled and type(found) is not dict:
            # an object whose __dict__ is a dict subclass: stock's own step
            state._expire(found, session.identity_map._modified)
            modified = session.identity_map._modified
            plans.clear()
            last_manager = None
            continue
        # compiled, a dict itself from here (its lookups and deletions C's),
        # and the state's plain sets and dicts changed with C's calls
        # rather than looked-up methods; with ``direct`` (compiled, while
        # ``own_attributes`` accepts ``_EXPIRE_NAMES``) those attributes
        # read from and stored in the state's ``__dict__``: the same reads,
        # stores and deletions in the same order
        dict_ = found
        direct = cython.compiled and own_attributes(
            _InstanceState, _EXPIRE_NAMES, cython.address(_expire_site)
        )
        own = (
            object_dict(state, cython.address(_state_dict_site))
            if cython.compiled
            else state.__dict__
        )
        if direct:
            own["expired"] = True
        else:
            state.expired = True
        if own_entry(own, state, "modified") if direct else state.modified:
            if cython.compiled and type(modified) is set:
                cython.cast(set, modified).discard(state)
            else:
                modified.discard(state)
            committed = state.committed_state
            if cython.compiled and type(committed) is dict:
                cython.cast(dict, committed).clear()
            else:
                committed.clear()
            if direct:
                own["modified"] = False
            else:
                state.modified = False
        if direct:
            own["_strong_obj"] = None
        else:
            state._strong_obj = None

        own.pop("_pending_mutations", None)
        own.pop("parents", None)

        expired = (
            slot_value(state, "expired_attributes", cython.address(_expired_site))
            if cython.compiled
            else state.expired_attributes
        )
        if cython.compiled and type(expired) is set:
            # set.update of the list: each key added in its order
            for key in plan.loader_keys:
                cython.cast(set, expired).add(key)
        else:
            expired.update(plan.loader_keys)
        callables = own_entry(own, state, "callables") if direct else state.callables
        if callables:
            for key in expired.intersection(callables):
                del callables[key]

        for key in plan.collection_keys:
            if key in dict_:
                dict_.pop(key)._sa_adapter.invalidated = True

        last_known = (
            own_entry(own, state, "_last_known_values") if direct else state._last_known_values
        )
        if last_known:
            last_known.update({k: dict_[k] for k in last_known if k in dict_})

        # the loaded values go; walking the shorter side needs no
        # intersection set per state (the order of deletion leaves no trace)
        all_keys = plan.all_keys
        if len(dict_) < len(all_keys):
            all_key_set = plan.all_key_set
            for key in [key for key in dict_ if key in all_key_set]:
                del dict_[key]
        elif cython.compiled or type(dict_) is dict:
            # one lookup per key, where testing and then deleting is two
            for key in all_keys:
                dict_.pop(key, None)
        else:
            # a dict subclass (uncompiled): its own test and deletion
            for key in all_keys:
                if key in dict_:
                    del dict_[key]


def detach_all(session, states):
    """``InstanceState._detach_states(states, session)``, as commit calls it
    for the deleted states and ``expunge_all()`` for all: without a listener of the state-change events
    it fires, all it does is take each state out of the session."""
    dispatch = session.dispatch
    # compiled, the dispatcher's filled slots read at their offsets
    # (a dispatcher class's __getattr__ sends every read through CPython's
    # slower hook: about 0.25k a read)
    if (
        _has_listeners(
            slot_value(dispatch, "persistent_to_detached", cython.address(_to_detached_site))
            if cython.compiled
            else dispatch.persistent_to_detached
        )
        or _has_listeners(
            slot_value(dispatch, "deleted_to_detached", cython.address(_deleted_detached_site))
            if cython.compiled
            else dispatch.deleted_to_detached
        )
        or _has_listeners(
            slot_value(dispatch, "pending_to_transient", cython.address(_to_transient_site))
            if cython.compiled
            else dispatch.pending_to_transient
        )
        or _has_listeners(
            slot_value(
                dispatch, "persistent_to_transient", cython.address(_persistent_transient_site)
            )
            if cython.compiled
            else dispatch.persistent_to_transient
        )
    ):
        InstanceState._detach_states(states, session)
        return
    for state in states:
        state.session_id = None
        state._strong_obj = None
