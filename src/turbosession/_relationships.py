"""The save-side per-state work of the one-to-many and many-to-one
relationship processors (``OneToManyDP.process_saves`` /
``ManyToOneDP.process_saves`` of ``sqlalchemy.orm.dependency``).

For each state of the step: the relationship's history (the unit of work's
cached ``get_attribute_history``), the foreign-key values copied from the
referenced object to the referencing one as ``sync._populate`` copies them
(the source attribute's ``impl.get`` with ``PASSIVE_OFF``, the destination's
``impl.set``, events and all), and the primary-key check of the one-to-many
side (``sync._source_modified``), in stock's order.  The attribute keys of
the synchronised columns come from ``relationships.sync_plan`` (per
relationship, made once).  Whatever is not the plain case is handed to the
processor's own methods at the point stock calls them: a child not in the
session (stock warns), a None or a foreign-type child (stock raises or
clears), removed children, children to update after a primary-key change.

Where a state shows what its history would say, the one-to-many presort
answers from the state without making the ``History`` records and their
cache entry (``_answers``): the parent's keys with no earlier value kept,
a new parent's collection (all members added), a collection not loaded
(blank), a deleted parent's loaded collection with nothing removed.  The
answers are kept per processor for its saves, deletes and
``prop_has_changes``, which read them as they would read the history the
presort cached (the state as the presort saw it).  While the session has
flush listeners, which are handed the unit of work and may ask it for
those histories, the presort caches them as stock's does.
"""

from __future__ import annotations

from sqlalchemy.orm import Session, attributes, collections, sync, unitofwork
from sqlalchemy.orm import base as _base
from sqlalchemy.sql.type_api import TypeEngine
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.orm.base import PassiveFlag

from . import listeners as _listeners

try:
    import cython
except ModuleNotFoundError:
    from turbosession import _cython_shim as cython

if cython.compiled:
    from cython.cimports.turbosession._cpython import (
        ListenerSites,
        has_listeners,
        manager_impl,
        ClassSite,
        SlotSite,
        class_attribute_is,
        own_dict,
        own_entry,
        slot_value,
        state_object,
        DictSite,
        live_state_dict,
        dict_get,
    )
else:
    from .listeners import has_listeners
    ListenerSites = None  # the declaration below is plain None
    SlotSite = ClassSite = DictSite = None  # the declarations below are plain None

__all__ = [
    "collection_answers",
    "many_to_one_presort_deletes",
    "prop_has_changes",
    "many_to_one_presort_saves",
    "one_to_many_presort_saves",
    "many_to_many_deletes",
    "many_to_many_presort_deletes",
    "one_to_many_presort_deletes",
    "presort_states",
    "many_to_many_saves",
    "many_to_one_saves",
    "one_to_many_deletes",
    "one_to_many_saves",
    "sync_keys",
]

_NO_INITIALIZE = cython.declare(object, PassiveFlag.PASSIVE_NO_INITIALIZE)
_OFF = cython.declare(object, PassiveFlag.PASSIVE_OFF)
_NO_INITIALIZE_PENDING = cython.declare(
    object, PassiveFlag.PASSIVE_NO_INITIALIZE | PassiveFlag.INCLUDE_PENDING_MUTATIONS
)
_OFF_PENDING = cython.declare(
    object, PassiveFlag.PASSIVE_OFF | PassiveFlag.INCLUDE_PENDING_MUTATIONS
)
_HISTORY_BLANK = cython.declare(object, attributes.HISTORY_BLANK)
_History = cython.declare(object, attributes.History)
_SQL_OK = cython.declare(object, attributes.SQL_OK)
_ABSENT = cython.declare(object, object())
_STOCK_GET = cython.declare(object, attributes._AttributeImpl.get)
_ScalarAttributeImpl = cython.declare(object, attributes._ScalarAttributeImpl)
_SCALAR_HISTORY = cython.declare(object, attributes._ScalarAttributeImpl.get_history)
_CollectionAttributeImpl = cython.declare(object, attributes._CollectionAttributeImpl)
_COLLECTION_HISTORY = cython.declare(object, attributes._CollectionAttributeImpl.get_history)
_FROM_COLLECTION = cython.declare(object, attributes.History.__dict__["from_collection"])
_FROM_OBJECT_ATTRIBUTE = cython.declare(
    object, attributes.History.__dict__["from_object_attribute"]
)
_ScalarObjectAttributeImpl = cython.declare(object, attributes._ScalarObjectAttributeImpl)
_OBJECT_HISTORY = cython.declare(object, attributes._ScalarObjectAttributeImpl.get_history)
_InstrumentedList = cython.declare(object, collections.InstrumentedList)
_PLAIN_COMPARE = cython.declare(object, TypeEngine.compare_values)
_PASSIVE_NO_RESULT = cython.declare(object, _base.PASSIVE_NO_RESULT)
# the uow.memo keys of the presort's answers given without a History (_answers)
_SOURCES_UNCHANGED = cython.declare(tuple, ("turbosession", "sources unchanged"))
_NOTHING_REMOVED = cython.declare(tuple, ("turbosession", "nothing removed"))
# (a collection not loaded, blank: True; one with only added members: those)
_COLLECTIONS_ANSWERED = cython.declare(tuple, ("turbosession", "collections answered"))
# the unit of work's ``states`` entries (isdelete, listonly) _registered
# stores, shared as _persist shares them: a tuple made per registration is
# one more tracked object alive for the whole flush
_SAVE_ENTRY = cython.declare(tuple, (False, False))
_DELETE_ENTRY = cython.declare(tuple, (True, False))
# _reference_added's answers other than a value: nothing added or deleted;
# the history to be looked up
_UNCHANGED = cython.declare(object, object())
_LOOK_UP = cython.declare(object, object())
_STOCK_SET = cython.declare(object, attributes._ScalarAttributeImpl.set)
_STOCK_MODIFIED = cython.declare(object, InstanceState._modified_event)
_NO_VALUE = cython.declare(object, _base.NO_VALUE)
_DONT_SET = cython.declare(object, _base.DONT_SET)
_LISTENER_KINDS = cython.declare(tuple, _listeners.KINDS)
_listener_sites = cython.declare(ListenerSites)
_STOCK_CONTAINS = cython.declare(object, Session._contains_state)
_InstanceState = cython.declare(object, InstanceState)
_INSTANCE_DICT = cython.declare(object, _base.instance_dict)
_BASE_NAMES = cython.declare(dict, _base.__dict__)
_DICT_GETITEM = cython.declare(object, dict.__getitem__)
_STOCK_REGISTER = cython.declare(object, unitofwork.UOWTransaction.register_object)
_sync_update = cython.declare(object, sync._update)
_sync_clear = cython.declare(object, sync._clear)
# compiled, the call sites' kept class lookups (see _cpython.slot_value and
# class_attribute_is)
_impl_site = cython.declare(SlotSite)
_dispatch_site = cython.declare(SlotSite)
_set_listeners_site = cython.declare(SlotSite)
_key_site = cython.declare(SlotSite)
_modified_events_site = cython.declare(SlotSite)
_committed_site = cython.declare(SlotSite)
_manager_site = cython.declare(SlotSite)
_deferred_site = cython.declare(SlotSite)
_stock_set_site = cython.declare(ClassSite)
_stock_modified_site = cython.declare(ClassSite)
_dict_getitem_site = cython.declare(ClassSite)

# attribute implementation class -> whether its ``get`` is stock's (a value
# present in the state's dict is then returned as it is)
_stock_get = cython.declare(dict, {})
# passive flag -> bool(flag & SQL_OK)
_sql_ok_flags = cython.declare(dict, {})


def _is_compiled():
    return cython.compiled


@cython.cclass
class _Histories:
    """``uow.get_attribute_history`` for the states of one step: the unit
    of work's lookup and cache read once per step, not once per state.
    While the unit of work's method is turbosession's
    (``flush.UOWTransaction._history_lookup``), its lookup is called
    directly, and ``known`` answers a history the step's presort already
    cached from ``uow.attributes`` as that lookup answers it (a cached
    entry is reused unless it was cached without ``SQL_OK`` and this
    lookup has it); otherwise the method is called."""

    uow: object
    lookup: object  # None: uow.get_attribute_history is called
    cache: dict

    def __init__(self, uow):
        self.uow = uow
        self.lookup = getattr(uow, "_history_lookup", None)
        self.cache = uow.attributes if self.lookup is not None else None

    @cython.cfunc
    def get(self, state, key, passive):
        """``uow.get_attribute_history(state, key, passive)``."""
        lookup = self.lookup
        if lookup is None:
            return self.uow.get_attribute_history(state, key, passive)
        return lookup(self.uow, state, key, passive)

    @cython.cfunc
    def known(self, state, key, passive):
        """``get``, for a history the step usually finds cached."""
        if self.lookup is None:
            return self.uow.get_attribute_history(state, key, passive)
        cached = self.cache.get(("history", state, key))
        if cached is not None:
            entry: tuple = cached
            if _sql_ok(entry[2]) or not _sql_ok(passive):
                return entry[1]
        return self.lookup(self.uow, state, key, passive)


@cython.cclass
class _Held:
    """Stock's ``Session._contains_state`` for the states of one step: the
    session's method and, where it is stock's, its ``_new`` and identity
    map, read once per step (turbosession's map read as its dict, as
    ``_Rows`` reads it; a map that is not turbosession's is asked), and
    the unit of work's states with whether its ``register_object`` is
    stock's (``_registered``)."""

    contains: object  # the session's own _contains_state; None: stock's
    new: dict
    identity_map: object
    map_dict: dict  # None: identity_map.contains_state is called
    states: dict  # the unit of work's
    stock_register: cython.bint

    def __init__(self, uow):
        session = uow.session
        self.states = uow.states
        self.stock_register = type(uow).register_object is _STOCK_REGISTER
        if type(session)._contains_state is _STOCK_CONTAINS:
            self.contains = None
            self.new = session._new
            self.identity_map = session.identity_map
            contains_dict = getattr(self.identity_map, "contains_dict", None)
            self.map_dict = None if contains_dict is None else contains_dict()
        else:
            self.contains = session._contains_state

    @cython.cfunc
    @cython.exceptval(-1, check=False)
    def has(self, state) -> cython.bint:
        """``session._contains_state(state)``."""
        if self.contains is not None:
            return bool(self.contains(state))
        if state in self.new:
            return True
        if self.map_dict is not None:
            return self.map_dict.get(state.key) is state
        return bool(self.identity_map.contains_state(state))


@cython.cfunc
@cython.exceptval(-1, check=False)
def _sql_ok(passive) -> cython.bint:
    """``bool(passive & SQL_OK)``, kept per flag."""
    found = _sql_ok_flags.get(passive)
    if found is None:
        found = _sql_ok_flags[passive] = bool(passive & _SQL_OK)
    return found is True


@cython.cfunc
@cython.inline
def _is_deleted(uow_states: dict, state) -> cython.bint:
    """``UOWTransaction.is_deleted``."""
    entry = uow_states.get(state)
    return entry is not None and bool(entry[0])


@cython.cfunc
@cython.inline
def _manager_of(state):
    """``state.manager``, compiled, read at its slot's offset
    (``_cpython.slot_value``).  Uncompiled its callers read the attribute
    themselves (a call costs more)."""
    return slot_value(state, "manager", cython.address(_manager_site))


@cython.cclass
class _Copies:
    """``sync._populate`` (no cascaded-pk flag) of one step's pairs of
    attribute keys, from a source state to a destination state.  An
    object's attribute implementations are its class manager's for the
    whole flush, so each pair's implementations, whether the source's
    ``get`` is stock's and what a direct ``set`` of the destination needs
    (``_plain_set``) are looked up for the last source and destination
    managers seen, not once per copy.  ``target_manager`` is the class
    manager of the processor's mapper when it is its class's primary mapper
    (else None): a child of that manager is exactly a child of that mapper,
    which passes ``_verify_canload``."""

    keys: tuple
    target_manager: object
    source_manager: object
    dest_manager: object
    # per pair of keys: (source key, source impl, whether its get is
    # stock's, destination impl, _plain_set of it)
    plan: tuple

    def __init__(self, keys: tuple, target):
        self.keys = keys
        self.target_manager = None if target is None else target.class_manager
        self.source_manager = None
        self.dest_manager = None
        self.plan = None

    @cython.cfunc
    def populate(self, source, dest):
        """The keys copied from ``source`` to ``dest``."""
        source_dict = _state_dict(source)
        dest_dict = _dest_state_dict(dest) if cython.compiled else _state_dict(dest)
        source_manager = _manager_of(source) if cython.compiled else source.manager
        dest_manager = _manager_of(dest) if cython.compiled else dest.manager
        if source_manager is not self.source_manager or dest_manager is not self.dest_manager:
            self.plan = _copy_plan(source_manager, dest_manager, self.keys)
            self.source_manager = source_manager
            self.dest_manager = dest_manager
        step: tuple
        for step in self.plan:
            _copy(source, source_dict, dest, dest_dict, step)


@cython.cfunc
def _copy_plan(source_manager, dest_manager, keys: tuple) -> tuple:
    """``_Copies.plan`` for a pair of class managers (``keys``: pairs of
    source and destination attribute keys)."""
    plan: list = []
    pair: tuple
    for pair in keys:
        impl = _impl_of(source_manager, pair[0]) if cython.compiled else source_manager[pair[0]].impl
        dest_impl = _impl_of(dest_manager, pair[1]) if cython.compiled else dest_manager[pair[1]].impl
        plan.append((pair[0], impl, _has_stock_get(impl), dest_impl, _plain_set(dest_impl)))
    return tuple(plan)


def sync_keys(uow, batch: list, plans: dict, describe, stock):
    """For each record of an INSERT or UPDATE batch of a table, what
    stock's ``_postfetch`` does when the statement had nothing to fetch:
    ``sync._populate(state, m, state, m, pairs, uow, passive_updates)`` for
    each ``(m, pairs)`` of the record's mapper's ``_table_to_equated`` (the
    key copied between the tables of a joined-inheritance object).

    ``plans`` keeps ``describe(mapper)`` per record mapper: a tuple of
    ``(source key, destination key, column)`` in stock's order, where
    ``uow.attributes[("pk_cascaded", state, column)]`` is set after the
    copy unless the column is None; or None, where ``stock(uow, state,
    mapper)`` does the record (a column not mapped: stock raises its
    error there)."""
    attributes: dict = uow.attributes
    # the batch's copy plans (_copy_plan) by record mapper, whose states'
    # class manager is the mapper's
    copy_plans: dict = {}
    step: tuple
    copy_plan: tuple
    i: cython.Py_ssize_t
    for record in batch:
        state = record[0]
        mapper = record[3]
        plan = plans.get(mapper, _ABSENT)
        if plan is _ABSENT:
            plan = plans[mapper] = describe(mapper)
        if plan is None:
            stock(uow, state, mapper)
            continue
        state_dict = _state_dict(state)
        found = copy_plans.get(mapper)
        if found is None:
            manager = state.manager
            found = copy_plans[mapper] = _copy_plan(
                manager, manager, tuple([(step[0], step[1]) for step in plan])
            )
        copy_plan = found
        for i in range(len(copy_plan)):
            _copy(state, state_dict, state, state_dict, copy_plan[i])
            step = plan[i]
            if step[2] is not None:
                attributes[("pk_cascaded", state, step[2])] = True


@cython.cfunc
def _copy(source, source_dict, dest, dest_dict, step: tuple):
    """One pair of ``sync._populate``, following its ``_copy_plan`` step:
    the source attribute's value (stock's ``get`` with ``PASSIVE_OFF``)
    set on the destination's attribute."""
    impl = step[1]
    if not cython.compiled:
        # uncompiled, the attributes' own methods (the direct copy is for
        # the compiled loop)
        step[3].set(dest, dest_dict, impl.get(source, source_dict, _OFF), None)
        return
    # where ``get`` is stock's, its first step: the dict's value
    value = dict_get(source_dict, step[0], _ABSENT) if step[2] else _ABSENT
    if value is _ABSENT:
        value = impl.get(source, source_dict, _OFF)
    _set_planned(dest, dest_dict, step[3], step[4], value)


@cython.cfunc
@cython.inline
def _has_stock_get(impl) -> cython.bint:
    """Whether ``impl``'s ``get`` is stock's ``_AttributeImpl.get``."""
    cls = type(impl)
    stock = _stock_get.get(cls)
    if stock is None:
        stock = _stock_get[cls] = cls.get is _STOCK_GET
    return stock


@cython.cfunc
@cython.inline
@cython.exceptval(-1, check=False)
def _has_listeners(listeners) -> cython.bint:
    """``bool(listeners)`` of a dispatch attribute (``turbosession.listeners``)."""
    if cython.compiled:
        return has_listeners(listeners, _LISTENER_KINDS, cython.address(_listener_sites))
    return has_listeners(listeners, _LISTENER_KINDS)


@cython.cfunc
def _plain_set(impl):
    """What ``_set_planned`` needs of a plain column attribute
    (``_ScalarAttributeImpl`` itself, with stock's ``set``):
    ``(dispatch, key, active history, send_modified_events)``, read once
    for the copies of a step; None for any other implementation (its own
    ``set`` is called), and always uncompiled."""
    if (
        not cython.compiled
        or type(impl) is not _ScalarAttributeImpl
        or not class_attribute_is(
            _ScalarAttributeImpl, "set", _STOCK_SET, cython.address(_stock_set_site)
        )
    ):
        return None
    # the implementation's slots, read at their offsets (slot_value)
    dispatch = slot_value(impl, "dispatch", cython.address(_dispatch_site))
    dispatch_own = own_dict(dispatch, _DISPATCH_NAMES, cython.address(_dispatch_names_site))
    return (
        dispatch,
        slot_value(impl, "key", cython.address(_key_site)),
        bool(_own_attribute(dispatch, "_active_history", dispatch_own)),
        bool(slot_value(impl, "send_modified_events", cython.address(_modified_events_site))),
    )


@cython.cfunc
def _set(state, dict_, impl, value):
    """``impl.set(state, dict_, value, None)`` (``_set_planned``)."""
    _set_planned(state, dict_, impl, _plain_set(impl), value)


@cython.cfunc
def _set_planned(state, dict_, impl, plan, value):
    """``impl.set(state, dict_, value, None)``, given ``_plain_set(impl)``.
    For a plain column attribute with no ``set`` listener (looked at on
    every call: a listener added replaces the dispatcher's collection),
    what stock's ``set`` does, directly: the old value from the dict (with
    active history, as a primary key's attribute has, only when the dict
    has one and the attribute's ``get`` is stock's, which then returns it),
    ``state._modified_event`` (its attribute part inline when the state is
    already flagged modified and held, the common case in a flush), the
    value stored.  Compiled only: uncompiled, the attribute's own ``set``."""
    if not cython.compiled or plan is None or value is _DONT_SET:
        impl.set(state, dict_, value, None)
        return
    known_plan: tuple = plan
    if _has_listeners(
        slot_value(known_plan[0], "set", cython.address(_set_listeners_site))
    ):
        impl.set(state, dict_, value, None)
        return
    key = known_plan[1]
    if known_plan[2]:
        # (a primary key's attribute) stock's ``get`` for the old value:
        # the dict's, when it has one and ``get`` is stock's
        if key not in dict_ or not _has_stock_get(impl):
            impl.set(state, dict_, value, None)
            return
        old = dict_[key]
    elif type(dict_) is dict:
        old = cython.cast(dict, dict_).get(key, _NO_VALUE)
    else:
        old = dict_.get(key, _NO_VALUE)
    # the state's attributes read from its own __dict__ where its class
    # keeps them there (own_dict)
    own = own_dict(state, _STATE_NAMES, cython.address(_state_names_site))
    if (
        type(state) is not _InstanceState
        or not class_attribute_is(
            _InstanceState, "_modified_event", _STOCK_MODIFIED,
            cython.address(_stock_modified_site),
        )
        or not _own_attribute(state, "modified", own)
        or (
            _own_attribute(state, "session_id", own)
            and _own_attribute(state, "_strong_obj", own) is None
        )
    ):
        state._modified_event(dict_, impl, old)
    elif known_plan[3]:
        committed: dict = slot_value(state, "committed_state", cython.address(_committed_site))
        if key not in committed:
            committed[key] = old
        known = _own_attribute(state, "_last_known_values", own)
        if known is not None and key in known:
            known[key] = _NO_VALUE
    if type(dict_) is dict:
        cython.cast(dict, dict_)[key] = value
    else:
        dict_[key] = value


def many_to_one_saves(uow, dp, states, keys: tuple, target):
    """``ManyToOneDP.process_saves`` without ``post_update``: ``keys`` pairs
    the referenced mapper's attribute keys with the referencing one's;
    ``target`` is the processor's mapper when it is its class's primary
    mapper (a child of exactly that mapper passes ``_verify_canload``).

    A state whose reference is in its dict and whose history no earlier
    step cached is answered from the state (``_reference_added``) while
    no one else can read the histories (``_histories_unread``): what stock
    does depends only on the history's added value, or on its having none
    with nothing deleted, and the lookup caches an entry nothing after
    this step reads."""
    held: _Held = _Held(uow)
    histories: _Histories = _Histories(uow)
    copies: _Copies = _Copies(keys, target)
    key = dp.key
    uow_states: dict = uow.states
    cache: dict = histories.cache if _stock_object_history() and _histories_unread(histories) else None
    for state in states:
        if cache is not None and ("history", state, key) not in cache:
            child = _reference_added(state, key)
            if child is _UNCHANGED:
                continue
            if child is not _LOOK_UP:
                _save_reference(dp, held, uow, uow_states, state, child, copies)
                continue
        history = histories.get(state, key, _NO_INITIALIZE)
        if not _nonblank(history):
            continue
        added = history.added
        if added:
            for child in added:
                _save_reference(dp, held, uow, uow_states, state, child, copies)
        elif history.deleted:
            dp._synchronize(state, None, None, True, uow, "delete")


@cython.cfunc
def _save_reference(dp, held: _Held, uow, uow_states: dict, state, child, copies: _Copies):
    """``ManyToOneDP._synchronize(state, child, None, False, uow, "add")``
    for an added value of a state's reference: the referenced object's
    keys copied to the state (not a deleted one); a None child clears the
    keys and a child not in the session warns (stock's method), a child
    not of the processor's mapper is checked by ``_verify_canload``."""
    if state is None or _is_deleted(uow_states, state):
        return
    if child is None or not held.has(child):
        dp._synchronize(state, child, None, False, uow, "add")
        return
    if (_manager_of(child) if cython.compiled else child.manager) is not copies.target_manager:
        dp._verify_canload(child)
    copies.populate(child, state)


@cython.cfunc
@cython.exceptval(-1, check=False)
def _stock_object_history() -> cython.bint:
    """Whether a many-to-one's history is stock's
    ``_ScalarObjectAttributeImpl.get_history`` (``History.from_object_attribute``)."""
    return (
        _ScalarObjectAttributeImpl.get_history is _OBJECT_HISTORY
        and attributes.History.__dict__.get("from_object_attribute") is _FROM_OBJECT_ATTRIBUTE
    )


@cython.cfunc
def _reference_added(state, key):
    """What ``ManyToOneDP.process_saves`` reads of the state's history of
    its reference ``key`` (looked up with ``PASSIVE_NO_INITIALIZE``), from
    the state itself: for an attribute of stock's class without deferred
    history whose value (not a symbol) is in the state's dict, stock's
    ``from_object_attribute`` answers ``((), [value], ())`` when
    ``committed_state`` keeps nothing for it or keeps the value itself
    (``_UNCHANGED``: nothing added or deleted, nothing done), and
    otherwise (an earlier object, or ``NO_VALUE``, ``PASSIVE_NO_RESULT``,
    None for a new object's reference never loaded) has the value added,
    which is returned as its state (``History.as_state``, which the
    unit of work's lookup answers).  ``_LOOK_UP`` for every other case: the value not
    in the dict (stock's ``get`` decides whether to load), another
    implementation: the history is looked up."""
    # compiled, the state's and the implementation's slots read at their
    # offsets (slot_value) and the dicts read as dicts (dict_get)
    impl = (
        _impl_of(_manager_of(state), key) if cython.compiled else state.manager[key].impl
    )
    if type(impl) is not _ScalarObjectAttributeImpl:
        return _LOOK_UP
    if cython.compiled:
        deferred = slot_value(impl, "_deferred_history", cython.address(_deferred_site))
    else:
        deferred = impl._deferred_history
    if deferred:
        return _LOOK_UP
    # (compiled, read at the kept site of the copies' destination, whose
    # class this state's is: a step of references to another class copies
    # from that class, read at the other site)
    dict_ = _dest_state_dict(state) if cython.compiled else _state_dict(state)
    current = dict_get(dict_, key, _ABSENT) if cython.compiled else dict_.get(key, _ABSENT)
    if current is _ABSENT or current is _NO_VALUE or current is _PASSIVE_NO_RESULT:
        return _LOOK_UP
    committed: dict = (
        slot_value(state, "committed_state", cython.address(_committed_site)) if cython.compiled
        else state.committed_state
    )
    original = committed.get(key, _ABSENT)
    if original is _ABSENT or current is original:
        return _UNCHANGED
    # as the history's states (History.as_state: instance_state, stock's
    # attrgetter)
    return None if current is None else current._sa_instance_state


def one_to_many_saves(uow, dp, states, keys: tuple, source_keys: tuple, target):
    """``OneToManyDP.process_saves`` without ``post_update``: ``keys`` pairs
    the parent's attribute keys with the child's; ``source_keys`` are the
    parent's keys ``_pks_changed`` looks at; ``target`` as above."""
    histories: _Histories = _Histories(uow)
    copies: _Copies = _Copies(keys, target)
    key = dp.key
    uow_states: dict = uow.states
    should_null_fks: cython.bint = (
        not dp.cascade.delete_orphan and not dp.passive_deletes == "all"
    )
    uselist: cython.bint = bool(dp.prop.uselist)
    # the states whose keys the presort found unchanged without a history
    unchanged: set = _answers(histories, _SOURCES_UNCHANGED, dp, None)
    # and those whose collection it found not loaded with a blank history
    # (True) or with only added members (those)
    answered: dict = _answers(histories, _COLLECTIONS_ANSWERED, dp, None)
    for state in states:
        if answered is not None:
            members = answered.get(state)
            if members is True:
                continue
            if members is not None:
                _populate_added(dp, uow_states, state, members, copies, uselist)
                continue
        # looked up by the presort (one_to_many_presort_saves)
        history = histories.known(state, key, _NO_INITIALIZE)
        if not _nonblank(history):
            continue
        _populate_added(dp, uow_states, state, history.added, copies, uselist)
        for child in history.deleted:
            if should_null_fks and not dp.cascade.delete_orphan and not dp.hasparent(child):
                dp._synchronize(state, child, None, True, uow, False)
        if (
            unchanged is None or state not in unchanged
        ) and _source_modified(histories, state, source_keys, True):
            for child in history.unchanged:
                dp._synchronize(state, child, None, False, uow, True)


@cython.cfunc
def _populate_added(dp, uow_states: dict, state, added, copies: _Copies, uselist: cython.bint):
    """The parent's keys copied to its added children (not deleted ones);
    a None member raises stock's error from ``_verify_canload``, a child
    not of the processor's mapper is checked there."""
    for child in added:
        if child is None:
            if uselist:
                dp._verify_canload(child)  # raises
            continue
        if (_manager_of(child) if cython.compiled else child.manager) is not copies.target_manager:
            dp._verify_canload(child)
        if _is_deleted(uow_states, child):
            continue
        copies.populate(state, child)


@cython.cfunc
@cython.exceptval(-1, check=False)
def _source_modified(
    histories: _Histories, state, source_keys: tuple, known: cython.bint
) -> cython.bint:
    """``sync._source_modified``; ``known``: the histories were looked up
    before in the flush (``_Histories.known``)."""
    for source_key in source_keys:
        if known:
            history = histories.known(state, source_key, _NO_INITIALIZE)
        else:
            history = histories.get(state, source_key, _NO_INITIALIZE)
        if history.deleted:
            return True
    return False


@cython.cfunc
def _answers(histories: _Histories, kind: tuple, dp, factory):
    """The container (``factory()``, kept in ``uow.memo`` per processor) of
    the answers a presort gave about ``dp``'s states from the states
    themselves, without a ``History`` (``_sources_unchanged``,
    ``_removed_none``), for the processor's later steps to read as they
    would read the history the presort cached; None when the unit of
    work's ``get_attribute_history`` is not turbosession's (every history
    is then asked of it), or, given no ``factory`` (a later step), when
    the presort kept none.  A presort keeps none either when the session
    has flush listeners: they are handed the unit of work, whose
    ``get_attribute_history`` then answers the history the presort cached,
    as stock's does."""
    if histories.lookup is None:
        return None
    if factory is None:
        return histories.cache.get(kind + (dp,))
    if not _histories_unread(histories):
        return None
    return histories.uow.memo(kind + (dp,), factory)


def collection_answers(uow, dp):
    """The presort's answers about ``dp``'s collections (``_answers``,
    ``_COLLECTIONS_ANSWERED``: a state -> True where its collection was
    not loaded, or the states of its members where all were added), for
    the per-state actions of a tree of new objects
    (``_unitofwork.tree_rounds``) to read; None where it kept none."""
    return _answers(_Histories(uow), _COLLECTIONS_ANSWERED, dp, None)


@cython.cfunc
@cython.exceptval(-1, check=False)
def _histories_unread(histories: _Histories) -> cython.bint:
    """Whether no one but the flush's own steps can ask the unit of work
    for the histories it caches, so that a step may answer from a state
    without making the ``History`` and its cache entry: its
    ``get_attribute_history`` is turbosession's, and the session has no
    flush listeners (``before_flush``, ``after_flush``,
    ``after_flush_postexec``), which are handed the unit of work and may
    ask it for those histories."""
    if histories.lookup is None:
        return False
    dispatch = histories.uow.session.dispatch
    return not (
        _has_listeners(dispatch.before_flush)
        or _has_listeners(dispatch.after_flush)
        or _has_listeners(dispatch.after_flush_postexec)
    )


@cython.cfunc
@cython.exceptval(-1, check=False)
def _stock_scalar_history() -> cython.bint:
    """Whether a column attribute's history is stock's
    ``_ScalarAttributeImpl.get_history`` over stock's ``get``."""
    return (
        _ScalarAttributeImpl.get_history is _SCALAR_HISTORY
        and _ScalarAttributeImpl.get is _STOCK_GET
    )


@cython.cfunc
@cython.exceptval(-1, check=False)
def _sources_unchanged(state, source_keys: tuple, plain_compare: dict) -> cython.bint:
    """True where ``sync._source_modified`` answers False without a
    ``History`` being needed: for each key (a column attribute of stock's
    class, ``_stock_scalar_history``), stock's history has nothing deleted
    when ``committed_state`` keeps no earlier value for it: the key absent
    (the value, if any, is unchanged; absent from the dict as well, stock's
    ``get`` answers ``PASSIVE_NO_RESULT`` without loading) or one of the
    no-state symbols of a new object (``NO_VALUE``, ``PASSIVE_NO_RESULT``),
    where stock's ``from_scalar_attribute`` reports no deleted value.  With
    such a symbol and a value present stock compares the two
    (``is_equal``) before answering: only done without it where that is
    ``TypeEngine.compare_values`` (``==``) of an int, a str or None, which
    runs nothing else (asked once per implementation and step:
    ``plain_compare`` keeps the answers).  False otherwise: the history is
    looked up."""
    committed: dict = (
        slot_value(state, "committed_state", cython.address(_committed_site)) if cython.compiled
        else state.committed_state
    )
    manager = _manager_of(state) if cython.compiled else state.manager
    dict_ = None
    for key in source_keys:
        impl = _impl_of(manager, key) if cython.compiled else manager[key].impl
        if type(impl) is not _ScalarAttributeImpl:
            return False
        original = committed.get(key, _ABSENT)
        if original is _ABSENT:
            continue
        if original is not _NO_VALUE and original is not _PASSIVE_NO_RESULT:
            return False
        if dict_ is None:
            dict_ = _state_dict(state)
        current = dict_get(dict_, key, _NO_VALUE) if cython.compiled else dict_.get(key, _NO_VALUE)
        if current is _NO_VALUE:
            continue
        kind = type(current)
        if kind is not int and kind is not str and current is not None:
            return False
        plain = plain_compare.get(impl)
        if plain is None:
            plain = plain_compare[impl] = (
                getattr(impl.is_equal, "__func__", None) is _PLAIN_COMPARE
            )
        if plain is False:
            return False
    return True


@cython.cfunc
@cython.exceptval(-2, check=False)
def _removed_none(state, key) -> cython.Py_ssize_t:
    """For a collection of stock's classes loaded as an ``InstrumentedList``
    with nothing in ``committed_state`` for it, stock's history (looked up
    without pending mutations) is ``((), members, ())``: nothing removed.
    Then the number of members, else -1 (the history is looked up)."""
    impl = _impl_of(state.manager, key)
    if type(impl) is not _CollectionAttributeImpl:
        return -1
    committed: dict = state.committed_state
    if key in committed:
        return -1
    current = _state_dict(state).get(key, _ABSENT)
    if type(current) is not _InstrumentedList:
        return -1
    return len(current)


@cython.cfunc
@cython.exceptval(-1, check=False)
def _stock_collection_history() -> cython.bint:
    """Whether a collection's history is stock's
    ``_CollectionAttributeImpl.get_history`` (over stock's ``get`` and
    ``History.from_collection``)."""
    return (
        _CollectionAttributeImpl.get_history is _COLLECTION_HISTORY
        and _CollectionAttributeImpl.get is _STOCK_GET
        and attributes.History.__dict__.get("from_collection") is _FROM_COLLECTION
    )


@cython.cfunc
@cython.inline
def _own_attribute(obj, name: str, own):
    """``getattr(obj, name)``; given ``_cpython.own_dict``'s dict (not
    None), read there (``own_entry``)."""
    if own is None:
        return getattr(obj, name)
    return own_entry(own, obj, name)


# compiled, the attributes _set reads in the object's own __dict__ where
# its class keeps them there (own_dict): the state's, the attribute
# dispatcher's (a plain class value an instance value may shadow)
_STATE_NAMES = cython.declare(
    tuple, ("modified", "session_id", "_strong_obj", "_last_known_values")
)
_state_names_site = cython.declare(ClassSite)
_DISPATCH_NAMES = cython.declare(tuple, ("_active_history",))
_dispatch_names_site = cython.declare(ClassSite)


@cython.cfunc
@cython.exceptval(-1, check=False)
def _nonblank(history) -> cython.bint:
    """``bool(history)`` (``History.__bool__``: not equal to
    ``HISTORY_BLANK``, whose three parts are the empty tuple).  For a
    ``History`` itself the tuple comparison's answer is read from its
    parts (compiled: uncompiled, the comparison is one operation): a list
    (the parts of every history a flush makes) never equals a tuple, a
    tuple equals ``()`` when it is empty; any other part, and any other
    class, are compared."""
    if history is _HISTORY_BLANK:
        return False
    if not cython.compiled or type(history) is not _History:
        return history != _HISTORY_BLANK
    for part in cython.cast(tuple, history):
        kind = type(part)
        if kind is list:
            return True
        if kind is not tuple:
            return history != _HISTORY_BLANK
        if cython.cast(tuple, part):
            return True
    return False


@cython.cfunc
def _getters(manager, keys: tuple) -> tuple:
    """For each ``(attribute key, column key)`` pair, ``(attribute key,
    column key, impl, whether impl's get is stock's)`` of ``manager``."""
    getters: list = []
    pair: tuple
    for pair in keys:
        impl = manager[pair[0]].impl
        getters.append((pair[0], pair[1], impl, _has_stock_get(impl)))
    return tuple(getters)


@cython.cfunc
def _fill(row: dict, state, dict_, getters: tuple):
    """``sync._populate_dict``: each value as ``impl.get(state, dict_,
    PASSIVE_OFF)`` returns it, whose first step, for stock's
    implementations, is to return the value the dict has."""
    getter: tuple
    values: dict = dict_ if type(dict_) is dict else None
    for getter in getters:
        key = getter[0]
        if getter[3]:
            if values is not None:
                value = values.get(key, _ABSENT)
                if value is _ABSENT:
                    value = getter[2].get(state, dict_, _OFF)
            elif key in dict_:
                value = dict_[key]
            else:
                value = getter[2].get(state, dict_, _OFF)
        else:
            value = getter[2].get(state, dict_, _OFF)
        row[getter[1]] = value


@cython.cfunc
def _state_dict(state):
    """``state.dict``: the object's ``__dict__`` (stock's ``instance_dict``
    is ``attrgetter("__dict__")``, read here as the attribute itself while
    ``orm.base`` holds that one), or a new empty dict once the object is
    gone."""
    if not cython.compiled:
        # uncompiled, the reads themselves (no further call)
        if type(state) is not _InstanceState or _BASE_NAMES.get("instance_dict") is not _INSTANCE_DICT:
            return state.dict
        obj = state.obj()
        if obj is None:
            return {}
        return obj.__dict__
    return _state_dict_at(state, False)


@cython.cfunc
def _dest_state_dict(state):
    """``_state_dict`` with its own kept lookup of the object's class, for
    the other side of a pair of states (``_populate``'s destination), whose
    class is usually not the source's.  Compiled only."""
    return _state_dict_at(state, True)


@cython.cfunc
@cython.inline
def _state_dict_at(state, dest: cython.bint):
    if type(state) is not _InstanceState or _BASE_NAMES.get("instance_dict") is not _INSTANCE_DICT:
        return state.dict
    # the obj slot and the object's __dict__ read without their class
    # lookups (_cpython.live_state_dict)
    found = live_state_dict(
        state, cython.address(_obj_site),
        cython.address(_dest_dict_site) if dest else cython.address(_object_dict_site),
    )
    if found is None:
        return {}
    return found


# compiled, _state_dict's kept class lookups (_cpython.live_state_dict)
_obj_site = cython.declare(SlotSite)
_object_dict_site = cython.declare(DictSite)
_dest_dict_site = cython.declare(DictSite)


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
def _joined_row(parent_row: dict, child_row: dict) -> dict:
    """A new association row: the parent's values, then the child's.
    Compiled, filled item by item, which costs less than copying the
    parent's dict and updating the copy (an association row has a key or
    two from each side); uncompiled, the loops would cost more."""
    if not cython.compiled:
        return {**parent_row, **child_row}
    row: dict = {}
    for key, value in parent_row.items():
        row[key] = value
    for key, value in child_row.items():
        row[key] = value
    return row


@cython.cclass
class _Rows:
    """What the association rows of one step are made with: the
    relationship's keys, the child mapper that needs no type check, and the
    attribute getters of the last parent and child class seen.

    Within the step the values are read once per object: the current
    parent's (``parent_row``, at its first row) and each child's that the
    session holds (``child_rows``; with stock's ``_contains_state`` and
    turbosession's identity map, read as its dict, which are then not asked
    again: nothing in the step adds objects to the session or removes
    them).  Stock reads them again for each row, where they are in the
    object's dict after the first read (the first read is where a load, if
    any, happens, as in stock); each row is a new dict, the parent's keys
    first."""

    uow: object
    dp: object
    held: _Held
    parent_keys: tuple
    child_keys: tuple
    target: object
    parent_manager: object
    parent_getters: tuple
    child_manager: object
    child_getters: tuple
    parent_row: dict  # None: not read yet for the current parent
    child_rows: dict  # child state -> its values

    def __init__(self, uow, dp, parent_keys, child_keys, target):
        self.uow = uow
        self.dp = dp
        self.held = _Held(uow)
        self.parent_keys = parent_keys
        self.child_keys = child_keys
        self.target = target
        self.parent_manager = None
        self.child_manager = None
        self.parent_row = None
        self.child_rows = {}

    @cython.cfunc
    def parent(self, state):
        """The parent attribute getters for ``state``'s class, before its
        rows are made."""
        self.parent_row = None
        manager = state.manager
        if manager is not self.parent_manager:
            self.parent_manager = manager
            self.parent_getters = _getters(manager, self.parent_keys)

    @cython.cfunc
    def row(self, state, parent_dict, child, operation):
        """``ManyToManyDP._synchronize`` into a new association row: the
        row, or None where stock's returns False (what stock raises or
        warns there comes from the processor's own method).  ``parent``
        was called for ``state``."""
        dp = self.dp
        if child is None:
            dp._verify_canload(child)  # raises for a collection
            return None
        child_row = self.child_rows.get(child)
        if child_row is not None:
            return self.joined(state, parent_dict, child_row)
        manager = child.manager
        if manager is not self.child_manager:
            # checked once per child class (the check depends on its mapper
            # alone)
            if manager.mapper is not self.target:
                dp._verify_canload(child)
            self.child_manager = manager
            self.child_getters = _getters(manager, self.child_keys)
        if not self.held.has(child):
            # stock warns unless the child is deleted, and makes no row
            dp._synchronize(state, child, {}, False, self.uow, operation)
            return None
        parent_row: dict = self.parent_row
        if parent_row is None:
            parent_row = {}
            _fill(parent_row, state, parent_dict, self.parent_getters)
            self.parent_row = parent_row
        child_row = {}
        _fill(child_row, child, _state_dict(child), self.child_getters)
        if self.held.map_dict is not None:
            self.child_rows[child] = child_row
        return _joined_row(parent_row, child_row)

    @cython.cfunc
    def joined(self, state, parent_dict, child_row: dict):
        """The row of the parent's values and a child's read before."""
        parent_row: dict = self.parent_row
        if parent_row is None:
            parent_row = {}
            _fill(parent_row, state, parent_dict, self.parent_getters)
            self.parent_row = parent_row
        return _joined_row(parent_row, child_row)

    @cython.cfunc
    def collect(self, out: list, state, parent_dict, children, operation, processed):
        """The rows of ``children`` of ``state`` not done from the reverse
        side (``processed``, or None), appended to ``out``."""
        if children:
            self.parent(state)
        for child in children:
            if processed is not None and (state, child) in processed:
                continue
            row = self.row(state, parent_dict, child, operation)
            if row is not None:
                out.append(row)


def many_to_many_saves(
    uow, dp, states, parent_keys: tuple, child_keys: tuple, target, processed, check_pks: cython.bint
):
    """``ManyToManyDP.process_saves`` up to its ``_run_crud``: the
    association rows to insert, update and delete, as stock collects them.
    ``parent_keys`` pairs the parent's attribute keys with the association
    table's column keys (``synchronize_pairs``), ``child_keys`` the child's
    (``secondary_synchronize_pairs``); ``processed`` is the reverse
    relationship's set of pairs already done (or None); ``check_pks`` is
    ``not passive_updates``."""
    histories: _Histories = _Histories(uow)
    key = dp.key
    insert: list = []
    update: list = []
    delete: list = []
    tmp: set = set()
    track: cython.bint = processed is not None
    source_keys: tuple = tuple([pair[0] for pair in parent_keys])
    rows: _Rows = _Rows(uow, dp, parent_keys, child_keys, target)
    for state in states:
        need_cascade_pks: cython.bint = check_pks and _source_modified(
            histories, state, source_keys, False
        )
        history = histories.get(
            state, key, _OFF_PENDING if need_cascade_pks else _NO_INITIALIZE_PENDING
        )
        if not _nonblank(history):
            continue
        parent_dict = _state_dict(state)
        rows.collect(insert, state, parent_dict, history.added, "add", processed)
        rows.collect(delete, state, parent_dict, history.deleted, "delete", processed)
        if track:
            for child in history.added:
                tmp.add((child, state))
            for child in history.deleted:
                tmp.add((child, state))
        if need_cascade_pks:
            for child in history.unchanged:
                row = {}
                _sync_update(state, dp.parent, row, "old_", dp.prop.synchronize_pairs)
                _sync_update(child, dp.mapper, row, "old_", dp.prop.secondary_synchronize_pairs)
                update.append(row)
    if track:
        processed.update(tmp)
    return insert, update, delete


def many_to_many_deletes(uow, dp, states, parent_keys: tuple, child_keys: tuple, target, processed):
    """``ManyToManyDP.process_deletes`` up to its ``_run_crud``: the
    association rows of the deleted parents' collections (unchanged and
    removed members), as stock collects them."""
    histories: _Histories = _Histories(uow)
    key = dp.key
    passive = dp._passive_delete_flag
    delete: list = []
    tmp: set = set()
    track: cython.bint = processed is not None
    rows: _Rows = _Rows(uow, dp, parent_keys, child_keys, target)
    for state in states:
        history = histories.get(state, key, passive)
        if not _nonblank(history):
            continue
        members = history.non_added()
        parent_dict = _state_dict(state)
        rows.parent(state)
        for child in members:
            if child is None or (track and (state, child) in processed):
                continue
            row = rows.row(state, parent_dict, child, "delete")
            if row is not None:
                delete.append(row)
        if track:
            for child in members:
                tmp.add((child, state))
    if track:
        processed.update(tmp)
    return [], [], delete


@cython.cfunc
def _clear_child(uow, dp, child, clear_keys, target):
    """``OneToManyDP._synchronize(state, child, None, True, uow, False)``
    without ``post_update``: the child's foreign-key attributes set to None
    (``sync._clear``; stock's function itself when a key is part of the
    child's primary key, which it refuses to blank out)."""
    if (_manager_of(child) if cython.compiled else child.manager).mapper is not target:
        dp._verify_canload(child)
    if _is_deleted(uow.states, child):
        return
    if clear_keys is None:
        _sync_clear(child, dp.mapper, dp.prop.synchronize_pairs)
        return
    child_dict = _state_dict(child)
    for key in clear_keys:
        impl = _impl_of(child.manager, key) if cython.compiled else child.manager[key].impl
        _set(child, child_dict, impl, None)


def one_to_many_deletes(uow, dp, states, clear_keys, target):
    """``OneToManyDP.process_deletes`` without ``post_update``: the removed
    children that have no parent left and, without a delete cascade, the
    deleted parents' remaining children get their foreign keys cleared.
    ``clear_keys`` are the child's attribute keys of the synchronised
    columns (None when one is a primary key column)."""
    histories: _Histories = _Histories(uow)
    if dp.passive_deletes == "all":
        return
    key = dp.key
    passive = dp._passive_delete_flag
    children_added = uow.memo(("children_added", dp), set)
    null_unchanged: cython.bint = not dp.cascade.delete
    # the states one_to_many_presort_deletes found without removed children
    nothing_removed: dict = (
        None if null_unchanged else _answers(histories, _NOTHING_REMOVED, dp, None)
    )
    for state in states:
        if nothing_removed is not None and state in nothing_removed:
            continue
        history = histories.get(state, key, passive)
        if not _nonblank(history):
            continue
        for child in history.deleted:
            if child is not None and dp.hasparent(child) is False:
                _clear_child(uow, dp, child, clear_keys, target)
        if null_unchanged:
            for child in set(history.unchanged).difference(children_added):
                if child is not None:
                    _clear_child(uow, dp, child, clear_keys, target)


def presort_states(uow, mappers, processed: set) -> tuple:
    """The states ``_Preprocess.execute`` hands to ``presort_deletes`` and
    ``presort_saves``: those of ``mappers`` not yet ``processed``, not
    list-only, as two sets filled in stock's order."""
    delete_states: set = set()
    save_states: set = set()
    states: dict = uow.states
    by_mapper = uow.mappers  # a defaultdict: a mapper without states gets its set, as in stock
    entry: tuple
    for mapper in mappers:
        for state in by_mapper[mapper].difference(processed):
            entry = states[state]
            if not entry[1]:
                if entry[0]:
                    delete_states.add(state)
                else:
                    save_states.add(state)
    return delete_states, save_states


def one_to_many_presort_deletes(uow, dp, states):
    """``OneToManyDP.presort_deletes``: the children removed from a deleted
    parent's collection that have no parent left are registered (deleted
    with delete-orphan), and without a delete cascade the remaining ones
    too, so that their foreign keys are cleared."""
    histories: _Histories = _Histories(uow)
    should_null_fks: cython.bint = not dp.cascade.delete and not dp.passive_deletes == "all"
    delete_orphan: cython.bint = bool(dp.cascade.delete_orphan)
    key = dp.key
    passive = dp._passive_delete_flag
    prop = dp.prop
    # without foreign keys to clear only the removed children count: a
    # loaded collection that shows none is answered without its history,
    # kept (with whether it has members) for the later steps
    nothing_removed: dict = (
        _answers(histories, _NOTHING_REMOVED, dp, dict)
        if not should_null_fks
        and (passive is _OFF or passive is _NO_INITIALIZE)
        and _stock_collection_history()
        else None
    )
    members: cython.Py_ssize_t
    for state in states:
        if nothing_removed is not None:
            members = _removed_none(state, key)
            if members >= 0:
                nothing_removed[state] = members > 0
                continue
        history = histories.get(state, key, passive)
        if not _nonblank(history):
            continue
        for child in history.deleted:
            if child is not None and dp.hasparent(child) is False:
                if delete_orphan:
                    uow.register_object(child, isdelete=True)
                else:
                    uow.register_object(child)
        if should_null_fks:
            for child in history.unchanged:
                if child is not None:
                    uow.register_object(child, operation="delete", prop=prop)


def many_to_many_presort_deletes(uow, dp, states):
    """``ManyToManyDP.presort_deletes``: the deleted parents' collections
    loaded into the unit of work's history (unless ``passive_deletes``)."""
    histories: _Histories = _Histories(uow)
    if dp.passive_deletes:
        return
    key = dp.key
    passive = dp._passive_delete_flag
    for state in states:
        histories.get(state, key, passive)


@cython.cfunc
@cython.exceptval(-1, check=False)
def _registered(held: _Held, state, isdelete: cython.bint, cancel_delete: cython.bint) -> cython.bint:
    """``uow.register_object(state, isdelete=isdelete,
    cancel_delete=cancel_delete, ...)`` for a state of the session already
    in the flush: what stock's method does then (the state made a delete,
    or a cancelled delete a save), and False, for stock's method to be
    called, in every other case (a state not in the session, where stock
    warns, or not yet in the flush, where stock sets up its mapper's
    actions; a unit of work whose method is not stock's)."""
    if not held.stock_register:
        return False
    states: dict = held.states
    if state not in states or not held.has(state):
        return False
    if isdelete or cancel_delete:
        states[state] = _DELETE_ENTRY if isdelete else _SAVE_ENTRY
    return True


def one_to_many_presort_saves(uow, dp, states, source_keys: tuple):
    """``OneToManyDP.presort_saves``: the added children registered (a
    delete of theirs cancelled), the removed ones registered to have their
    foreign key cleared or, with delete-orphan and no parent left, deleted
    with their delete cascade, and after a primary-key change of the
    parent the unchanged children too.  ``source_keys`` are the parent's
    attribute keys ``_pks_changed`` looks at."""
    held: _Held = _Held(uow)
    histories: _Histories = _Histories(uow)
    children_added = uow.memo(("children_added", dp), set)
    delete_orphan: cython.bint = bool(dp.cascade.delete_orphan)
    should_null_fks: cython.bint = not delete_orphan and not dp.passive_deletes == "all"
    passive_updates = dp.passive_updates
    key = dp.key
    prop = dp.prop
    # the states whose keys are found unchanged without a history, for
    # one_to_many_saves (which asks again) to read as the history it
    # would find cached
    unchanged: set = (
        _answers(histories, _SOURCES_UNCHANGED, dp, set) if _stock_scalar_history() else None
    )
    # the states whose collection shows its history: not loaded, blank
    # (True), or loaded with only added members (their states), for
    # one_to_many_saves and prop_has_changes to read as the history they
    # would find cached; answered for all the states at once, and again
    # for each state once a step that may load (a loading lookup, a delete
    # cascade) has run, as it may have loaded a later state's collection
    answered: dict = _answers(histories, _COLLECTIONS_ANSWERED, dp, dict)
    answer_states = None
    if answered is not None:
        answer_states = histories.uow._unitofwork.collections_without_history
        answer_states(answered, states, key, _NO_INITIALIZE_PENDING)
    answers_fresh: cython.bint = True
    pks_changed: cython.bint
    # the source keys' implementation -> whether it compares with ==
    # (_sources_unchanged)
    plain_compare: dict = {}
    for state in states:
        if unchanged is not None and _sources_unchanged(state, source_keys, plain_compare):
            unchanged.add(state)
            pks_changed = False
        else:
            pks_changed = _source_modified(histories, state, source_keys, False)
        if pks_changed and not passive_updates:
            if answered is not None:
                answered.pop(state, None)
            answers_fresh = False
            history = histories.get(state, key, _OFF_PENDING)
        else:
            if answered is not None:
                if not answers_fresh:
                    answered.pop(state, None)
                    answer_states(answered, (state,), key, _NO_INITIALIZE_PENDING)
                members = answered.get(state)
                if members is True:
                    continue
                if members is not None:
                    # nothing removed, nothing unchanged
                    _register_added(held, uow, prop, children_added, members)
                    continue
            history = histories.get(state, key, _NO_INITIALIZE_PENDING)
        if not _nonblank(history):
            continue
        _register_added(held, uow, prop, children_added, history.added)
        for child in history.deleted:
            if not delete_orphan:
                if should_null_fks:
                    uow.register_object(child, isdelete=False, operation="delete", prop=prop)
            elif dp.hasparent(child) is False:
                uow.register_object(child, isdelete=True, operation="delete", prop=prop)
                answers_fresh = False
                for cascaded in dp.mapper.cascade_iterator("delete", child):
                    uow.register_object(cascaded[2], isdelete=True)
        if pks_changed:
            for child in history.unchanged:
                if child is not None:
                    uow.register_object(
                        child, False, passive_updates, operation="pk change", prop=prop
                    )


@cython.cfunc
def _register_added(held: _Held, uow, prop, children_added, added):
    """The presort's registration of a parent's added children (a delete
    of theirs cancelled), noted in the processor's ``children_added``."""
    for child in added:
        if child is not None and not _registered(held, child, False, True):
            uow.register_object(child, cancel_delete=True, operation="add", prop=prop)
    if cython.compiled and type(children_added) is set:
        # set.update's result, without the method's lookup and call
        for child in added:
            cython.cast(set, children_added).add(child)
    else:
        children_added.update(added)


def many_to_one_presort_saves(uow, dp, states):
    """``ManyToOneDP.presort_saves`` without delete-orphan: each state
    registered again, which for a state already in the flush changes
    nothing (stock's method is called for any other)."""
    held: _Held = _Held(uow)
    prop = dp.prop
    for state in states:
        if not _registered(held, state, False, False):
            uow.register_object(state, operation="add", prop=prop)


def prop_has_changes(uow, dp, states, passive):
    """``DependencyProcessor.prop_has_changes`` with its flag (``passive``)
    chosen: whether a state's history has added, deleted or unchanged
    members, else whether there are states of a relationship that is not
    self-referential whose target mapper is in the flush."""
    histories: _Histories = _Histories(uow)
    key = dp.key
    # a deleted parent's loaded collection answered by the presort
    # (one_to_many_presort_deletes): its history has its members unchanged
    nothing_removed: dict = _answers(histories, _NOTHING_REMOVED, dp, None)
    # a saved parent's collection the presort found not loaded (blank:
    # True) or with only added members (changes when it has any)
    collections: dict = _answers(histories, _COLLECTIONS_ANSWERED, dp, None)
    for state in states:
        if collections is not None:
            members = collections.get(state)
            if members is True:
                continue
            if members is not None:
                if members:
                    return True
                continue
        answered = _has_members(nothing_removed, state)
        if answered == 1:
            return True
        if answered == 0:
            continue
        history = histories.get(state, key, passive)
        if _nonblank(history) and (history.added or history.deleted or history.unchanged):
            return True
    return states and not dp.prop._is_self_referential and dp.mapper in uow.mappers


@cython.cfunc
@cython.exceptval(-2, check=False)
def _has_members(answers, state) -> cython.int:
    """For a presort's answers kept as state -> its collection's members (or
    whether it has any): 1 where the collection has members, 0 where it has
    none, -1 where the presort gave no answer (its history is asked)."""
    if answers is None:
        return -1
    value = answers.get(state)
    if value is None:
        return -1
    return 1 if value else 0


def many_to_one_presort_deletes(uow, dp, states):
    """``ManyToOneDP.presort_deletes`` with a delete or delete-orphan
    cascade: the deleted states' referenced objects (with delete-orphan
    also those they referred to before) registered as deletes, each with
    its own delete cascade (``Mapper.cascade_iterator``, stock's)."""
    held: _Held = _Held(uow)
    histories: _Histories = _Histories(uow)
    key = dp.key
    passive = dp._passive_delete_flag
    delete_orphan: cython.bint = bool(dp.cascade.delete_orphan)
    prop = dp.prop
    mapper = dp.mapper
    for state in states:
        history = histories.get(state, key, passive)
        if not _nonblank(history):
            continue
        todelete = history.sum() if delete_orphan else history.non_deleted()
        for child in todelete:
            if child is None:
                continue
            if not _registered(held, child, True, False):
                uow.register_object(child, isdelete=True, operation="delete", prop=prop)
            for cascaded in mapper.cascade_iterator("delete", child):
                if not _registered(held, cascaded[2], True, False):
                    uow.register_object(cascaded[2], isdelete=True)
