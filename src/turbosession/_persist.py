"""Per-object work of the flush.

The loops ``sqlalchemy.orm.persistence`` and ``Session`` run once per state
during a flush: ordering and ``before_*`` events, INSERT/UPDATE/DELETE
parameters, ``after_*`` events, and making states persistent or deleted
afterwards.  Each function gives exactly the results, events, warnings and
exceptions of its stock counterpart (named in its docstring) for the mappers
``turbosession.fastpath`` hands them (states of one mapper each time; the
fast path runs them table by table for a mapper hierarchy).  Version counters, eager defaults and ORM-level defaults
go into the records exactly as stock puts them there, since stock's own
emitters send every batch that has anything to fetch back or check.
The parameter collectors are generators because stock's are: the emitters
consume them group by group, interleaved with execution.

What can be is worked out once per mapper and table and kept with the
mapper's memoized values (``_precomputed``), so the per-object loops index
tuples instead of asking the mapper.  Compiled, those loops run with typed
locals, plain values are recognised by exact type before any attribute
lookup, and identity keys are built without a per-call list.
"""

from __future__ import annotations

import operator
import types
import weakref

from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Connection

from sqlalchemy.orm import attributes
from sqlalchemy.orm import base as orm_base
from sqlalchemy.orm import exc as orm_exc
from sqlalchemy.orm import persistence
from sqlalchemy.orm.base import (
    NEVER_SET,
    NO_VALUE,
    PASSIVE_NO_RESULT,
    PassiveFlag,
    _none_set,
    instance_state,
    state_str,
)
from sqlalchemy.orm.instrumentation import ClassManager
from sqlalchemy.orm.mapper import Mapper
from sqlalchemy.orm.session import Session
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.util import EMPTY_DICT

from turbosession import transaction as _transaction
from turbosession._warn import warn

from . import listeners as _listeners

try:
    import cython
except ModuleNotFoundError:
    from turbosession import _cython_shim as cython

if cython.compiled:
    from cython.cimports.cpython.dict import PyDict_GetItem, PyDict_Next
    from cython.cimports.cpython.list import PyList_Append
    from cython.cimports.cpython.object import PyObject
    from cython.cimports.cpython.ref import Py_INCREF
    from cython.cimports.cpython.weakref import PyWeakref_NewRef
    from cython.cimports.turbosession._cpython import (
        ClassSite,
        DictSite,
        PyWeakref_CheckRefExact,
        _PyDict_GetItem_KnownHash,
        _PyDict_SetItem_KnownHash,
        address,
        ListenerSites,
        SlotSite,
        has_listeners,
        live_state_dict,
        own_dict,
        own_entry,
        own_value,
        object_dict,
        ref_target,
        slot_value,
        stores_own,
        type_version_tag,
    )
    from cython.cimports.cpython.tuple import (
        PyTuple_GET_ITEM,
        PyTuple_New,
        PyTuple_SET_ITEM,
    )
else:
    from .listeners import has_listeners
    # the declarations below are plain None
    ListenerSites = ClassSite = DictSite = SlotSite = None

__all__ = [
    "batches",
    "collect_delete_commands",
    "collect_insert_commands",
    "collect_update_commands",
    "delete_rows",
    "flush_bind",
    "flush_connection",
    "flush_parent",
    "has_new",
    "held_connection",
    "insert_one",
    "mapper_runs",
    "new_root",
    "new_subtransaction",
    "organize_for_delete",
    "organize_for_save",
    "organize_hierarchy_for_delete",
    "organize_hierarchy_for_save",
    "postfetch_batch",
    "provision",
    "provisions_directly",
    "register_deletes",
    "register_persistent",
    "register_saves",
    "remove_newly_deleted",
    "sort_states",
]

_RETURN_NO_VALUE = cython.declare(object, PassiveFlag.PASSIVE_RETURN_NO_VALUE)
_PASSIVE_OFF = cython.declare(object, PassiveFlag.PASSIVE_OFF)
_PASSIVE_NO_FETCH = cython.declare(object, PassiveFlag.PASSIVE_NO_FETCH)
_PASSIVE_NO_INITIALIZE = cython.declare(object, PassiveFlag.PASSIVE_NO_INITIALIZE)
_NEVER_SET = cython.declare(object, NEVER_SET)
_NO_VALUE = cython.declare(object, NO_VALUE)
_STOCK_IMPL_GET = cython.declare(object, attributes._AttributeImpl.get)
_STOCK_FIRE_LOADERS = cython.declare(object, attributes._AttributeImpl._fire_loader_callables)
_PASSIVE_NO_RESULT = cython.declare(object, PASSIVE_NO_RESULT)
_ClauseElement = cython.declare(object, ClauseElement)
_NO_VALUES = cython.declare(object, EMPTY_DICT)
# what a dict's pop() gives for a key it does not hold
_NO_ENTRY = cython.declare(object, object())
# a flush context's ``states`` entries, (isdelete, listonly), shared: one
# tuple per registered state would be one more tracked object per state
# alive for the whole flush
_SAVE_ENTRY = cython.declare(tuple, (False, False))
_DELETE_ENTRY = cython.declare(tuple, (True, False))
_STOCK_IS_ORPHAN = cython.declare(object, Mapper._is_orphan)
_STOCK_HAS_PARENT = cython.declare(object, ClassManager.has_parent)
_STOCK_ITERATE_TO_ROOT = cython.declare(object, Mapper.iterate_to_root)
_STOCK_HASPARENT = cython.declare(object, attributes._AttributeImpl.hasparent)
_postfetch = cython.declare(object, persistence._postfetch)
_InstanceState = cython.declare(object, InstanceState)
_INSTANCE_DICT = cython.declare(object, orm_base.instance_dict)
_ref = cython.declare(object, weakref.ref)
_stock_contains_state = cython.declare(object, Session._contains_state)
_WeakKeyDictionary = cython.declare(object, weakref.WeakKeyDictionary)
_TurboTransaction = cython.declare(object, _transaction.SessionTransaction)
_ACTIVE = cython.declare(object, _transaction._ACTIVE)
_STOCK_GET_BIND = cython.declare(object, _transaction._STOCK_GET_BIND)
_SUBTRANSACTION = cython.declare(object, _transaction._SUBTRANSACTION)
_SESSION_CLOSED = cython.declare(object, _transaction._SESSION_CLOSED)
_SNAPSHOT_NAMES = cython.declare(tuple, _transaction._SNAPSHOT_NAMES)
_MARKS = cython.declare(dict, _transaction.MARKS)
_StateMarks = cython.declare(object, _transaction.StateMarks)
_trans_ctx_check = cython.declare(object, _transaction._trans_ctx_check)
_PROVISIONING = cython.declare(object, _transaction._PROVISIONING)
_CHANGING = cython.declare(object, _transaction._CHANGING)
_CONNECTION_FOR_BIND_FN = cython.declare(object, _transaction._CONNECTION_FOR_BIND_FN)
_EMPTY_LISTENER = cython.declare(object, _transaction._EMPTY)
_Connection = cython.declare(object, Connection)
# the descriptors of that class's snapshot collections (transaction._Snapshot)
_SNAPSHOTS = cython.declare(
    dict, {name: _transaction.SessionTransaction.__dict__[name] for name in ("_new", "_dirty", "_deleted")}
)
_STOCK_BOUNDARY = cython.declare(object, _transaction.SessionTransaction._is_transaction_boundary)
# the version tag of SessionTransaction when _made_on_first_use last found
# its snapshot descriptors and boundary property in place (0: not known)
_snapshots_tag = cython.declare(cython.uint, 0)
_LISTENER_KINDS = cython.declare(tuple, _listeners.KINDS)
_STOCK_PREFER_EAGER = cython.declare(object, Mapper._prefer_eager_defaults)
# _identity_key's default: read the state's identity token itself
_STATE_TOKEN = cython.declare(object, object())


def _validator_code():
    """The code of the ``_validate_polymorphic_identity`` function stock's
    ``Mapper._configure_polymorphic_setter`` makes for a mapper with a
    discriminator, or None if this SQLAlchemy makes none of that name."""
    for const in Mapper._configure_polymorphic_setter.__code__.co_consts:
        if (
            isinstance(const, types.CodeType)
            and const.co_name == "_validate_polymorphic_identity"
            and const.co_freevars == ("polymorphic_key",)
        ):
            return const
    return None


_VALIDATOR_CODE = cython.declare(object, _validator_code())
_listener_sites = cython.declare(ListenerSites)
# compiled, register_persistent reads and sets these in the state's own
# __dict__ while its class has no data descriptor of them (own_attributes)
_REGISTER_NAMES = cython.declare(
    tuple, ("key", "_orphaned_outside_of_session", "modified", "identity_token")
)
_register_site = cython.declare(ClassSite)
# compiled, register_persistent stores a state's ``_instance_dict`` in its
# own __dict__ while its class lets setattr do just that (stores_own)
_instance_dict_site = cython.declare(ClassSite)
# compiled, register_persistent reads a state's ``manager`` slot at its
# offset (``_cpython.slot_value``)
_manager_site = cython.declare(SlotSite)
# compiled, the statement side (registration, sorting, the rows) reads a
# state's ``key`` in its own ``__dict__`` (``_cpython.own_value``), its
# ``manager``, ``committed_state`` and ``obj`` slots at their offsets and
# its object's ``__dict__`` through the class's descriptor
# (``live_state_dict``); _live_obj reads the ``obj`` slot the same way and
# register_persistent an object's ``__dict__`` through its getter
# (``_cpython.object_dict``)
_key_site = cython.declare(ClassSite)
_state_manager_site = cython.declare(SlotSite)
_state_committed_site = cython.declare(SlotSite)
_obj_site = cython.declare(SlotSite)
_object_dict_site = cython.declare(DictSite)


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


# compiled only (uncompiled, a call costs more than the attribute): the
# reads the sites above describe
@cython.cfunc
@cython.inline
def _state_key(state):
    """``state.key``."""
    return own_value(state, "key", cython.address(_key_site))


@cython.cfunc
@cython.inline
def _state_mapper(state):
    """``state.manager.mapper``."""
    return slot_value(state, "manager", cython.address(_state_manager_site)).mapper


@cython.cfunc
@cython.inline
def _state_committed(state):
    """``state.committed_state``."""
    return slot_value(state, "committed_state", cython.address(_state_committed_site))


@cython.cfunc
@cython.inline
def _unchanged_key_value(state_dict, committed: dict, propkey):
    """``state_dict[propkey]`` when the key attribute is loaded and not
    changed (``propkey in state_dict and propkey not in committed``, the
    test stock's row collectors make first), else ``_NO_ENTRY``; a plain
    dict is read once, without a ``KeyError``."""
    if type(state_dict) is dict:
        found: cython.pointer(PyObject) = PyDict_GetItem(state_dict, propkey)
        if found is cython.NULL or propkey in committed:
            return _NO_ENTRY
        return cython.cast(object, found)
    if propkey in state_dict and propkey not in committed:
        return state_dict[propkey]
    return _NO_ENTRY


@cython.cfunc
@cython.inline
def _sql_expression(value) -> object:
    """The SQL expression ``value`` stands for, or None for a plain value
    (recognised by its exact type before any attribute lookup)."""
    t: type = type(value)
    if value is None or t is int or t is str or t is float or t is bool or t is bytes:
        return None
    if hasattr(value, "__clause_element__"):
        return value.__clause_element__()
    if isinstance(value, _ClauseElement):
        return value
    return None


@cython.cfunc
def _precomputed(mapper, table, build) -> object:
    """``build(mapper, table)``, kept with the mapper's memoized values.

    What is built derives from the mapper's memoized attributes; it is
    rebuilt when SQLAlchemy has rebuilt those (``_propkey_to_col`` is then
    a new object), so small flushes do not pay for it every time.
    """
    memo: dict = mapper._memoized_values
    source = mapper._propkey_to_col
    key = ("turbosession", build, table)
    entry: tuple = memo.get(key)
    if entry is not None and entry[0] is source:
        return entry[1]
    value = build(mapper, table)
    memo[key] = (source, value)
    return value


def _build_key_props(mapper, table):
    """What a mapper's identity keys are built from: its identity class and
    the attribute keys of its primary key properties, in order."""
    return mapper._identity_class, tuple([p.key for p in mapper._identity_key_props])


@cython.cfunc
def _key_props(mapper) -> tuple:
    return _precomputed(mapper, None, _build_key_props)


def _build_insert_columns(mapper, table):
    """propkey -> (column key, column, evaluates None), their keys, the
    primary key's column keys; then what stock's collector reads of the
    mapper for every batch, all of it its configuration or memoized
    attributes (reset with ``_propkey_to_col``): the ORM-level defaults,
    the version column in this table (None with ``version_id_generator``
    False) and its generator, the keys to add as None (a frozenset, and as
    a tuple), the server default column keys (a tuple)."""
    eval_none = mapper._insert_cols_evaluating_none[table]
    columns = {
        propkey: (col.key, col, col in eval_none)
        for propkey, col in mapper._propkey_to_col[table].items()
    }
    generate_version = mapper.version_id_generator
    version_col = None if generate_version is False else _table_version_col(mapper, table)
    as_none = mapper._insert_cols_as_none[table]
    return (
        columns,
        frozenset(columns),
        tuple(mapper._pk_keys_by_table[table]),
        tuple(mapper._insert_orm_defaults[table]),
        version_col,
        generate_version,
        as_none,
        tuple(as_none),
        tuple(mapper._server_default_col_keys[table]),
    )


def _build_update_columns(mapper, table):
    """The table's property keys, and per primary key column (column, key,
    bind label, attribute key), which DELETE uses too."""
    columns = mapper._columntoproperty
    return frozenset(mapper._propkey_to_col[table]), tuple([
        (col, col.key, col._label, columns[col].key)
        for col in mapper._pks_by_table[table]
    ])


@cython.cfunc
def _absent_value(state, dict_, key) -> object:
    """``state.manager[key].impl.get(state, dict_, PASSIVE_RETURN_NO_VALUE)``
    of a key absent from ``dict_`` (a new object's generated key): stock's
    ``get`` returns NO_VALUE, having called nothing, when its loader
    callables find nothing to call (no expired attribute, no per-state or
    attribute callable); otherwise, or where ``get`` or the loaders are not
    stock's, the attribute's own ``get`` is called."""
    impl = state.manager[key].impl
    cls = type(impl)
    if (
        cls.get is _STOCK_IMPL_GET
        and cls._fire_loader_callables is _STOCK_FIRE_LOADERS
        and impl.key == key
        and not impl.callable_
        and key not in state.expired_attributes
        and key not in state.callables
    ):
        return _NO_VALUE
    return impl.get(state, dict_, _RETURN_NO_VALUE)


@cython.cfunc
def _plain_key_impls(mapper, keys: tuple) -> cython.bint:
    """Whether every identity key attribute of ``mapper`` is one whose
    ``get`` ``_absent_value`` answers without calling it (stock's ``get``
    and loader callables, no attribute callable): asked once per
    ``organize_for_save`` call, a per-mapper answer."""
    manager = mapper.class_manager
    for key in keys:
        impl = manager[key].impl
        cls = type(impl)
        if (
            cls.get is not _STOCK_IMPL_GET
            or cls._fire_loader_callables is not _STOCK_FIRE_LOADERS
            or impl.key != key
            or impl.callable_
        ):
            return False
    return True


@cython.cfunc
def _key_pending(keys: tuple, state, dict_) -> cython.bint:
    """Whether a new state's identity key, of attributes that
    ``_plain_key_impls`` accepted, has a value the database is to generate
    (``_generated`` of ``_identity_key``): a key absent from ``dict_``
    that is neither expired nor given a per-state callable, whose ``get``
    returns NO_VALUE having called nothing, or NO_VALUE itself.  Such a
    key is in no identity map, so it need not be built.  False where the
    answer needs the attribute's own ``get`` (``_identity_key`` asks it)."""
    if type(dict_) is not dict:
        return False
    plain: dict = dict_
    for key in keys:
        if key in plain:
            if plain[key] is _NO_VALUE:
                return True
        elif key not in state.expired_attributes and key not in state.callables:
            return True
    return False


@cython.cfunc
@cython.inline
def _live_obj(state) -> object:
    """``state.obj()``; compiled, what ``_cpython.state_object`` does with
    the state's ``obj`` slot read at its offset: a plain ``weakref.ref``'s
    object without a Python call, anything else (a dereferenced state's
    function returning None) called."""
    if cython.compiled:
        ref = slot_value(state, "obj", cython.address(_obj_site))
        if PyWeakref_CheckRefExact(ref):
            return ref_target(ref)
        return ref()
    return state.obj()


@cython.cfunc
def _state_dict(state) -> object:
    """``state.dict`` without the property's Python frame: the object's
    ``__dict__`` (``instance_dict``, stock's ``attrgetter("__dict__")``,
    read as the attribute), or a new empty dict once the object is gone."""
    if type(state) is not _InstanceState or orm_base.instance_dict is not _INSTANCE_DICT:
        return state.dict
    obj = _live_obj(state)
    if obj is None:
        return {}
    return obj.__dict__


@cython.cfunc
@cython.inline
def _record_dict(state, plain_dict: cython.bint) -> object:
    """``state.dict`` for a flush record: with ``plain_dict`` (the caller
    found ``instance_dict`` stock's, once per call) and stock's state
    class, the object's ``__dict__`` (compiled, ``_cpython.live_state_dict``),
    without ``_state_dict``'s checks per state."""
    if plain_dict and type(state) is _InstanceState:
        if cython.compiled:
            found = live_state_dict(
                state, cython.address(_obj_site), cython.address(_object_dict_site)
            )
            return {} if found is None else found
        obj = state.obj()
        return {} if obj is None else obj.__dict__
    return _state_dict(state)


@cython.cfunc
@cython.inline
def _generated(values: tuple) -> cython.bint:
    """Whether an identity key's values have one the database has yet to
    give (NO_VALUE): no identity map holds such a key."""
    for value in values:
        if value is _NO_VALUE:
            return True
    return False


@cython.cfunc
def _identity_key(key_props: tuple, state, dict_, identity_token=_STATE_TOKEN) -> tuple:
    """``mapper._identity_key_from_state(state)``, reading the dict first;
    ``key_props`` is the mapper's ``_key_props``.  ``identity_token`` is the
    state's when the caller has read it (registration reads it from the
    state's own ``__dict__``)."""
    if identity_token is _STATE_TOKEN:
        identity_token = state.identity_token
    keys: tuple = key_props[1]
    values: tuple
    if cython.compiled:
        # the tuple filled in place, the dict read without a KeyError
        i: cython.Py_ssize_t
        n: cython.Py_ssize_t = len(keys)
        found: cython.pointer(PyObject)
        values = PyTuple_New(n)
        for i in range(n):
            key = keys[i]
            if type(dict_) is dict:
                found = PyDict_GetItem(dict_, key)
                if found is not cython.NULL:
                    value = cython.cast(object, found)
                else:
                    value = _absent_value(state, dict_, key)
            elif key in dict_:
                value = dict_[key]
            else:
                value = _absent_value(state, dict_, key)
            Py_INCREF(value)
            PyTuple_SET_ITEM(values, i, value)
    else:
        found_values = []
        for key in keys:
            if key in dict_:
                found_values.append(dict_[key])
            else:
                found_values.append(_absent_value(state, dict_, key))
        values = tuple(found_values)
    return (key_props[0], values, identity_token)


@cython.cfunc
def _key_unchanged(key_props: tuple, dict_, key, identity_token) -> cython.bint:
    """Whether ``_identity_key(key_props, state, dict_)`` would equal the
    state's ``key``, answered without making it where that is certain:
    the key's class is the mapper's, its values are the very objects the
    dict holds under the key attributes (a tuple compares an object to
    itself as equal) and its token is the state's (``identity_token``).
    False means "not known": the key is then made and compared, as stock
    does.  Compiled only (the dict read with ``PyDict_GetItem``)."""
    if type(key) is not tuple or type(dict_) is not dict or len(key) != 3:
        return False
    keys: tuple = key_props[1]
    values = key[1]
    if key[0] is not key_props[0] or type(values) is not tuple or len(values) != len(keys):
        return False
    i: cython.Py_ssize_t
    found: cython.pointer(PyObject)
    for i in range(len(keys)):
        found = PyDict_GetItem(dict_, keys[i])
        if found is cython.NULL or cython.cast(object, found) is not values[i]:
            return False
    return key[2] is identity_token


@cython.cfunc
def _validated_key(validate):
    """The discriminator's key ``validate`` checks when it is the function
    stock's mapper made (its code, its one closure cell), else None."""
    if (
        _VALIDATOR_CODE is not None
        and type(validate) is types.FunctionType
        and validate.__code__ is _VALIDATOR_CODE
    ):
        return validate.__closure__[0].cell_contents
    return None


@cython.cfunc
@cython.inline
def _committed_version(mapper, state, dict_, version_col) -> object:
    """The version an UPDATE or DELETE expects the row to have, or None."""
    if version_col is None:
        return None
    return mapper._get_committed_state_attr_by_column(state, dict_, version_col)


def organize_for_save(mapper, states, uow, connection):
    """``persistence._organize_states_for_save`` for states of one mapper
    on one connection, none of which can be a row switch.

    ``states`` come sorted as ``_sort_states`` sorts them.  Fires
    ``before_insert``/``before_update``, validates the polymorphic identity
    and warns on a new object whose identity is already persistent, as
    stock does.  Returns the lists of
    ``(state, dict, mapper, connection)`` to insert and
    ``(state, dict, mapper, connection, update_version_id)`` to update, the
    version being the committed one (loaded if expired, as stock does).
    """
    before_insert = mapper.dispatch.before_insert
    before_update = mapper.dispatch.before_update
    version_col = mapper.version_id_col
    insert_listeners: cython.bint = _has_listeners(before_insert)
    update_listeners: cython.bint = _has_listeners(before_update)
    validate = mapper._validate_polymorphic_identity
    # stock's validator warns only for a discriminator in the dict that
    # the mapper does not accept: asked here, the function called then
    validated_key = None
    acceptable = None
    if validate is not None:
        validated_key = _validated_key(validate)
        if validated_key is not None:
            acceptable = mapper._acceptable_polymorphic_identities
    identity_map = uow.session.identity_map
    key_props: tuple = _key_props(mapper)
    key_names: tuple = key_props[1]
    # a new state whose key the database generates needs no identity key
    # (it is in no identity map); asked per state only when the key's
    # attributes are stock's (per mapper, here) and no before_insert
    # listener runs in between that could change them
    plain_keys: cython.bint = not insert_listeners and _plain_key_impls(mapper, key_names)
    # the objects' dicts read as register_persistent reads them
    plain_dict: cython.bint = orm_base.instance_dict is _INSTANCE_DICT
    to_insert: list = []
    to_update: list = []
    has_identity: cython.bint
    pending: cython.bint
    for state in states:
        dict_ = _record_dict(state, plain_dict)
        key = _state_key(state) if cython.compiled else state.key
        has_identity = bool(key)
        pending = (
            not has_identity and plain_keys and _key_pending(key_names, state, dict_)
        )
        instance_key = None if pending else key or _identity_key(key_props, state, dict_)
        if not has_identity:
            if insert_listeners:
                before_insert(mapper, connection, state)
        elif update_listeners:
            before_update(mapper, connection, state)
        if validated_key is not None:
            if validated_key in dict_ and dict_[validated_key] not in acceptable:
                validate(mapper, state, dict_)
        elif validate is not None:
            validate(mapper, state, dict_)
        # (a key the database is to generate is in no identity map: the
        # lookup would only hash NO_VALUE, an enum, in Python)
        if (
            not has_identity
            and not pending
            and not _generated(instance_key[1])
            and instance_key in identity_map
        ):
            existing = instance_state(identity_map[instance_key])
            if not uow.was_already_deleted(existing):
                # fastpath sends flushes where the mapper's hierarchy also
                # deletes objects to stock's loop, so no row switch is due
                assert not uow.is_deleted(existing)
                warn(
                    "New instance %s with identity key %s conflicts "
                    "with persistent instance %s"
                    % (state_str(state), instance_key, state_str(existing))
                )
        if has_identity:
            to_update.append(
                (state, dict_, mapper, connection,
                 _committed_version(mapper, state, dict_, version_col))
            )
        else:
            to_insert.append((state, dict_, mapper, connection))
    return to_insert, to_update


def organize_hierarchy_for_save(states: list, uow, connection):
    """``organize_for_save`` over each run of consecutive states of one
    mapper (a hierarchy's states, sorted as ``_sort_states`` sorts them),
    the runs' records joined in their order."""
    to_insert: list = []
    to_update: list = []
    run: tuple
    for run in _runs_by_mapper(states):
        found: tuple = organize_for_save(run[0], run[1], uow, connection)
        to_insert.extend(found[0])
        to_update.extend(found[1])
    return to_insert, to_update


def organize_hierarchy_for_delete(states: list, connection) -> list:
    """``organize_for_delete`` over each run of consecutive states of one
    mapper, the runs' records joined in their order."""
    to_delete: list = []
    run: tuple
    for run in _runs_by_mapper(states):
        to_delete.extend(organize_for_delete(run[0], run[1], connection))
    return to_delete


@cython.cfunc
def _runs_by_mapper(states: list) -> list:
    """``(mapper, states)`` for each run of consecutive states of one
    mapper (compared by identity), in their order."""
    runs: list = []
    run: list = None
    current = None
    for state in states:
        mapper = state.manager.mapper
        if run is None or mapper is not current:
            current = mapper
            run = []
            runs.append((mapper, run))
        run.append(state)
    return runs


@cython.cfunc
def _table_version_col(mapper, table) -> object:
    """The mapper's version column when ``table`` holds it, else None."""
    col = mapper.version_id_col
    if col is not None and col in mapper._cols_by_table[table]:
        return col
    return None


def collect_insert_commands(table, mapper, connection, states_to_insert):
    """``persistence._collect_insert_commands`` (not bulk) for one mapper."""
    insert_columns: tuple = _insert_columns(table, mapper, connection)
    # the last object's dict keys and the order they gave (see _insert_record)
    last_seen: list = [None, None]
    for state, state_dict, state_mapper, state_connection in states_to_insert:
        yield _insert_record(
            insert_columns, last_seen, state, state_dict, state_mapper, state_connection
        )


@cython.cfunc
def _insert_columns(table, mapper, connection) -> tuple:
    """What ``_insert_record`` reads for each record of one mapper's
    INSERTs into ``table``: the mapper's precomputed columns, and the
    server default keys a record must have (None when stock's
    ``_prefer_eager_defaults`` does not ask for them)."""
    precomputed: tuple = _precomputed(mapper, table, _build_insert_columns)
    # with no server default column in the table every record has all of
    # them whatever stock's _prefer_eager_defaults answers: it is asked
    # only when the answer matters, or when it is not stock's method
    base_mapper = mapper.base_mapper
    if (
        precomputed[8] or type(base_mapper)._prefer_eager_defaults is not _STOCK_PREFER_EAGER
    ) and base_mapper._prefer_eager_defaults(connection.dialect, table):
        return (precomputed, precomputed[8])
    return (precomputed, None)


@cython.cfunc
def _insert_record(
    insert_columns: tuple, last_seen: list, state, state_dict, state_mapper, state_connection
) -> tuple:
    """One record of ``collect_insert_commands``: (state, dict, parameters,
    mapper, connection, SQL-expression values, has all primary keys, has
    all server defaults)."""
    # the parameters are gathered in the order of stock's set
    # intersection, which a before_execute listener sees
    precomputed: tuple = insert_columns[0]
    server_default_keys: tuple = insert_columns[1]
    columns: dict = precomputed[0]
    propkeys: frozenset = precomputed[1]
    pk_keys: tuple = precomputed[2]
    orm_defaults: tuple = precomputed[3]
    orm_default: tuple
    version_col = precomputed[4]
    as_none = precomputed[6]
    # nothing to add as None when the parameters have every such key
    as_none_keys: tuple = precomputed[7]
    column: tuple
    params: dict = {}
    # made for the first SQL expression only: most records have none
    value_params: dict = None
    for propkey in _intersection_order(propkeys, state_dict, last_seen):
        value = state_dict[propkey]
        column = columns[propkey]
        if value is None and not column[2]:
            continue
        expression = _sql_expression(value)
        if expression is None:
            params[column[0]] = value
        else:
            if value_params is None:
                value_params = {}
            value_params[column[1]] = expression
    # ORM-level (dataclass) defaults the column's own would not deliver
    for orm_default in orm_defaults:
        col = orm_default[1]
        if col.key not in params and (value_params is None or col not in value_params):
            expression = _sql_expression(orm_default[2])
            if expression is None:
                params[col.key] = orm_default[2]
            else:
                if value_params is None:
                    value_params = {}
                value_params[col] = expression
    if as_none and (value_params or not _has_all(params, as_none_keys)):
        for colkey in as_none.difference(params).difference(
            [] if value_params is None else [c.key for c in value_params]
        ):
            params[colkey] = None
    has_all_pks: cython.bint = _has_all(params, pk_keys)
    has_all_defaults: cython.bint = server_default_keys is None or _has_all(
        params, server_default_keys
    )
    if version_col is not None:
        params[version_col.key] = precomputed[5](None)
    return (
        state,
        state_dict,
        params,
        state_mapper,
        state_connection,
        # one shared empty mapping when there are none (nothing writes
        # to a record's value_params): no dict per state stays alive
        value_params or _NO_VALUES,
        has_all_pks,
        has_all_defaults,
    )


def insert_one(table, mapper, uow, connection, state):
    """The INSERT record of a flush's one new state of a single-table
    mapper, as ``persistence._save_obj`` makes it: the state read as
    ``_sort_states`` reads it (``insert_order``), organized as
    ``organize_for_save`` organizes it (``before_insert``, the identity
    checks), its parameters collected as ``collect_insert_commands``
    collects them (a state without an identity key is organized as an
    INSERT)."""
    state.insert_order
    record: tuple = organize_for_save(mapper, (state,), uow, connection)[0][0]
    return _insert_record(
        _insert_columns(table, mapper, connection), [None, None],
        state, record[1], mapper, connection,
    )


@cython.cfunc
def _intersection_order(propkeys: frozenset, state_dict, last_seen: list) -> tuple:
    """The keys of ``propkeys.intersection(state_dict)`` in the iteration
    order of that set, the order stock gathers parameters in.

    The set is built by adding the dict's keys in the dict's order, so its
    order is decided by that sequence of keys alone.  Objects made alike
    have the same keys in the same order: compiled, when a dict holds the
    very key objects of the previous one (``last_seen``: its keys and the
    order they gave), in the same order, that order is reused without
    building the set again.
    """
    if cython.compiled:
        last_keys: tuple = last_seen[0]
        if (
            last_keys is not None
            and type(state_dict) is dict
            and len(last_keys) == len(state_dict)
        ):
            pos: cython.Py_ssize_t = 0
            i: cython.Py_ssize_t = 0
            key: cython.pointer(PyObject)
            value: cython.pointer(PyObject)
            same: cython.bint = True
            while PyDict_Next(state_dict, cython.address(pos), cython.address(key),
                              cython.address(value)):
                if key is not PyTuple_GET_ITEM(last_keys, i):
                    same = False
                    break
                i += 1
            if same:
                return last_seen[1]
        order: tuple = tuple(propkeys.intersection(state_dict))
        if type(state_dict) is dict:
            last_seen[0] = tuple(state_dict)
            last_seen[1] = order
        return order
    return tuple(propkeys.intersection(state_dict))


@cython.cfunc
@cython.inline
def _has_all(params: dict, keys: tuple) -> cython.bint:
    for key in keys:
        if key not in params:
            return False
    return True


@cython.cfunc
def _primary_key_param(uow, state, state_dict, mapper, col, propkey, value_params) -> tuple:
    """Where an UPDATE finds its row when the key attribute is not simply
    loaded and unchanged: (value, pk changed, has_all_pks)."""
    history = state.manager[propkey].impl.get_history(
        state, state_dict, _PASSIVE_OFF
    )
    if history.added:
        if not history.deleted or ("pk_cascaded", state, col) in uow.attributes:
            return history.added[0], True, True
        # locate the row by the old value
        return history.deleted[0], False, col not in value_params
    return history.unchanged[0], False, True


@cython.cfunc
def _has_added_history(mapper, state, state_dict) -> cython.bint:
    """Whether any column attribute of ``state`` has a value added.

    Stock asks this of a versioned row with no net change on its table
    (the change may be on another table of the mapper): without one, no
    UPDATE and no version bump.
    """
    manager = state.manager
    for prop in mapper._columntoproperty.values():
        history = manager[prop.key].impl.get_history(
            state, state_dict, _PASSIVE_NO_INITIALIZE
        )
        if history.added:
            return True
    return False


def collect_update_commands(uow, table, mapper, states_to_update, column_changes):
    """``persistence._collect_update_commands`` (not bulk).

    ``column_changes`` is the tracking module's net changes of one state.
    With a version counter the row is located by its committed version too
    and the new one is generated (or, with ``version_id_generator=False``,
    left to the database or the application), as stock does.
    """
    propkey_to_col: dict = mapper._propkey_to_col[table]
    precomputed: tuple = _precomputed(mapper, table, _build_update_columns)
    keys: frozenset = precomputed[0]
    pk_columns: tuple = precomputed[1]
    params: dict
    committed: dict
    has_all_pks: cython.bint
    entries: cython.Py_ssize_t
    has_all_defaults: cython.bint
    no_params: cython.bint
    located: tuple
    pk_column: tuple
    if mapper.base_mapper.eager_defaults is True:
        onupdate_keys = mapper._server_onupdate_default_col_keys[table]
    else:
        onupdate_keys = None
    version_col = _table_version_col(mapper, table)
    generate_version = mapper.version_id_generator
    for state, state_dict, state_mapper, connection, update_version_id in states_to_update:
        committed = _state_committed(state) if cython.compiled else state.committed_state
        params, value_params = column_changes(state, state_dict, keys, propkey_to_col)
        if onupdate_keys is None:
            has_all_defaults = True
        else:
            has_all_defaults = onupdate_keys.issubset(params)
        if update_version_id is not None and version_col is not None:
            no_params = not (params or value_params)
            if no_params and not _has_added_history(mapper, state, state_dict):
                continue
            params[version_col._label] = update_version_id
            if generate_version is not False:
                if version_col.key not in params:
                    params[version_col.key] = generate_version(update_version_id)
            elif no_params:
                # nothing else to set: the version is set to itself so that
                # there is an UPDATE
                params[version_col.key] = update_version_id
        elif not (params or value_params):
            continue
        # the key's values go into the row's parameters as they are found,
        # after its changes, where stock's update() of them puts them; a
        # label is never a column key of its table (SQLAlchemy makes labels
        # unique there), so no change is overwritten.  ``entries`` counts
        # what stock's parameters hold before that update: a row left with
        # none is not updated
        entries = len(params)
        has_all_pks = True
        for pk_column in pk_columns:
            propkey = pk_column[3]
            if cython.compiled:
                value = _unchanged_key_value(state_dict, committed, propkey)
            elif propkey in state_dict and propkey not in committed:
                value = state_dict[propkey]
            else:
                value = _NO_ENTRY
            if value is _NO_ENTRY:
                located = _primary_key_param(
                    uow, state, state_dict, mapper, pk_column[0], propkey, value_params
                )
                value = located[0]
                if located[1] and params.pop(pk_column[1], _NO_ENTRY) is not _NO_ENTRY:
                    entries -= 1
                if not located[2]:
                    has_all_pks = False
            params[pk_column[2]] = value
            if value is None:
                raise orm_exc.FlushError(
                    "Can't update table %s using NULL for primary "
                    "key value on column %s" % (table, pk_column[0])
                )
        if entries == 0 and not value_params:
            # only the primary key changed, and the database cascaded it
            continue
        yield (
            state,
            state_dict,
            params,
            state_mapper,
            connection,
            value_params,
            has_all_defaults,
            has_all_pks,
        )


def postfetch_batch(mapper, uow, table, records: list, result, isupdate: cython.bint):
    """``persistence._postfetch`` for each record of one executemany batch.

    Prefetched values (Python-side defaults) go into the objects and out of
    their committed state, server-generated columns are expired.  As stock
    does, an UPDATE batch hands every record the first row's parameters.
    A batch whose statement returned rows is handed to stock's ``_postfetch``.
    """
    context = result.context
    compiled = context.compiled
    all_params = context.compiled_parameters
    returned = None if context.executemany else result.returned_defaults
    index: cython.Py_ssize_t
    record: tuple
    if compiled.effective_returning and returned is not None:
        for index in range(len(records)):
            record = records[index]
            params = all_params[0] if isupdate else all_params[index]
            _postfetch(
                mapper, uow, table, record[0], record[1], result, params,
                record[5], isupdate, returned,
            )
        return
    columns = mapper._columntoproperty
    prefetch: list = [(c.key, columns[c].key) for c in compiled.prefetch if c in columns]
    postfetch = compiled.postfetch
    expire: list = [columns[c].key for c in postfetch if c in columns]
    has_postfetch: cython.bint = bool(postfetch)
    if not prefetch and not has_postfetch:
        return
    pair: tuple
    for index in range(len(records)):
        record = records[index]
        state = record[0]
        dict_ = record[1]
        params_row = all_params[0] if isupdate else all_params[index]
        for pair in prefetch:
            if pair[0] in params_row:
                dict_[pair[1]] = params_row[pair[0]]
                state.committed_state.pop(pair[1], None)
        if has_postfetch:
            state._expire_attributes(dict_, expire)


def organize_for_delete(mapper, states, connection):
    """``persistence._organize_states_for_delete``: fires ``before_delete``
    and reads each state's committed version, if the mapper has one."""
    before_delete = mapper.dispatch.before_delete
    version_col = mapper.version_id_col
    listeners: cython.bint = _has_listeners(before_delete)
    plain_dict: cython.bint = orm_base.instance_dict is _INSTANCE_DICT
    to_delete: list = []
    for state in states:
        if listeners:
            before_delete(mapper, connection, state)
            # its listener may have replaced instance_dict
            plain_dict = orm_base.instance_dict is _INSTANCE_DICT
        dict_ = _record_dict(state, plain_dict)
        to_delete.append(
            (state, dict_, mapper, connection,
             _committed_version(mapper, state, dict_, version_col))
        )
    return to_delete


def collect_delete_commands(table, mapper, states_to_delete):
    """``persistence._collect_delete_commands``: the row by its primary key
    and, with a version counter, its committed version, with its
    connection (for stock's emitter)."""
    # per primary key column: (column, key, bind label, attribute key)
    pk_columns: tuple = _precomputed(mapper, table, _build_update_columns)[1]
    version_col = _table_version_col(mapper, table)
    record: tuple
    for record in states_to_delete:
        yield _delete_params(table, mapper, pk_columns, version_col, record), record[3]


def delete_rows(table, runs: list) -> tuple:
    """The DELETE rows of ``table`` for the runs of records whose mapper
    has it (``mapper_runs``), in order, as ``collect_delete_commands``
    makes them: ``(connection of the first row, [row, ...])``, or
    ``(None, [])``.  For a batch sent as one executemany on the one
    connection the flush's records share: no tuple per row and no
    generator resumed per row."""
    rows: list = []
    connection = None
    run_entry: tuple
    record: tuple
    pk_columns: tuple
    for run_entry in runs:
        mapper = run_entry[0]
        if table not in mapper._pks_by_table:
            continue
        pk_columns = _precomputed(mapper, table, _build_update_columns)[1]
        version_col = _table_version_col(mapper, table)
        for record in run_entry[2]:
            if connection is None:
                connection = record[3]
            rows.append(_delete_params(table, mapper, pk_columns, version_col, record))
    return connection, rows


@cython.cfunc
def _delete_params(table, mapper, pk_columns: tuple, version_col, record: tuple) -> dict:
    """One DELETE row of an ``organize_for_delete`` record ``(state,
    state_dict, mapper, connection, committed version)``."""
    state = record[0]
    state_dict = record[1]
    committed = _state_committed(state) if cython.compiled else state.committed_state
    params: dict = {}
    pk_column: tuple
    for pk_column in pk_columns:
        propkey = pk_column[3]
        if cython.compiled:
            value = _unchanged_key_value(state_dict, committed, propkey)
        elif propkey in state_dict and propkey not in committed:
            value = state_dict[propkey]
        else:
            value = _NO_ENTRY
        if value is _NO_ENTRY:
            value = mapper._get_committed_state_attr_by_column(state, state_dict, pk_column[0])
        params[pk_column[1]] = value
        if value is None:
            raise orm_exc.FlushError(
                "Can't delete from table %s "
                "using NULL for primary "
                "key value on column %s" % (table, pk_column[0])
            )
    update_version_id = record[4]
    if update_version_id is not None and version_col is not None:
        params[version_col.key] = update_version_id
    return params


@cython.cfunc
@cython.exceptval(-1, check=False)
def _null_identity(pk: tuple, mapper) -> cython.bint:
    """Whether ``pk`` is a NULL identity (stock's test against ``_none_set``).

    Counted in one loop when every value is an int, a str or a "none"
    marker; other values take stock's set expression, which also raises
    as stock does for an unhashable value.  ``mapper.allow_partial_pks``
    is read only where stock's expression reads it (a "none" among the
    values): an attribute lookup on the mapper costs a walk of its long
    MRO whenever the type cache has lost it.
    """
    nones: cython.Py_ssize_t = 0
    for value in pk:
        if value is None or value is _NEVER_SET or value is _PASSIVE_NO_RESULT:
            nones += 1
        elif type(value) is not int and type(value) is not str:
            return bool(
                (_none_set.intersection(pk) and not mapper.allow_partial_pks)
                or _none_set.issuperset(pk)
            )
    if nones == 0:
        return len(pk) == 0
    return not mapper.allow_partial_pks or nones == len(pk)


@cython.cfunc
@cython.exceptval(-1, check=False)
def _map_if_unmapped(map_dict: dict, key, state) -> cython.bint:
    """``map_dict[key] = state`` if ``map_dict.get(key)`` is None (no state
    is mapped under ``key``), and whether it was, with the key (a tuple,
    hashed item by item) hashed once for both.  Compiled only."""
    key_hash: cython.Py_hash_t = hash(key)
    if _PyDict_GetItem_KnownHash(map_dict, key, key_hash) is not cython.NULL:
        return False
    _PyDict_SetItem_KnownHash(map_dict, key, state, key_hash)
    return True


@cython.cfunc
def _check_identity_key(state, mapper, instance_key: tuple):
    if _null_identity(instance_key[1], mapper):
        raise orm_exc.FlushError(
            "Instance %s has a NULL identity key.  If this is an "
            "auto-generated value, check that the database table "
            "allows generation of new primary key values, and "
            "that the mapped Column object is configured to "
            "expect these generated values.  Ensure also that "
            "this flush() is not occurring at an inappropriate "
            "time, such as within a load() event." % state_str(state)
        )


@cython.cfunc
def _switch_key(session, state, instance_key):
    # a primary key changed: safe_discard() in case another state already
    # replaced this one in the identity map
    session.identity_map.safe_discard(state)
    transaction = session._transaction
    assert transaction is not None
    key_switches = transaction._key_switches
    if state in key_switches:
        orig_key = key_switches[state][0]
    else:
        orig_key = state.key
    key_switches[state] = (orig_key, instance_key)
    state.key = instance_key


@cython.cfunc
def _mark_in(mapping, states: list):
    """``mapping[state] = True`` for each state (a transaction's ``_new`` or
    ``_dirty``); for a ``WeakKeyDictionary`` its own ``__setitem__``
    statement, run here without a Python frame per state."""
    if type(mapping) is not _WeakKeyDictionary:
        for state in states:
            mapping[state] = True
        return
    data: dict = mapping.data
    remove = mapping._remove
    for state in states:
        if cython.compiled:
            # what weakref.ref(state, remove) makes, without the type call
            data[PyWeakref_NewRef(state, remove)] = True
        else:
            data[_ref(state, remove)] = True


@cython.cfunc
@cython.exceptval(-1, check=False)
def _made_on_first_use(transaction, name: str) -> cython.bint:
    """Whether the transaction's snapshot collection ``name`` is made by
    turbosession's ``_Snapshot`` descriptor on first use, as
    ``_mark_states`` restates it: the transaction is turbosession's
    ``SessionTransaction`` and neither that descriptor nor the
    ``_is_transaction_boundary`` property has been replaced.  Compiled,
    the answer for all of the class's snapshot collections is kept with
    the class's version tag (``_cpython.type_version_tag``), which any
    change to the class or its bases replaces: a flush asks it about four
    times, a one-object flush as often as a large one."""
    global _snapshots_tag
    cls = type(transaction)
    if cls is not _TurboTransaction:
        return False
    if cython.compiled:
        tag: cython.uint = type_version_tag(cls)
        if tag != 0 and tag == _snapshots_tag:
            return True
    if not (
        cls.__dict__.get(name) is _SNAPSHOTS[name]
        and cls._is_transaction_boundary is _STOCK_BOUNDARY
    ):
        return False
    if cython.compiled:
        members = cls.__dict__
        # kept only when every collection's descriptor is in place, and
        # the class is the same after the lookups that may have tagged it
        if tag == type_version_tag(cls) and all(
            members.get(other) is _SNAPSHOTS[other] for other in _SNAPSHOTS
        ):
            _snapshots_tag = tag
    return True


@cython.cfunc
def _mark_states(transaction, name: str, states: list):
    """``transaction.<name>[state] = True`` for each state, for ``_new``,
    ``_dirty`` or ``_deleted``.  For turbosession's ``SessionTransaction``:
    into the collection where it has been made (looked up as its
    ``_Snapshot`` descriptor looks it up, the parent's for a
    subtransaction, up to the transaction boundary), else as weak references appended
    to the boundary's ``transaction.StateMarks``, from which ``_Snapshot``
    makes the collection when it is first read; into the attribute as it
    is for any other transaction, or when that class's descriptor or
    property has been replaced."""
    trans = transaction
    own: dict
    while True:
        own = trans.__dict__
        made = own.get(name)
        if made is not None:
            _mark_in(made, states)
            return
        if not _made_on_first_use(trans, name):
            _mark_in(getattr(transaction, name), states)
            return
        if trans.nested or trans._parent is None:
            break
        trans = trans._parent
    marks_key: str = _MARKS[name]
    marks = own.get(marks_key)
    if marks is None:
        marks = own[marks_key] = _StateMarks()
    for state in states:
        if cython.compiled:
            PyList_Append(marks, PyWeakref_NewRef(state, None))
        else:
            marks.append(_ref(state))
    if len(marks) >= marks.compact_at:
        marks.compact()


def new_root(session, origin):
    """``SessionTransaction(session, origin)`` of a root transaction (begun
    or autobegun), attribute for attribute as stock's ``__init__`` builds
    it, when it has no ``after_transaction_create`` listener to dispatch
    to and its methods are stock's (``transaction.autobegin`` asks): the
    same checks, in the same order, and nothing else runs (a root's
    ``_take_snapshot`` neither flushes nor finds a collection to drop:
    ``transaction._Snapshot`` makes them on first use)."""
    if session._trans_context_manager:
        _trans_ctx_check(session)
    trans = _bare_transaction(session, None, origin)
    if session._close_state is _SESSION_CLOSED:
        raise sa_exc.InvalidRequestError(
            "This Session has been permanently closed and is unable "
            "to handle any more transaction requests."
        )
    trans._state = _ACTIVE
    session._transaction = trans
    _transaction._root_counts["fast"] += 1
    return trans


def new_subtransaction(session, parent):
    """``parent._begin()`` of the active root or subtransaction ``parent``,
    for a flush (``transaction.begin_flush`` has found its methods stock's
    and no ``after_transaction_create`` listener): what ``_begin``'s
    wrapper leaves on the parent, then the subtransaction as stock's
    ``__init__`` builds it, its snapshot the parent's collections (those
    the parent has made already now, the others on first use)."""
    if session._trans_context_manager:
        _trans_ctx_check(session)
    # what _begin's wrapper leaves on the parent
    parent._next_state = parent._next_state
    parent._current_fn = parent._current_fn
    sub = _bare_transaction(session, parent, _SUBTRANSACTION)
    sub._state = _ACTIVE
    made: dict = parent.__dict__
    members: dict = sub.__dict__
    for name in _SNAPSHOT_NAMES:
        if name in made:
            members[name] = made[name]
    session._transaction = sub
    return sub


@cython.cfunc
def _bare_transaction(session, parent, origin):
    """A turbosession ``SessionTransaction`` (not a savepoint) with the
    attributes stock's ``__init__`` sets before its checks of the session,
    in its order."""
    trans = _TurboTransaction.__new__(_TurboTransaction)
    trans.session = session
    trans._connections = {}
    trans._parent = parent
    trans.nested = False
    trans.origin = origin
    return trans


def register_persistent(session, states: set, commit_all_states):
    """``Session._register_persistent``: flushed states become persistent.

    ``commit_all_states`` is the tracking module's reset of flushed states.
    """
    pending_to_persistent = session.dispatch.pending_to_persistent
    if not _has_listeners(pending_to_persistent):
        pending_to_persistent = None
    identity_map = session.identity_map
    # turbosession's map: a state already mapped under its key (an update)
    # is not replaced (replace() would return None and do nothing), and
    # what replace() does for a key no state is mapped under (map it, point
    # the state at the map, note it modified) is done here, without a call
    replace_dict = getattr(identity_map, "replace_dict", None)
    map_dict: dict = None if replace_dict is None else replace_dict()
    map_ref = None if map_dict is None else identity_map._wr
    map_modified: set = None if map_dict is None else identity_map._modified
    # looked up once: nothing in the loop below rebinds it
    replace = identity_map.replace
    instance_dict = orm_base.instance_dict
    class_keys: dict = {}
    last_manager = None
    mapper = None
    instance_key: tuple
    mapped: cython.bint
    unmapped: cython.bint
    key_props: tuple = None
    # the states and their dicts to reset afterwards: every flushed object
    # is held strongly (by _new, _deleted or its modified state) until then.
    # Two lists zipped, not a list of pairs: stock hands its reset a
    # generator, and 10,000 live pairs would bring a full GC pass forward
    committing: list = []
    committing_dicts: list = []
    plain_dict: cython.bint = instance_dict is _INSTANCE_DICT
    for state in states:
        # hold the object against a last-minute dereference
        obj = _live_obj(state)
        if obj is None:
            committing.append(state)
            committing_dicts.append({})
            continue
        if not plain_dict:
            dict_ = instance_dict(obj)
        elif cython.compiled:
            dict_ = object_dict(obj, cython.address(_object_dict_site))
        else:
            dict_ = obj.__dict__
        committing.append(state)
        committing_dicts.append(dict_)
        # each class's mapper and key properties, asked once per call and
        # kept by the manager's id (every manager is alive meanwhile: the
        # states hold them); the last class's without the dict
        manager = (
            slot_value(state, "manager", cython.address(_manager_site))
            if cython.compiled
            else state.manager
        )
        if manager is not last_manager:
            # (compiled, the id without calling the builtin)
            manager_id = address(manager) if cython.compiled else id(manager)
            known = class_keys.get(manager_id)
            if known is None:
                mapper = manager.mapper
                known = class_keys[manager_id] = (mapper, _key_props(mapper))
            mapper, key_props = known
            last_manager = manager
        # the state's own __dict__, where its key, orphan flag and modified
        # flag are read and stored (compiled, while its class lets them be)
        own: dict = (
            own_dict(state, _REGISTER_NAMES, cython.address(_register_site))
            if cython.compiled
            else None
        )
        key = state.key if own is None else own_entry(own, state, "key")
        token = (
            state.identity_token if own is None else own_entry(own, state, "identity_token")
        )
        # an updated state's key usually still holds its dict's values
        # (compiled only: uncompiled, the check costs more than the key)
        if cython.compiled and key is not None and _key_unchanged(key_props, dict_, key, token):
            instance_key = key
        else:
            instance_key = _identity_key(key_props, state, dict_, token)
        _check_identity_key(state, mapper, instance_key)
        # from here ``key`` is the state's key as replace() would read it
        if key is None:
            if own is None:
                state.key = instance_key
            else:
                own["key"] = instance_key
            key = instance_key
            mapped = False  # a new state: replace() maps it
        elif instance_key is not key and key != instance_key:
            _switch_key(session, state, instance_key)
            key = instance_key
            mapped = False
        else:
            # an updated state is usually the one mapped under its key
            mapped = map_dict is not None and map_dict.get(key) is state
        old = None
        if not mapped:
            if map_dict is None:
                unmapped = False
            elif cython.compiled:
                unmapped = _map_if_unmapped(map_dict, key, state)
            else:
                # (uncompiled, the call would cost more than a second hash)
                unmapped = map_dict.get(key) is None
                if unmapped:
                    map_dict[key] = state
            if unmapped:
                # WeakIdentityMapCore.replace() of a key no state was mapped under
                if (
                    own is not None
                    and stores_own(type(state), "_instance_dict", cython.address(_instance_dict_site))
                ):
                    own["_instance_dict"] = map_ref
                else:
                    state._instance_dict = map_ref
                if state.modified if own is None else own_entry(own, state, "modified"):
                    map_modified.add(state)
            else:
                old = replace(state)
        if (
            old is not None
            and old.obj() is not None
            and mapper._identity_key_from_state(old, _PASSIVE_NO_FETCH)
            == instance_key
        ):
            warn(
                "Identity map already had an identity for %s, "
                "replacing it with newly flushed object.   Are there "
                "load operations occurring inside of an event handler "
                "within the flush?" % (instance_key,)
            )
        if own is None:
            state._orphaned_outside_of_session = False
        else:
            own["_orphaned_outside_of_session"] = False

    commit_all_states(zip(committing, committing_dicts), identity_map)

    new: dict = session._new
    was_new: list = []
    was_dirty: list = []
    transaction = session._transaction
    if transaction:
        for state in states:
            if state in new:
                was_new.append(state)
            else:
                was_dirty.append(state)
        if was_new:
            _mark_states(transaction, "_new", was_new)
        if was_dirty:
            _mark_states(transaction, "_dirty", was_dirty)

    if len(states) == 1:
        # one state (a one-object flush): the intersections below are a
        # membership test each, without the two sets
        for state in states:
            if state in new:
                if pending_to_persistent is not None:
                    pending_to_persistent(session, state)
                new.pop(state)
        return

    if pending_to_persistent is not None:
        for state in states.intersection(new):
            pending_to_persistent(session, state)

    # remove from new last, it might hold the last strong reference
    for state in set(states).intersection(new):
        new.pop(state)


def remove_newly_deleted(session, states):
    """``Session._remove_newly_deleted``: flushed deletes become deleted."""
    persistent_to_deleted = session.dispatch.persistent_to_deleted
    if not _has_listeners(persistent_to_deleted):
        persistent_to_deleted = None
    identity_map = session.identity_map
    deleted = session._deleted
    transaction = session._transaction
    if persistent_to_deleted is None:
        # no listener runs in between: the transaction's marks go in at once
        if transaction:
            _mark_states(transaction, "_deleted", list(states))
        discards_as_core = getattr(identity_map, "discards_as_core", None)
        if (
            type(deleted) is dict
            and discards_as_core is not None
            and discards_as_core()
        ):
            identity_map.discard_deleted(states, deleted)
            return
        for state in states:
            identity_map.safe_discard(state)
            deleted.pop(state, None)
            state._deleted = True
        return
    for state in states:
        if transaction:
            transaction._deleted[state] = True
        # a strong reference before the state leaves _deleted
        obj = state.obj()  # noqa: F841
        identity_map.safe_discard(state)
        deleted.pop(state, None)
        state._deleted = True
        persistent_to_deleted(session, state)


def _orphan_plan(mapper):
    """How ``mapper._is_orphan`` is answered for its states: False when it
    cannot be true (no mapper up its hierarchy is the target of a
    delete-orphan relationship); else ``(legacy_is_orphan, parent tokens)``,
    the ``id`` of each delete-orphan attribute's parent token in stock's
    order, whose ``hasparent`` flags are read here; True where stock's
    method is called (it, ``ClassManager.has_parent`` or an attribute's
    ``hasparent`` is not stock's, an attribute does not track parents, a
    class is not mapped: stock raises)."""
    if type(mapper).iterate_to_root is _STOCK_ITERATE_TO_ROOT:
        # what stock's generator yields, without it (asked for every flush)
        m = mapper
        while m is not None and not m._delete_orphans:
            m = m.inherits
        if m is None:
            return False
    elif not any(m._delete_orphans for m in mapper.iterate_to_root()):
        return False
    if type(mapper)._is_orphan is not _STOCK_IS_ORPHAN:
        return True
    tokens = []
    for m in mapper.iterate_to_root():
        for key, cls in m._delete_orphans:
            manager = attributes.opt_manager_of_class(cls)
            if manager is None or type(manager).has_parent is not _STOCK_HAS_PARENT:
                return True
            impl = manager.get_impl(key)
            if type(impl).hasparent is not _STOCK_HASPARENT or not impl.trackparent:
                return True
            tokens.append(id(impl.parent_token))
    return bool(mapper.legacy_is_orphan), tuple(tokens)


@cython.cfunc
@cython.exceptval(-1, check=False)
def _is_orphan(mapper, state, plan) -> cython.bint:
    """``mapper._is_orphan(state)`` following ``_orphan_plan(mapper)``:
    each delete-orphan parent's ``hasparent`` flag on the state (missing:
    True for a persisted state, False for a new one)."""
    if plan is False:
        return False
    if plan is True or type(state) is not _InstanceState:
        return bool(mapper._is_orphan(state))
    legacy: cython.bint = plan[0]
    optimistic: cython.bint = state.key is not None
    parents: dict = state.parents
    has_parent: cython.bint
    for token in plan[1]:
        has_parent = parents.get(token, optimistic) is not False
        if legacy and has_parent:
            return False
        if not legacy and not has_parent:
            return True
    return legacy


def flush_parent(sub, session):
    """The transaction a flush's subtransaction ``sub`` asks for its
    connection, when that can be done without stock's calls (the
    subtransaction holds none, ``get_bind`` and the transaction's methods
    are stock's), else None (``flush_connection``)."""
    if (
        sub._state is _ACTIVE
        and type(sub) is _TurboTransaction
        and not sub.nested
        and not sub._connections
        and type(session).get_bind is _STOCK_GET_BIND
        and "get_bind" not in session.__dict__
    ):
        parent = sub._parent
        if parent is not None and parent._state is _ACTIVE and _transaction._stock_methods():
            return parent
    return None


def flush_bind(session, mapper):
    """``session.get_bind(mapper)`` where ``flush_parent`` has found it
    stock's: its first case (the session's own bind) without the call."""
    bind = session.bind
    if session.binds or not bind:
        return session.get_bind(mapper)
    return bind


def flush_connection(uow, mapper):
    """``uow.transaction.connection(mapper)``, as a flush's save and
    delete steps ask it.

    The subtransaction holds no connection: stock's call asks the
    session's ``get_bind`` for the mapper's bind, then the parent for its
    connection to it.  Where ``flush_parent`` finds that this can be done
    without stock's calls (no code of the application runs in between),
    this returns the parent's connection directly, or, when the parent is
    the root transaction and has none yet (the transaction's first
    connection), acquires it as stock's ``_connection_for_bind`` does
    (``provision``); else it is stock's call."""
    session = uow.session
    sub = uow.transaction
    # held_connection's lookup, its parent and bind kept for the first
    # connection (asked once, as stock's call asks get_bind once)
    parent = flush_parent(sub, session)
    if parent is not None:
        bind = flush_bind(session, mapper)
        entry = parent._connections.get(bind)
        if entry is not None:
            return entry[0]
        if parent._parent is None and provisions_directly(session, bind):
            # the root transaction holds no connection to the bind yet
            return provision(session, parent, bind, None, sub)
    return sub.connection(mapper)


def provisions_directly(session, bind) -> cython.bint:
    """Whether ``provision`` acquires the connection to ``bind`` as
    stock's ``_connection_for_bind`` of the root transaction would."""
    return not session.twophase and not isinstance(bind, _Connection)


def provision(session, root, bind, execution_options, sub=None):
    """``root._connection_for_bind(bind, execution_options)`` of an active
    root transaction of a session that is not two-phase, for an engine
    (not a connection) it holds no connection to; with ``sub``, as the
    flush's subtransaction ``sub`` asks it (``sub.connection(mapper)``).

    Stock's steps in stock's order: connect (engine and pool events),
    the session's and the call's execution options, begin (or take the
    transaction a listener of the connection began), register the
    connection, ``after_begin``.  While they run, the transaction (and
    ``sub``) is in the state and has the marks (method in progress, state
    expected next) that stock's wrappers leave on it, so that what a
    listener asks of the session is refused or allowed as in stock; they
    are put back however the steps end.  Counted in
    ``transaction.stats()["first_connections"]``."""
    _transaction._first_connections["fast"] += 1
    sub_next_state = sub_current_fn = None
    if sub is not None:
        sub_next_state = sub._next_state
        sub_current_fn = sub._current_fn
        _set_marks(sub, _PROVISIONING, _CHANGING, _CONNECTION_FOR_BIND_FN)
    root_next_state = root._next_state
    root_current_fn = root._current_fn
    _set_marks(root, _PROVISIONING, _CHANGING, _CONNECTION_FOR_BIND_FN)
    try:
        conn = bind.connect()
        try:
            options = session.execution_options
            if options or execution_options:
                merged: dict = {}
                if options:
                    merged.update(options)
                if execution_options:
                    merged.update(execution_options)
                conn = conn.execution_options(**merged)
            if conn.in_transaction():
                db_trans = conn.get_transaction()
                assert db_trans is not None
            else:
                db_trans = conn.begin()
        except BaseException:
            # as stock: not associated with the session, closed now
            conn.close()
            raise
        connections: dict = root._connections
        entry = (conn, db_trans, True, True)
        connections[conn] = entry
        connections[conn.engine] = entry
        event = session.dispatch.after_begin
        if type(event) is not _EMPTY_LISTENER or event.parent_listeners:
            event(session, root, conn)
        return conn
    finally:
        if sub is not None:
            _set_marks(sub, _ACTIVE, sub_next_state, sub_current_fn)
        _set_marks(root, _ACTIVE, root_next_state, root_current_fn)


@cython.cfunc
def _set_marks(trans, state, next_state, current_fn):
    """A transaction's method in progress, state expected next and state
    (``provision``'s marks, and putting them back)."""
    trans._current_fn = current_fn
    trans._next_state = next_state
    trans._state = state


def held_connection(uow, mapper):
    """The connection ``flush_connection`` returns without
    stock's call, found in the transaction the flush's subtransaction
    asks (nothing of the application runs and nothing changes while it is
    looked up), or None when it has none to the bind or the lookup has to
    be stock's call.  Asked by every flush's save and delete steps."""
    session = uow.session
    parent = flush_parent(uow.transaction, session)
    if parent is None:
        return None
    entry = parent._connections.get(flush_bind(session, mapper))
    return None if entry is None else entry[0]


@cython.cclass
class _Registrar:
    """``UOWTransaction.register_object(state, isdelete)`` from the flush,
    with the session's and unit of work's containers looked up once.

    Session membership is stock's ``_contains_state`` (in ``_new``, or the
    identity map's own state for its key) unless the session's class or
    the session itself overrides it, in which case that override is asked."""

    uow: object
    new: dict
    contains_state: object
    map_dict: dict  # turbosession's map's dict, read as contains_state reads it
    session_contains: object
    states: dict
    mappers: object
    # mapper -> its set in ``mappers`` (a defaultdict's value, never
    # replaced once made), added to without the defaultdict's lookups and
    # a call of the set's ``add``
    of_mapper: dict

    def __init__(self, session, uow):
        self.uow = uow
        self.of_mapper = {}
        if (
            type(session)._contains_state is _stock_contains_state
            and "_contains_state" not in session.__dict__
        ):
            self.new = session._new
            identity_map = session.identity_map
            self.contains_state = identity_map.contains_state
            contains_dict = getattr(identity_map, "contains_dict", None)
            self.map_dict = None if contains_dict is None else contains_dict()
            self.session_contains = None
        else:
            self.session_contains = session._contains_state
        self.states = uow.states
        self.mappers = uow.mappers

    @cython.cfunc
    @cython.exceptval(-1, check=False)
    def register(self, state, isdelete: cython.bint) -> cython.bint:
        if self.session_contains is None:
            if state not in self.new and not (
                self.map_dict.get(_state_key(state) if cython.compiled else state.key)
                is state
                if self.map_dict is not None
                else self.contains_state(state)
            ):
                return False
        elif not self.session_contains(state):
            return False
        if state not in self.states:
            mapper = _state_mapper(state) if cython.compiled else state.manager.mapper
            found = self.of_mapper.get(mapper)
            if found is None:
                if mapper not in self.mappers:
                    self.uow._per_mapper_flush_actions(mapper)
                found = self.mappers[mapper]
                if type(found) is set:
                    self.of_mapper[mapper] = found
            if type(found) is set:
                of_mapper: set = found
                of_mapper.add(state)
            else:
                found.add(state)
            self.states[state] = _DELETE_ENTRY if isdelete else _SAVE_ENTRY
        elif isdelete:
            self.states[state] = _DELETE_ENTRY
        return True


def register_saves(session, uow, states, processed: set):
    """The save half of ``Session._flush``'s registration loop.

    Pending orphans outside of the session are expunged, persistent orphans
    registered as deletes, the rest as saves (and added to ``processed``);
    ``_is_orphan`` is answered here (``_orphan_plan``).
    """
    registrar: _Registrar = _Registrar(session, uow)
    orphan_plans: dict = {}
    is_orphan: cython.bint
    is_persistent_orphan: cython.bint
    for state in states:
        mapper = _state_mapper(state) if cython.compiled else state.manager.mapper
        plan = orphan_plans.get(mapper)
        if plan is None:
            plan = orphan_plans[mapper] = _orphan_plan(mapper)
        is_orphan = _is_orphan(mapper, state, plan)
        is_persistent_orphan = is_orphan and bool(state.has_identity)
        if is_orphan and not is_persistent_orphan and state._orphaned_outside_of_session:
            session._expunge_states([state])
        else:
            registered = registrar.register(state, is_persistent_orphan)
            assert registered, "Failed to add object to the flush context!"
            processed.add(state)


def register_deletes(session, uow, states):
    """The delete half of ``Session._flush``'s registration loop."""
    registrar: _Registrar = _Registrar(session, uow)
    for state in states:
        registered = registrar.register(state, True)
        assert registered, "Failed to add object to the flush context!"


@cython.cfunc
def _same_keys(a: dict, b: dict) -> cython.bint:
    """``set(a) == set(b)`` without building either set."""
    if len(a) != len(b):
        return False
    for key in a:
        if key not in b:
            return False
    return True


def batches(records):
    """``itertools.groupby`` of INSERT/UPDATE records as stock's emitters
    group them (connection, parameter keys, SQL-expression values, the two
    flags), each batch as a list.  As with stock's ``list(group)``, a batch
    is handed on once the first record of the next one has been collected.
    Records are compared with the batch's first one, so no key is built
    per record; each part first by identity, as the comparison of stock's
    key tuples compares their items.
    """
    batch: list = None
    first: tuple = None
    for record in records:
        if (
            batch is not None
            and (record[4] is first[4] or record[4] == first[4])
            and _same_keys(record[2], first[2])
            and bool(record[5]) == bool(first[5])
            and (record[6] is first[6] or record[6] == first[6])
            and (record[7] is first[7] or record[7] == first[7])
        ):
            batch.append(record)
            continue
        if batch is not None:
            yield _batch_key(first), batch
        first = record
        batch = [record]
    if batch is not None:
        yield _batch_key(first), batch


@cython.cfunc
def _batch_key(record: tuple) -> tuple:
    return (record[4], set(record[2]), bool(record[5]), record[6], record[7])


def _identity_value(state):
    """The sort key of a persistent state whose primary key columns' types
    have no ``sort_key_function``: its identity key's values."""
    return state.key[1]


@cython.cfunc
def _persistent_by_integer(pending: set, persistent: set) -> dict:
    """Stock's ``{s for s in pending if s.key is not None}`` into
    ``persistent``, in its order; returned, those states by their
    identity's one value while each is an int no other has, else None.
    Sorting those ints gives the order sorting their 1-tuples gives (with
    no ties, stability plays no part), comparing ints instead of tuples
    and calling no key function.  Compiled only: uncompiled, this loop
    costs more than the comprehension and the key function."""
    by_integer: dict = {}
    for state in pending:
        key = state.key
        if key is None:
            continue
        persistent.add(state)
        if by_integer is not None:
            values = key[1] if type(key) is tuple and len(key) > 1 else None
            if type(values) is tuple and len(values) == 1 and type(values[0]) is int:
                by_integer[values[0]] = state
            else:
                by_integer = None
    if by_integer is not None and len(by_integer) != len(persistent):
        return None
    return by_integer


@cython.cfunc
@cython.inline
def _integer_identity(state) -> object:
    """The one value of a persistent state's identity when it is an int,
    else None (a pending state, or any other identity)."""
    key = _state_key(state)
    if type(key) is not tuple or len(key) < 2:
        return None
    values = key[1]
    if type(values) is not tuple or len(values) != 1 or type(values[0]) is not int:
        return None
    return values[0]


@cython.cfunc
def _sorted_by_integer(states: list) -> list:
    """``sort_states`` of a list of persistent states whose identities are
    each one int no other state has (what the flush of loaded rows has),
    or None for ``sort_states``' own steps.  Such states sort as their
    ints do, whatever the order of the set stock builds (a list already in
    that order is given back as it is, without the sort); no set is made.
    Compiled only, as ``_persistent_by_integer``."""
    by_integer: dict = {}
    ascending: cython.bint = True
    last = None
    for state in states:
        value = _integer_identity(state)
        if value is None:
            return None
        if ascending and last is not None and not value > last:
            ascending = False
        last = value
        by_integer[value] = state
    if len(by_integer) != len(states):
        return None  # one state twice, or two with one identity
    if ascending:
        return list(states)
    return [by_integer[value] for value in sorted(by_integer)]


_INSERT_ORDER = cython.declare(object, operator.attrgetter("insert_order"))


def sort_states(states, sortkey):
    """``persistence._sort_states``: the new states in the order they were
    added, then the persistent ones by primary key (``sortkey`` the
    mapper's ``_persistent_sortkey_fn``, or None where that only reads the
    identity key's values).  The sets are built as stock builds them, so
    states with equal keys come in stock's order."""
    if type(states) is list and len(states) == 1:
        # one state: stock's sorts give it back after reading its key for
        # the sort it is in (a pending state's ``insert_order``, or the
        # identity key's values: a ``sortkey`` of the mapper's is called
        # below, as stock calls it)
        state = states[0]
        if state.key is None:
            state.insert_order
            return [state]
        if sortkey is None:
            return [state]
    if cython.compiled and sortkey is None and type(states) is list:
        ordered: list = _sorted_by_integer(states)
        if ordered is not None:
            return ordered
    pending: set = set(states)
    persistent: set
    by_integer: dict = None
    if cython.compiled and sortkey is None:
        persistent = set()
        by_integer = _persistent_by_integer(pending, persistent)
    else:
        persistent = {s for s in pending if s.key is not None}
    pending.difference_update(persistent)
    if by_integer is not None:
        return sorted(pending, key=_INSERT_ORDER) + [
            by_integer[value] for value in sorted(by_integer)
        ]
    try:
        persistent_sorted: list = sorted(
            persistent, key=_identity_value if sortkey is None else sortkey
        )
    except TypeError as err:
        raise sa_exc.InvalidRequestError(
            "Could not sort objects by primary key; primary key "
            "values must be sortable in Python (was: %s)" % err
        ) from err
    return sorted(pending, key=_INSERT_ORDER) + persistent_sorted


def has_new(states) -> cython.bint:
    """Whether a state among ``states`` has no identity key yet."""
    for state in states:
        if state.key is None:
            return True
    return False


def mapper_runs(records, index: cython.Py_ssize_t) -> list:
    """Consecutive records of one mapper and one connection (``index`` is
    where a record keeps its mapper; its connection follows it), as
    ``(mapper, connection, records)`` (mappers and connections compare by
    identity)."""
    runs: list = []
    run: list = None
    mapper = None
    connection = None
    record: tuple
    for record in records:
        if run is None or record[index] is not mapper or record[index + 1] is not connection:
            mapper = record[index]
            connection = record[index + 1]
            run = []
            runs.append((mapper, connection, run))
        run.append(record)
    return runs
