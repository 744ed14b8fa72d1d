"""Attaching objects to a session, cascades included.

``add_all`` and ``delete_all`` are ``Session.add_all`` and
``Session.delete_all`` (``add`` and ``delete`` call them with one object).
An object takes turbosession's path when no attach event has a listener
and its mapper's class walks
cascades as stock's ``Mapper.cascade_iterator`` does; every other object goes
through stock's ``Session.add`` / ``Session.delete``, one object at a time and
in its place in the sequence, counted under a reason (``attaching.stats()``).

On turbosession's path the object and what its relationships cascade to are
walked as stock's ``Mapper.cascade_iterator`` walks them: depth first, the
properties of each object in ``_props`` order, the objects a relationship
cascades to gathered when the walk reaches that relationship (and, for
``save-update``, skipped then when the session already holds them), each
object's own properties walked right after it is attached.  A relationship
whose class is stock's is followed inline (its ``get_all_pending`` /
``_value_as_iterable`` called as stock calls them); any other property
through its own ``cascade_iterator``.  The per-mapper part of that decision
is ``attaching.cascade_plan``.

Each object reached gets exactly what stock's ``_save_or_update_impl`` /
``_delete_impl`` give it: a transient or detached-for-delete object with no
session is attached here (``_new``/``insert_order`` or the identity map and
``_deleted``, ``session_id``, the strong reference of a modified object; no
listener means the attach events have nothing to call); any other object
(persistent, detached, another session's, deleted) is handed to stock's
own ``_save_or_update_impl`` / ``_delete_impl``, which raise or attach it as
they do in stock.  A session without a transaction begins one where stock's
``_before_attach`` does (``_autobegin_t``), and stock's method takes over
from there if that made an attach event listened.  The caller checks that the session class overrides none of
the methods involved and that no flush is in progress (``_warn_on_events``).
"""

from __future__ import annotations

import logging
import types
import weakref
from itertools import repeat

from sqlalchemy import orm
from sqlalchemy.event import base as event_base
from sqlalchemy.orm import attributes, base, collections
from sqlalchemy.orm.relationships import RelationshipProperty
from sqlalchemy.orm.base import PassiveFlag
from sqlalchemy.orm.state import InstanceState

from . import attaching
from . import listeners as _listeners

try:
    import cython
except ModuleNotFoundError:
    from turbosession import _cython_shim as cython

if cython.compiled:
    from cython.cimports.cpython.object import PyObject
    from cython.cimports.turbosession._cpython import (
        ListenerSites,
        has_listeners,
        address,
        manager_impl,
        dict_get,
        ClassSite,
        class_lookup,
        instance_dict,
        own_dict,
        own_entry,
        SlotSite,
        class_attribute_is,
        dict_version,
        own_value,
        slot_value,
        state_object,
        store_slot,
        type_version_tag,
        DictSite,
        live_state_dict,
        object_dict,
        writable_slot_offset,
    )
else:
    from .listeners import has_listeners
    ListenerSites = None  # the declaration below is plain None
    SlotSite = ClassSite = DictSite = None  # the declarations below are plain None

__all__ = [
    "add_all", "class_like", "counts", "delete_all", "fill_dispatch", "hooks_like", "open_dispatch",
    "pending_pairs", "reset_counts",
    "session_delete", "set_session_hooks",
]

_stock_add = cython.declare(object, orm.Session.add)
_stock_delete = cython.declare(object, orm.Session.delete)
_cascade_plan = cython.declare(object, attaching.cascade_plan)
_PLAN_KEY = cython.declare(str, attaching._PLAN_KEY)
_LISTENER_KINDS = cython.declare(tuple, _listeners.KINDS)
_listener_sites = cython.declare(ListenerSites)
_VALUE_AS_ITERABLE = cython.declare(object, RelationshipProperty._value_as_iterable)
_CollectionAttributeImpl = cython.declare(object, attributes._CollectionAttributeImpl)
_ATTRIBUTE_GET = cython.declare(object, attributes._AttributeImpl.get)
_InstrumentedList = cython.declare(object, collections.InstrumentedList)
# stock's ``attributes.instance_state`` is ``attrgetter("_sa_instance_state")``:
# the attribute is read here directly, without the call
_ScalarObjectAttributeImpl = cython.declare(object, attributes._ScalarObjectAttributeImpl)
_COLLECTION_PENDING = cython.declare(object, attributes._CollectionAttributeImpl.get_all_pending)
_OBJECT_PENDING = cython.declare(object, attributes._ScalarObjectAttributeImpl.get_all_pending)
_MISSING = cython.declare(object, object())
_NO_VALUE = cython.declare(object, attributes.NO_VALUE)
_PASSIVE_NO_RESULT = cython.declare(object, attributes.PASSIVE_NO_RESULT)

_BEFORE_ATTACH = cython.declare(str, "before_attach")
_AFTER_ATTACH = cython.declare(str, "after_attach")
_TRANSIENT_TO_PENDING = cython.declare(str, "transient_to_pending")
_DETACHED_TO_PERSISTENT = cython.declare(str, "detached_to_persistent")
_ADD_EVENTS = cython.declare(
    tuple, (_BEFORE_ATTACH, _AFTER_ATTACH, _TRANSIENT_TO_PENDING, _DETACHED_TO_PERSISTENT)
)
_DELETE_EVENTS = cython.declare(tuple, (_BEFORE_ATTACH, _AFTER_ATTACH, _DETACHED_TO_PERSISTENT))

_SAVE_UPDATE = cython.declare(str, "save-update")
_DELETE = cython.declare(str, "delete")
_NO_INITIALIZE = cython.declare(object, PassiveFlag.PASSIVE_NO_INITIALIZE)
_LOAD = cython.declare(object, PassiveFlag.PASSIVE_OFF | PassiveFlag.NO_RAISE)
_STOCK_INSTANCE_DICT = cython.declare(object, base.instance_dict)
_ATTRIBUTES_NAMES = cython.declare(dict, attributes.__dict__)
_BASE_NAMES = cython.declare(dict, base.__dict__)

_DICT_GETITEM = cython.declare(object, dict.__getitem__)
# compiled, the call sites' kept class lookups (see _cpython.slot_value and
# class_attribute_is)
_impl_site = cython.declare(SlotSite)
_dict_getitem_site = cython.declare(ClassSite)
_cascade_site = cython.declare(ClassSite)
# the session dispatcher's slots of the attach events (_event_listeners)
_before_attach_site = cython.declare(SlotSite)
_after_attach_site = cython.declare(SlotSite)
_transient_to_pending_site = cython.declare(SlotSite)
_detached_to_persistent_site = cython.declare(SlotSite)
_state_dict_site = cython.declare(ClassSite)
_InstanceState = cython.declare(object, InstanceState)
_STATE_DICT = cython.declare(object, InstanceState.__dict__["dict"])

_MemberDescriptorType = cython.declare(object, types.MemberDescriptorType)
_OBJECT_SETATTR = cython.declare(object, object.__setattr__)
# a dispatcher class -> {event name: offset of its slot} (compiled)
_dispatch_slots = cython.declare(dict, {})
# the last listeners filled and their slots' offsets (_fill_slots)
_fill_plan = cython.declare(object, None)
# what ``session.dispatch`` runs the first time, as SQLAlchemy ships it
# (open_dispatch makes the dispatcher itself only while these are the ones)
_DISPATCHER = cython.declare(object, event_base.dispatcher)
_DISPATCHER_GET = cython.declare(object, event_base.dispatcher.__dict__["__get__"])
_FOR_INSTANCE = cython.declare(object, event_base._Dispatch.__dict__["_for_instance"])
_FOR_CLASS = cython.declare(object, event_base._Dispatch.__dict__["_for_class"])
_DISPATCH_INIT = cython.declare(object, event_base._Dispatch.__dict__["__init__"])
_OBJECT_NEW = cython.declare(object, object.__dict__["__new__"])
_WeakKeyDictionary = cython.declare(object, weakref.WeakKeyDictionary)
_WEAK_KEY_GETITEM = cython.declare(object, weakref.WeakKeyDictionary.__dict__["__getitem__"])


_log = logging.getLogger("turbosession")
_DEBUG = logging.DEBUG

_attached_fast = cython.declare(cython.Py_ssize_t, 0)
_fallbacks = cython.declare(dict, {})


def _is_compiled():
    return cython.compiled


def counts():
    """``{"fast": n, "fallback": {reason: n}}``: objects handed to add /
    add_all / delete / delete_all so far."""
    return {"fast": _attached_fast, "fallback": dict(_fallbacks)}


def reset_counts():
    global _attached_fast
    _attached_fast = 0
    _fallbacks.clear()


@cython.cfunc
def _fallback(reason: str):
    _fallbacks[reason] = _fallbacks.get(reason, 0) + 1
    if _log.isEnabledFor(_DEBUG):
        _log.debug(
            "attach runs stock's: %s (%s)", reason, attaching.FALLBACK_REASONS[reason]
        )


@cython.cfunc
@cython.exceptval(-1, check=False)
def _listened(dispatch, names: tuple) -> cython.bint:
    for name in names:
        listeners = _event_listeners(dispatch, name) if cython.compiled else getattr(dispatch, name)
        if _has_listeners(listeners):
            return True
    return False


@cython.cfunc
@cython.inline
def _event_listeners(dispatch, name: str):
    """``getattr(dispatch, name)`` of an attach event.  A dispatcher class
    has a ``__getattr__`` (it fills its slots on first use), which sends
    every attribute read through CPython's slower hook; compiled, the slot
    ``fill_dispatch`` filled is read at its offset (``_cpython.slot_value``:
    an empty slot, or a class not read as ``object`` reads, takes
    ``getattr``)."""
    if cython.compiled:
        if name is _BEFORE_ATTACH:
            return slot_value(dispatch, name, cython.address(_before_attach_site))
        if name is _AFTER_ATTACH:
            return slot_value(dispatch, name, cython.address(_after_attach_site))
        if name is _TRANSIENT_TO_PENDING:
            return slot_value(dispatch, name, cython.address(_transient_to_pending_site))
        if name is _DETACHED_TO_PERSISTENT:
            return slot_value(dispatch, name, cython.address(_detached_to_persistent_site))
    return getattr(dispatch, name)


@cython.cfunc
def _plan_of(mapper) -> tuple:
    """``attaching.cascade_plan(mapper)``: the kept plan while the
    mapper's memoized values it derives from are the same."""
    if cython.compiled:
        # both read in the mapper's own __dict__ (_cpython.own_value)
        entry = dict_get(
            own_value(mapper, "_memoized_values", cython.address(_memoized_values_site)),
            _PLAN_KEY,
            None,
        )
        if entry is not None and entry[0] is own_value(
            mapper, "_propkey_to_col", cython.address(_propkey_to_col_site)
        ):
            return entry[1]
        return _cascade_plan(mapper)
    entry = mapper._memoized_values.get(_PLAN_KEY)
    if entry is not None and entry[0] is mapper._propkey_to_col:
        return entry[1]
    return _cascade_plan(mapper)


# compiled, _plan_of's reads of the mapper's attributes
_memoized_values_site = cython.declare(ClassSite)
_propkey_to_col_site = cython.declare(ClassSite)


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
def _state_dict(state):
    """``state.dict``: compiled, for a state of stock's class whose ``dict``
    property is stock's and while ``orm.base``'s ``instance_dict`` is
    stock's ``attrgetter("__dict__")``, the object's ``__dict__`` read
    directly (the property's Python frame and the attrgetter call
    skipped), or a new empty dict once the object is gone."""
    if (
        not cython.compiled
        or type(state) is not _InstanceState
        or not class_attribute_is(
            _InstanceState, "dict", _STATE_DICT, cython.address(_state_dict_site)
        )
        or _BASE_NAMES.get("instance_dict") is not _STOCK_INSTANCE_DICT
    ):
        return state.dict
    found = live_state_dict(
        state, cython.address(_obj_site), cython.address(_object_dict_site)
    )
    if found is None:
        return {}
    return found


# compiled, the kept class lookups of _state_dict (_cpython.live_state_dict)
_obj_site = cython.declare(SlotSite)
_object_dict_site = cython.declare(DictSite)
# compiled, the __dict__ lookup of the objects a save-update walk reaches
# (_Walk.follow)
_child_dict_site = cython.declare(DictSite)


@cython.cfunc
def _pending_pairs(impl, state, dict_, key):
    """``impl.get_all_pending(state, dict_)`` (its default flag, which
    loads nothing) of a relationship attribute of stock's classes: a
    SQLAlchemy list collection with no committed members kept, or a
    many-to-one; None for stock's method."""
    kind = type(impl)
    if kind is _CollectionAttributeImpl:
        if not (
            class_attribute_is(
                _CollectionAttributeImpl, "get_all_pending", _COLLECTION_PENDING,
                cython.address(_collection_pending_site),
            ) if cython.compiled
            else _CollectionAttributeImpl.get_all_pending is _COLLECTION_PENDING
        ):
            return None
        current = dict_get(dict_, key, _MISSING) if cython.compiled else dict_.get(key, _MISSING)
        if current is _MISSING:
            return []
        if type(current) is not _InstrumentedList:
            return None
        committed = _committed_of(state) if cython.compiled else state.committed_state
        original = (
            dict_get(committed, key, _NO_VALUE) if cython.compiled
            else committed.get(key, _NO_VALUE)
        )
        pairs: list = []
        if original is _NO_VALUE:
            for member in current:
                pairs.append((member._sa_instance_state, member))
            return pairs
        if type(original) is not list or original:
            return None  # members kept from before: stock compares them
        # nothing kept (a new object's collection): every member, in order,
        # None as (None, None)
        for member in current:
            pairs.append((None if member is None else member._sa_instance_state, member))
        return pairs
    if kind is _ScalarObjectAttributeImpl:
        if not (
            class_attribute_is(
                _ScalarObjectAttributeImpl, "get_all_pending", _OBJECT_PENDING,
                cython.address(_object_pending_site),
            ) if cython.compiled
            else _ScalarObjectAttributeImpl.get_all_pending is _OBJECT_PENDING
        ):
            return None
        current = dict_get(dict_, key, _MISSING) if cython.compiled else dict_.get(key, _MISSING)
        if current is _MISSING:
            return []  # the default flag does not call loaders
        if current is None or current is _PASSIVE_NO_RESULT or current is _NO_VALUE:
            found: list = [(None, None)]
        else:
            found = [(current._sa_instance_state, current)]
        committed = _committed_of(state) if cython.compiled else state.committed_state
        original = (
            dict_get(committed, key, _MISSING) if cython.compiled
            else committed.get(key, _MISSING)
        )
        if (
            original is not _MISSING
            and original is not None
            and original is not _PASSIVE_NO_RESULT
            and original is not _NO_VALUE
            and original is not current
        ):
            found.append((original._sa_instance_state, original))
        return found
    return None


def pending_pairs(impl, state, dict_, key):
    """``_pending_pairs`` for the unit of work's per-state actions."""
    return _pending_pairs(impl, state, dict_, key)


@cython.cfunc
@cython.inline
def _manager_of(state):
    """``state.manager``, compiled: a slot of stock's InstanceState read at
    its offset (``_cpython.slot_value``; any other class, ``getattr``).
    Uncompiled its callers read the attribute (a call costs more)."""
    return slot_value(state, "manager", cython.address(_manager_site))


@cython.cfunc
@cython.inline
def _committed_of(state):
    """``state.committed_state``, compiled, read as ``_manager_of`` reads
    its slot."""
    return slot_value(state, "committed_state", cython.address(_committed_site))


# compiled, the kept lookups of _manager_of, _committed_of and of
# _pending_pairs' class checks (_cpython.class_attribute_is: answered while
# the class keeps its version tag)
_manager_site = cython.declare(SlotSite)
_committed_site = cython.declare(SlotSite)
_collection_pending_site = cython.declare(ClassSite)
_object_pending_site = cython.declare(ClassSite)


@cython.cfunc
def _loaded_members(prop, state, dict_, key):
    """``prop._value_as_iterable(state, dict_, key, passive)`` for a
    relationship whose collection is loaded as SQLAlchemy's list (stock's
    ``get`` returns it as it is, and its adapter iterates the list itself),
    or None for stock's method.  Compiled, the two class checks are kept
    per call site while the classes keep their version tags
    (``class_attribute_is``) and the state's manager is read at its slot:
    a delete cascade asks this once per relationship of each object."""
    if not (
        class_attribute_is(
            type(prop), "_value_as_iterable", _VALUE_AS_ITERABLE,
            cython.address(_value_as_iterable_site),
        ) if cython.compiled
        else type(prop)._value_as_iterable is _VALUE_AS_ITERABLE
    ):
        return None
    impl = _impl_of(_manager_of(state), key) if cython.compiled else state.manager[key].impl
    if type(impl) is not _CollectionAttributeImpl or not (
        class_attribute_is(
            _CollectionAttributeImpl, "get", _ATTRIBUTE_GET, cython.address(_collection_get_site)
        ) if cython.compiled
        else _CollectionAttributeImpl.get is _ATTRIBUTE_GET
    ):
        return None
    members = dict_get(dict_, key, None) if cython.compiled else dict_.get(key)
    if type(members) is not _InstrumentedList:
        return None
    pairs: list = []
    for member in members:
        pairs.append((member._sa_instance_state, member))
    return pairs


# compiled, _loaded_members' kept class checks
_value_as_iterable_site = cython.declare(ClassSite)
_collection_get_site = cython.declare(ClassSite)


@cython.cfunc
@cython.inline
@cython.exceptval(-1, check=False)
def _has_listeners(listeners) -> cython.bint:
    """``bool(listeners)`` of a dispatch attribute (``turbosession.listeners``)."""
    if cython.compiled:
        return has_listeners(listeners, _LISTENER_KINDS, cython.address(_listener_sites))
    return has_listeners(listeners, _LISTENER_KINDS)


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
        return (_manager_of(state) if cython.compiled else state.manager).mapper
    except Exception:  # unmapped class: stock raises its own error
        return None


@cython.cclass
class _Walk:
    """One ``add_all`` / ``delete_all`` call: the session, what the gate
    looked up (kept until stock's code runs, whose listeners may change
    anything), and the cascade walk."""

    session: object
    hash_key: object
    events: tuple
    listened: cython.int  # -1: not looked up yet
    # a delete walk called a stock method that may load (and so run
    # listeners) since ``listened`` was read
    stock_ran: cython.bint
    plans: dict  # mapper -> cascade plan; None: looked up every time
    last_mapper: object
    last_plan: tuple
    # what ``held`` reads, taken from the session at its first call after
    # any code not turbosession's ran (``known`` False)
    known: cython.bint
    new: dict
    identity_map: object
    map_dict: dict  # None: identity_map.contains_state is called
    # the states ``held`` found in the identity map while ``known``: they
    # stay there until code not turbosession's runs (a walk adds to the
    # session, never removes), and a state is a cheaper key than the
    # identity key a link to an object already held is looked up by again
    mapped: set

    def __init__(self, session, events: tuple, cache_plans: cython.bint):
        self.start(session, session.hash_key, events, cache_plans)

    @cython.cfunc
    def start(self, session, hash_key, events: tuple, cache_plans: cython.bint):
        """``__init__``'s stores, for a caller that has read the session's
        ``hash_key`` and makes the walk with ``_Walk.__new__`` (compiled,
        no ``__init__`` call and its arguments' parsing)."""
        self.session = session
        self.hash_key = hash_key
        self.events = events
        self.plans = {} if cache_plans else None
        self.forget()

    @cython.cfunc
    def forget(self):
        """After stock's code ran (its listeners may change anything)."""
        self.listened = -1
        self.stock_ran = False
        self.last_mapper = None
        self.last_plan = None
        self.known = False
        if self.plans is not None:
            self.plans.clear()

    @cython.cfunc
    def plan(self, mapper) -> tuple:
        """``attaching.cascade_plan(mapper)``; within one add_all (where no
        listener or load runs between two objects) looked up once per mapper;
        the last one kept (``gated_plan``) for a delete_all too."""
        plans: dict = self.plans
        plan: tuple
        if plans is None:
            plan = _plan_of(mapper)
        else:
            if mapper is self.last_mapper:
                return self.last_plan
            plan = plans.get(mapper)
            if plan is None:
                plan = plans[mapper] = _plan_of(mapper)
        self.last_mapper = mapper
        self.last_plan = plan
        return plan

    @cython.cfunc
    def gated_plan(self, mapper) -> tuple:
        """``plan(mapper)`` for the object ``gate`` just let through, taken
        from there while nothing could have run in between (``began`` forgets
        it when it begins the transaction, whose listeners may change
        anything)."""
        if mapper is self.last_mapper:
            return self.last_plan
        return self.plan(mapper)

    @cython.cfunc
    def gate(self, state) -> str:
        """None when the object may take the walk, else the fallback reason."""
        if state is None:
            return "attach_unmapped"
        mapper = _mapper_of(state)
        if mapper is None:
            return "attach_unmapped"
        if self.listened < 0:
            self.listened = _listened(self.session.dispatch, self.events)
        if self.listened:
            return "attach_listeners"
        return _custom_cascade(self.plan(mapper))

    @cython.cfunc
    @cython.exceptval(-1, check=False)
    def held(self, state) -> cython.bint:
        """Stock's ``Session._contains_state``: the save-update walk's
        halt_on.  The session's ``_new`` and identity map are read again
        after any code not turbosession's ran (its listeners may replace
        them); turbosession's map's dict is read directly, and a state found
        there once is not looked up again (``mapped``)."""
        if not self.known:
            session = self.session
            self.new = session._new
            self.identity_map = session.identity_map
            contains_dict = getattr(self.identity_map, "contains_dict", None)
            self.map_dict = None if contains_dict is None else contains_dict()
            self.mapped = set()
            self.known = True
        if state in self.mapped or state in self.new:
            return True
        if self.map_dict is not None:
            if self.map_dict.get(state.key) is state:
                self.mapped.add(state)
                return True
            return False
        return self.identity_map.contains_state(state)

    @cython.cfunc
    @cython.exceptval(-1, check=False)
    def began(self) -> cython.bint:
        """Stock's ``_before_attach`` begins the session's transaction first
        thing; that may run ``after_transaction_create`` listeners, so
        whether attach events are listened to is looked up again.  False:
        they are, stock's method goes on from here."""
        session = self.session
        if session._transaction is None:
            session._autobegin_t()
            self.listened = _listened(session.dispatch, self.events)
            self.last_mapper = None  # its listeners may change anything
            self.known = False
        return not self.listened

    @cython.cfunc
    def save(self, state):
        """Stock's ``_save_or_update_impl`` of one state."""
        own = _own_dict(state) if cython.compiled else None
        if own is None:
            fresh: cython.bint = state.key is None and state.session_id is None
        else:
            fresh = (
                own_entry(own, state, "key") is None
                and own_entry(own, state, "session_id") is None
            )
        if fresh and self.began():
            obj = state_object(state) if cython.compiled else state.obj()
            new: dict = self.session._new
            if state not in new:
                new[state] = obj
                # began() may have run listeners: the state's class asked again
                own = _own_dict(state) if cython.compiled else None
                if own is None:
                    state.insert_order = len(new)
                else:
                    cython.cast(dict, own)["insert_order"] = len(new)
            _attach(state, self.hash_key, obj)
        else:
            session = self.session
            began: cython.bint = session._transaction is not None
            session._save_or_update_impl(state)
            self.known = False
            if not began:  # it began the transaction: as in began()
                self.listened = _listened(session.dispatch, self.events)

    @cython.cfunc
    def cascade(self, state, plan: tuple, type_: str) -> list:
        """``list(mapper.cascade_iterator(type_, state, halt_on))`` for
        delete (``halt_on`` None); for save-update each object yielded is
        saved where the iterator yields it and nothing is returned.  ``plan``
        is the cascade plan of the state's mapper."""
        save: cython.bint = type_ is _SAVE_UPDATE
        found: list = None if save else []
        visited: set = set()
        # frames: [items, next index, parent state, parent dict]: a parent's
        # plan steps (a tuple), or, with a parent state of None, the objects
        # one property cascades to (a list); frames[:depth] are the walk's,
        # a finished one above them is reused by the next push (_push)
        # (uncompiled, _state_dict would be a Python call for state.dict)
        first_dict = _state_dict(state) if cython.compiled else state.dict
        frames: list = [[plan[1], 0, state, first_dict]]
        depth: cython.Py_ssize_t = 1
        frame: list
        entry: tuple
        index: cython.Py_ssize_t
        while depth:
            frame = frames[depth - 1]
            items = frame[0]
            index = frame[1]
            if index >= len(items):
                depth -= 1
                continue
            frame[1] = index + 1
            parent = frame[2]
            if parent is not None:
                queue = self.follow(items[index], type_, save, parent, frame[3], visited)
                if queue:
                    depth = _push(frames, depth, queue, None, None)
                continue
            entry = items[index]
            child_state = entry[2]
            if save:
                self.save(child_state)
            else:
                found.append(entry)
            plan = self.plan(entry[1])
            # a delete reaching an object none of whose properties cascades
            # delete now finds nothing below it (follow would return None
            # for each)
            if save or _cascades_delete(plan[1]):
                depth = _push(frames, depth, plan[1], child_state, entry[3])
        return found

    @cython.cfunc
    def follow(self, step: tuple, type_: str, save: cython.bint, state, dict_, visited: set):
        """What one property cascades to, as stock's ``mapper.cascade_iterator``
        gathers it: None, or a list of ``(obj, mapper, state, dict)``."""
        prop = step[0]
        if not step[1]:
            cascade = prop.cascade
            if not cascade or type_ not in cascade:
                return None
            halt_on = self.session._contains_state if save else None
            self.known = False
            self.stock_ran = True
            return list(prop.cascade_iterator(type_, state, dict_, visited, halt_on))
        if not _step_cascades(step, type_):
            return None
        key = step[2]
        if save:
            impl = _impl_of(_manager_of(state), key) if cython.compiled else state.manager[key].impl
            pairs = _pending_pairs(impl, state, dict_, key)
            if pairs is None:
                self.known = False
                pairs = impl.get_all_pending(state, dict_)
        else:
            pairs = _loaded_members(prop, state, dict_, key)
            if pairs is None:
                self.stock_ran = True
                passive = _NO_INITIALIZE if prop.passive_deletes else _LOAD
                pairs = prop._value_as_iterable(state, dict_, key, passive=passive)
        target = step[3]
        out: list = []
        for pair in pairs:
            child_state, child = pair
            if child_state in visited or child is None:
                continue
            if save and self.held(child_state):
                continue
            # compiled, the class's __dict__ descriptor called directly
            # (object_dict); a call costs more uncompiled
            child_dict = (
                object_dict(child, cython.address(_child_dict_site)) if cython.compiled
                else child.__dict__
            )
            child_mapper = (
                _manager_of(child_state) if cython.compiled else child_state.manager
            ).mapper
            if child_mapper is not target and not child_mapper.isa(target):
                raise AssertionError(
                    "Attribute '%s' on class '%s' doesn't handle objects of type '%s'"
                    % (key, prop.parent.class_, child.__class__)
                )
            visited.add(child_state)
            out.append((child, child_mapper, child_state, child_dict))
        return out

    @cython.cfunc
    def delete_head(self, state, instance):
        """Stock's ``_delete_impl(state, instance, head=True)`` for a
        persisted object of this session or of none."""
        if not self.began():
            self.session._delete_impl(state, instance, True)
            return
        self.delete_begun(state, instance, state.session_id is None, None)

    @cython.cfunc
    def delete_begun(self, state, instance, to_attach: cython.bint, known_plan):
        """``delete_head`` once the session has its transaction and the
        attach events are known not listened to: ``to_attach`` whether the
        state has no session, ``known_plan`` its mapper's cascade plan (None:
        looked up here, after the identity map took the state, as stock
        reaches the mapper only then)."""
        session = self.session
        if state in session._deleted:
            return
        session.identity_map.add(state)
        if to_attach:
            _attach(state, self.hash_key, instance)
        # gathered before the object is in _deleted: a lazy load of a
        # collection may autoflush, which must not delete it yet; a mapper
        # with no property that may cascade has nothing to gather
        plan: tuple = (
            self.gated_plan(state.manager.mapper) if known_plan is None else known_plan
        )
        found: list = None
        self.stock_ran = False
        if plan[1]:
            found = self.cascade(state, plan, _DELETE)
        session._deleted[state] = instance
        if not found:
            return
        # the loads may have run listeners; a walk that read only loaded
        # collections and objects called nothing that could add one since
        # the gate (or began()) read them
        listened: cython.bint = (
            _listened(session.dispatch, self.events) if self.stock_ran or self.listened < 0
            else self.listened > 0
        )
        for entry in found:
            self.delete_cascaded(entry[2], entry[0], listened)

    @cython.cfunc
    def delete_cascaded(self, state, obj, listened: cython.bint):
        """Stock's ``_delete_impl(state, obj, head=False)``."""
        session = self.session
        own = _own_dict(state) if cython.compiled else None
        if (state.key if own is None else own_entry(own, state, "key")) is None:
            return
        session_id = state.session_id if own is None else own_entry(own, state, "session_id")
        if listened or session._transaction is None or (
            session_id is not None and session_id != self.hash_key
        ):
            session._delete_impl(state, obj, False)
            return
        _mark_deleted(session, state, obj, session_id, self.hash_key)


@cython.cfunc
def _push(frames: list, depth: cython.Py_ssize_t, items, parent, parent_dict) -> cython.Py_ssize_t:
    """``_Walk.cascade``'s new frame ``[items, 0, parent, parent_dict]`` at
    ``frames[depth]``: the list a finished frame left there refilled (no
    list made, none popped), else a new one appended; the new depth."""
    frame: list
    if depth < len(frames):
        frame = frames[depth]
        frame[0] = items
        frame[1] = 0
        frame[2] = parent
        frame[3] = parent_dict
    else:
        frames.append([items, 0, parent, parent_dict])
    return depth + 1


def hooks_like(session, mixin, expected: tuple, names: tuple) -> cython.bint:
    """The test ``TurboSessionMixin`` makes before its add() and delete()
    paths (``_hooks_like``)."""
    return _hooks_like(session, mixin, expected, names)


def class_like(cls, expected: tuple) -> cython.bint:
    """Whether ``cls`` resolves each ``(name, False, function)`` of
    ``expected`` to ``function`` itself (``_class_hooks_like``: compiled,
    answered by the class's version tag while it has not changed):
    ``turbosession.transaction`` asks it of its ``SessionTransaction``
    several times per flush."""
    return _class_hooks_like(cls, None, expected)


@cython.cfunc
@cython.exceptval(-1, check=False)
def _hooks_like(session, mixin, expected: tuple, names: tuple) -> cython.bint:
    """Whether the session resolves each hook of ``expected`` as stock's
    Session does: ``(name, after_mixin, function)``, the name looked up on
    the session's class (after ``mixin`` in its MRO with ``after_mixin``)
    must give ``function`` itself; and the session's own ``__dict__``
    holds none of ``names`` (a hook patched onto one session)."""
    global _own_verified_version, _own_verified_names
    if not _class_hooks_like(type(session), mixin, expected):
        return False
    # compiled, the instance's dict itself, where a hook patched onto the
    # session is, without the ``__dict__`` descriptor's lookup and call
    own: dict = instance_dict(session) if cython.compiled else None
    if own is None:
        own = session.__dict__
    # compiled on CPython 3.11, the version of the last session dict found
    # without any of ``names`` answers for it while no key was added or
    # deleted (see _cpython.dict_version); 0 is no version
    version: cython.ulonglong = 0
    if cython.compiled:
        version = dict_version(own)
        if version != 0 and version == _own_verified_version and names is _own_verified_names:
            return True
    i: cython.Py_ssize_t
    for i in range(len(names)):
        if names[i] in own:
            return False
    if version != 0:
        _own_verified_version = version
        _own_verified_names = names
    return True


_own_verified_version = cython.declare(cython.ulonglong, 0)
_own_verified_names = cython.declare(tuple, None)


# the address of expected -> (class, its version tag when its hooks were last found
# as expected): the last class checked per set of hooks
_verified = cython.declare(dict, {})
# the last two of those found or kept, asked first: one set of hooks is
# checked once per call of the method it guards (add(), delete(), get()),
# most often the same set for the same class as the call before; a short
# transaction alternates two (add()'s hooks and the transaction's methods,
# asked several times per flush), which a dict lookup would answer each time
_last_expected = cython.declare(object, None)
_last_class = cython.declare(object, None)
_last_tag = cython.declare(cython.uint, 0)
_previous_expected = cython.declare(object, None)
_previous_class = cython.declare(object, None)
_previous_tag = cython.declare(cython.uint, 0)


@cython.cfunc
@cython.inline
def _address(obj) -> cython.Py_ssize_t:
    """``id(obj)``, compiled without calling the builtin."""
    if cython.compiled:
        return address(obj)
    return id(obj)


@cython.cfunc
def _version_tag(cls) -> cython.uint:
    """CPython's version tag of a class (0: none), the key of its own
    attribute cache: setting or deleting an attribute of the class or of
    any class in its MRO, or its bases, gives it a new one."""
    if cython.compiled:
        return type_version_tag(cls)
    return 0


@cython.cfunc
@cython.exceptval(-1, check=False)
def _class_hooks_like(cls, mixin, expected: tuple) -> cython.bint:
    """The class half of ``hooks_like``: the hooks looked up, unless the
    class has the version tag it had when they were last found as expected
    (compiled only; the tag is C's)."""
    tag: cython.uint = _version_tag(cls)
    if tag:
        if expected is _last_expected and cls is _last_class and tag == _last_tag:
            return True
        if expected is _previous_expected and cls is _previous_class and tag == _previous_tag:
            return True
        last: tuple = _verified.get(_address(expected))
        if last is not None and last[0] is cls and cython.cast(cython.uint, last[1]) == tag:
            _keep_last(expected, cls, tag)
            return True
    above = None
    hook: tuple
    for hook in expected:
        if hook[1]:
            if above is None:
                above = super(mixin, cls)
            found = getattr(above, hook[0])
        else:
            found = getattr(cls, hook[0])
        if found is not hook[2]:
            return False
    # kept only with the tag read before the lookups, and only if they left
    # it as it was: a class changed meanwhile (another thread's patch) has
    # another tag (a class without one gets it from these lookups, and is
    # kept at the next call)
    if tag and _version_tag(cls) == tag:
        _verified[_address(expected)] = (cls, tag)
        _keep_last(expected, cls, tag)
    return True


@cython.cfunc
@cython.inline
def _keep_last(expected, cls, tag: cython.uint):
    """``expected`` found for ``cls`` with ``tag``: the last one kept, the
    one it replaces the previous."""
    global _last_expected, _last_class, _last_tag
    global _previous_expected, _previous_class, _previous_tag
    _previous_expected, _previous_class, _previous_tag = _last_expected, _last_class, _last_tag
    _last_expected, _last_class, _last_tag = expected, cls, tag


def add_all(session, instances):
    global _attached_fast
    walk: _Walk = _Walk(session, _ADD_EVENTS, True)
    for instance in instances:
        state = _state_of(instance)
        reason = walk.gate(state)
        if reason is not None:
            _fallback(reason)
            _stock_add(session, instance, _warn=False)
            walk.forget()
            continue
        _attached_fast += 1
        own = _own_dict(state) if cython.compiled else None
        if own is None:
            state._orphaned_outside_of_session = False
        else:
            cython.cast(dict, own)["_orphaned_outside_of_session"] = False
        walk.save(state)
        mapper = state.manager.mapper
        plan: tuple = walk.plan(mapper)
        if plan[1]:
            walk.cascade(state, plan, _SAVE_UPDATE)


# set by turbosession.session once its classes exist (set_session_hooks)
_session_mixin = cython.declare(object, None)
_stock_delete_hooks = cython.declare(tuple, ())
_stock_add_hooks = cython.declare(tuple, ())
_hook_names = cython.declare(tuple, ())


def set_session_hooks(mixin, stock_delete_hooks: tuple, stock_add_hooks: tuple, names: tuple):
    """``TurboSessionMixin``, the hooks stock's ``delete()`` and ``add()``
    reach as stock's Session resolves them, and the hook names a session's
    own ``__dict__`` must not hold (``hooks_like``), for ``session_delete``
    and ``session_add``."""
    global _session_mixin, _stock_delete_hooks, _stock_add_hooks, _hook_names
    _session_mixin = mixin
    _stock_delete_hooks = stock_delete_hooks
    _stock_add_hooks = stock_add_hooks
    _hook_names = names


def session_add(self, instance, *, _warn=True):
    """``TurboSessionMixin.add``: the object (and its save-update cascade)
    attached by ``add_all``, when the session resolves every hook stock's
    ``add()`` calls as stock's Session does and, with ``_warn``, no flush
    is running (stock then warns from ``_flush_warning``); stock's
    ``add()`` (the next in the session's MRO) otherwise.

    It is the method itself (compiled, a C function), as ``delete()`` is:
    applications call it once per object."""
    if (_warn and self._warn_on_events) or not _hooks_like(
        self, _session_mixin, _stock_add_hooks, _hook_names
    ):
        return super(_session_mixin, self).add(instance, _warn=_warn)
    add_all(self, (instance,))


def session_delete(self, instance):
    """``TurboSessionMixin.delete``: the object (and its delete cascade)
    marked deleted by ``delete_all``, when the session resolves every hook
    stock's ``delete()`` calls as stock's Session does and no flush is
    running; stock's ``delete()`` (the next in the session's MRO) otherwise.

    It is the method itself (compiled, a C function), as ``get()`` is:
    applications call it once per object."""
    if self._warn_on_events or not _hooks_like(
        self, _session_mixin, _stock_delete_hooks, _hook_names
    ):
        return super(_session_mixin, self).delete(instance)
    _delete_one(self, instance)


def delete_all(session, instances):
    """``TurboSessionMixin.delete_all`` once it has found the session's
    hooks stock's: each object marked deleted with its cascade, or handed
    to stock's ``delete()`` under a counted reason."""
    for instance in instances:
        _delete_one(session, instance)


@cython.cfunc
def _delete_one(session, instance):
    """``delete()`` of one object whose session resolves stock's hooks.

    The common case is answered here, with no ``_Walk``: a persisted object
    of this session or of none, of a mapper that walks cascades as stock's
    does, in a session with a transaction and no attach event listened.
    Its mapper's cascade plan (kept with the mapper's memoized values) says
    which properties may cascade; when none of them cascades ``delete``
    now (read as the walk reads it), stock's ``cascade_iterator`` would
    yield nothing, and the object gets ``_delete_impl``'s stores
    (``identity_map.add``, ``session_id``, ``_deleted``) here.  With a
    delete cascade, a walk takes the object from the gate's answers;
    every other case is ``_delete_walked``'s (which counts the fallbacks)."""
    global _attached_fast
    state = _state_of(instance)
    if state is None or session._transaction is None:
        _delete_walked(session, instance)  # stock raises / the walk begins it
        return
    mapper = _mapper_of(state)
    if mapper is None or _listened(session.dispatch, _DELETE_EVENTS):
        _delete_walked(session, instance)
        return
    plan: tuple = _plan_of(mapper)
    own = _own_dict(state) if cython.compiled else None
    session_id = state.session_id if own is None else own_entry(own, state, "session_id")
    hash_key = session.hash_key
    if (
        _custom_cascade(plan) is not None
        or (state.key if own is None else own_entry(own, state, "key")) is None
        or (session_id is not None and session_id != hash_key)
    ):
        _delete_walked(session, instance)
        return
    _attached_fast += 1
    if plan[1] and _cascades_delete(plan[1]):
        # the gate's answers known: the transaction begun, no attach event
        # listened, the mapper's plan
        walk: _Walk = _Walk.__new__(_Walk)
        walk.start(session, hash_key, _DELETE_EVENTS, False)
        walk.listened = 0
        walk.last_mapper = mapper
        walk.last_plan = plan
        walk.delete_begun(state, instance, session_id is None, plan)
        return
    _mark_deleted(session, state, instance, session_id, hash_key)


@cython.cfunc
def _custom_cascade(plan: tuple) -> str:
    """The gate's verdict once attach events are known not listened to:
    "attach_custom_cascade" when ``instance_dict`` is patched or the
    mapper's plan (``plan[0]``) says its cascades are not stock's, else
    None."""
    if _ATTRIBUTES_NAMES["instance_dict"] is not _STOCK_INSTANCE_DICT or plan[0]:
        return "attach_custom_cascade"
    return None


@cython.cfunc
def _mark_deleted(session, state, obj, session_id, hash_key):
    """``_delete_impl``'s stores for a persisted state of this session or
    of none, with no attach listener: nothing when it is already deleted;
    else in the identity map, attached, and in ``_deleted``."""
    deleted: dict = session._deleted
    if state in deleted:
        return
    session.identity_map.add(state)
    if session_id is None:
        _attach(state, hash_key, obj)
    deleted[state] = obj


@cython.cfunc
@cython.exceptval(-1, check=False)
def _cascades_delete(steps: tuple) -> cython.bint:
    """Whether a property of a cascade plan may cascade a delete now: one
    the walk does not follow inline (its own ``cascade_iterator`` decides),
    or a relationship whose cascade includes ``delete``, read as
    ``_Walk.follow`` reads it."""
    step: tuple
    for step in steps:
        if not step[1] or _step_cascades(step, _DELETE):
            return True
    return False


@cython.cfunc
@cython.exceptval(-1, check=False)
def _step_cascades(step: tuple, type_: str) -> cython.bint:
    """Whether the relationship of an inline step of a cascade plan
    cascades ``type_`` (``save-update`` or ``delete``) now: its
    ``_cascade`` read per object (its class has none: ``own_value``), and
    answered from the plan while it is the ``CascadeOptions`` the plan was
    made with (``attaching.build_plan``), else asked."""
    prop = step[0]
    cascade = (
        own_value(prop, "_cascade", cython.address(_cascade_site)) if cython.compiled
        else prop._cascade
    )
    if cascade is step[4]:
        return step[5] if type_ is _SAVE_UPDATE else step[6]
    return bool(cascade) and type_ in cascade


@cython.cfunc
def _delete_walked(session, instance):
    """``delete()`` of one object through the gate and the walk, or stock's
    ``delete()`` under a counted reason."""
    global _attached_fast
    # a delete cascade may load collections, running listeners: no cache
    walk: _Walk = _Walk(session, _DELETE_EVENTS, False)
    state = _state_of(instance)
    reason = walk.gate(state)
    if reason is None and (
        state.key is None
        or (state.session_id is not None and state.session_id != walk.hash_key)
    ):
        reason = "attach_state"
    if reason is not None:
        _fallback(reason)
        _stock_delete(session, instance)
        return
    _attached_fast += 1
    walk.delete_head(state, instance)


@cython.cfunc
def _attach(state, hash_key, obj):
    """Stock's ``_after_attach`` with no listener."""
    own = _own_dict(state) if cython.compiled else None
    if own is None:
        state.session_id = hash_key
        if state.modified and state._strong_obj is None:
            state._strong_obj = obj
        return
    # the same reads and stores, in the same order, on the state's dict
    cython.cast(dict, own)["session_id"] = hash_key
    if own_entry(own, state, "modified") and own_entry(own, state, "_strong_obj") is None:
        cython.cast(dict, own)["_strong_obj"] = obj


@cython.cfunc
@cython.inline
def _own_dict(state):
    """Compiled, the state's own ``__dict__`` while its class keeps
    ``_STATE_NAMES`` there (``_cpython.own_dict``), else None: its callers
    then take the attributes (always, uncompiled)."""
    return own_dict(state, _STATE_NAMES, cython.address(_state_names_site))


# compiled, the state attributes the walk reads and sets in the state's own
# __dict__ (own_dict), as stock's InstanceState holds them: plain class
# values shadowed by the instance's
_STATE_NAMES = cython.declare(tuple, (
    "key", "session_id", "insert_order", "modified", "_strong_obj",
    "_orphaned_outside_of_session",
))
_state_names_site = cython.declare(ClassSite)


def _slot_offsets(cls) -> dict:
    """``{name: offset}`` of the writable object slots of the dispatcher
    class ``cls``'s own ``__slots__`` (its events), stored to by
    ``fill_dispatch``; none when the class sets attributes its own way."""
    offsets: dict = {}
    if cls.__setattr__ is not _OBJECT_SETATTR:
        return offsets
    for name, descr in cls.__dict__.items():
        if type(descr) is not _MemberDescriptorType or descr.__objclass__ is not cls:
            continue
        offset: cython.Py_ssize_t = writable_slot_offset(descr)
        if offset >= 0:
            offsets[name] = offset
    return offsets


def fill_dispatch(dispatch):
    """``setattr(dispatch, name, listener)`` for each of a new session
    dispatcher's shared ``_EmptyListener`` objects (``_empty_listeners``),
    what its ``__getattr__`` would store one at a time on first use
    (``TurboSessionMixin.__init__`` says when).  Compiled, each
    is stored in its slot as the slot's descriptor stores it, without a
    ``setattr`` call; uncompiled, ``map`` runs the same ``setattr`` calls."""
    listeners: dict = dispatch._empty_listeners
    if not cython.compiled:
        any(map(setattr, repeat(dispatch), listeners.keys(), listeners.values()))
        return
    _fill_slots(dispatch, listeners)


@cython.cfunc
def _fill_slots(dispatch, listeners: dict):
    """``fill_dispatch``'s stores (compiled): each listener at its slot's
    offset, or by ``setattr`` where it has none.  The offsets found for the
    last dispatcher class and listener dict filled are kept
    (``_fill_plan``) while that dict keeps its version (the same keys and
    values)."""
    global _fill_plan
    cls = type(dispatch)
    version = dict_version(listeners)
    plan = _fill_plan
    if (
        plan is None
        or version == 0
        or plan[0] is not cls
        or plan[1] is not listeners
        or cython.cast(cython.ulonglong, plan[2]) != version
    ):
        plan = _plan_fill(cls, listeners, version)
    names: tuple = plan[3]
    offsets: tuple = plan[4]
    values: tuple = plan[5]
    i: cython.Py_ssize_t
    offset: cython.Py_ssize_t
    for i in range(len(offsets)):
        offset = offsets[i]
        if offset < 0:
            setattr(dispatch, names[i], values[i])
        else:
            store_slot(dispatch, offset, values[i])


@cython.cfunc
def _plan_fill(cls, listeners: dict, version: cython.ulonglong) -> tuple:
    """``(cls, listeners, version, names, offsets, values)`` of the
    listener dict (offset -1: no slot of ``cls``), kept as ``_fill_plan``
    when the dict has a version."""
    global _fill_plan
    offsets = _dispatch_slots.get(cls)
    if offsets is None:
        offsets = _dispatch_slots[cls] = _slot_offsets(cls)
    known: dict = offsets
    plan = (
        cls, listeners, version, tuple(listeners.keys()),
        tuple([known.get(name, -1) for name in listeners]), tuple(listeners.values()),
    )
    _fill_plan = plan if version != 0 else None
    return plan


def open_dispatch(session):
    """The new session's own event dispatcher, made now with every event
    slot filled (``fill_dispatch``), where stock makes it on first use.

    Stock's ``session.dispatch`` (``dispatcher.__get__``) makes a dispatcher
    of the class-level dispatcher's class over it (``_for_instance``,
    ``_for_class``, ``_Dispatch.__init__``: its ``_parent``, its
    ``_instance_cls`` and the class's shared ``_EmptyListener`` objects from
    ``_empty_listener_reg``) and stores it in the session's ``__dict__``.
    Compiled, that is done here directly while the session's class and the
    dispatcher classes resolve those methods to SQLAlchemy's own and the
    session class's listeners are registered (its first session takes the
    descriptor); in every other case, and uncompiled, the descriptor makes
    it.  The caller checks that the session has none yet."""
    if cython.compiled:
        dispatch = _made_dispatch(session)
        if dispatch is not None:
            return dispatch
    dispatch = session.dispatch
    fill_dispatch(dispatch)
    return dispatch


@cython.cfunc
def _made_dispatch(session):
    """``open_dispatch``'s dispatcher made without the descriptor's calls,
    or None where the descriptor must make it.  What it finds for a session
    class (the class-level dispatcher, its class, the class's shared
    ``_EmptyListener`` dict) is kept (``_dispatch_found``) and used again
    while the session class, the dispatcher class, ``dispatcher`` and
    ``WeakKeyDictionary`` keep their version tags: a tag changes with any
    attribute of the class or of a base (a patched method, a replaced
    ``dispatch`` or ``_empty_listener_reg``), and the registry's entry for
    a class, once made, is never replaced (``_Dispatch.__init__`` only
    adds the missing one)."""
    global _dispatch_found
    where = instance_dict(session)
    if where is None:
        return None
    cls = type(session)
    found: tuple = _dispatch_found
    if (
        found is None
        or found[0] is not cls
        or type_version_tag(cls) != cython.cast(cython.uint, found[1])
        or type_version_tag(found[2]) != cython.cast(cython.uint, found[3])
        or type_version_tag(_DISPATCHER) != cython.cast(cython.uint, found[4])
        or type_version_tag(_WeakKeyDictionary) != cython.cast(cython.uint, found[5])
        or _descriptor_parent(found[8]) is not found[6]
    ):
        found = _find_dispatch(cls)
        if found is None:
            return None
    dispatch_cls = found[2]
    listeners: dict = found[7]
    # dispatch_cls.__new__(dispatch_cls), object's (_find_dispatch found
    # it), and _Dispatch.__init__'s three stores at their slots (the class
    # sets attributes as object does, and has _Dispatch's slots for them)
    dispatch = _OBJECT_NEW(dispatch_cls)
    store_slot(dispatch, _PARENT_OFFSET, found[6])
    store_slot(dispatch, _INSTANCE_CLS_OFFSET, cls)
    store_slot(dispatch, _EMPTY_LISTENERS_OFFSET, listeners)
    _fill_slots(dispatch, listeners)
    cython.cast(dict, where)["dispatch"] = dispatch
    return dispatch


@cython.cfunc
def _find_dispatch(cls) -> tuple:
    """``(cls, its tag, dispatcher class, its tag, dispatcher's tag,
    WeakKeyDictionary's tag, class-level dispatcher, shared listeners,
    the class's descriptor)`` for ``_made_dispatch``, kept as
    ``_dispatch_found`` when every tag is set; None where the descriptor
    must make the dispatcher."""
    global _dispatch_found
    if _PARENT_OFFSET < 0 or _INSTANCE_CLS_OFFSET < 0 or _EMPTY_LISTENERS_OFFSET < 0:
        return None
    descr = class_lookup(cls, "dispatch")
    if type(descr) is not _DISPATCHER or class_lookup(_DISPATCHER, "__get__") is not _DISPATCHER_GET:
        return None
    parent = _descriptor_parent(descr)
    if parent is None:
        return None
    dispatch_cls = type(parent)
    if (
        class_lookup(dispatch_cls, "_for_instance") is not _FOR_INSTANCE
        or class_lookup(dispatch_cls, "_for_class") is not _FOR_CLASS
        or class_lookup(dispatch_cls, "__init__") is not _DISPATCH_INIT
        or class_lookup(dispatch_cls, "__new__") is not _OBJECT_NEW
        or class_lookup(dispatch_cls, "__setattr__") is not _OBJECT_SETATTR
        or class_lookup(dispatch_cls, "_parent") is not _DISPATCH_PARENT
        or class_lookup(dispatch_cls, "_instance_cls") is not _DISPATCH_INSTANCE_CLS
        or class_lookup(dispatch_cls, "_empty_listeners") is not _DISPATCH_EMPTY_LISTENERS
    ):
        return None
    registry = class_lookup(dispatch_cls, "_empty_listener_reg")
    if (
        type(registry) is not _WeakKeyDictionary
        or class_lookup(_WeakKeyDictionary, "__getitem__") is not _WEAK_KEY_GETITEM
    ):
        return None
    # the registry's own lookup: self.data[ref(key)]
    listeners = dict_get(registry.data, weakref.ref(cls), None)
    if type(listeners) is not dict:
        return None
    found = (
        cls, type_version_tag(cls), dispatch_cls, type_version_tag(dispatch_cls),
        type_version_tag(_DISPATCHER), type_version_tag(_WeakKeyDictionary), parent, listeners,
        descr,
    )
    if found[1] and found[3] and found[4] and found[5]:
        _dispatch_found = found
    return found


@cython.cfunc
@cython.inline
def _descriptor_parent(descr):
    """The ``dispatch`` a ``dispatcher`` descriptor holds (what its
    ``__get__`` hands to ``_for_instance``), read from its ``__dict__``;
    None when it has none there."""
    where = instance_dict(descr)
    if where is None:
        return None
    return cython.cast(dict, where).get("dispatch")


# the last session class's dispatcher findings (_find_dispatch)
_dispatch_found = cython.declare(tuple, None)
# _Dispatch's slots that its __init__ stores to, and their offsets
_DISPATCH_PARENT = cython.declare(object, event_base._Dispatch.__dict__["_parent"])
_DISPATCH_INSTANCE_CLS = cython.declare(object, event_base._Dispatch.__dict__["_instance_cls"])
_DISPATCH_EMPTY_LISTENERS = cython.declare(
    object, event_base._Dispatch.__dict__["_empty_listeners"]
)
_PARENT_OFFSET = cython.declare(cython.Py_ssize_t, -1)
_INSTANCE_CLS_OFFSET = cython.declare(cython.Py_ssize_t, -1)
_EMPTY_LISTENERS_OFFSET = cython.declare(cython.Py_ssize_t, -1)
if cython.compiled:
    _PARENT_OFFSET = _slot_offsets(event_base._Dispatch).get("_parent", -1)
    _INSTANCE_CLS_OFFSET = _slot_offsets(event_base._Dispatch).get("_instance_cls", -1)
    _EMPTY_LISTENERS_OFFSET = _slot_offsets(event_base._Dispatch).get("_empty_listeners", -1)
