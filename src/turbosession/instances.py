"""The hook on ``sqlalchemy.orm.loading._instance_processor``: which queries
load their rows through turbosession's loop.

SQLAlchemy has no per-session seam for row processing: the query entities
(``_MapperEntity.row_processor``), the joined eager loader and the
polymorphic switch call ``loading._instance_processor`` as a module global.
``install()`` (run when turbosession is imported) puts ``instance_processor``
there.  It always calls stock's function first, unchanged, and returns its
closure as is unless the query runs in a turbosession session (an instance of
``TurboSessionMixin``): every other session gets exactly what stock gives it.

For a turbosession session whose compiled statement already has the
entity's ``RowSetup`` (below) and whose entity has only column populators,
stock's function is not called: the bundle's ``loader_cached`` builds the
loader from that setup and the execution's values (``_cached_loader``,
counted in ``setup_counts()``), and stock's closure is made only for a row
the loop hands to it.  Otherwise stock's function runs first and the
decision is made here, once per query entity and in Python.  The primary-key load of a ``get()`` miss (the statement
``_loading`` keeps on the mapper, ``loads.GET_LOAD_ATTR``) keeps stock's
closure: it loads one row, and building the loop over the closure costs more
than the loop saves on one row (callgrind).  Otherwise a query of the covered
shape gets the implementation bundle's
``instances.RowLoader`` built over stock's closure (which it reads its
per-query setup from and hands the rows it does not cover to); any other gets
stock's closure, counted under a reason of ``FALLBACK_REASONS`` and logged at
DEBUG on the ``turbosession`` logger.  What of the loop's setup is the same
for every execution of a compiled statement is a ``RowSetup`` kept beside
stock's cached row getters in the compile state (``_row_setup``).  For a
polymorphic mapper stock returns its polymorphic switch: the switch stays
stock's, the ``_instance`` closure it wraps for the mapper's own rows is
swapped for a RowLoader over it in the switch's cell, and the processors of
the subclasses it dispatches to come through this hook (``_polymorphic_from``)
and get theirs.
"""

from __future__ import annotations

import logging

from sqlalchemy.orm import attributes, base, instrumentation, interfaces, loading, strategies

from .loads import GET_LOAD_ATTR
from .session import TurboSessionMixin

__all__ = ["FALLBACK_REASONS", "counts", "install", "instance_processor", "reset_counts"]

_log = logging.getLogger("turbosession")

STOCK_INSTANCE_PROCESSOR = loading._instance_processor
STOCK_LOAD_VIA_PARENT = strategies._SelectInLoader._load_via_parent
STOCK_LOAD_VIA_CHILD = strategies._SelectInLoader._load_via_child

# the code of the _instance closure stock's _instance_processor returns for a
# non-polymorphic mapper, and the names of its cells this module reads
_STOCK_INSTANCE_CODE = next(
    const
    for const in STOCK_INSTANCE_PROCESSOR.__code__.co_consts
    if getattr(const, "co_name", None) == "_instance"
)
_CELLS_READ = frozenset(
    (
        "context",
        "identity_class",
        "identity_token",
        "instance_dict",
        "instance_state",
        "is_not_primary_key",
        "load_evt",
        "load_path",
        "mapper",
        "persistent_evt",
        "populate_existing",
        "populators",
        "post_load",
        "primary_key_getter",
        "propagated_loader_options",
        "refresh_state",
        "runid",
        "session_id",
        "session_identity_map",
        "version_check",
    )
)

FALLBACK_REASONS = {
    "load_refresh": "a refresh or an expired-attribute load (refresh_state or "
    "only_load_props)",
    "load_polymorphic": "the mapper is polymorphic and stock's row processor is "
    "not the polymorphic switch this version reads",
    "load_populate_existing": "populate_existing, or the mapper's always_refresh",
    "load_instrumentation": "custom class instrumentation (a ClassManager or "
    "state constructor other than stock's, another state attribute)",
    "load_closure": "stock's row processor is not the closure this version "
    "of turbosession reads (another SQLAlchemy, or a patched loading module)",
    "load_get": "the primary-key load of a get() miss (turbosession's statement "
    "for the mapper): one row, for which building the loop costs more than it "
    "saves (callgrind)",
    "load_pure": "the pure implementation loads rows with stock's closure "
    "(uncompiled, the loop plus its per-query setup is not cheaper; PURE_LOOP)",
}

_fast = 0
_fallbacks: dict = {}


def counts():
    """``{"fast": n, "fallback": {reason: n}}`` per query entity set up so far."""
    return {"fast": _fast, "fallback": dict(_fallbacks)}


def reset_counts():
    global _fast, _setup_cached
    _fast = 0
    _fallbacks.clear()
    _setup_cached = 0
    _setup_stock.clear()


def _fallback(reason, stock):
    _fallbacks[reason] = _fallbacks.get(reason, 0) + 1
    if _log.isEnabledFor(logging.DEBUG):
        _log.debug("rows load with stock's closure: %s (%s)", reason, FALLBACK_REASONS[reason])
    return stock


# where each cell is in the closure's __closure__ (its code's co_freevars)
CELL_INDEX = {name: i for i, name in enumerate(_STOCK_INSTANCE_CODE.co_freevars)}
_CLOSURE_KNOWN = (
    _CELLS_READ <= CELL_INDEX.keys()
    and "loaded_as_persistent" in CELL_INDEX
    and "version_id_getter" in CELL_INDEX
)


def _positions(bundle):
    """Where the cells the bundle's RowLoader reads and its ``loader_over``
    checks are in the closure."""
    return tuple(
        CELL_INDEX[name] for name in bundle.instances.CELLS + bundle.instances.CHECKED_CELLS
    )


_IS_NOT_PRIMARY_KEY = CELL_INDEX.get("is_not_primary_key")


def _stock_instrumentation(mapper):
    """Whether the mapper's class is instrumented as stock instruments it;
    kept in the mapper's memoized values (cleared when mappers are
    reconfigured)."""
    memo = mapper._memoized_values
    decided = memo.get(_MEMO_KEY)
    if decided is None:
        decided = memo[_MEMO_KEY] = _decide_instrumentation(mapper.class_manager)
    return decided


_MEMO_KEY = ("turbosession.instances", "stock_instrumentation")


def _decide_instrumentation(manager):
    cls = type(manager)
    return (
        cls.new_instance is instrumentation.ClassManager.new_instance
        and cls._state_setter is instrumentation.ClassManager._state_setter
        and manager.STATE_ATTR == base.DEFAULT_STATE_ATTR
        and cls.__dict__.get("_state_constructor", instrumentation.ClassManager.__dict__[
            "_state_constructor"]) is instrumentation.ClassManager.__dict__["_state_constructor"]
    )


def instance_processor(
    query_entity,
    mapper,
    context,
    result,
    path,
    adapter,
    only_load_props=None,
    refresh_state=None,
    polymorphic_discriminator=None,
    _polymorphic_from=None,
):
    """Stock's ``_instance_processor``; for a query of a turbosession session
    of the covered shape, turbosession's loop (built from the cached setup
    alone, or over stock's closure)."""
    session = context.session
    turbo = isinstance(session, TurboSessionMixin)
    if turbo:
        get_load = mapper.__dict__.get(GET_LOAD_ATTR)
        for_get = get_load is not None and get_load[0] is context.query
        bundle = session._turbo
        looped = PURE_LOOP or bundle is _COMPILED
        if (
            looped
            and not for_get
            and refresh_state is None
            and only_load_props is None
            and _polymorphic_from is None
        ):
            loader = _cached_loader(
                bundle, query_entity, mapper, context, result, path, adapter,
                polymorphic_discriminator, session,
            )
            if loader is not None:
                return loader
    stock = STOCK_INSTANCE_PROCESSOR(
        query_entity,
        mapper,
        context,
        result,
        path,
        adapter,
        only_load_props,
        refresh_state,
        polymorphic_discriminator,
        _polymorphic_from,
    )
    if not turbo:
        return stock
    if for_get:
        return _fallback("load_get", stock)
    if not looped:
        return _fallback("load_pure", stock)
    if refresh_state is not None or only_load_props is not None:
        return _fallback("load_refresh", stock)
    code = getattr(stock, "__code__", None)
    if code is _STOCK_INSTANCE_CODE:
        # a plain mapper's closure, or (with _polymorphic_from) the one of a
        # subclass that stock's polymorphic switch dispatches its rows to
        return _row_loader(bundle, mapper, context, path, stock)
    if code is _STOCK_SWITCH_CODE and _SWITCH_KNOWN:
        # stock's polymorphic switch: rows of this mapper's own identity go
        # to the _instance closure it wraps (``instance_fn``), the others to
        # the processor of their mapper, which it sets up through this hook
        # on their first row.  The wrapped closure's rows take the loop:
        # the switch's cell holding it then holds the loader over it.
        switch_cells = stock.__closure__
        instance_fn = switch_cells[_SWITCH_INSTANCE_FN].cell_contents
        if getattr(instance_fn, "__code__", None) is not _STOCK_INSTANCE_CODE:
            return _fallback("load_closure", stock)
        loader = _row_loader(bundle, mapper, context, path, instance_fn)
        if loader is not instance_fn:
            switch_cells[_SWITCH_INSTANCE_FN].cell_contents = loader
        return stock
    if mapper.polymorphic_map:
        return _fallback("load_polymorphic", stock)
    return _fallback("load_closure", stock)


def _cached_loader(
    bundle, query_entity, mapper, context, result, path, adapter, polymorphic_discriminator,
    session,
):
    """The bundle's RowLoader built from the compiled statement's cached
    ``RowSetup`` without calling stock's ``_instance_processor`` (the
    bundle's ``loader_cached`` says which executions it covers); or None,
    when the hook goes on as before: stock's function first, then the
    loader over its closure (``_row_loader``) or stock's closure.  Counted
    in ``setup_counts()``: ``cached``, and the others by reason
    (``SETUP_REASONS``)."""
    global _fast, _setup_cached
    setup = context.compile_state.attributes.get(_setup_key(bundle, mapper, path))
    if setup is None:
        _setup_stock["setup_first"] = _setup_stock.get("setup_first", 0) + 1
        return None
    _, make, at, map_class = _MAKERS[bundle.name]
    loader = make(
        setup, mapper, context, session, path, map_class, STOCK_INSTANCE_PROCESSOR,
        (query_entity, mapper, context, result, path, adapter, None, None,
         polymorphic_discriminator, None),
        at,
    )
    if type(loader) is str:
        _setup_stock[loader] = _setup_stock.get(loader, 0) + 1
        return None
    _setup_cached += 1
    _fast += 1
    return loader


SETUP_REASONS = {
    "setup_first": "the compiled statement has no RowSetup for this entity yet "
    "(its first execution, or one that fell back)",
    "setup_reconfigured": "the mapper was reconfigured since the RowSetup was built",
    "setup_per_query": "a property of the entity (a relationship, another "
    "strategy) sets up its row processor against each execution: stock's "
    "_instance_processor runs, for its side effects",
    "setup_shape": "a polymorphic mapper, or a statement set up for a refresh",
    "setup_options": "populate_existing or always_refresh, a version check, or "
    "patched instrumentation functions",
}

_setup_cached = 0
_setup_stock: dict = {}


def setup_counts():
    """``{"cached": n, "stock": {reason: n}}``: query entities whose loader
    was built from the cached setup alone, and those for which stock's
    ``_instance_processor`` ran, by reason."""
    return {"cached": _setup_cached, "stock": dict(_setup_stock)}


def _row_loader(bundle, mapper, context, path, stock):
    """The bundle's RowLoader over stock's ``_instance`` closure, or that
    closure (counted under its reason) when the loop does not cover it.

    The per-execution checks of the closure, the lookup of the compiled
    statement's ``RowSetup`` and the loader's construction are the bundle's
    ``loader_over``; the setup is built here (``_row_setup``) when it has
    none to use.
    """
    global _fast
    if not _CLOSURE_KNOWN:
        return _fallback("load_closure", stock)
    make, _, at, map_class = _MAKERS[bundle.name]
    attributes = context.compile_state.attributes
    key = _setup_key(bundle, mapper, path)
    loader = make(stock, at, mapper, attributes, key, map_class)
    if loader is None:
        if _row_setup(bundle, mapper, attributes, key, stock.__closure__, path) is None:
            return _fallback("load_instrumentation", stock)
        loader = make(stock, at, mapper, attributes, key, map_class)
    if type(loader) is str:
        return _fallback(loader, stock)
    _fast += 1
    return loader


def _row_setup(bundle, mapper, attributes, key, closure, path):
    """A new ``RowSetup`` of the bundle for this mapper and path of the
    compiled statement, kept in its compile state's ``attributes`` under
    ``key``; or None when the mapper's class is not instrumented as stock
    instruments it.

    Kept where stock keeps the row getters it is built from (``("getters",
    mapper)`` per path), so it lives exactly as long as they do: with the
    compiled statement in SQLAlchemy's compiled cache.  ``loader_over``
    asks for a new one when the mapper was reconfigured since (its memoized
    ``_prop_set`` is a new object) or the closure's primary-key getter is
    not the one of those getters.
    """
    if not _stock_instrumentation(mapper):
        return None
    getters = attributes[(("getters", mapper), key[-1])]
    setup = bundle.instances.RowSetup(
        getters, mapper, closure[_IS_NOT_PRIMARY_KEY].cell_contents,
        base.DEFAULT_STATE_ATTR, mapper._prop_set,
        _lazy_only(getters["todo"], path, attributes),
    )
    attributes[key] = setup
    return setup


def _lazy_only(todo, path, attributes):
    """Whether every property of ``todo`` (those stock sets up against each
    execution) is a relationship of stock's class-level lazy loader with no
    loader option for it in this compiled statement (``attributes``, which
    each execution's context copies): its ``create_row_processor`` then adds
    no populator and changes nothing (without populate_existing and outside
    a refresh, which ``loader_cached`` checks for each execution), so stock's
    ``_instance_processor`` need not run for it.  Decided once per compiled
    statement, when its ``RowSetup`` is built."""
    for prop in todo:
        if type(prop).create_row_processor is not _STRATEGIZED_ROW_PROCESSOR:
            return False
        strategy = prop.strategy
        if type(strategy) is not strategies._LazyLoader or not strategy.is_class_level:
            return False
        search_path = path[prop]
        for path_key in (
            search_path._loader_key,
            search_path._wildcard_path_loader_key,
            search_path._default_path_loader_key,
        ):
            if path_key in attributes:
                return False
    return True


_STRATEGIZED_ROW_PROCESSOR = interfaces.StrategizedProperty.create_row_processor
_SETUP_KEY = "turbosession.instances.row_setup"


def _setup_key(bundle, mapper, path):
    """Where the compiled statement's attributes keep the bundle's
    ``RowSetup`` for this mapper and path."""
    return (_SETUP_KEY, bundle.name, mapper, path.natural_path)

# per bundle name: its loader_over and loader_cached, the closure positions
# they read (loader_cached's loaders set them when they make stock's
# closure), its identity map class
_MAKERS = {}
_COMPILED = None

# the polymorphic_instance closure of stock's _decorate_polymorphic_switch
# and the position of its instance_fn cell (the wrapped _instance closure)
_STOCK_SWITCH_CODE = next(
    (
        const
        for const in loading._decorate_polymorphic_switch.__code__.co_consts
        if getattr(const, "co_name", None) == "polymorphic_instance"
    ),
    None,
)
_SWITCH_KNOWN = _STOCK_SWITCH_CODE is not None and "instance_fn" in _STOCK_SWITCH_CODE.co_freevars
_SWITCH_INSTANCE_FN = (
    _STOCK_SWITCH_CODE.co_freevars.index("instance_fn") if _SWITCH_KNOWN else None
)


PURE_LOOP = False
"""Whether the pure implementation uses its (uncompiled) loop.  Off: per row
it is about 2% cheaper than stock's closure (callgrind), but building it over
the closure costs more per query than that saves on 100 rows, so pure
sessions keep stock's closure; tests switch it on to run the pure twin."""


def _selectin_bundle(context):
    """The implementation bundle whose selectin loading runs for this query
    context: a turbosession session's whose rows take the loop; else None
    (stock's method)."""
    session = context.session
    if isinstance(session, TurboSessionMixin):
        bundle = session._turbo
        if PURE_LOOP or bundle is _COMPILED:
            return bundle
    return None


def load_via_parent(self, our_states, query_info, q, context, execution_options, chunksize):
    """Stock's ``_SelectInLoader._load_via_parent`` (the selectin loader's
    query per chunk of parents and the population of their attributes); for
    a turbosession session whose rows take the loop, the bundle's
    ``load_via_parent``, which runs the same queries and sets the same
    committed values with the per-row work compiled."""
    bundle = _selectin_bundle(context)
    if bundle is not None:
        return bundle.instances.load_via_parent(
            self, our_states, query_info, q, context, execution_options, chunksize
        )
    return STOCK_LOAD_VIA_PARENT(
        self, our_states, query_info, q, context, execution_options, chunksize
    )


def load_via_child(
    self, our_states, none_states, query_info, q, context, execution_options, chunksize
):
    """Stock's ``_SelectInLoader._load_via_child`` (a many-to-one's selectin
    query per chunk of related keys and the population of the children's
    attribute); for a turbosession session whose rows take the loop, the
    bundle's ``load_via_child``, which runs the same queries and sets the
    same committed values with the per-row work compiled."""
    bundle = _selectin_bundle(context)
    if bundle is not None:
        return bundle.instances.load_via_child(
            self, our_states, none_states, query_info, q, context, execution_options,
            chunksize,
        )
    return STOCK_LOAD_VIA_CHILD(
        self, our_states, none_states, query_info, q, context, execution_options, chunksize
    )


def install():
    """Puts ``instance_processor`` in ``sqlalchemy.orm.loading`` and
    ``load_via_parent`` / ``load_via_child`` on the selectin loader's class
    (once)."""
    global _COMPILED
    from . import _impl

    _COMPILED = _impl.compiled
    for bundle in (_impl.compiled, _impl.pure):
        if bundle is not None and _CLOSURE_KNOWN:
            _MAKERS[bundle.name] = (
                bundle.instances.loader_over,
                bundle.instances.loader_cached,
                _positions(bundle),
                bundle.identity.WeakIdentityMap,
            )
    if loading._instance_processor is STOCK_INSTANCE_PROCESSOR:
        loading._instance_processor = instance_processor
    if strategies._SelectInLoader._load_via_parent is STOCK_LOAD_VIA_PARENT:
        strategies._SelectInLoader._load_via_parent = load_via_parent
    if strategies._SelectInLoader._load_via_child is STOCK_LOAD_VIA_CHILD:
        strategies._SelectInLoader._load_via_child = load_via_child
