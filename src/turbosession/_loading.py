"""Loading: ``Session.get()`` answered from the identity map, or loaded with
a statement built once per mapper.

``session_get`` is turbosession's ``Session.get``.  ``_get_hit`` is what
``Session.get(entity, ident)`` returns when stock's ``_get_impl`` would find
the object in the identity map and return it without SQL: the common case
of an application asking again for an object it already has.  It follows stock's steps (``inspect(entity)``, the key
``(mapper._identity_class, tuple(ident), identity_token)``, the session's
``identity_map.get``, ``state.expired``) but skips the generality that does
not apply to a plain mapped class and a scalar or tuple identity.  Every
case it does not decide exactly as stock does (an expired or
refreshed object, a dict or other identity, an aliased entity, a mismatched
class or arity, a session overriding the lookup) returns ``NOT_HANDLED``
with a reason counted in ``counts()`` and logged at DEBUG (the reasons are
``turbosession.loads.FALLBACK_REASONS``); ``session_get`` then runs stock's
``get``, which repeats the lookup (it has no side effects) and does the rest.

A miss (the identity is not in the map) is loaded by ``_load_miss`` when nothing
of the call or the session changes stock's primary-key load: no identity
token, no ``None`` in the identity, no session-wide execution options, no
``do_orm_execute`` listener.  It executes what stock's
``loading._load_on_pk_identity`` would build for this call, ``select(mapper)``
with the mapper's ``_get_clause`` criteria and stock's compile options,
built once per mapper and kept among the mapper's memoized attributes (so
SQLAlchemy drops it when it reconfigures the mapper), with the primary-key
values as the same parameters and the same execution options, through the
session's own ``execute``.  Reusing one statement object also reuses its
memoized cache key, which stock recomputes for its new statement every call.
"""

from __future__ import annotations

import logging
import types
import weakref

from sqlalchemy import exc as sa_exc
from sqlalchemy import inspection, sql, util
from sqlalchemy.orm import decl_api, instrumentation, loading
from sqlalchemy.orm import exc as orm_exc
from sqlalchemy.orm import session as orm_session
from sqlalchemy.orm import util as orm_util
from sqlalchemy.orm.context import QueryContext, _ORMCompileState
from sqlalchemy.orm.mapper import Mapper
from sqlalchemy.sql import coercions, roles
from sqlalchemy.sql.base import CompileState
from sqlalchemy.sql.selectable import Select, SelectState
from sqlalchemy.util import EMPTY_DICT, immutabledict

from turbosession import emission, loads
from turbosession.classes import data_descriptor
from turbosession.transaction import connection_for_bind as _connection_for_bind
from turbosession.loads import NOT_HANDLED

from . import listeners as _listeners

try:
    import cython
except ModuleNotFoundError:
    from turbosession import _cython_shim as cython

if cython.compiled:
    from cython.cimports.cpython.dict import PyDict_GetItem
    from cython.cimports.cpython.object import PyObject, PyTypeObject
    from cython.cimports.cpython.type import PyType_Check
    from cython.cimports.turbosession._cpython import (
        ListenerSites,
        has_listeners,
        address,
        getset_get,
        instance_dict,
        ref_target,
        state_object,
        type_version_tag,
    )
else:
    from .listeners import has_listeners
    ListenerSites = None  # the declaration below is plain None

__all__ = ["counts", "execute_counts", "reset_counts", "session_execute_internal", "session_get"]


def _is_compiled():
    return cython.compiled


_log = logging.getLogger("turbosession")
_DEBUG = logging.DEBUG

_STOCK_GET_IMPL = orm_session.Session._get_impl
_STOCK_IDENTITY_LOOKUP = orm_session.Session._identity_lookup
_STOCK_GET_FROM_IDENTITY = loading.get_from_identity
_STOCK_LOAD_ON_PK_IDENTITY = loading._load_on_pk_identity
_NoResultFound = orm_exc.NoResultFound
_STOCK_EXECUTE = orm_session.Session.execute
_STOCK_EXECUTE_INTERNAL = orm_session.Session._execute_internal
_STOCK_PRE_SESSION_EXEC = _ORMCompileState.orm_pre_session_exec.__func__
_STOCK_EXECUTE_STATEMENT = _ORMCompileState.orm_execute_statement.__func__
_STOCK_SETUP_CURSOR_RESULT = _ORMCompileState.orm_setup_cursor_result.__func__
_STOCK_EXPECT = coercions.expect
# the names the session module reads coercions.expect from
_SESSION_COERCIONS_NAMES = cython.declare(dict, orm_session.coercions.__dict__)
_STOCK_IDENTITY_KEY = Mapper.identity_key_from_primary_key
_DEFAULT_OPT_MANAGER = instrumentation._default_opt_manager_getter
# inspect() of a class: both return class_manager.mapper for a mapped class
_INSPECT_CLASS = (orm_util._inspect_mc, decl_api._inspect_decl_meta)
_MANAGER_ATTR = "_sa_class_manager"

# module namespaces read directly: a patched function is seen there, and a
# dict lookup is far cheaper than a module attribute lookup
_LOADING_NAMES = cython.declare(dict, loading.__dict__)
_ORM_UTIL_NAMES = cython.declare(dict, orm_util.__dict__)

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


# metaclass -> whether inspect() of its classes is one of _INSPECT_CLASS
_plain_metaclasses = cython.declare(dict, {})

# compiled only, the last class _plan_of answered for, by its version tag
# (unique to one class with its attributes as they were: see _cpython.pxd),
# its metaclass's id and a weak reference to the plan its manager holds (so
# no unmapped class or mapper is kept alive here)
_last_plan_tag = cython.declare(cython.uint, 0)
_last_plan_metaclass = cython.declare(cython.Py_ssize_t, 0)
_last_plan_ref = cython.declare(object, None)
# compiled only, the version tag of the last session class whose
# _get_impl and _identity_lookup were found to be stock's, and whether its
# sessions' identity_map is read from their __dict__ (_reads_from_dict)
_last_session_tag = cython.declare(cython.uint, 0)
_last_session_direct = cython.declare(cython.bint, False)

# compiled only: the compiled identity map's class, the getset descriptor
# of its ``_dict`` (whose C getter a get() hit calls instead of the
# attribute lookup, and of ``map.get``'s method call), and the version tag
# of that class when its ``get`` was last found to be the compiled one
_FAST_MAP = cython.declare(object, None)
_FAST_MAP_DICT = cython.declare(object, None)
_CORE_MAP_GET = cython.declare(object, None)
_fast_map_tag = cython.declare(cython.uint, 0)
if cython.compiled:
    from turbosession import _identity

    if _identity._is_compiled():
        _FAST_MAP = _identity.WeakIdentityMap
        _FAST_MAP_DICT = _identity.WeakIdentityMapCore.__dict__.get("_dict")
        _CORE_MAP_GET = _identity.WeakIdentityMapCore.get
        if type(_FAST_MAP_DICT) is not types.GetSetDescriptorType:
            _FAST_MAP = None

_gets_fast = cython.declare(cython.Py_ssize_t, 0)
_gets_loaded = cython.declare(cython.Py_ssize_t, 0)
_gets_direct = cython.declare(cython.Py_ssize_t, 0)
_gets_cursor = cython.declare(cython.Py_ssize_t, 0)
_get_fallbacks = cython.declare(dict, {})
_cursor_fallbacks = cython.declare(dict, {})
_executes_direct = cython.declare(cython.Py_ssize_t, 0)
_execute_fallbacks = cython.declare(dict, {})


def counts():
    """``{"fast": n, "loaded": n, "direct": n, "cursor": n, "fallback":
    {reason: n}, "cursor_fallback": {reason: n}}`` for ``get()`` calls so
    far: answered from the identity map, loaded by ``_load_miss`` (of which
    ``direct`` without ``session.execute``, see ``_execute``, and of those
    ``cursor`` straight through the DBAPI cursor, see ``_CursorLoad``, the
    others by reason), and run by stock's ``get``."""
    return {"fast": _gets_fast, "loaded": _gets_loaded, "direct": _gets_direct,
            "cursor": _gets_cursor, "fallback": dict(_get_fallbacks),
            "cursor_fallback": dict(_cursor_fallbacks)}


def reset_counts():
    global _gets_fast, _gets_loaded, _gets_direct, _gets_cursor
    _gets_fast = 0
    _gets_loaded = 0
    _gets_direct = 0
    _gets_cursor = 0
    _get_fallbacks.clear()
    _cursor_fallbacks.clear()
    reset_execute_counts()


def execute_counts():
    """``{"direct": n, "fallback": {reason: n}}`` for ``Session.execute`` /
    ``scalars`` / ``scalar`` calls so far: run without the per-call setup of
    stock's ``_execute_internal`` (``session_execute_internal``), or by stock's
    ``_execute_internal`` (reasons in ``loads.EXECUTE_FALLBACK_REASONS``)."""
    return {"direct": _executes_direct, "fallback": dict(_execute_fallbacks)}


def reset_execute_counts():
    global _executes_direct
    _executes_direct = 0
    _execute_fallbacks.clear()


@cython.cfunc
def _cursor_fallback(reason: str) -> cython.void:
    _cursor_fallbacks[reason] = _cursor_fallbacks.get(reason, 0) + 1
    if _log.isEnabledFor(_DEBUG):
        _log.debug(
            "get() miss runs Core's execution: %s (%s)",
            reason, loads.CURSOR_FALLBACK_REASONS[reason],
        )


@cython.cfunc
def _fallback(reason: str) -> object:
    _get_fallbacks[reason] = _get_fallbacks.get(reason, 0) + 1
    if _log.isEnabledFor(_DEBUG):
        _log.debug("get() runs stock's: %s (%s)", reason, loads.FALLBACK_REASONS[reason])
    return NOT_HANDLED


def _inspects_as_mapped_class(metaclass) -> bool:
    """Whether ``inspect(cls)`` of a class of this metaclass is SQLAlchemy's
    (which, for a mapped class, returns its manager's mapper)."""
    registrars = inspection._registrars
    for cls in metaclass.__mro__:
        registrar = registrars.get(cls)
        if registrar is not None:
            return registrar in _INSPECT_CLASS
    return False


@cython.cfunc
@cython.inline
def _own_manager(entity) -> object:
    """``entity.__dict__.get(_MANAGER_ATTR)``, what ``opt_manager_of_class`` does.

    Compiled, the class's dict is read directly instead of through a new
    mappingproxy and a method call.
    """
    if not cython.compiled:
        return entity.__dict__.get(_MANAGER_ATTR)
    if not PyType_Check(entity):
        return None
    class_dict: cython.pointer(PyObject) = cython.cast(
        cython.pointer(PyTypeObject), entity
    ).tp_dict
    if class_dict is cython.NULL:
        return None
    manager: cython.pointer(PyObject) = PyDict_GetItem(
        cython.cast(object, class_dict), _MANAGER_ATTR
    )
    if manager is cython.NULL:
        return None
    return cython.cast(object, manager)


@cython.cclass
class _GetPlan:
    """What ``get()`` reads of a mapped class's mapper, kept on its manager.

    A ClassManager gets its mapper once and keeps it until it is removed
    from the class (``unregister``); the mapper's class, identity class,
    primary key and ``always_refresh`` are set when the mapper is built, so
    the plan lives as long as the manager and needs no invalidation.
    ``inherits`` is read from the mapper on each call (a concrete base can
    be set during configuration).
    """

    mapper = cython.declare(object)
    identity_class = cython.declare(object)
    class_ = cython.declare(object)
    pk_length = cython.declare(cython.Py_ssize_t)
    always_refresh = cython.declare(cython.bint)
    __weakref__: object

    def __init__(self, mapper):
        self.mapper = mapper
        self.identity_class = mapper._identity_class
        self.class_ = mapper.class_
        self.pk_length = len(mapper.primary_key)
        self.always_refresh = bool(mapper.always_refresh)


# one attribute per implementation: tests run both in one process
_PLAN_ATTR = "_turbosession_get_plan_compiled" if cython.compiled else "_turbosession_get_plan_pure"


@cython.cfunc
def _plan_of(entity) -> object:
    """The plan of ``inspect(entity)`` for a plain mapped class; None when
    the entity is anything else (stock's get then decides)."""
    metaclass = type(entity)
    tag: cython.uint = 0
    if cython.compiled and PyType_Check(entity):
        tag = type_version_tag(entity)
        if (
            tag != 0
            and tag == _last_plan_tag
            and address(metaclass) == _last_plan_metaclass
            and _ORM_UTIL_NAMES.get("opt_manager_of_class") is _DEFAULT_OPT_MANAGER
        ):
            plan = ref_target(_last_plan_ref)
            if plan is not None:
                return plan
    plain = _plain_metaclasses.get(metaclass)
    if plain is None:
        plain = isinstance(entity, type) and _inspects_as_mapped_class(metaclass)
        _plain_metaclasses[metaclass] = plain
    if not plain or _ORM_UTIL_NAMES.get("opt_manager_of_class") is not _DEFAULT_OPT_MANAGER:
        return None
    manager = _own_manager(entity)
    if manager is None:
        return None
    plan = getattr(manager, _PLAN_ATTR, None)
    if plan is None:
        try:
            # the mapper once mapped (None after unregister); raises before
            mapper = manager.mapper
        except Exception:
            return None
        if mapper is None or type(mapper).identity_key_from_primary_key is not _STOCK_IDENTITY_KEY:
            return None
        plan = _GetPlan(mapper)
        setattr(manager, _PLAN_ATTR, plan)
    if tag != 0:
        _keep_plan(entity, tag, metaclass, plan)
    return plan


@cython.cfunc
def _keep_plan(entity, tag: cython.uint, metaclass, plan):
    """Compiled, ``plan`` kept as the last class's, with the tag read before
    ``_plan_of``'s lookups, and only if they left it as it was (a class
    changed meanwhile has another)."""
    global _last_plan_tag, _last_plan_metaclass, _last_plan_ref
    if type_version_tag(entity) == tag:
        _last_plan_tag = tag
        _last_plan_metaclass = address(metaclass)
        _last_plan_ref = weakref.ref(plan)


def _reads_from_dict(cls, name) -> cython.bint:
    """Whether ``getattr(obj, name)`` on an instance of ``cls`` returns
    ``obj.__dict__[name]`` when that is present: ``object``'s
    ``__getattribute__`` and no data descriptor of that name on the class."""
    return cls.__getattribute__ is object.__getattribute__ and not data_descriptor(cls, name)


@cython.cfunc
@cython.exceptval(-2, check=False)
def _session_verdict(session) -> cython.int:
    """-1 when stock's ``_get_impl``, ``_identity_lookup`` or
    ``loading.get_from_identity`` is not the one that would run (stock's
    ``get`` then answers); else 1 when the session's ``identity_map`` may be
    read from its ``__dict__`` (compiled, ``_reads_from_dict``), 0 when it is
    read as an attribute."""
    global _last_session_tag, _last_session_direct
    if _LOADING_NAMES.get("get_from_identity") is not _STOCK_GET_FROM_IDENTITY:
        return -1
    cls = type(session)
    if not cython.compiled:
        if (
            cls._get_impl is not _STOCK_GET_IMPL
            or cls._identity_lookup is not _STOCK_IDENTITY_LOOKUP
        ):
            return -1
        attrs = session.__dict__
        if "_get_impl" in attrs or "_identity_lookup" in attrs:
            return -1
        return 0
    # compiled: the class's verdicts kept by its version tag
    tag: cython.uint = type_version_tag(cls)
    direct: cython.bint
    if tag != 0 and tag == _last_session_tag:
        direct = _last_session_direct
    else:
        if (
            cls._get_impl is not _STOCK_GET_IMPL
            or cls._identity_lookup is not _STOCK_IDENTITY_LOOKUP
        ):
            return -1
        direct = _reads_from_dict(cls, "identity_map")
        # as in _plan_of: kept only if the lookups left the tag as it was
        if tag != 0 and type_version_tag(cls) == tag:
            _last_session_tag = tag
            _last_session_direct = direct
    attrs = instance_dict(session)
    if attrs is None:
        attrs = session.__dict__
    if "_get_impl" in attrs or "_identity_lookup" in attrs:
        return -1
    return 1 if direct else 0


@cython.cfunc
def _identity_map_of(session, direct: cython.int) -> object:
    """``session.identity_map``, compiled from the session's ``__dict__``
    when ``_session_verdict`` allowed it and it is there."""
    if cython.compiled and direct == 1:
        attrs = instance_dict(session)
        if attrs is not None:
            found: cython.pointer(PyObject) = PyDict_GetItem(attrs, "identity_map")
            if found is not cython.NULL:
                return cython.cast(object, found)
    return session.identity_map


@cython.cfunc
def _map_states(identity_map) -> object:
    """Compiled, the dict of states by key that ``identity_map.get`` reads
    (``WeakIdentityMapCore.get``), read through its C getter; None when
    ``get`` is to be called: another class of map, another ``get`` on its
    class or on the map itself, or not compiled."""
    global _fast_map_tag
    if not cython.compiled or _FAST_MAP is None or type(identity_map) is not _FAST_MAP:
        return None
    tag: cython.uint = type_version_tag(_FAST_MAP)
    if tag == 0 or tag != _fast_map_tag:
        if _FAST_MAP.get is not _CORE_MAP_GET:
            return None
        if tag != 0 and type_version_tag(_FAST_MAP) == tag:
            _fast_map_tag = tag
    attrs = instance_dict(identity_map)
    if attrs is not None and PyDict_GetItem(attrs, "get") is not cython.NULL:
        return None
    states = getset_get(_FAST_MAP_DICT, identity_map)
    return states if type(states) is dict else None


def session_get(
    self,
    entity,
    ident,
    *,
    options=None,
    populate_existing=None,
    with_for_update=None,
    identity_token=None,
    execution_options=EMPTY_DICT,
    bind_arguments=None,
):
    """``TurboSessionMixin.get``: an identity-map hit answered and a miss
    loaded here, anything else by stock's ``get`` (the next one in the
    session's MRO).

    It is the method itself (compiled, a C function) rather than a Python
    method calling into this module: for a hit, that call was a third of
    the cost.
    """
    if (
        options is None
        and populate_existing is None
        and with_for_update is None
        and execution_options is EMPTY_DICT
        and bind_arguments is None
    ):
        instance = _get_hit(self, entity, ident, identity_token)
        if instance is not NOT_HANDLED:
            return instance
    else:
        loads.record_get_option()
    from turbosession.session import TurboSessionMixin

    return super(TurboSessionMixin, self).get(
        entity,
        ident,
        options=options,
        populate_existing=populate_existing,
        with_for_update=with_for_update,
        identity_token=identity_token,
        execution_options=execution_options,
        bind_arguments=bind_arguments,
    )


@cython.cfunc
def _get_hit(session, entity, ident, identity_token) -> object:
    """The object stock's ``get(entity, ident, identity_token=...)`` returns
    from the identity map, or ``NOT_HANDLED`` (counted) for stock's ``get``."""
    global _gets_fast
    verdict: cython.int = _session_verdict(session)
    if verdict < 0:
        return _fallback("get_overridden")
    plan_object = _plan_of(entity)
    if plan_object is None:
        return _fallback("get_entity")
    plan: _GetPlan = plan_object
    ident_type = type(ident)
    if ident_type is tuple:
        pk = ident
    elif ident_type is int or ident_type is str:
        pk = (ident,)
    else:
        return _fallback("get_ident")
    if len(pk) != plan.pk_length:
        return _fallback("get_ident")
    if plan.always_refresh:
        return _fallback("get_class")
    key = (plan.identity_class, pk, identity_token)
    # read where stock's get_from_identity reads it, after the checks above
    if cython.compiled:
        identity_map = _identity_map_of(session, verdict)
        states = _map_states(identity_map)
    else:
        identity_map = session.identity_map
        states = None
    if states is None:
        instance = identity_map.get(key)
        if instance is None:
            return _load_miss(session, plan.mapper, pk, identity_token)
        state = instance._sa_instance_state
    else:
        # what WeakIdentityMapCore.get does (an unhashable key raises as
        # there), and the state it found: the object's _sa_instance_state
        states_dict: dict = states
        state = states_dict.get(key)
        if state is None:
            return _load_miss(session, plan.mapper, pk, identity_token)
        instance = state_object(state)
        if instance is None:
            return _load_miss(session, plan.mapper, pk, identity_token)
    if state.expired:
        return _fallback("get_expired")
    mapper = plan.mapper
    if mapper.inherits is not None and not state.mapper.isa(mapper):
        return _fallback("get_class")
    if not isinstance(instance, plan.class_):
        return _fallback("get_class")
    _gets_fast += 1
    return instance


# a plain tuple, so both implementations share it
_LOAD_ATTR = loads.GET_LOAD_ATTR


def _build_load(mapper):
    """``(statement, bind names, execution options, execution)``: what stock's
    ``_load_on_pk_identity`` builds for ``get(entity, ident)`` without
    options, from ``select(mapper)``, for any identity without ``None``;
    ``execution`` is what stock's ``Session.execute`` decides of that
    statement and those options before it runs it (``_execution_of``), or
    None when ``_load_miss`` is to call ``session.execute`` itself."""
    statement = sql.select(mapper)
    query = statement._clone()
    if statement._compile_options is SelectState.default_select_compile_options:
        compile_options = _ORMCompileState.default_compile_options
    else:
        compile_options = statement._compile_options
    get_clause, get_params = mapper._get_clause
    query._where_criteria = (get_clause,)
    query._compile_options = compile_options
    query._order_by = None
    bind_names = tuple([get_params[column].key for column in mapper.primary_key])
    execution_options = EMPTY_DICT.merge_with(
        EMPTY_DICT, immutabledict(_sa_orm_load_options=QueryContext.default_load_options)
    )
    return (
        query, bind_names, execution_options, _execution_of(query, execution_options), {}
    )


def _execution_of(statement, execution_options):
    """``(compile state class, execution options, autoflush, bind arguments)``
    as stock's ``Session._execute_internal`` computes them for this statement
    and these execution options in a session without execution options or
    ``do_orm_execute`` listeners: the statement's ORM compile state class,
    the options its ``orm_pre_session_exec`` returns, whether that autoflushes,
    and the bind arguments it fills in.  All depend on the statement and the
    options only (both built once per mapper), so they are decided once; None
    when the statement is not one this applies to."""
    if coercions.expect(roles.StatementRole, statement) is not statement:
        return None
    if statement._propagate_attrs.get("compile_state_plugin", None) != "orm":
        return None
    compile_state_cls = CompileState._get_plugin_class_for_plugin(statement, "orm")
    if compile_state_cls is None or not _stock_orm_execution(compile_state_cls):
        return None
    if util.coerce_to_immutabledict(execution_options) is not execution_options:
        return None
    bind_arguments = {}
    # the pass stock makes ahead of do_orm_execute listeners: the same
    # options, without the autoflush (decided here from the load options)
    statement_out, options, params = compile_state_cls.orm_pre_session_exec(
        None, statement, None, execution_options, bind_arguments, True
    )
    if statement_out is not statement or params is not None:
        return None
    # the load options orm_pre_session_exec reads its autoflush from
    load_options, _ = QueryContext.default_load_options.from_execution_options(
        "_sa_orm_load_options",
        {"populate_existing", "autoflush", "yield_per", "identity_token",
         "sa_top_level_orm_context"},
        execution_options,
        statement._execution_options,
    )
    autoflush = bool(load_options._autoflush)
    return (compile_state_cls, options, autoflush, tuple(bind_arguments.items()))


def _stock_orm_execution(compile_state_cls) -> bool:
    return (
        compile_state_cls.orm_pre_session_exec.__func__ is _STOCK_PRE_SESSION_EXEC
        and compile_state_cls.orm_execute_statement.__func__ is _STOCK_EXECUTE_STATEMENT
        and compile_state_cls.orm_setup_cursor_result.__func__ is _STOCK_SETUP_CURSOR_RESULT
    )


@cython.cfunc
def _load_of(mapper) -> tuple:
    load = mapper.__dict__.get(_LOAD_ATTR)
    if load is None:
        load = _build_load(mapper)
        # kept only with its execution decided: for select(mapper) that is
        # None only while something stock's execution calls is patched
        # (_execution_of), which must not outlive the patch
        if load[3] is not None:
            mapper._set_memoized_attribute(_LOAD_ATTR, load)
    return load


@cython.cfunc
def _load_miss(session, mapper, pk: tuple, identity_token) -> object:
    """What stock's ``get()`` returns for an identity not in the identity
    map: the object loaded by primary key, or None.  ``NOT_HANDLED``
    (counted) when the call or the session is one this does not load
    exactly as stock does."""
    global _gets_loaded, _gets_direct
    if identity_token is not None:
        return _fallback("get_identity_token")
    if None in pk:
        return _fallback("get_ident")
    if session.execution_options:
        return _fallback("get_session_options")
    if _has_listeners(session.dispatch.do_orm_execute):
        return _fallback("get_orm_execute")
    if _LOADING_NAMES.get("_load_on_pk_identity") is not _STOCK_LOAD_ON_PK_IDENTITY:
        # stock's get() loads with whatever loading._load_on_pk_identity is
        return _fallback("get_overridden")
    # stock's select(mapper) configures pending mappers (which may reset
    # this mapper's memoized attributes) before the statement is built
    mapper._check_configure()
    load: tuple = _load_of(mapper)
    statement, bind_names, execution_options, execution, cursor_loads = load
    i: cython.Py_ssize_t
    params = {}
    for i in range(len(pk)):
        params[bind_names[i]] = pk[i]
    if execution is not None and _executes_as_stock(session, execution[0]):
        _gets_direct += 1
        _gets_loaded += 1
        return _execute(session, mapper, statement, bind_names, params, execution, cursor_loads)
    result = session.execute(
        statement,
        params=params,
        execution_options=execution_options,
        bind_arguments=None,
    )
    _gets_loaded += 1
    return _one_or_none(result)


@cython.cfunc
def _one_or_none(result) -> object:
    """``_load_on_pk_identity``'s end: ``result.unique().scalars().one()``,
    None for no row."""
    try:
        return result.unique().scalars().one()
    except _NoResultFound:
        return None


# Session.execute / scalars / scalar (``TurboSessionMixin._execute_internal``)

_EXECUTION_ATTR = "_turbosession_execution"
"""The memoized attribute of a ``Select`` (dropped from its generative
copies, as its memoized cache key is) that keeps what stock's
``_execute_internal`` decides of it: pairs ``(execution options,
execution)``, one per immutable execution options object it was executed
with (``EMPTY_DICT`` for none; AsyncSession's ``execute`` always passes one
constant), each ``execution`` ``(compile state class, execution options,
autoflush, mapper)``, or False when the statement is not an ORM select this
applies to."""

_EXECUTIONS_KEPT = 4

# the mixin, and each bundle's _execute_internal (set by turbosession.session)
_MIXIN = cython.declare(object, None)
_SESSION_EXECUTE_INTERNALS = cython.declare(tuple, ())


# the mixin's _is_clean and _connection_for_bind (set with it)
_MIXIN_IS_CLEAN = cython.declare(object, None)
_MIXIN_CONNECTION_FOR_BIND = cython.declare(object, None)
_STOCK_AUTOFLUSH = orm_session.Session._autoflush
_STOCK_FLUSH = orm_session.Session.flush
_STOCK_FLUSHING = cython.declare(tuple, ("_autoflush", "flush", "_is_clean"))


def set_session_classes(mixin, execute_internals: tuple):
    global _MIXIN, _SESSION_EXECUTE_INTERNALS, _MIXIN_IS_CLEAN, _MIXIN_CONNECTION_FOR_BIND
    _MIXIN = mixin
    _SESSION_EXECUTE_INTERNALS = execute_internals
    _MIXIN_IS_CLEAN = mixin.__dict__["_is_clean"]
    _MIXIN_CONNECTION_FOR_BIND = mixin.__dict__["_connection_for_bind"]


@cython.cfunc
def _autoflush(session) -> cython.void:
    """``session._autoflush()``, as the ORM's execution calls it; when the
    session's class leaves ``_autoflush`` and ``flush`` stock's and
    ``_is_clean`` the mixin's (and the instance overrides none of them),
    the call is skipped where stock's would return without doing
    anything: autoflush on, not flushing, and ``_is_clean()`` (which has
    no side effects) true, as ``flush`` asks it."""
    cls = type(session)
    if (
        cls._autoflush is _STOCK_AUTOFLUSH
        and cls.flush is _STOCK_FLUSH
        and cls._is_clean is _MIXIN_IS_CLEAN
    ):
        attrs = session.__dict__
        i: cython.Py_ssize_t
        for i in range(3):
            if _STOCK_FLUSHING[i] in attrs:
                session._autoflush()
                return
        if (
            session.autoflush
            and not session._flushing
            and session._turbo.tracking.is_clean(
                session.identity_map, session._new, session._deleted
            )
        ):
            return
    session._autoflush()


@cython.cfunc
def _connection_for(session, bind) -> object:
    """``session._connection_for_bind(bind)``: with the mixin's method (not
    overridden by the class or the instance), what it runs, called
    directly (``transaction.connection_for_bind``, else stock's method)."""
    if (
        type(session)._connection_for_bind is _MIXIN_CONNECTION_FOR_BIND
        and "_connection_for_bind" not in session.__dict__
    ):
        conn = _connection_for_bind(session, bind, None)
        if conn is None:
            return super(_MIXIN, session)._connection_for_bind(bind, None)
        return conn
    return session._connection_for_bind(bind)


@cython.cfunc
def _execute_internal_is_stock(cls) -> cython.bint:
    """Whether the class's ``_execute_internal`` runs stock's: stock's
    itself, or turbosession's with stock's the next one after the mixin."""
    method = cls._execute_internal
    if method is _STOCK_EXECUTE_INTERNAL:
        return True
    if method not in _SESSION_EXECUTE_INTERNALS:
        return False
    return _stock_above_mixin(cls)


@cython.cfunc
def _stock_above_mixin(cls) -> cython.bint:
    """Whether the ``_execute_internal`` after turbosession's mixin in the
    class's MRO is stock's (a subclass's own, below the mixin, has run when
    turbosession's is called through its ``super()``)."""
    return super(_MIXIN, cls)._execute_internal is _STOCK_EXECUTE_INTERNAL


@cython.cfunc
def _execute_fallback(reason: str) -> object:
    _execute_fallbacks[reason] = _execute_fallbacks.get(reason, 0) + 1
    if _log.isEnabledFor(_DEBUG):
        _log.debug(
            "execute() runs stock's _execute_internal: %s (%s)",
            reason, loads.EXECUTE_FALLBACK_REASONS[reason],
        )
    return None


def _statement_execution(statement, execution_options):
    """What ``_EXECUTION_ATTR`` keeps for ``statement`` executed with these
    options (see there)."""
    execution = _execution_of(statement, execution_options)
    if execution is None:
        return False
    compile_state_cls, options, autoflush, bind_items = execution
    names = tuple([name for name, _ in bind_items])
    if bind_items[0][1] is not statement or names not in (("clause",), ("clause", "mapper")):
        return False
    mapper = bind_items[1][1] if len(names) == 2 else None
    return (compile_state_cls, options, autoflush, mapper)


@cython.cfunc
def _direct_execution(
    session, statement, execution_options, bind_arguments, parent_state, add_event
) -> object:
    """What stock's ``_execute_internal`` would decide of this call, kept
    with the statement (``_EXECUTION_ATTR``), or None (counted)."""
    if type(statement) is not Select:
        return _execute_fallback("execute_statement")
    if parent_state is not None or add_event is not None or bind_arguments:
        return _execute_fallback("execute_options")
    if not execution_options:
        # what stock's coerce_to_immutabledict makes of it
        execution_options = EMPTY_DICT
    elif type(execution_options) is not immutabledict:
        return _execute_fallback("execute_options")
    if session.execution_options:
        return _execute_fallback("execute_session_options")
    if _has_listeners(session.dispatch.do_orm_execute):
        return _execute_fallback("execute_orm_execute")
    attrs = statement.__dict__
    kept = attrs.get(_EXECUTION_ATTR)
    execution = None
    if kept is not None:
        for pair in kept:
            if pair[0] is execution_options:
                execution = pair[1]
                break
    if execution is None:
        if "_generate_cache_key" not in attrs:
            # never compiled: deciding would cost what stock's setup costs
            return _execute_fallback("execute_first")
        if kept is not None and len(kept) >= _EXECUTIONS_KEPT:
            return _execute_fallback("execute_options")
        execution = _statement_execution(statement, execution_options)
        pairs = ((execution_options, execution),)
        statement._set_memoized_attribute(
            _EXECUTION_ATTR, pairs if kept is None else kept + pairs
        )
    if execution is False:
        return _execute_fallback("execute_statement")
    if (
        not _stock_above_mixin(type(session))
        or _SESSION_COERCIONS_NAMES.get("expect") is not _STOCK_EXPECT
        or not _stock_orm_execution(execution[0])
    ):
        return _execute_fallback("execute_overridden")
    return execution


def session_execute_internal(
    self,
    statement,
    params=None,
    *,
    execution_options=EMPTY_DICT,
    bind_arguments=None,
    _parent_execute_state=None,
    _add_event=None,
    _scalar_result=False,
):
    """``TurboSessionMixin._execute_internal``, what ``Session.execute``,
    ``scalars`` and ``scalar`` (and legacy ``Query``) call: for an ORM
    ``select()`` executed before, with no execution options or the same
    immutable ones, without bind arguments, session execution options or
    ``do_orm_execute`` listeners, the steps of stock's
    ``_execute_internal`` with what it decides of the statement read from
    the statement's ``_EXECUTION_ATTR``: the autoflush of
    ``orm_pre_session_exec``, the session's ``get_bind`` with the same
    arguments, its connection, the compile state's
    ``orm_execute_statement``; anything else by stock's (the next one in
    the session's MRO)."""
    global _executes_direct
    execution = _direct_execution(
        self, statement, execution_options, bind_arguments, _parent_execute_state, _add_event
    )
    if execution is None:
        return super(_MIXIN, self)._execute_internal(
            statement,
            params,
            execution_options=execution_options,
            bind_arguments=bind_arguments,
            _parent_execute_state=_parent_execute_state,
            _add_event=_add_event,
            _scalar_result=_scalar_result,
        )
    compile_state_cls, options, autoflush, mapper = execution
    if autoflush:
        _autoflush(self)
    if mapper is None:
        bind_arguments = {"clause": statement}
    else:
        bind_arguments = {"clause": statement, "mapper": mapper}
    bind = self.get_bind(**bind_arguments)
    conn = _connection_for(self, bind)
    _executes_direct += 1
    result = compile_state_cls.orm_execute_statement(
        self, statement, params or {}, options, bind_arguments, conn
    )
    if _scalar_result:
        return result.scalar()
    return result


@cython.cfunc
def _executes_as_stock(session, compile_state_cls) -> cython.bint:
    """Whether ``session.execute`` of the get statement is stock's: the
    session's class and the instance leave ``execute`` and
    ``_execute_internal`` stock's, the compile state class its
    ``orm_pre_session_exec`` and ``orm_execute_statement``, and the session
    module calls stock's ``coercions.expect`` (this is checked per call:
    the session's execution options and ``do_orm_execute`` listeners were
    checked by the caller)."""
    cls = type(session)
    if cls.execute is not _STOCK_EXECUTE or not _execute_internal_is_stock(cls):
        return False
    attrs = session.__dict__
    if "execute" in attrs or "_execute_internal" in attrs:
        return False
    if _SESSION_COERCIONS_NAMES.get("expect") is not _STOCK_EXPECT:
        return False
    return _stock_orm_execution(compile_state_cls)


@cython.cfunc
def _execute(
    session, mapper, statement, bind_names: tuple, params: dict, execution: tuple,
    cursor_loads: dict,
) -> object:
    """What ``session.execute(statement, params, execution_options=...)
    .unique().scalars().one()`` (None for no row) returns, as stock's
    ``Session._execute_internal`` runs it for the get statement in a
    session without execution options or ``do_orm_execute`` listeners, with
    what it decides of the statement and the options taken from
    ``execution`` (``_execution_of``): the autoflush ``orm_pre_session_exec``
    makes, the session's ``get_bind`` with the same bind arguments, its
    connection for that bind; then the statement straight through the DBAPI
    cursor (``_CursorLoad``) when nothing can tell, else the compile state's
    ``orm_execute_statement``."""
    global _gets_cursor
    compile_state_cls, options, autoflush, bind_items = execution
    if autoflush:
        _autoflush(session)
    bind_arguments = dict(bind_items)
    bind = session.get_bind(**bind_arguments)
    conn = _connection_for(session, bind)
    dialect = conn.dialect
    plan = cursor_loads.get(dialect)
    if type(plan) is _CursorLoad:
        cursor_load: _CursorLoad = plan
        reason = cursor_load.reason(mapper, conn, session._turbo.emit)
        if reason is None:
            _gets_cursor += 1
            return cursor_load.load(session, conn, params)
    elif plan is None:
        reason = "cursor_first"
    else:
        reason = plan
    _cursor_fallback(reason)
    result = compile_state_cls.orm_execute_statement(
        session, statement, params, options, bind_arguments, conn
    )
    if plan is None:
        if len(cursor_loads) >= _CURSOR_LOADS_KEPT:
            # dialects of engines gone: not kept alive by the mapper for long
            cursor_loads.clear()
        made = loads.cursor_load(mapper, result, bind_names, dialect)
        cursor_loads[dialect] = made if type(made) is str else _CursorLoad(made)
    return _one_or_none(result)


_CURSOR_LOADS_KEPT = 8


_new_runid = loading._new_runid
_warn_for_runid_changed = loading._warn_for_runid_changed
_MultipleResultsFound = sa_exc.MultipleResultsFound


@cython.cclass
class _CursorLoad:
    """A get statement sent straight to the DBAPI cursor and its rows made
    into objects, as stock's execution does it for the statement, when
    nothing can tell the difference (``reason``).

    Core's ``Connection.execute`` of the compiled statement, on a connection
    ``emission`` finds plain (no events, no echo, execution options that
    change nothing, an active transaction, the dialect's execution as
    shipped), sends the compiled string with the parameters through the bind
    processors (``emission``'s plan, ``_emit.dbapi_parameters``) to a new
    cursor, reads its description, and, once the ORM fetches, all rows, then
    closes the cursor; the ORM's ``instances`` turns each row (through the
    result processors of the compiled statement's cached metadata) into an
    object with the row getters and populators stock's
    ``_instance_processor`` cached in the compiled statement's compile state
    (read here from that statement: ``loads.cursor_load``), and
    ``unique().scalars().one()`` returns the one object.  ``load`` does the
    same with the same calls, for the shapes ``loads.cursor_load`` admits:
    one plain mapper, populators of columns, deferred columns and class-level
    lazy loaders only (no eager or per-query loaders, no post-load), no
    load or refresh listeners.
    """

    statement = cython.declare(str)
    parameters = cython.declare(tuple)
    sequence = cython.declare(object)
    processors = cython.declare(tuple)
    primary_key_getter = cython.declare(object)
    is_not_primary_key = cython.declare(object)
    identity_class = cython.declare(object)
    manager = cython.declare(object)
    quick = cython.declare(list)
    expire = cython.declare(list)
    expired_keys = cython.declare(tuple)
    new = cython.declare(list)
    load_path = cython.declare(object)
    instance_state = cython.declare(object)
    instance_dict = cython.declare(object)
    loading_functions = cython.declare(tuple)

    def __init__(self, made: dict):
        self.parameters = made["parameters"]
        self.statement = self.parameters[0]
        self.sequence = made["sequence"]
        self.processors = made["processors"]
        self.primary_key_getter = made["primary_key_getter"]
        self.is_not_primary_key = made["is_not_primary_key"]
        self.identity_class = made["identity_class"]
        self.manager = made["manager"]
        self.quick = made["quick"]
        self.expire = made["expire"]
        self.expired_keys = tuple([key for key, flag in self.expire if flag])
        self.new = made["new"]
        self.load_path = made["load_path"]
        self.instance_state = made["instance_state"]
        self.instance_dict = made["instance_dict"]
        self.loading_functions = made["loading_functions"]

    @cython.ccall
    def reason(self, mapper, conn, emit) -> object:
        """Why this miss must go through Core's execution, or None."""
        reason = emission._connection_reason(conn, emit)
        if reason is not None:
            return reason
        dispatch = self.manager.dispatch
        if _has_listeners(dispatch.load) or _has_listeners(dispatch.refresh):
            return "cursor_events"
        names = loads.LOADING_FUNCTIONS
        i: cython.Py_ssize_t
        for i in range(len(names)):
            if _LOADING_NAMES.get(names[i]) is not self.loading_functions[i]:
                return "cursor_loading"
        return None

    @cython.ccall
    def load(self, session, conn, params: dict) -> object:
        """The object of the one row, None for no row (stock's
        ``NoResultFound``, caught by ``_load_on_pk_identity``);
        ``MultipleResultsFound`` for rows of more than one object."""
        rows = [params]
        parameters = emission._dbapi_parameters(session._turbo.emit, conn, self.parameters, rows)[0]
        statement = self.statement
        try:
            cursor = conn._dbapi_connection.cursor()
        except BaseException as e:
            conn._handle_dbapi_exception(e, statement, rows, None, None)
        try:
            cursor.execute(statement, parameters)
            cursor.description
        except BaseException as e:
            conn._handle_dbapi_exception(
                e, statement, parameters, cursor, session._turbo.emit._Execution(False)
            )
        # the ORM's instances() takes a run id before it fetches
        runid = _new_runid()
        try:
            fetched = cursor.fetchall()
        except BaseException as e:
            conn._handle_dbapi_exception(
                e, None, None, cursor, session._turbo.emit._Execution(False)
            )
        conn._safe_close_cursor(cursor)
        n: cython.Py_ssize_t = len(fetched)
        if n == 0:
            return None
        partials: dict = {}
        if n == 1:
            return self._instance(session, self._row(fetched[0]), runid, partials)
        objects = [self._instance(session, self._row(raw), runid, partials) for raw in fetched]
        seen = {id(obj) for obj in objects}
        if len(seen) > 1:
            raise _MultipleResultsFound("Multiple rows were found when exactly one was required")
        return objects[0]

    @cython.cfunc
    def _row(self, raw) -> object:
        """The row as ``CursorResult._raw_all_tuples`` hands it to the ORM:
        through the result processors, as a tuple."""
        processors = self.processors
        if processors is None:
            if type(raw) is tuple:
                return raw
            return tuple(raw)
        values = list(raw)
        i: cython.Py_ssize_t
        for i in range(len(processors)):
            processor = processors[i]
            if processor is not None:
                values[i] = processor(values[i])
        return tuple(values)

    @cython.cfunc
    def _instance(self, session, row: tuple, runid, partials: dict) -> object:
        """Stock's ``_instance`` closure for this row of a get statement
        (no refresh, no populate_existing, no version check, no identity
        token, no post-load, no eager populators)."""
        identity_map = session.identity_map
        identitykey = (self.identity_class, self.primary_key_getter(row), None)
        instance = identity_map.get(identitykey)
        if instance is not None:
            state = self.instance_state(instance)
            dict_ = self.instance_dict(instance)
            if state.runid == runid:
                # a later row of an object of this load: no "existing" populators
                return instance
            self._populate_partial(state, dict_, row, partials)
            return instance
        if self.is_not_primary_key(identitykey[1]):
            return None
        instance = self.manager.new_instance()
        dict_ = self.instance_dict(instance)
        state = self.instance_state(instance)
        state.key = identitykey
        state.identity_token = None
        state.session_id = session.hash_key
        identity_map._add_unpresent(state, identitykey)
        state.load_options = _EMPTY_OPTIONS
        state.load_path = self.load_path
        state.runid = runid
        for key, getter in self.quick:
            dict_[key] = getter(row)
        if self.expired_keys:
            expired = state.expired_attributes
            for key in self.expired_keys:
                expired.add(key)
        for key, populator in self.new:
            populator(state, dict_, row)
        if _has_listeners(session.dispatch.loaded_as_persistent):
            existing_runid = state.runid
            session.dispatch.loaded_as_persistent(session, state)
            if state.runid != existing_runid:
                _warn_for_runid_changed(state)
        if state.modified:
            state._commit_all(dict_, identity_map)
        return instance

    @cython.cfunc
    def _populate_partial(self, state, dict_: dict, row: tuple, partials: dict) -> cython.void:
        """Stock's ``_populate_partial`` for an object already in the
        identity map (one autoflush put there), and the commit of what it
        loaded."""
        unloaded = state.unloaded
        if state not in partials:
            if not unloaded:
                return
            partials[state] = unloaded
            for key, getter in self.quick:
                if key in unloaded:
                    dict_[key] = getter(row)
            for key, set_callable in self.expire:
                if key in unloaded:
                    dict_.pop(key, None)
                    if set_callable:
                        state.expired_attributes.add(key)
            for key, populator in self.new:
                if key in unloaded:
                    populator(state, dict_, row)
            state._commit(dict_, unloaded)
        elif unloaded:
            for key, getter in self.quick:
                if key in unloaded:
                    dict_[key] = getter(row)


# what a QueryContext's propagated_loader_options are for a statement without options
_EMPTY_OPTIONS = cython.declare(tuple, ())
