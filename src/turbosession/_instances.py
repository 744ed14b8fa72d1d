"""Loading rows as objects: the per-row loop of stock's ``_instance`` closure.

``RowLoader`` is what a query's row processor is in a turbosession session
when ``turbosession.instances`` decided, once per query setup, that the query
has the common shape (one plain mapper, no refresh, no ``populate_existing``,
no version check).  On a repeated execution of a compiled statement whose
entity has only the cached (column) populators, it is built from the
statement's cached ``RowSetup`` alone (``loader_cached``): the few values
stock's ``_instance_processor`` computes for each execution (the identity
map, the runid, the load path and options, the post-load, the event flags)
are computed as stock computes them, and stock's closure is made only when a
row needs it.  Otherwise it is built over stock's own ``_instance`` closure
(``loader_over``): those values are read from that closure's cells.

Per row it does what the closure does for the two rows that make up almost
every load: a row whose identity is not in the identity map (a new object,
populated through the "quick", "expire" and "new" populators, ``load`` and
``loaded_as_persistent`` fired) and the first row of an object already in
the map with nothing to load (left alone, offered to the post-load).  Any
other row (a second row of an object in this load, an object with unloaded
or expired attributes, eager populators, a version check) is handed to stock's
closure before anything is changed, so it is processed by stock's code.
"""

from __future__ import annotations

import operator
import types
import weakref

from sqlalchemy import util
from sqlalchemy.engine import result as engine_result
from sqlalchemy.orm import attributes as orm_attributes
from sqlalchemy.orm import collections as orm_collections
from sqlalchemy.orm import instrumentation as orm_instrumentation
from sqlalchemy.orm import loading, strategies
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.util import UniqueAppender

from turbosession import listeners as _listeners
from turbosession.classes import data_descriptor

try:
    import cython
except ModuleNotFoundError:
    from turbosession import _cython_shim as cython

__all__ = [
    "JoinedCollection", "JoinedScalar", "RowLoader", "counts", "load_via_child",
    "load_via_parent", "reset_counts",
]


def _is_compiled():
    return cython.compiled


if cython.compiled:
    from cython.cimports.cpython.object import PyObject, PyTypeObject
    from cython.cimports.cpython.weakref import PyWeakref_NewRef
    from cython.cimports.turbosession._cpython import (
        ListenerSites,
        PyMethod_New,
        PyObject_GC_UnTrack,
        _PyDict_GetItem_KnownHash,
        _PyDict_SetItem_KnownHash,
        cell_contents,
        class_lookup,
        getset_get,
        has_listeners,
        instance_dict,
        store_slot,
        untrack_atoms,
        writable_slot_offset,
    )
else:
    from turbosession.listeners import has_listeners
    ListenerSites = None  # the declaration below is plain None

_itemgetter = cython.declare(object, operator.itemgetter)
_EMPTY_TUPLE = cython.declare(tuple, ())
_NO_STEPS = cython.declare(list, [])

_warn_for_runid_changed = loading._warn_for_runid_changed
_LISTENER_KINDS = cython.declare(tuple, _listeners.KINDS)
_listener_sites = cython.declare(ListenerSites)


@cython.cfunc
@cython.inline
@cython.exceptval(-1, check=False)
def _has_listeners(listeners) -> cython.bint:
    """``bool(listeners)`` of a dispatch attribute (``turbosession.listeners``)."""
    if cython.compiled:
        return has_listeners(listeners, _LISTENER_KINDS, cython.address(_listener_sites))
    return has_listeners(listeners, _LISTENER_KINDS)

# what InstanceState.__init__ reads in SQLAlchemy 2.1: it sets class_,
# manager, obj (a weakref with the state's _cleanup), committed_state and
# expired_attributes, which RowLoader._new_state does itself when compiled
_STATE_INIT_NAMES = (
    "__class__", "class_", "manager", "weakref", "ref", "_cleanup", "obj",
    "committed_state", "set", "expired_attributes",
)


# InstanceState.__init__ as imported, when it is the one described above
_KNOWN_INIT = (
    InstanceState.__init__
    if InstanceState.__init__.__code__.co_names == _STATE_INIT_NAMES
    and InstanceState.__new__ is object.__new__
    else None
)


def _plain_attribute(cls, name) -> bool:
    """Whether ``setattr(obj, name, value)`` on an instance of ``cls`` stores
    into the instance's ``__dict__``: ``object``'s ``__setattr__`` (looked up
    on the class, as for its instances; a metaclass's ``__setattr__``, such as
    declarative's, sets class attributes only) and no data descriptor of that
    name on the class."""
    return cls.__setattr__ is object.__setattr__ and not data_descriptor(cls, name)


_HEAPTYPE = 1 << 9  # Py_TPFLAGS_HEAPTYPE


def _plain_dict(cls) -> bool:
    """Whether ``instance.__dict__`` of an instance of ``cls`` is what CPython
    keeps at the instance's dict offset: ``object``'s attribute lookup and the
    ``__dict__`` descriptor CPython gives a class defined in Python (a
    ``getset_descriptor`` of a heap type), no property or other descriptor of
    that name.  Compiled, the loop then reads the dict where that descriptor
    reads it."""
    if cls.__getattribute__ is not object.__getattribute__:
        return False
    descr = next(
        (klass.__dict__["__dict__"] for klass in cls.__mro__ if "__dict__" in klass.__dict__),
        None,
    )
    return (
        type(descr) is types.GetSetDescriptorType
        and descr.__name__ == "__dict__"
        and bool(descr.__objclass__.__flags__ & _HEAPTYPE)
    )


# per identity map class (turbosession's own): the getset descriptor of its
# ``_killed`` flag, when ``map._killed`` is that descriptor's (object's
# attribute lookup, the class's attribute a getset_descriptor); None otherwise
_KILLED_DESCR = cython.declare(dict, {})


def _killed_descriptor(map_class):
    found = _KILLED_DESCR.get(map_class, _KILLED_DESCR)
    if found is not _KILLED_DESCR:
        return found
    descr = next(
        (klass.__dict__["_killed"] for klass in map_class.__mro__ if "_killed" in klass.__dict__),
        None,
    )
    if (
        type(descr) is not types.GetSetDescriptorType
        or map_class.__getattribute__ is not object.__getattribute__
    ):
        descr = None
    _KILLED_DESCR[map_class] = descr
    return descr


# the function behind a state's ``_cleanup`` (the weak reference's callback
# that InstanceState.__init__ binds to the new state)
_STATE_CLEANUP = cython.declare(object, InstanceState.__dict__.get("_cleanup"))


def _slot_offset(name) -> cython.Py_ssize_t:
    """Where InstanceState's slot ``name`` is in a state (compiled), when it
    is a writable object slot of InstanceState's own ``__slots__``; -1
    otherwise (and always uncompiled)."""
    descr = InstanceState.__dict__.get(name)
    if type(descr) is not types.MemberDescriptorType or descr.__objclass__ is not InstanceState:
        return -1
    if not cython.compiled:
        return -1
    return writable_slot_offset(descr)


# the five slots InstanceState.__init__ sets, stored at their offsets
_CLASS_SLOT = cython.declare(cython.Py_ssize_t, _slot_offset("class_"))
_MANAGER_SLOT = cython.declare(cython.Py_ssize_t, _slot_offset("manager"))
_OBJ_SLOT = cython.declare(cython.Py_ssize_t, _slot_offset("obj"))
_COMMITTED_SLOT = cython.declare(cython.Py_ssize_t, _slot_offset("committed_state"))
_EXPIRED_SLOT = cython.declare(cython.Py_ssize_t, _slot_offset("expired_attributes"))
_SLOTS_KNOWN = cython.declare(
    cython.bint,
    min(_CLASS_SLOT, _MANAGER_SLOT, _OBJ_SLOT, _COMMITTED_SLOT, _EXPIRED_SLOT) > 0,
)


def _init_is_known(state_class) -> cython.bint:
    return (
        state_class is InstanceState
        and InstanceState.__init__ is _KNOWN_INIT
        and _STATE_CLEANUP is not None
        and InstanceState._cleanup is _STATE_CLEANUP
        and _SLOTS_KNOWN
    )


def _pk_positions(getter):
    """``(start, stop, None)`` when stock's primary-key getter is the one
    ``tuplegetter`` makes for contiguous columns (``itemgetter(slice(start,
    stop))``), ``(0, 0, indexes)`` for ``itemgetter(i, j, ...)``; None for any
    other getter.  Read once per compiled statement."""
    if type(getter) is not _itemgetter:
        return None
    args = getter.__reduce__()[1]
    if len(args) == 1 and type(args[0]) is slice:
        where = args[0]
        if (
            type(where.start) is int and type(where.stop) is int and where.step is None
            and 0 <= where.start < where.stop
        ):
            return (where.start, where.stop, None)
        return None
    if len(args) > 1 and all(type(index) is int and index >= 0 for index in args):
        return (0, 0, tuple(args))
    return None


def _quick_positions(quick):
    """``(keys, indexes)`` of the "quick" populators when each getter is
    ``itemgetter(index)`` (what stock's ``result._getter`` makes), so that a
    plain tuple row is read by position; None otherwise."""
    keys = []
    indexes = []
    for key, getter in quick:
        if type(getter) is not _itemgetter:
            return None
        args = getter.__reduce__()[1]
        if len(args) != 1 or type(args[0]) is not int or args[0] < 0:
            return None
        keys.append(key)
        indexes.append(args[0])
    return (tuple(keys), tuple(indexes))


# how RowLoader tests a primary key for NULLs: stock's is_not_primary_key is
# _none_set.issuperset (allow_partial_pks, every value NULL) or
# _none_set.intersection (any value NULL); anything else is called
_NONE_SET = cython.declare(frozenset, loading._none_set)
_NONE_CALL = cython.declare(cython.int, 0)
_NONE_ALL = cython.declare(cython.int, 1)
_NONE_ANY = cython.declare(cython.int, 2)


# whether a value of exactly int or str is never in _none_set: its members
# are None and objects compared by identity (SQLAlchemy's LoaderCallableStatus
# members), which no int or str equals, so the membership test of such a value
# (a hash and, on a collision, int's or str's __eq__ answering NotImplemented
# and then the member's identity comparison) is False without being made
_PLAIN_NOT_NONE = cython.declare(
    cython.bint,
    all(
        member is None
        or (
            not isinstance(member, (int, str))
            and type(member).__eq__ is object.__eq__
        )
        for member in _NONE_SET
    ),
)


def _none_mode(is_not_primary_key) -> cython.int:
    if getattr(is_not_primary_key, "__self__", None) is not loading._none_set:
        return _NONE_CALL
    name = getattr(is_not_primary_key, "__name__", None)
    if name == "issuperset":
        return _NONE_ALL
    if name == "intersection":
        return _NONE_ANY
    return _NONE_CALL


def _plain_new(class_) -> bool:
    """Whether ``class_.__new__(class_)`` is ``object.__new__``'s."""
    return class_.__new__ is object.__new__


# the cells of stock's closure RowLoader reads per query, in the order of
# ``at``; all but the last are assigned in every closure, loaded_as_persistent
# only when the session has loaded_as_persistent listeners
CELLS = (
    "context", "identity_token", "primary_key_getter", "session_identity_map",
    "session_id", "runid", "load_path", "propagated_loader_options", "populators",
    "load_evt", "persistent_evt", "post_load", "loaded_as_persistent",
)
_ALWAYS_ASSIGNED = cython.declare(cython.Py_ssize_t, len(CELLS) - 1)

# the cells ``loader_over`` checks for each execution, after CELLS in ``at``
# (version_id_getter is assigned only with a version check)
CHECKED_CELLS = (
    "mapper", "populate_existing", "instance_state", "instance_dict", "version_check",
    "version_id_getter",
)
_MAPPER_AT = cython.declare(cython.Py_ssize_t, len(CELLS))
_instance_state = cython.declare(object, orm_attributes.instance_state)
_instance_dict = cython.declare(object, orm_attributes.instance_dict)


@cython.cfunc
@cython.inline
def _at(at: tuple, index: cython.Py_ssize_t) -> cython.Py_ssize_t:
    """The closure position ``at[index]`` (a C integer, compiled)."""
    return at[index]


@cython.cfunc
@cython.inline
def _cell(cell) -> object:
    """``cell.cell_contents``; compiled, read without the attribute lookup."""
    if cython.compiled:
        return cell_contents(cell)
    return cell.cell_contents


def loader_over(stock, at: tuple, mapper, attributes: dict, key, map_class) -> object:
    """For one execution, the ``RowLoader`` over stock's ``_instance``
    closure ``stock`` of ``mapper``; or, when the loop does not cover this
    execution, the reason (a key of ``turbosession.instances.
    FALLBACK_REASONS``); or None when the compiled statement has no usable
    ``RowSetup`` for this mapper and path (none under ``key`` in the compile
    state's ``attributes``, one built before the mapper was reconfigured, or
    for another primary-key getter): the caller builds it and asks again.

    ``at``: the position in the closure of each cell of CELLS then
    CHECKED_CELLS.  The checks, in this order, are what
    ``turbosession.instances`` decided in Python for every execution: the
    closure is for this mapper, without populate_existing, with stock's
    instrumentation functions.
    """
    closure: tuple = stock.__closure__
    i: cython.Py_ssize_t = at[_MAPPER_AT]
    if _cell(closure[i]) is not mapper:
        return "load_closure"
    i = at[_MAPPER_AT + 1]
    if _cell(closure[i]):
        return "load_populate_existing"
    i = at[_MAPPER_AT + 2]
    j: cython.Py_ssize_t = at[_MAPPER_AT + 3]
    if _cell(closure[i]) is not _instance_state or _cell(closure[j]) is not _instance_dict:
        return "load_instrumentation"
    setup = attributes.get(key)
    if setup is None:
        return None
    row_setup: RowSetup = setup
    i = at[2]
    if row_setup.source is not mapper._prop_set or (
        row_setup.primary_key_getter is not _cell(closure[i])
    ):
        return None
    # the version_id_getter cell is assigned only with a version check
    i = at[_MAPPER_AT + 4]
    j = at[_MAPPER_AT + 5]
    hits_to_stock: cython.bint = bool(_cell(closure[i])) and bool(_cell(closure[j]))
    # the identity map of turbosession's own class: the loop reads its dict
    i = at[3]
    identity_map = _cell(closure[i])
    persistent_evt = _cell(closure[_at(at, 10)])
    return _new_loader(
        stock, row_setup, _cell(closure[_at(at, 0)]), _cell(closure[_at(at, 1)]),
        identity_map, type(identity_map) is map_class, _cell(closure[_at(at, 4)]),
        _cell(closure[_at(at, 5)]), _cell(closure[_at(at, 6)]), _cell(closure[_at(at, 7)]),
        _cell(closure[_at(at, 8)]) if row_setup.per_query else None,
        _cell(closure[_at(at, 9)]), persistent_evt, _cell(closure[_at(at, 11)]),
        # assigned only when there are listeners
        _cell(closure[_at(at, _ALWAYS_ASSIGNED)]) if persistent_evt else None,
        hits_to_stock,
    )


def loader_cached(
    setup, mapper, context, session, path, map_class, stock_factory, stock_args: tuple,
    at: tuple,
) -> object:
    """For one execution, the ``RowLoader`` built from the compiled
    statement's ``RowSetup`` ``setup`` alone, without stock's
    ``_instance_processor``; or the reason (a key of ``turbosession.
    instances.SETUP_REASONS``) why this execution needs stock's closure
    first.

    Covered: a setup of the mapper as it is configured now (its memoized
    ``_prop_set``), built for a row query (a primary-key getter), of an
    entity whose populators are all the cached ones (no property sets up
    its row processor against each execution: stock's ``todo`` is empty,
    so its ``_instance_processor`` has no side effect to keep); a mapper
    without a polymorphic map; no populate_existing (nor always_refresh), no
    version check against a version column, stock's instrumentation
    functions.  The values stock's function computes for each execution
    are computed here as it computes them, in its order; its closure, for
    the rows the loop hands to it, is made by ``stock_factory(*stock_args)``
    on the first such row (``at``: the positions of CELLS in it).
    """
    row_setup: RowSetup = setup
    if row_setup.source is not mapper._prop_set:
        return "setup_reconfigured"
    if row_setup.per_query and not row_setup.lazy_only:
        return "setup_per_query"
    if row_setup.lazy_only and context.load_options._is_user_refresh:
        # the lazy loader's immediate load of a refreshed attribute
        return "setup_options"
    if row_setup.primary_key_getter is None or mapper.polymorphic_map:
        return "setup_shape"
    if context.populate_existing or mapper.always_refresh:
        return "setup_options"
    if context.version_check and mapper.version_id_col is not None:
        return "setup_options"
    if (
        orm_attributes.instance_state is not _instance_state
        or orm_attributes.instance_dict is not _instance_dict
    ):
        return "setup_options"
    compile_state = context.compile_state
    current_path = compile_state.current_path
    load_path = current_path + path if current_path.path else path
    identity_map = session.identity_map
    dispatch = mapper.class_manager.dispatch
    load_evt = bool(dispatch.load)
    # read as stock reads it (the dispatcher keeps what a first read makes)
    dispatch.refresh
    loaded_as_persistent = session.dispatch.loaded_as_persistent
    persistent_evt = bool(loaded_as_persistent)
    post_load = context.post_load_paths.get(load_path.path)
    loader: RowLoader = _new_loader(
        None, row_setup, context, context.identity_token, identity_map,
        type(identity_map) is map_class, session.hash_key, context.runid, load_path,
        context.propagated_loader_options, None, load_evt, persistent_evt, post_load,
        loaded_as_persistent if persistent_evt else None, False,
    )
    loader.stock_factory = stock_factory
    loader.stock_args = stock_args
    loader.stock_at = at
    return loader

_rows_fast = cython.declare(cython.Py_ssize_t, 0)
_rows_stock = cython.declare(cython.Py_ssize_t, 0)
_collections_fast = cython.declare(cython.Py_ssize_t, 0)
_collections_stock = cython.declare(dict, {})
_scalars_fast = cython.declare(cython.Py_ssize_t, 0)

COLLECTION_FALLBACK_REASONS = {
    "joined_unprepared": "a later row of a joined eager load for a parent whose "
    "collection stock's new-row populator did not prepare in this query (a "
    "self-referential load meeting an object in two column sets): stock's populator",
    "joined_new": "the first row of a joined eager load's parent whose "
    "collection stock's init_state_collection is to make (one already in the "
    "object's dict, an \"empty\" collection handed out before, another state or "
    "attribute class, a patched function): stock's populator",
    "collection_class": "a collection other than an InstrumentedList appended to "
    "by stock's instrumented list.append (a set, a dict, a custom class): "
    "appended through its adapter's appender",
    "collection_impl": "a selectin-loaded attribute whose implementation (or its "
    "set_committed_value) is not stock's collection attribute's: stock's "
    "set_committed_value",
    "scalar_impl": "a uselist=False relationship loaded by selectin whose "
    "attribute implementation (or its set_committed_value) is not stock's "
    "object attribute's: stock's set_committed_value",
}


def counts():
    """``{"rows": n, "rows_to_stock": n, "collections": n, "scalars": n,
    "collections_to_stock": {reason: n}}``: rows this loop handled, and rows it
    handed to stock's closure; the eager loaders' collection steps (a joined
    load's later row appending its child, a selectin load's collection set
    for a parent) done here straight on the list; their scalar steps (a
    joined many-to-one's object stored for a row, a selectin-loaded
    ``uselist=False`` value set as committed) done here; and the steps of
    either kind done through stock's code or the collection's own appender,
    by reason (``COLLECTION_FALLBACK_REASONS``), so far."""
    return {
        "rows": _rows_fast,
        "rows_to_stock": _rows_stock,
        "collections": _collections_fast,
        "scalars": _scalars_fast,
        "collections_to_stock": dict(_collections_stock),
    }


def reset_counts():
    global _rows_fast, _rows_stock, _collections_fast, _scalars_fast
    _rows_fast = 0
    _rows_stock = 0
    _collections_fast = 0
    _scalars_fast = 0
    _collections_stock.clear()


@cython.cfunc
def _collection_to_stock(reason: str) -> cython.void:
    _collections_stock[reason] = _collections_stock.get(reason, 0) + 1


@cython.cclass
class RowSetup:
    """What ``RowLoader`` reads of one query entity's setup that is the same
    for every execution of a compiled statement: built once from stock's
    cached row getters (``getters``, which stock keeps in the compile state's
    attributes per mapper and path) and kept beside them (see
    ``turbosession.instances``).

    The populator lists are stock's cached ones, which are what every
    execution's populators hold when the entity has no per-execution
    properties (stock's ``todo``: relationships and other strategies that
    set up their row processor against each query context); with such
    properties (``per_query``) ``RowLoader`` reads each execution's own.
    """

    getters = cython.declare(object, visibility="readonly")
    primary_key_getter = cython.declare(object, visibility="readonly")
    identity_class = cython.declare(object)
    is_not_primary_key = cython.declare(object)
    manager = cython.declare(object)
    class_ = cython.declare(object)
    new_object = cython.declare(object)
    state_attr = cython.declare(str)
    per_query = cython.declare(cython.bint, visibility="readonly")
    lazy_only = cython.declare(cython.bint, visibility="readonly")
    quick = cython.declare(list)
    expired_keys = cython.declare(tuple)
    new_populators = cython.declare(list)
    existing_populators = cython.declare(list)
    has_eager = cython.declare(cython.bint)
    source = cython.declare(object, visibility="readonly")
    pk_positions = cython.declare(object)
    cached_quick = cython.declare(list)
    quick_positions = cython.declare(object)
    none_mode = cython.declare(cython.int)
    plain_new = cython.declare(cython.bint)
    state_in_dict = cython.declare(cython.bint)
    plain_dict = cython.declare(cython.bint)

    def __init__(self, getters, mapper, is_not_primary_key, state_attr, source, lazy_only):
        self.getters = getters
        self.primary_key_getter = getters["primary_key_getter"]
        # what a plain tuple row is read with (positions instead of getters)
        self.pk_positions = _pk_positions(self.primary_key_getter)
        self.cached_quick = getters["cached_populators"]["quick"]
        self.quick_positions = _quick_positions(self.cached_quick)
        self.none_mode = _none_mode(is_not_primary_key)
        self.identity_class = mapper._identity_class
        self.is_not_primary_key = is_not_primary_key
        manager = mapper.class_manager
        self.manager = manager
        self.class_ = manager.class_
        self.new_object = self.class_.__new__
        self.plain_new = _plain_new(self.class_)
        self.state_attr = state_attr
        # the state goes into the new instance's __dict__ as setattr puts it
        self.state_in_dict = _plain_attribute(self.class_, state_attr)
        self.plain_dict = _plain_dict(self.class_)
        # the mapper's memoized attribute this setup was built beside: a
        # reconfigured mapper has a new one, and the setup is rebuilt
        self.source = source
        self.per_query = bool(getters["todo"])
        # the per-execution properties are all class-level lazy loaders
        # without an option in this compiled statement: each execution's
        # populators are the cached ones (see turbosession.instances)
        self.lazy_only = self.per_query and lazy_only
        if not self.per_query or self.lazy_only:
            _read_populators(self, getters["cached_populators"])


@cython.cfunc
def _read_populators(target, populators: dict) -> cython.void:
    """The populator lists as ``RowLoader`` reads them, from stock's dict
    (cached or of one execution) into ``target`` (a RowSetup or RowLoader)."""
    # stock's lists, used as they are (nothing changes them after setup)
    quick = populators["quick"]
    # without populate_existing, an "expire" populator only adds to
    # expired_attributes, and only when its flag is set
    expire = populators["expire"]
    expired_keys = tuple([key for key, flag in expire if flag]) if expire else None
    new_populators = populators["new"]
    existing_populators = populators["existing"]
    has_eager = bool(populators["eager"])
    if isinstance(target, RowSetup):
        setup: RowSetup = target
        setup.quick = quick
        setup.expired_keys = expired_keys
        setup.new_populators = new_populators
        setup.existing_populators = existing_populators
        setup.has_eager = has_eager
    else:
        loader: RowLoader = target
        loader.quick = quick
        loader.expired_keys = expired_keys
        loader.new_populators = new_populators
        loader.existing_populators = existing_populators
        loader.has_eager = has_eager


@cython.cclass
class RowLoader:
    """One query entity's row processor: ``loader(row)`` is ``stock(row)``."""

    stock = cython.declare(object)
    context = cython.declare(object)
    identity_class = cython.declare(object)
    identity_token = cython.declare(object)
    primary_key_getter = cython.declare(object)
    identity_map = cython.declare(object)
    map_dict = cython.declare(dict)
    map_ref = cython.declare(object)
    is_not_primary_key = cython.declare(object)
    none_mode = cython.declare(cython.int)
    manager = cython.declare(object)
    class_ = cython.declare(object)
    new_object = cython.declare(object)
    plain_new = cython.declare(cython.bint)
    state_constructor = cython.declare(object)
    init_inline = cython.declare(cython.bint)
    state_attr = cython.declare(str)
    state_in_dict = cython.declare(cython.bint)
    plain_dict = cython.declare(cython.bint)
    killed_descr = cython.declare(object)
    session_id = cython.declare(object)
    runid = cython.declare(object)
    load_path = cython.declare(object)
    load_options = cython.declare(object)
    pk_slice = cython.declare(cython.bint)
    pk_start = cython.declare(cython.Py_ssize_t)
    pk_stop = cython.declare(cython.Py_ssize_t)
    pk_indexes = cython.declare(tuple)
    quick = cython.declare(list)
    quick_keys = cython.declare(tuple)
    quick_indexes = cython.declare(tuple)
    expired_keys = cython.declare(tuple)
    new_populators = cython.declare(list)
    existing_populators = cython.declare(list)
    has_eager = cython.declare(cython.bint)
    new_steps = cython.declare(list)
    existing_steps = cython.declare(list)
    load_evt = cython.declare(cython.bint)
    persistent_evt = cython.declare(cython.bint)
    loaded_as_persistent = cython.declare(object)
    post_load = cython.declare(object)
    hits_to_stock = cython.declare(cython.bint)
    setup = cython.declare(RowSetup, visibility="readonly")
    # without stock's closure (loader_cached): what makes it for the rows
    # handed to it
    stock_factory = cython.declare(object)
    stock_args = cython.declare(tuple)
    stock_at = cython.declare(tuple)

    @cython.cfunc
    def _to_stock(self, row) -> object:
        global _rows_stock
        _rows_stock += 1
        if self.stock is None:
            self.stock = self._make_stock()
        return self.stock(row)

    @cython.cfunc
    def _make_stock(self) -> object:
        """Stock's closure for a loader built from the cached setup alone:
        stock's ``_instance_processor`` with this entity's arguments (no side
        effects for an entity without per-execution properties, see
        ``loader_cached``), its cells of what can have changed since this
        execution was set up (the session's identity map after a close, a
        listener added, a post-load) set to what this loader read then, as
        stock's closure made then would hold them."""
        stock = self.stock_factory(*self.stock_args)
        closure: tuple = stock.__closure__
        at: tuple = self.stock_at
        closure[_at(at, 3)].cell_contents = self.identity_map
        closure[_at(at, 9)].cell_contents = self.load_evt
        closure[_at(at, 10)].cell_contents = self.persistent_evt
        if self.persistent_evt:
            closure[_at(at, _ALWAYS_ASSIGNED)].cell_contents = self.loaded_as_persistent
        closure[_at(at, 11)].cell_contents = self.post_load
        return stock

    @cython.cfunc
    def _primary_key(self, row) -> object:
        """``primary_key_getter(row)``; a plain tuple row is read by position."""
        if type(row) is not tuple:
            return self.primary_key_getter(row)
        values: tuple = row
        if self.pk_slice:
            if self.pk_stop > len(values):
                return self.primary_key_getter(row)
            pk: tuple = values[self.pk_start:self.pk_stop]
        else:
            indexes = self.pk_indexes
            if indexes is None:
                return self.primary_key_getter(row)
            pk = tuple([values[index] for index in indexes])
        if cython.compiled:
            # the key's values are database atoms: the collector's first
            # pass would untrack the tuple, it is untracked as it is made
            untrack_atoms(pk)
        return pk

    @cython.cfunc
    def _no_identity(self, pk) -> cython.bint:
        """``is_not_primary_key(pk)``: stock's ``_none_set.issuperset`` or
        ``.intersection`` as a loop over the values (no temporary set)."""
        none_mode: cython.int = self.none_mode
        if none_mode == _NONE_CALL:
            return bool(self.is_not_primary_key(pk))
        none_set = _NONE_SET
        plain: cython.bint = _PLAIN_NOT_NONE
        if none_mode == _NONE_ALL:
            for value in pk:
                if plain and (type(value) is int or type(value) is str):
                    return False
                if value not in none_set:
                    return False
            return True
        for value in pk:
            if plain and (type(value) is int or type(value) is str):
                continue
            if value in none_set:
                return True
        return False

    @cython.cfunc
    def _new_object(self) -> object:
        """A new instance with its InstanceState, as ``manager.new_instance()``
        does it, the state set by ``setattr``."""
        if self.state_constructor is None:
            # the class's first instance: stock's, which sets up the state
            # constructor (first_init)
            instance = self.manager.new_instance()
            self.state_constructor = self.manager.__dict__.get("_state_constructor")
            self.init_inline = _init_is_known(self.state_constructor)
            return instance
        instance = self._allocate()
        setattr(instance, self.state_attr, self._new_state(instance))
        return instance

    @cython.cfunc
    def _allocate(self) -> object:
        """``class_.__new__(class_)``.  Compiled, a class whose ``__new__`` is
        ``object.__new__`` is allocated through its ``tp_new`` slot (what
        ``object.__new__(cls)`` calls after its argument checks) rather than
        a Python call."""
        if cython.compiled and self.plain_new:
            return cython.cast(cython.pointer(PyTypeObject), self.class_).tp_new(
                self.class_, cython.cast(cython.pointer(PyObject), _EMPTY_TUPLE), cython.NULL
            )
        return self.new_object(self.class_)

    @cython.cfunc
    def _new_state(self, instance) -> object:
        """``state_constructor(instance, manager)``.

        Compiled, when the state class is stock's ``InstanceState`` with the
        ``__init__`` this version knows (``_STATE_INIT_NAMES``), the state's
        five slots are stored here in that order, at their offsets (as their
        member descriptors store them), rather than through a Python call of
        ``__init__``: that call was about 15% of the instructions per row;
        the weak reference's callback, the bound ``_cleanup``, is made
        directly rather than looked up on the state.
        """
        if cython.compiled and self.init_inline:
            # InstanceState.__new__ is object.__new__ (see _KNOWN_INIT)
            state = cython.cast(cython.pointer(PyTypeObject), self.state_constructor).tp_new(
                self.state_constructor, cython.cast(cython.pointer(PyObject), _EMPTY_TUPLE),
                cython.NULL,
            )
            store_slot(state, _CLASS_SLOT, self.class_)
            store_slot(state, _MANAGER_SLOT, self.manager)
            # ``state._cleanup`` is this bound method (the state is new: no
            # attribute of its own shadows the class's function)
            store_slot(
                state, _OBJ_SLOT,
                PyWeakref_NewRef(instance, PyMethod_New(_STATE_CLEANUP, state)),
            )
            store_slot(state, _COMMITTED_SLOT, {})
            expired = set()
            # a set of attribute names never holds what could lead back to
            # it: left out of the collector's young generation, as CPython
            # leaves out a dict or tuple of atoms (one of the seven objects
            # a loaded object leaves tracked, fewer and shorter collections)
            PyObject_GC_UnTrack(cython.cast(cython.pointer(PyObject), expired))
            store_slot(state, _EXPIRED_SLOT, expired)
            return state
        return self.state_constructor(instance, self.manager)

    @cython.cfunc
    def _map_killed(self, identity_map) -> cython.bint:
        """``identity_map._killed`` of turbosession's own map; compiled,
        through its getset descriptor's C getter (no attribute lookup)."""
        if cython.compiled and self.killed_descr is not None:
            return bool(getset_get(self.killed_descr, identity_map))
        return bool(identity_map._killed)

    @cython.cfunc
    def _later_row(self, row, instance, state) -> object:
        """A later row of an object this load created or first met: what
        stock's ``_populate_full`` does for it (``isnew`` false) when the
        object is at this load path, its "existing" populators in order
        (the joined eager loaders' collection appends through
        ``JoinedCollection``), then the post-load."""
        global _rows_fast
        if state.load_path is not self.load_path:
            # stock compares the paths and may move the state's
            return self._to_stock(row)
        _run_steps(self.existing_steps, state, instance.__dict__, row)
        if self.post_load is not None:
            self.post_load.add_state(state, True)
        _rows_fast += 1
        return instance

    def __call__(self, row):
        return self.load(row)

    @cython.cfunc
    def load(self, row) -> object:
        """The row's object (``__call__``); called directly by the joined
        collection populators of a parent's RowLoader."""
        global _rows_fast
        key_hash: cython.Py_hash_t = 0
        pk = self._primary_key(row)
        identitykey = (self.identity_class, pk, self.identity_token)
        map_dict = self.map_dict
        if map_dict is not None:
            # the identity map's get() on its dict: the object of the state
            # under that key, None once it has been collected; compiled, the
            # key (a tuple, which does not keep its hash) is hashed once for
            # this lookup and the insertion below
            if cython.compiled:
                key_hash = hash(identitykey)
                found = _PyDict_GetItem_KnownHash(map_dict, identitykey, key_hash)
                present = None if found is cython.NULL else cython.cast(object, found)
            else:
                present = map_dict.get(identitykey)
            instance = None if present is None else present.obj()
        else:
            instance = self.identity_map.get(identitykey)
        if instance is not None:
            if self.hits_to_stock:
                return self._to_stock(row)
            state = getattr(instance, self.state_attr)
            if state.runid == self.runid:
                # a later row of an object of this load
                return self._later_row(row, instance, state)
            if self.has_eager:
                # eager loaders into an object loaded before
                return self._to_stock(row)
            context = self.context
            if state.unloaded or state in context.partials:
                # attributes to load into an object already present
                return self._to_stock(row)
            if self.post_load is not None and context.invoke_all_eagers:
                self.post_load.add_state(state, False)
            _rows_fast += 1
            return instance

        if self._no_identity(pk):
            # NULLs in the primary key: no object for this row
            return None

        if self.state_in_dict and self.state_constructor is not None:
            # the state stored in the instance's __dict__ as setattr stores it
            instance = self._allocate()
            if cython.compiled and self.plain_dict:
                # where the class's __dict__ descriptor reads it (made
                # from the new instance's inline values, as it makes it)
                dict_ = instance_dict(instance)
                if dict_ is None:
                    dict_ = instance.__dict__
            else:
                dict_ = instance.__dict__
            state = self._new_state(instance)
            dict_[self.state_attr] = state
        else:
            instance = self._new_object()
            dict_ = instance.__dict__
            state = getattr(instance, self.state_attr)
        identity_map = self.identity_map
        # set as attributes, not through the state's __dict__: InstanceState
        # keeps them in its inline values until something asks for __dict__
        state.key = identitykey
        state.identity_token = self.identity_token
        state.session_id = self.session_id
        if map_dict is not None and not self._map_killed(identity_map):
            # the identity map's _add_unpresent, on its dict
            if cython.compiled:
                _PyDict_SetItem_KnownHash(map_dict, identitykey, state, key_hash)
            else:
                map_dict[identitykey] = state
            state._instance_dict = self.map_ref
        else:
            identity_map._add_unpresent(state, identitykey)
        state.load_options = self.load_options
        state.load_path = self.load_path
        state.runid = self.runid

        i: cython.Py_ssize_t
        index: cython.Py_ssize_t
        quick_indexes = self.quick_indexes
        if quick_indexes is not None and type(row) is tuple and type(dict_) is dict:
            values: tuple = row
            # compiled, stored with dict's own setitem (no mapping dispatch)
            new_dict: dict = dict_
            quick_keys = self.quick_keys
            for i in range(len(quick_indexes)):
                index = quick_indexes[i]
                new_dict[quick_keys[i]] = values[index]
        else:
            for key, getter in self.quick:
                dict_[key] = getter(row)
        if self.expired_keys:
            expired = state.expired_attributes
            for key in self.expired_keys:
                expired.add(key)
        new_populators = self.new_populators
        if new_populators:
            _run_steps(self.new_steps, state, dict_, row)

        if self.load_evt or self.persistent_evt:
            existing_runid = state.runid
            if self.load_evt:
                state.manager.dispatch.load(state, self.context)
                if state.runid != existing_runid:
                    _warn_for_runid_changed(state)
            if self.persistent_evt:
                self.loaded_as_persistent(self.context.session, state)
                if state.runid != existing_runid:
                    _warn_for_runid_changed(state)
            if state.modified:
                state._commit_all(dict_, identity_map)
        elif new_populators and state.modified:
            # only a "new" populator or a listener can have modified the
            # state built above
            state._commit_all(dict_, identity_map)
        if self.post_load is not None:
            self.post_load.add_state(state, True)
        _rows_fast += 1
        return instance


@cython.cfunc
def _new_loader(
    stock, setup: RowSetup, context, identity_token, identity_map, map_is_own: cython.bint,
    session_id, runid, load_path, load_options, populators, load_evt, persistent_evt,
    post_load, loaded_as_persistent, hits_to_stock: cython.bint,
) -> RowLoader:
    """A ``RowLoader`` of one execution: ``stock``, stock's ``_instance``
    closure (None when built from the cached setup alone), the values stock
    computes for each execution, and ``populators``, that execution's
    populator dict (read only for a setup with per-execution properties);
    what does not change between executions comes from ``setup``;
    ``map_is_own``: the identity map is turbosession's own class, whose dict
    and weak reference are read here (they never change)."""
    self: RowLoader = RowLoader.__new__(RowLoader)
    self.stock = stock
    self.setup = setup
    self.context = context
    self.identity_token = identity_token
    self.primary_key_getter = setup.primary_key_getter
    self.identity_map = identity_map
    if map_is_own:
        self.map_dict = identity_map._dict
        self.map_ref = identity_map._wr
        self.killed_descr = _killed_descriptor(type(identity_map))
    self.session_id = session_id
    self.runid = runid
    self.load_path = load_path
    self.load_options = load_options
    quick_positions = setup.quick_positions
    if populators is not None:
        _read_populators(self, populators)
        if not _same_list(self.quick, setup.cached_quick):
            quick_positions = _quick_positions(self.quick)
    else:
        self.quick = setup.quick
        self.expired_keys = setup.expired_keys
        self.new_populators = setup.new_populators
        self.existing_populators = setup.existing_populators
        self.has_eager = setup.has_eager
    self.new_steps = (
        _joined_steps(self.new_populators, True) if self.new_populators else _NO_STEPS
    )
    self.existing_steps = (
        _joined_steps(self.existing_populators, False) if self.existing_populators else _NO_STEPS
    )
    if quick_positions is not None:
        self.quick_keys, self.quick_indexes = quick_positions
    self.load_evt = load_evt
    self.persistent_evt = persistent_evt
    self.post_load = post_load
    self.loaded_as_persistent = loaded_as_persistent
    self.identity_class = setup.identity_class
    self.is_not_primary_key = setup.is_not_primary_key
    self.none_mode = setup.none_mode
    pk_positions = setup.pk_positions
    if pk_positions is not None:
        self.pk_start, self.pk_stop, self.pk_indexes = pk_positions
        self.pk_slice = self.pk_indexes is None
    manager = setup.manager
    self.manager = manager
    self.class_ = setup.class_
    self.new_object = setup.new_object
    self.plain_new = setup.plain_new
    # a memoized property that fires first_init when first read: read it
    # only once stock's new_instance() has (see _new_object)
    self.state_constructor = manager.__dict__.get("_state_constructor")
    self.init_inline = _init_is_known(self.state_constructor)
    self.state_attr = setup.state_attr
    self.state_in_dict = setup.state_in_dict
    self.plain_dict = setup.plain_dict
    self.hits_to_stock = hits_to_stock
    return self


@cython.cfunc
def _same_list(quick: list, cached: list) -> cython.bint:
    """Whether one execution's "quick" populators are the cached ones (the
    same items: stock copies the cached list for each execution)."""
    i: cython.Py_ssize_t
    if len(quick) != len(cached):
        return False
    for i in range(len(quick)):
        if quick[i] is not cached[i]:
            return False
    return True


def _nested_code(function, name: str, freevars: tuple = ()):
    """The code of the first function named ``name`` defined in
    ``function``'s body whose cells include ``freevars``, or None."""
    for const in function.__code__.co_consts:
        if getattr(const, "co_name", None) == name and set(freevars) <= set(
            getattr(const, "co_freevars", ())
        ):
            return const
    return None


# stock's populator for the later rows of a joined eager load of a
# collection (_JoinedLoader._create_collection_loader), with the cells read
# from it
_JOINED_EXISTING_CODE = _nested_code(
    strategies._JoinedLoader._create_collection_loader, "load_collection_from_joined_existing_row"
)
_JOINED_KNOWN = cython.declare(
    cython.bint,
    _JOINED_EXISTING_CODE is not None
    and sorted(_JOINED_EXISTING_CODE.co_freevars) == ["_instance", "context", "key"],
)
_JOINED_CELLS = (
    {name: i for i, name in enumerate(_JOINED_EXISTING_CODE.co_freevars)}
    if _JOINED_KNOWN else {}
)
# its populator for a parent's first row (the collection initialised, the
# first child appended), whose cells are the same
_JOINED_NEW_CODE = _nested_code(
    strategies._JoinedLoader._create_collection_loader, "load_collection_from_joined_new_row"
)
_JOINED_NEW_KNOWN = cython.declare(
    cython.bint,
    _JOINED_KNOWN
    and _JOINED_NEW_CODE is not None
    and _JOINED_NEW_CODE.co_freevars == _JOINED_EXISTING_CODE.co_freevars,
)


# stock's populators of a joined eager load of a scalar (a many-to-one, a
# uselist=False one-to-one: _JoinedLoader._create_scalar_loader) for a new
# and a later row of the parent; their cells are (_instance, key[, self])
_SCALAR_NEW_CODE = _nested_code(
    strategies._JoinedLoader._create_scalar_loader, "load_scalar_from_joined_new_row"
)
_SCALAR_EXISTING_CODE = _nested_code(
    strategies._JoinedLoader._create_scalar_loader, "load_scalar_from_joined_existing_row"
)
_SCALAR_KNOWN = cython.declare(
    cython.bint,
    _SCALAR_NEW_CODE is not None
    and _SCALAR_EXISTING_CODE is not None
    and _SCALAR_NEW_CODE.co_freevars == ("_instance", "key")
    and _SCALAR_EXISTING_CODE.co_freevars == ("_instance", "key", "self")
    and _SCALAR_EXISTING_CODE.co_names == ("util", "warn"),
)


def _list_appender_known() -> cython.bint:
    """Whether ``InstrumentedList._sa_appender`` is the instrumented
    ``list.append`` of stock's ``_list_decorators``: called with
    ``_sa_initiator=False`` (how CollectionAdapter's ``append_without_event``
    and ``append_multiple_without_event`` call it) it fires nothing and is
    ``list.append``."""
    appender = orm_collections.InstrumentedList.__dict__.get("_sa_appender")
    code = getattr(appender, "__code__", None)
    decorator = _nested_code(orm_collections._list_decorators, "append")
    if code is None or decorator is None or code not in decorator.co_consts:
        return False
    return code.co_freevars == ("fn",) and appender.__closure__[0].cell_contents is list.append


_LIST_APPENDER = cython.declare(
    object, orm_collections.InstrumentedList.__dict__.get("_sa_appender")
)
_LIST_APPENDER_KNOWN = cython.declare(cython.bint, _list_appender_known())
_InstrumentedList = cython.declare(object, orm_collections.InstrumentedList)
_CollectionAdapter = cython.declare(object, orm_collections.CollectionAdapter)
_APPEND_WITHOUT_EVENT = cython.declare(
    object, orm_collections.CollectionAdapter.append_without_event
)
_MethodType = cython.declare(object, types.MethodType)
_UniqueAppender = cython.declare(object, UniqueAppender)
_MISSING = cython.declare(object, object())


@cython.cfunc
def _plain_list_of(adapter) -> object:
    """The ``InstrumentedList`` a CollectionAdapter adapts when appending to
    it without events is ``list.append`` (the adapter not "empty", stock's
    instrumented appender); None otherwise."""
    if not _LIST_APPENDER_KNOWN or type(adapter) is not _CollectionAdapter:
        return None
    if adapter.empty:
        return None
    data = adapter._data()
    if type(data) is not _InstrumentedList:
        return None
    if _InstrumentedList._sa_appender is not _LIST_APPENDER:
        return None
    return data


@cython.cfunc
def _unique_append(result_list, item) -> cython.void:
    """``result_list.append(item)`` for stock's ``UniqueAppender`` over a
    collection adapter's ``append_without_event``: ``item`` appended unless
    an item of the same ``id`` was, straight onto the list when that is
    what the adapter's appender does."""
    global _collections_fast
    if type(result_list) is not _UniqueAppender:
        _collection_to_stock("collection_class")
        result_list.append(item)
        return
    unique: dict = result_list._unique
    identity = id(item)
    if identity in unique:
        return
    appender = result_list._data_appender
    if type(appender) is _MethodType and appender.__func__ is _APPEND_WITHOUT_EVENT:
        data = _plain_list_of(appender.__self__)
        if data is not None:
            # an InstrumentedList is a list: list's own append, without the
            # instrumented one's Python frames
            if cython.compiled:
                target = cython.cast(list, data)
                target.append(item)
            else:
                list.append(data, item)
            unique[identity] = True
            _collections_fast += 1
            return
    _collection_to_stock("collection_class")
    appender(item)
    unique[identity] = True


# what stock's joined collection loader and selectin loader call to make a
# collection, as this SQLAlchemy has them: while they are these, the
# collection is made here as they make it
_STOCK_INIT_STATE_COLLECTION = cython.declare(object, orm_attributes.init_state_collection)
_STOCK_INITIALIZE_COLLECTION = cython.declare(
    object, orm_attributes._CollectionAttributeImpl._initialize_collection
)
_STOCK_DEFAULT_VALUE = cython.declare(
    object, orm_attributes._CollectionAttributeImpl._default_value
)
_STOCK_GET_COLLECTION = cython.declare(
    object, orm_attributes._CollectionAttributeImpl.get_collection
)
_STOCK_MANAGER_INITIALIZE = cython.declare(
    object, orm_instrumentation.ClassManager.initialize_collection
)
_STOCK_SET_EMPTY = cython.declare(object, orm_collections.CollectionAdapter._set_empty)
_STOCK_RESET_EMPTY = cython.declare(object, orm_collections.CollectionAdapter._reset_empty)
_STOCK_UNIQUE_INIT = cython.declare(object, UniqueAppender.__init__)
_STOCK_COMMIT = cython.declare(object, InstanceState._commit)
_InstanceState = cython.declare(object, InstanceState)
_strategies_util = cython.declare(object, strategies.util)


def _memo_descriptor(name):
    """InstanceState's memoized property ``name`` when it is SQLAlchemy's
    ``memoized_property`` of a function that returns a new empty dict (what
    ``_memo_dict`` stores in its place); None otherwise."""
    descr = InstanceState.__dict__.get(name)
    if type(descr) is not util.memoized_property or descr.__name__ != name:
        return None
    code = descr.fget.__code__
    if code.co_names or code.co_argcount != 1:
        return None
    made = descr.fget(None)
    return descr if type(made) is dict and not made else None


_EMPTY_COLLECTIONS = cython.declare(object, _memo_descriptor("_empty_collections"))
_PENDING_MUTATIONS = cython.declare(object, _memo_descriptor("_pending_mutations"))
_MEMO_GET = cython.declare(object, util.memoized_property.__get__)


@cython.cfunc
@cython.inline
def _class_value(cls, name: str) -> object:
    """What ``cls``'s MRO holds under ``name`` as stored (a descriptor is not
    called), None when nothing; compiled, CPython's cached type lookup."""
    if cython.compiled:
        return class_lookup(cls, name)
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return None


@cython.cfunc
def _memo_dict(state, name: str, descr) -> object:
    """``getattr(state, name)`` for InstanceState's memoized empty dict
    ``descr`` (``_memo_descriptor``): the state's own entry, else a new dict
    stored in the state's ``__dict__`` as the property's ``__get__`` stores
    it (without its two Python calls); any other state or class value is
    read by ``getattr``."""
    own: dict = state.__dict__
    found = own.get(name, _MISSING)
    if found is not _MISSING:
        return found
    if (
        descr is not None
        and type(state) is _InstanceState
        and _class_value(_InstanceState, name) is descr
        and _class_value(type(descr), "__get__") is _MEMO_GET
    ):
        found = {}
        own[name] = found
        return found
    return getattr(state, name)


@cython.cfunc
def _commit_key(state, dict_, key) -> cython.void:
    """``state._commit(dict_, [key])``: for stock's InstanceState and its
    method, what that method does for one key (the key's committed value
    dropped, ``expired`` false, the key no longer expired once loaded, its
    per-object callable dropped once loaded)."""
    if type(state) is not _InstanceState or _InstanceState._commit is not _STOCK_COMMIT:
        state._commit(dict_, [key])
        return
    state.committed_state.pop(key, None)
    state.expired = False
    loaded: cython.bint = key in dict_
    if loaded:
        state.expired_attributes.discard(key)
    callables = state.callables
    if callables and loaded and key in callables:
        del callables[key]


# CollectionAdapter.__init__ in SQLAlchemy 2.1 sets attr, _key (the
# attribute's key), _data (a weak reference to the collection), owner_state,
# the collection's _sa_adapter, invalidated and empty: _new_adapter does it
# itself while the adapter's class has this __init__
_ADAPTER_INIT_NAMES = (
    "attr", "key", "_key", "weakref", "ref", "_data", "owner_state", "_sa_adapter",
    "invalidated", "empty",
)
_KNOWN_ADAPTER_INIT = cython.declare(
    object,
    orm_collections.CollectionAdapter.__init__
    if orm_collections.CollectionAdapter.__init__.__code__.co_names == _ADAPTER_INIT_NAMES
    and orm_collections.CollectionAdapter.__new__ is object.__new__
    and orm_collections.CollectionAdapter.__setattr__ is object.__setattr__
    else None,
)


@cython.cfunc
def _new_adapter(impl, state, user_data) -> object:
    """``CollectionAdapter(impl, state, user_data)``: while the class has the
    ``__init__`` described above, the same attributes stored in the same
    order without its Python frame (the weak reference made as
    ``weakref.ref(user_data)`` makes it)."""
    if _KNOWN_ADAPTER_INIT is None or _CollectionAdapter.__init__ is not _KNOWN_ADAPTER_INIT:
        return _CollectionAdapter(impl, state, user_data)
    adapter = _CollectionAdapter.__new__(_CollectionAdapter)
    adapter.attr = impl
    adapter._key = impl.key
    if cython.compiled:
        adapter._data = PyWeakref_NewRef(user_data, None)
    else:
        adapter._data = weakref.ref(user_data)
    adapter.owner_state = state
    user_data._sa_adapter = adapter
    adapter.invalidated = False
    adapter.empty = False
    return adapter


@cython.cfunc
def _new_collection(impl, state) -> tuple:
    """``impl._initialize_collection(state)`` for stock's collection
    attribute and class manager: the attribute's collection factory called,
    its ``CollectionAdapter`` made, and the ``init_collection`` event fired
    when it has listeners (without any, stock's call of it does nothing)."""
    manager = state.manager
    if (
        type(impl) is not _CollectionAttributeImpl
        or _CollectionAttributeImpl._initialize_collection is not _STOCK_INITIALIZE_COLLECTION
        or type(manager).initialize_collection is not _STOCK_MANAGER_INITIALIZE
    ):
        return impl._initialize_collection(state)
    user_data = impl.collection_factory()
    adapter = _new_adapter(impl, state, user_data)
    listeners = impl.dispatch.init_collection
    if _has_listeners(listeners):
        listeners(state, user_data, adapter)
    return (adapter, user_data)


@cython.cfunc
def _joined_collection(state, dict_, key) -> object:
    """For a new object's state, what stock's ``attributes.
    init_state_collection(state, dict_, key)`` returns (the adapter of the
    collection it puts in the object's dict), done as it does it: its
    ``_default_value`` (the state's memoized empty collections read, a new
    collection made), ``_set_empty``, ``get_collection`` and ``_reset_empty``
    (the collection through the empty collections into the dict).  None,
    having changed nothing that stock would not change first, when stock's
    function is to run: a collection already in the dict (stock disposes
    of it), another state or attribute class, a patched function."""
    if key in dict_ or type(state) is not _InstanceState:
        return None
    if (
        orm_attributes.init_state_collection is not _STOCK_INIT_STATE_COLLECTION
        or _CollectionAttributeImpl._default_value is not _STOCK_DEFAULT_VALUE
        or _CollectionAttributeImpl.get_collection is not _STOCK_GET_COLLECTION
        or _CollectionAdapter._set_empty is not _STOCK_SET_EMPTY
        or _CollectionAdapter._reset_empty is not _STOCK_RESET_EMPTY
    ):
        return None
    impl = state.manager[key].impl
    if type(impl) is not _CollectionAttributeImpl:
        return None
    empty = _memo_dict(state, "_empty_collections", _EMPTY_COLLECTIONS)
    if key in empty:
        # an "empty" collection handed out before: stock's reuses it
        return None
    adapter, user_data = _new_collection(impl, state)
    # _set_empty then _reset_empty: the adapter is not empty afterwards and
    # the collection has passed through the empty collections to the dict
    dict_[key] = user_data
    return adapter


@cython.cfunc
def _new_unique_appender(adapter) -> object:
    """``util.UniqueAppender(adapter, "append_without_event")`` as stock's
    joined loader makes it; its three slots set here while its ``__init__``
    is stock's."""
    if (
        _strategies_util.UniqueAppender is not _UniqueAppender
        or _UniqueAppender.__init__ is not _STOCK_UNIQUE_INIT
    ):
        return _strategies_util.UniqueAppender(adapter, "append_without_event")
    appender = _UniqueAppender.__new__(_UniqueAppender)
    appender.data = adapter
    appender._unique = {}
    appender._data_appender = adapter.append_without_event
    return appender


@cython.cclass
class JoinedCollection:
    """Stock's populators of one joined eager load of a collection, from
    either closure (their cells are the same).

    For a parent's first row (``new``, ``load_collection_from_joined_new_row``)
    the parent's collection is initialised as stock's ``init_state_collection``
    does it (``_joined_collection``), its ``UniqueAppender`` kept in the query
    context, and the row's child (its ``_instance``, turbosession's RowLoader
    when it took the loop) appended; a collection stock's function is to
    make goes to stock's populator.  For the later rows
    (``load_collection_from_joined_existing_row``) the row's child is
    appended to the parent's ``UniqueAppender`` kept in the query context;
    a parent without one (a self-referential eager load meeting an object
    in two column sets) goes to stock's populator, which sets it up."""

    stock = cython.declare(object)
    key = cython.declare(object)
    context = cython.declare(object)
    instance_fn = cython.declare(object)
    new = cython.declare(cython.bint)

    def __init__(self, stock, new):
        cells = stock.__closure__
        self.stock = stock
        self.key = cells[_JOINED_CELLS["key"]].cell_contents
        self.context = cells[_JOINED_CELLS["context"]].cell_contents
        self.instance_fn = cells[_JOINED_CELLS["_instance"]].cell_contents
        self.new = new

    @cython.cfunc
    def populate(self, state, dict_, row) -> object:
        global _collections_fast
        attributes = self.context.attributes
        if type(attributes) is not dict:
            _collection_to_stock("joined_new" if self.new else "joined_unprepared")
            return self.stock(state, dict_, row)
        found: dict = attributes
        if self.new:
            adapter = _joined_collection(state, dict_, self.key)
            if adapter is None:
                _collection_to_stock("joined_new")
                return self.stock(state, dict_, row)
            result_list = _new_unique_appender(adapter)
            found[(state, self.key)] = result_list
            _collections_fast += 1
        else:
            result_list = found.get((state, self.key), _MISSING)
            if result_list is _MISSING:
                _collection_to_stock("joined_unprepared")
                return self.stock(state, dict_, row)
        instance_fn = self.instance_fn
        if type(instance_fn) is RowLoader:
            loader: RowLoader = instance_fn
            instance = loader.load(row)
        else:
            instance = instance_fn(row)
        if instance is not None:
            _unique_append(result_list, instance)
        return None


@cython.cclass
class JoinedScalar:
    """Stock's populators of one joined eager load of a scalar (a
    many-to-one, a ``uselist=False`` one-to-one), from either closure.

    For a parent's first row (``new``, ``load_scalar_from_joined_new_row``)
    the row's related object (its ``_instance``, turbosession's RowLoader
    when it took the loop, called without a Python call; None for a row
    without one) is stored in the parent's dict, bypassing the attribute's
    events as stock's does.  For a later row
    (``load_scalar_from_joined_existing_row``) the row's object is made or
    found the same way (so that its own eager loads descend), stored when
    the parent's dict has none, and stock's warning given when it holds
    another object."""

    key = cython.declare(object)
    instance_fn = cython.declare(object)
    owner = cython.declare(object)
    new = cython.declare(cython.bint)

    def __init__(self, stock, new):
        cells = stock.__closure__
        # the cells in the order _SCALAR_KNOWN checked
        self.instance_fn = cells[0].cell_contents
        self.key = cells[1].cell_contents
        self.owner = None if new else cells[2].cell_contents
        self.new = new

    @cython.cfunc
    def populate(self, state, dict_, row) -> object:
        global _scalars_fast
        related = _process(self.instance_fn, row)
        key = self.key
        if self.new:
            dict_[key] = related
        elif key in dict_:
            if related is not dict_[key]:
                _strategies_util.warn(
                    "Multiple rows returned with "
                    "uselist=False for eagerly-loaded attribute '%s' " % self.owner
                )
        else:
            dict_[key] = related
        _scalars_fast += 1
        return None


def _joined_steps(populators: list, new: cython.bint) -> list:
    """The "new" (``new``) or "existing" populators as ``RowLoader`` runs
    them (``_run_steps``): stock's joined-collection populator as a
    ``JoinedCollection``, its joined-scalar populator as a ``JoinedScalar``,
    any other as its ``(key, populator)`` pair."""
    code = _JOINED_NEW_CODE if new else _JOINED_EXISTING_CODE
    known: cython.bint = _JOINED_NEW_KNOWN if new else _JOINED_KNOWN
    scalar_code = _SCALAR_NEW_CODE if new else _SCALAR_EXISTING_CODE
    steps = []
    for item in populators:
        populator_code = getattr(item[1], "__code__", None)
        if known and populator_code is code:
            steps.append(JoinedCollection(item[1], new))
        elif _SCALAR_KNOWN and populator_code is scalar_code:
            steps.append(JoinedScalar(item[1], new))
        else:
            steps.append(item)
    return steps


@cython.cfunc
def _run_steps(steps: list, state, dict_, row) -> cython.void:
    """Each populator of ``steps`` (``_joined_steps``) in order."""
    step: JoinedCollection
    scalar: JoinedScalar
    for item in steps:
        if type(item) is JoinedScalar:
            scalar = item
            scalar.populate(state, dict_, row)
        elif type(item) is JoinedCollection:
            step = item
            step.populate(state, dict_, row)
        else:
            key, populator = item
            populator(state, dict_, row)


_CollectionAttributeImpl = cython.declare(object, orm_attributes._CollectionAttributeImpl)
_STOCK_SET_COMMITTED = cython.declare(
    object, orm_attributes._CollectionAttributeImpl.set_committed_value
)


@cython.cfunc
def _set_committed_collection(impl, state, dict_, value) -> object:
    """``impl.set_committed_value(state, dict_, value)`` for stock's
    collection attribute: the new collection filled with ``value`` by
    ``list.extend`` when appending to it without events is ``list.append``
    (see ``_plain_list_of``), the rest as stock's method does it."""
    global _collections_fast
    if (
        type(impl) is not _CollectionAttributeImpl
        or _CollectionAttributeImpl.set_committed_value is not _STOCK_SET_COMMITTED
    ):
        _collection_to_stock("collection_impl")
        return impl.set_committed_value(state, dict_, value)
    key = impl.key
    adapter, user_data = _new_collection(impl, state)
    data = _plain_list_of(adapter)
    if data is not None and data is user_data:
        if value:
            if cython.compiled:
                target = cython.cast(list, data)
                target.extend(value)
            else:
                list.extend(data, value)
        _collections_fast += 1
    else:
        _collection_to_stock("collection_class")
        if value:
            adapter.append_multiple_without_event(value)
    state.dict[key] = user_data
    _commit_key(state, dict_, key)
    if key in _memo_dict(state, "_pending_mutations", _PENDING_MUTATIONS):
        # pending items exist: a modified event, then the items added and
        # removed while the collection was not loaded
        state._modified_event(dict_, impl, user_data, True)
        pending = state._pending_mutations.pop(key)
        for item in pending.added_items:
            adapter.append_without_event(item)
        for item in pending.deleted_items:
            adapter.remove_without_event(item)
    return user_data


_ScalarObjectAttributeImpl = cython.declare(object, orm_attributes._ScalarObjectAttributeImpl)
_STOCK_SET_COMMITTED_SCALAR = cython.declare(
    object, orm_attributes._ScalarObjectAttributeImpl.set_committed_value
)


_STOCK_GET_IMPL = cython.declare(object, InstanceState.get_impl)


@cython.cfunc
def _state_impl(state, key, last: list) -> object:
    """``state.get_impl(key)``.  For stock's InstanceState and method
    (``self.manager[key].impl``), the implementation found for the previous
    state of the same class manager is reused (``last``: that manager and
    implementation, which a loader's loop over its states does not change)."""
    if type(state) is not _InstanceState or _InstanceState.get_impl is not _STOCK_GET_IMPL:
        return state.get_impl(key)
    manager = state.manager
    if last[0] is manager:
        return last[1]
    impl = manager[key].impl
    last[0] = manager
    last[1] = impl
    return impl


@cython.cfunc
def _set_committed(state, dict_, key, value, last: list) -> cython.void:
    """``state.get_impl(key).set_committed_value(state, dict_, value)`` as
    the selectin loader calls it (the implementation by ``_state_impl``
    over ``last``): a collection by
    ``_set_committed_collection``; for stock's object attribute (a
    many-to-one, a ``uselist=False`` one-to-one) and its method, what that
    method does (the value stored in ``dict_``, ``state._commit(dict_,
    [key])`` as ``_commit_key``; no events)."""
    global _scalars_fast
    impl = _state_impl(state, key, last)
    if type(impl) is _ScalarObjectAttributeImpl:
        if _ScalarObjectAttributeImpl.set_committed_value is _STOCK_SET_COMMITTED_SCALAR:
            dict_[impl.key] = value
            _commit_key(state, dict_, impl.key)
            _scalars_fast += 1
            return
    elif impl.collection:
        _set_committed_collection(impl, state, dict_, value)
        return
    _collection_to_stock("scalar_impl")
    impl.set_committed_value(state, dict_, value)


@cython.cfunc
def _selectin_rows(context, q, primary_keys: list, execution_options) -> object:
    """The selectin loader's query for one chunk of keys, executed as stock
    executes it, and its rows: uniqued when the query requires it, else
    ``_raw_all_tuples``."""
    session = context.session
    result = session.execute(
        q,
        params={"primary_keys": primary_keys},
        execution_options=execution_options,
    )
    if result.context is not None and result.context.requires_uniquing:
        return result.unique()
    return _raw_all_tuples(result, session)


# the generator function stock's loading.instances gives its result
# (``chunks``), with the cells read from it, and the result class it makes
_CHUNKS_CODE = _nested_code(
    loading.instances,
    "chunks",
    ("context", "cursor", "process", "single_entity", "is_top_level"),
)
_CHUNKS_CELLS = (
    {name: i for i, name in enumerate(_CHUNKS_CODE.co_freevars)} if _CHUNKS_CODE else {}
)
_ChunkedIteratorResult = cython.declare(object, engine_result.ChunkedIteratorResult)
_STOCK_RAW_ALL_TUPLES = cython.declare(
    object, engine_result.ChunkedIteratorResult._raw_all_tuples
)
_STOCK_FETCHALL_IMPL = cython.declare(object, engine_result.IteratorResult._fetchall_impl)


@cython.cfunc
def _raw_all_tuples(result, session) -> object:
    """``result._raw_all_tuples()`` of the selectin loader's query: for the
    result stock's ``loading.instances`` made (its ``chunks`` not started,
    no ``do_orm_execute`` listener that could have touched it), what that
    call does when the query is nested in a load (no post-loads to invoke)
    and has several entities, without the generator and its list
    comprehension: the query context's ``partials`` reset, the cursor's
    rows fetched, each row's tuple made of its entities' processors called
    in order (a RowLoader called directly), the result soft-closed after
    that whatever happens, then the result's interim-row function applied."""
    chunks = getattr(result, "chunks", None)
    if (
        _CHUNKS_CODE is None
        or type(result) is not _ChunkedIteratorResult
        or getattr(chunks, "__code__", None) is not _CHUNKS_CODE
        or _ChunkedIteratorResult._raw_all_tuples is not _STOCK_RAW_ALL_TUPLES
        or _ChunkedIteratorResult._fetchall_impl is not _STOCK_FETCHALL_IMPL
        or result._hard_closed
        or result._unique_filter_state is not None
        or result._post_creational_filter is not None
        or _has_listeners(session.dispatch.do_orm_execute)
    ):
        return result._raw_all_tuples()
    cells: tuple = chunks.__closure__
    if _cell(cells[_CHUNKS_CELLS["is_top_level"]]) or _cell(
        cells[_CHUNKS_CELLS["single_entity"]]
    ):
        return result._raw_all_tuples()
    process: tuple = _cell(cells[_CHUNKS_CELLS["process"]])
    query_context = _cell(cells[_CHUNKS_CELLS["context"]])
    cursor = _cell(cells[_CHUNKS_CELLS["cursor"]])
    interim_rows = result._row_getter[2]
    try:
        query_context.partials = {}
        # a comprehension, as stock's: the rows made before a processor
        # raises are not kept by a local of this frame (its traceback)
        rows = [
            tuple([_process(proc, raw) for proc in process]) for raw in cursor._raw_all_tuples()
        ]
    finally:
        result._soft_close()
    return interim_rows(rows)


@cython.cfunc
@cython.inline
def _process(proc, row) -> object:
    """``proc(row)``; a RowLoader's without the Python call."""
    if type(proc) is RowLoader:
        loader: RowLoader = proc
        return loader.load(row)
    return proc(row)


def load_via_parent(loader, our_states, query_info, q, context, execution_options, chunksize):
    """Stock's ``_SelectInLoader._load_via_parent`` for a turbosession
    session (``turbosession.instances`` hands it over): per chunk of parents
    the same statement, parameters and execution; the related rows grouped
    by the parent's key and each parent's collection set as committed
    (``_set_committed_collection``), in stock's order."""
    uselist = loader.uselist
    n_pk: cython.Py_ssize_t = query_info.n_pk
    zero_idx = query_info.zero_idx
    attr_key = loader.key
    empty_result = _EMPTY_TUPLE if uselist else None
    data: dict
    members: list
    last: list = [None, None]

    while our_states:
        chunk = our_states[0:chunksize]
        our_states = our_states[chunksize:]

        primary_keys = [item[0][0] if zero_idx else item[0] for item in chunk]
        rows = _selectin_rows(context, q, primary_keys, execution_options)
        data = {}
        for row in rows:
            # a one-column key is grouped by its value (equal values make
            # equal one-item tuples, and the other way round), without the
            # slice's tuple
            parent_key = row[0] if n_pk == 1 else row[:n_pk]
            found = data.get(parent_key)
            if found is None:
                data[parent_key] = [row[n_pk]]
            else:
                members = found
                members.append(row[n_pk])

        for parent_key, state, state_dict, overwrite in chunk:
            if not overwrite and attr_key in state_dict:
                continue

            collection = data.get(parent_key[0] if n_pk == 1 else parent_key, empty_result)

            if not uselist and collection:
                if len(collection) > 1:
                    util.warn(
                        "Multiple rows returned with "
                        "uselist=False for eagerly-loaded "
                        "attribute '%s' " % loader
                    )
                _set_committed(state, state_dict, attr_key, collection[0], last)
            elif uselist:
                _set_committed_collection(
                    state.get_impl(attr_key), state, state_dict, collection
                )
            else:
                # uselist=False and nothing loaded: None
                _set_committed(state, state_dict, attr_key, collection, last)


def load_via_child(
    loader, our_states, none_states, query_info, q, context, execution_options, chunksize
):
    """Stock's ``_SelectInLoader._load_via_child`` (a selectin load whose
    query needs only the children's foreign key: a many-to-one) for a
    turbosession session (``turbosession.instances`` hands it over): per
    chunk of related keys the same statement, parameters and execution
    (``_selectin_rows``); the related object of each key (None for a key
    without a row) set as committed on every state that refers to it
    (``_set_committed``), then None on the states whose key has a NULL, in
    stock's order."""
    uselist = loader.uselist
    n_pk: cython.Py_ssize_t = query_info.n_pk
    zero_idx = query_info.zero_idx
    attr_key = loader.key
    data: dict
    last: list = [None, None]

    our_keys = list(our_states)
    while our_keys:
        chunk = our_keys[0:chunksize]
        our_keys = our_keys[chunksize:]
        primary_keys = [key[0] if zero_idx else key for key in chunk]
        rows = _selectin_rows(context, q, primary_keys, execution_options)
        # a one-column key by its value (see load_via_parent); a later row
        # of the same key replaces an earlier one, as in stock's dict
        if n_pk == 1:
            data = {row[0]: row[1] for row in rows}
        else:
            data = {row[:n_pk]: row[n_pk] for row in rows}

        for key in chunk:
            related_obj = data.get(key[0] if n_pk == 1 else key)
            for state, dict_, overwrite in our_states[key]:
                if not overwrite and attr_key in dict_:
                    continue
                _set_committed(
                    state, dict_, attr_key, related_obj if not uselist else [related_obj], last
                )
    for state, dict_, overwrite in none_states:
        if not overwrite and attr_key in dict_:
            continue
        _set_committed(state, dict_, attr_key, None, last)
