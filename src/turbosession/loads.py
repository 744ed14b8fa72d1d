"""What loading took turbosession's path, and what fell back to stock's.

``stats()`` reports, per kind of load, how many took turbosession's path
(``fast``) and how many ran stock's code instead, by reason.  The per-call
counters live in the hot-path modules themselves (a C counter when compiled)
and are added up here over both implementations, since tests run both in one
process; ``get()`` with options is counted here.  Each fallback is logged at
DEBUG on the ``turbosession`` logger, as the flush fallbacks are.
"""

import logging

from sqlalchemy.engine import cursor as engine_cursor
from sqlalchemy.orm import attributes, loading, strategies
from sqlalchemy.orm.context import _MapperEntity, _ORMSelectCompileState
from sqlalchemy.orm.interfaces import MapperProperty, StrategizedProperty

from . import emission

__all__ = [
    "CURSOR_FALLBACK_REASONS",
    "EXECUTE_FALLBACK_REASONS",
    "FALLBACK_REASONS",
    "NOT_HANDLED",
    "reset_stats",
    "stats",
]

log = logging.getLogger("turbosession")


class _NotHandled:
    __slots__ = ()

    def __repr__(self):
        return "NOT_HANDLED"


NOT_HANDLED = _NotHandled()
"""Returned by a hot path that leaves the call to stock's code."""

GET_LOAD_ATTR = "_turbosession_get_load"
"""The memoized attribute of a mapper (SQLAlchemy drops it when it
reconfigures the mapper) that keeps ``get()``'s primary-key load: the tuple
``(statement, bind names, execution options, execution, cursor loads)`` built
by ``_loading`` (``cursor loads``: per dialect, the ``cursor_load`` plan or
the reason there is none)."""

FALLBACK_REASONS = {
    "get_overridden": "the session's class or instance overrides _get_impl or "
    "_identity_lookup, or loading.get_from_identity (or, on a miss, "
    "loading._load_on_pk_identity) is patched",
    "get_entity": "the entity is not a plain mapped class (a mapper, an alias, "
    "unmapped, or custom class instrumentation)",
    "get_ident": "the identity is not an int, a str or a tuple (a dict, None, "
    "a composite, another type), or its length is not the primary key's, or "
    "(on a miss) it has a None",
    "get_identity_token": "a miss with an identity_token: stock loads the row",
    "get_session_options": "a miss in a session with execution_options: stock "
    "loads the row",
    "get_orm_execute": "a miss in a session with do_orm_execute listeners: stock "
    "loads the row",
    "get_expired": "the object is expired: stock reloads it",
    "get_class": "always_refresh, or the object found is not of the entity's class",
    "get_options": "get() was given options, populate_existing, with_for_update, "
    "execution_options or bind_arguments",
}

CURSOR_FALLBACK_REASONS = dict(
    emission.FALLBACK_REASONS,
    cursor_first="the first miss of the mapper on this dialect: stock's execution "
    "runs it and sets up what the cursor load reads (compiled statement, row getters)",
    cursor_events="the mapper's class has load or refresh listeners (they are "
    "given the query context)",
    cursor_loading="sqlalchemy.orm.loading's instances, _instance_processor, "
    "_populate_full or _populate_partial is not the one the plan was made with",
    cursor_loaders="a property's row processor is not a column's or an inert "
    "lazy loader's (eager, noload, dynamic, write-only, query_expression ...)",
    cursor_polymorphic="the mapper is polymorphic or inherits",
    cursor_result="the compiled statement's result metadata is not cached or "
    "filtered, or the dialect's execution context fetches rows its own way",
    cursor_statement="the compiled statement is not a plain single-entity "
    "SELECT whose only parameters are the primary key's",
)
"""Why a miss ``_loading`` loads without ``session.execute`` still goes through
Core and the ORM's result (``orm_execute_statement``) instead of straight to
the DBAPI cursor; ``emission``'s reasons are the connection's."""

EXECUTE_FALLBACK_REASONS = {
    "execute_statement": "the statement is not an ORM select() (a Core or DML "
    "statement, a compound select, text, a legacy Query's own object ...)",
    "execute_options": "bind arguments, execution options other than an "
    "immutabledict (or one of more than four the statement was executed with) "
    "were given, or the call comes from a do_orm_execute listener "
    "(ORMExecuteState.invoke_statement)",
    "execute_session_options": "the session has execution_options",
    "execute_orm_execute": "the session has do_orm_execute listeners",
    "execute_first": "the statement object was never compiled: stock's setup "
    "runs (and computes its cache key); a statement executed again takes the "
    "direct path",
    "execute_overridden": "_execute_internal above turbosession's mixin, "
    "coercions.expect in sqlalchemy.orm.session, or the compile state's "
    "orm_pre_session_exec / orm_execute_statement / orm_setup_cursor_result "
    "is not stock's",
}
"""Why a ``Session.execute`` / ``scalars`` / ``scalar`` call runs stock's
``_execute_internal`` instead of turbosession's direct execution."""

# the functions of sqlalchemy.orm.loading stock's load of a miss runs
LOADING_FUNCTIONS = ("instances", "_instance_processor", "_populate_full", "_populate_partial")


def _inert_row_processor(prop):
    """Whether the property's row processor, for a query without options
    and without populate_existing, adds nothing to the populators: a
    descriptor property's (``MapperProperty``'s, which does nothing) or a
    class-level lazy loader's (``_LazyLoader`` sets up a per-instance
    callable only when it is not the class's, and resets only under
    populate_existing)."""
    method = type(prop).create_row_processor
    if method is MapperProperty.create_row_processor:
        return True
    strategy = getattr(prop, "strategy", None)
    return (
        method is StrategizedProperty.create_row_processor
        and type(strategy) is strategies._LazyLoader
        and strategy.is_class_level
    )


def cursor_load(mapper, result, bind_names, dialect):
    """What ``_loading``'s cursor load of a miss reads, from stock's result
    of the same statement on the same dialect (``result``, before anything
    is fetched from it): the compiled statement's string and parameters
    (``emission``'s plan), its cached result metadata's processors, and the
    row getters and populators stock's ``_instance_processor`` cached in its
    compile state; or the reason (``CURSOR_FALLBACK_REASONS``) the miss is
    to keep stock's execution.  Made once per mapper and dialect, kept with
    the mapper's memoized get load."""
    context = getattr(getattr(result, "raw", None), "context", None)
    compiled = getattr(context, "compiled", None)
    compile_state = getattr(compiled, "compile_state", None)
    if type(compile_state) is not _ORMSelectCompileState or len(compile_state._entities) != 1:
        return "cursor_statement"
    entity = compile_state._entities[0]
    if (
        type(entity) is not _MapperEntity
        or entity.mapper is not mapper
        or entity.entity_zero is not mapper
        or compile_state.current_path.path
        or compile_state.compound_eager_adapter is not None
        or compile_state.multi_row_eager_loaders
        or compile_state.eager_adding_joins
    ):
        return "cursor_statement"
    if mapper.polymorphic_map or mapper.inherits is not None or entity._with_polymorphic_mappers:
        return "cursor_polymorphic"
    path = entity.path
    getters = compile_state.attributes.get((("getters", mapper), path.natural_path))
    if getters is None or getters["primary_key_getter"] is None:
        return "cursor_statement"
    populators = getters["cached_populators"]
    if populators["eager"] or populators["existing"] or populators["deferred"] or not all(
        _inert_row_processor(prop) for prop in getters["todo"]
    ):
        return "cursor_loaders"
    metadata = compiled._cached_metadata
    execution_context = dialect.execution_ctx_cls
    if (
        metadata is None
        or metadata._tuplefilter is not None
        or execution_context.cursor_fetch_strategy is not engine_cursor._DEFAULT_FETCH
    ):
        return "cursor_result"
    if emission._binds_reason(compiled, {}):
        return "cursor_statement"
    parameters = emission._parameters_plan(compiled, frozenset(bind_names))
    if type(parameters) is str:
        return "cursor_statement"
    processors = metadata._effective_processors
    if processors is not None:
        processors = tuple(processors)
        if not any(processor is not None for processor in processors):
            processors = None
    return dict(
        parameters=parameters,
        sequence=dialect.execute_sequence_format,
        processors=processors,
        primary_key_getter=getters["primary_key_getter"],
        is_not_primary_key=(
            loading._none_set.issuperset
            if mapper.allow_partial_pks
            else loading._none_set.intersection
        ),
        identity_class=mapper._identity_class,
        manager=mapper.class_manager,
        quick=populators["quick"],
        expire=populators["expire"],
        new=populators["new"],
        load_path=path,
        instance_state=attributes.instance_state,
        instance_dict=attributes.instance_dict,
        loading_functions=tuple(loading.__dict__[name] for name in LOADING_FUNCTIONS),
    )


_get_options = 0


def record_get_option():
    global _get_options
    _get_options += 1
    if log.isEnabledFor(logging.DEBUG):
        log.debug("get() runs stock's: get_options (%s)", FALLBACK_REASONS["get_options"])


def _bundles():
    from . import _impl

    return [bundle for bundle in (_impl.compiled, _impl.pure) if bundle is not None]


def stats():
    """``{"get": {"fast": n, "loaded": n, "direct": n, "cursor": n,
    "fallback": {reason: n}, "cursor_fallback": {reason: n}},
    "instances": {"fast": n, "fallback": {reason: n}, "rows": n,
    "rows_to_stock": n, "collections": n, "scalars": n, "collections_to_stock":
    {reason: n}, "setup": {"cached": n, "stock": {reason: n}}}, "execute": {"direct": n, "fallback": {reason: n}}}`` over both implementations: ``get`` counts calls
    answered from the identity map (``fast``), misses loaded with
    turbosession's per-mapper statement (``loaded``; ``direct``: of those, the
    ones run without ``Session.execute``'s per-call setup, which was decided
    once per mapper; ``cursor``: of those, the ones sent straight to the DBAPI
    cursor, the others under ``cursor_fallback`` by reason,
    ``CURSOR_FALLBACK_REASONS``) and calls run by stock's
    ``get`` (by reason); ``instances`` counts query entities whose rows took
    turbosession's loop (``fast``) or stock's closure (by reason), the rows
    that loop handled or handed to stock's closure, and the eager loaders'
    collection and scalar steps done on the loop (``collections``,
    ``scalars``) or not (by reason,
    ``_instances.COLLECTION_FALLBACK_REASONS``), and (``setup``) the query
    entities whose loader was built from the compiled statement's cached
    setup without stock's ``_instance_processor`` or not (by reason,
    ``instances.SETUP_REASONS``); ``execute`` counts
    ``Session.execute`` / ``scalars`` / ``scalar`` calls run without stock's
    ``_execute_internal`` setup (``direct``) or by it (by reason,
    ``EXECUTE_FALLBACK_REASONS``)."""
    get = {"fast": 0, "loaded": 0, "direct": 0, "cursor": 0}
    fallback = {"get_options": _get_options} if _get_options else {}
    cursor_fallback = {}
    for bundle in _bundles():
        counts = bundle.loading.counts()
        for key in get:
            get[key] += counts[key]
        for reason, n in counts["fallback"].items():
            fallback[reason] = fallback.get(reason, 0) + n
        for reason, n in counts["cursor_fallback"].items():
            cursor_fallback[reason] = cursor_fallback.get(reason, 0) + n
    get["fallback"] = fallback
    get["cursor_fallback"] = cursor_fallback
    execute = {"direct": 0}
    execute_fallback = {}
    for bundle in _bundles():
        counts = bundle.loading.execute_counts()
        execute["direct"] += counts["direct"]
        for reason, n in counts["fallback"].items():
            execute_fallback[reason] = execute_fallback.get(reason, 0) + n
    execute["fallback"] = execute_fallback
    from . import instances

    rows = instances.counts()
    rows["rows"] = rows["rows_to_stock"] = rows["collections"] = rows["scalars"] = 0
    rows["collections_to_stock"] = {}
    for bundle in _bundles():
        for key, n in bundle.instances.counts().items():
            if isinstance(n, dict):
                for reason, m in n.items():
                    rows[key][reason] = rows[key].get(reason, 0) + m
            else:
                rows[key] += n
    rows["setup"] = instances.setup_counts()
    return {"get": get, "execute": execute, "instances": rows}


def reset_stats():
    global _get_options
    _get_options = 0
    from . import instances

    instances.reset_counts()
    for bundle in _bundles():
        bundle.loading.reset_counts()
        bundle.instances.reset_counts()
