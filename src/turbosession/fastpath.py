"""turbosession's own unit of work, and where it takes over from stock's.

A flush runs stock's dependency graph (turbosession's ``UOWTransaction``:
relationship processing, sorting), but each mapper's save and delete steps
(``_SaveUpdateAll`` / ``_DeleteAll``, stock's ``_save_obj``/``_delete_obj``;
in a flush split per state for a cycle between mappers, the per-state
``_SaveUpdateState`` / ``_DeleteState`` aggregated per mapper) run on
turbosession's unit of work: the states of a base mapper and its subclasses,
table after table as stock's ``_save_obj``/``_delete_obj`` run them, each
state with its own mapper.  A hierarchy that writes to something other than
Tables, or a session that disables the fast path, has that step run as
stock's.  A flush is counted as fast
(``stats()``) when every step that had states to write took turbosession's
path, else under the first reason met, which is also logged at DEBUG on the
``turbosession`` logger.

On the fast path the per-mapper decisions are made here, in Python, and the
per-object loops run in the ``persist`` hot path (compiled, or the same
module uncompiled).  Statements are sent on the unit of work's connection with stock's
statements and batching; batches with anything to fetch back or to check
(RETURNING, version counters, ORM-level defaults, ``refresh_flush``
listeners) go through SQLAlchemy's own emitters, and the states of a mapper
with read-only properties, eager defaults or a version counter are finished
by stock's ``_finalize_insert_update_commands`` (expiry, the SELECT of eager
defaults or a server-side version, ``after_insert``/``after_update``).
"""

import functools
import logging
from collections import defaultdict
from itertools import chain

# a dispatcher member nothing listens to: asked by its class-level
# listeners rather than its Python-level __bool__ (turbosession.transaction._EMPTY)
from sqlalchemy.event.attr import _EmptyListener as _EMPTY
from sqlalchemy import sql
from sqlalchemy.orm import exc as orm_exc
from sqlalchemy.orm import persistence, sync
from sqlalchemy.orm.mapper import Mapper
from sqlalchemy.orm.unitofwork import (
    _DeleteAll,
    _DeleteState,
    _ProcessAll,
    _ProcessState,
    _SaveUpdateAll,
    _SaveUpdateState,
)
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BooleanClauseList
from sqlalchemy.sql.schema import Table

from . import emission, plans, relationships
from .memo import derived
from ._warn import warn

__all__ = [
    "FALLBACK_REASONS", "ActionRunner", "insert_single", "insert_unrecorded", "reset_stats",
    "plan_of", "run_steps", "stats",
]

log = logging.getLogger("turbosession")

FALLBACK_REASONS = {
    "not_tables": "the mapper hierarchy writes to something other than Tables",
    "disabled": "the session class sets _fast_flush = False",
}

# (a defaultdict: see transaction's counts)
_counts = defaultdict(int)

# stock's generator of a _ProcessAll step's states, which the relationship
# steps run on turbosession's loops replace with one compiled loop
# (_unitofwork.process_all_states) while it is this function
_STOCK_ELEMENTS = _ProcessAll._elements


def stats():
    """Flushes run so far in this process: fast, and fallbacks by reason."""
    fallback = {k: v for k, v in _counts.items() if k != "fast"}
    return {"fast": _counts["fast"], "fallback": fallback}


def reset_stats():
    _counts.clear()


def record(reason):
    """Count one flush: ``None`` for the fast path, else the fallback reason."""
    if reason is None:
        _counts["fast"] += 1
    else:
        _counts[reason] += 1
        if log.isEnabledFor(logging.DEBUG):
            log.debug("flush falls back to stock: %s (%s)", reason, FALLBACK_REASONS[reason])


class _Plan:
    """What a flush needs to know of a mapper hierarchy that depends only on
    its configuration: decided once, kept with the base mapper's memoized
    values (``_plan``).  Event listeners, which can be added at any time,
    are not part of it: they are looked at on every flush."""

    __slots__ = (
        "reason", "mappers", "finalize", "save_tables", "delete_tables", "single_table",
        "unrecorded",
    )


def _build_plan(base_mapper):
    plan = _Plan()
    plan.mappers = mappers = tuple(base_mapper.self_and_descendants)
    table_to_mapper = base_mapper._sorted_tables
    plan.reason = (
        None if all(isinstance(table, Table) for table in table_to_mapper) else "not_tables"
    )
    # stock's _finalize_insert_update_commands has work besides the after_*
    # events: read-only properties to expire, a version to check or fetch
    # (eager_defaults is looked at on every flush, as stock does)
    plan.finalize = any(
        mapper._readonly_props or mapper.version_id_col is not None for mapper in mappers
    )
    tables = []
    if plan.reason is None:
        for table, mapper in table_to_mapper.items():
            if table not in mapper._pks_by_table:
                continue
            # the mappers of the hierarchy with rows in the table, and
            # whether stock's _postfetch does more for their rows than
            # persist.postfetch_batch whatever the listeners: a version to
            # take from the parameters, ORM-level defaults to treat as
            # prefetched
            with_rows = tuple(m for m in mappers if table in m._pks_by_table)
            static = any(
                m.version_id_col is not None or m._insert_orm_defaults[table]
                for m in with_rows
            )
            tables.append((table, mapper, with_rows, static))
    plan.save_tables = tuple(tables)
    plan.delete_tables = tuple(
        (table, mapper)
        for table, mapper, _, _ in reversed(tables)
        if not (mapper.inherits and mapper.passive_deletes)
    )
    # a hierarchy of one mapper writing one table, whose rows need nothing
    # of stock's _postfetch or _finalize_insert_update_commands whatever
    # the listeners, and have no keys to synchronise between tables: a
    # flush of one new object of it can be run by insert_single
    plan.single_table = (
        tables[0][0]
        if len(mappers) == 1
        and len(tables) == 1
        and not tables[0][3]
        and not plan.finalize
        and not base_mapper._table_to_equated[tables[0][0]]
        else None
    )
    # ... and which has no relationship that is not view-only (their
    # processors would set up steps): that flush can register its state
    # without the steps' records (flush.UOWTransaction.unrecorded_mapper).
    # A relationship added resets the mapper's memoized attributes, so a
    # new plan is built then
    plan.unrecorded = plan.single_table is not None and all(
        prop.viewonly for prop in base_mapper.relationships
    )
    return plan


def _plan(base_mapper):
    """The base mapper's ``_Plan``, rebuilt when SQLAlchemy has reset the
    hierarchy's memoized attributes (a mapper configured, constructed or
    changed resets them up to the base mapper: ``_sorted_tables`` is then
    a new object)."""
    return derived(base_mapper, _PLAN_KEY, base_mapper._sorted_tables, _build_plan)


_PLAN_KEY = ("turbosession", "flush plan")


def mapper_fallback_reason(mapper):
    """Why the states of this base mapper's hierarchy cannot be flushed by
    the fast path, or None."""
    return _plan(mapper.base_mapper).reason


def _step_fallback_reason(uow, mapper):
    """Why this mapper's save and delete steps must be stock's, or None."""
    if not uow.session._fast_flush:
        return "disabled"
    return mapper_fallback_reason(mapper)


class ActionRunner:
    """Runs the sorted actions of one flush, mapper steps on the fast path.

    Whole-mapper steps (``_SaveUpdateAll`` / ``_DeleteAll``) and, in a flush
    split per state for a cycle, the per-state steps (``_SaveUpdateState`` /
    ``_DeleteState``, aggregated per mapper as stock aggregates them) run
    on turbosession's unit of work where the mapper allows it; relationship
    processing (``_ProcessAll``, and the per-state ``_ProcessState``
    aggregated per processor as stock aggregates them) on the
    ``relationships`` loops where ``relationships.plan_for`` allows it;
    every other action (post updates) is stock's.  ``reason``
    is None while every step with states took turbosession's path, else
    the first reason one did not.
    """

    def __init__(self, uow):
        self.uow = uow
        self.persist = uow.session._turbo.persist
        self.reason = None
        self._fast = {}

    def _is_fast(self, mapper):
        fast = self._fast.get(mapper)
        if fast is None:
            uow = self.uow
            reason = _step_fallback_reason(uow, mapper)
            fast = self._fast[mapper] = reason is None
            if reason is not None and self.reason is None and any(
                uow.mappers.get(m) for m in _plan(mapper.base_mapper).mappers
            ):
                # states of this mapper or its subclasses are written
                # by stock's step
                self.reason = reason
        return fast

    def __call__(self, action):
        kind = type(action)
        if (kind is _SaveUpdateAll or kind is _DeleteAll) and self._is_fast(action.mapper):
            uow = self.uow
            mapper = action.mapper
            if kind is _SaveUpdateAll:
                states = uow.states_for_mapper_hierarchy(mapper, False, False)
                _save(uow, mapper, self.persist, states)
            else:
                states = list(uow.states_for_mapper_hierarchy(mapper, True, False))
                if states or not _asks_nothing(uow, mapper):
                    _delete(uow, mapper, self.persist, states)
            return
        if kind is _ProcessAll:
            uow = self.uow
            dp = action.dependency_processor
            plan = relationships.plan_for(uow, dp, action.isdelete)
            if plan is not None:
                turbo = uow.session._turbo
                if _ProcessAll._elements is _STOCK_ELEMENTS:
                    states = turbo.unitofwork.process_all_states(
                        uow, action._mappers(uow), action.isdelete
                    )
                else:
                    states = action._elements(uow)
                relationships.run(uow, dp, action.isdelete, states, plan, turbo.relationships)
                return
        action.execute(self.uow)

    def aggregate(self, action, actions):
        """``action.execute_aggregate(uow, actions)``: run ``action`` with
        the actions of the same kind and mapper among ``actions`` (removed
        from it), as stock's per-state steps do."""
        kind = type(action)
        if kind is _SaveUpdateAll or kind is _DeleteAll or kind is _ProcessAll:
            self(action)
            return
        if (kind is _SaveUpdateState or kind is _DeleteState) and self._is_fast(action.mapper):
            uow = self.uow
            mapper = action.mapper
            same = [a for a in actions if a.__class__ is kind and a.mapper is mapper]
            actions.difference_update(same)
            states = [action.state] + [a.state for a in same]
            if kind is _SaveUpdateState:
                _save(uow, mapper, self.persist, states)
            else:
                _delete(uow, mapper, self.persist, [s for s in states if uow.states[s][0]])
            return
        if kind is _ProcessState:
            uow = self.uow
            dp = action.dependency_processor
            isdelete = action.isdelete
            plan = relationships.plan_for(uow, dp, isdelete)
            if plan is not None:
                # stock's _ProcessState.execute_aggregate, on the loops
                same = [
                    a for a in actions
                    if a.__class__ is kind
                    and a.dependency_processor is dp
                    and a.isdelete is isdelete
                ]
                actions.difference_update(same)
                states = [action.state] + [a.state for a in same]
                relationships.run(
                    uow, dp, isdelete, states, plan, uow.session._turbo.relationships
                )
                return
        action.execute_aggregate(self.uow, actions)


def run_steps(uow, steps):
    """Run the sorted steps of a flush whose shape ``plans.sorted_steps``
    knows: keys ``(_SaveUpdateAll or _DeleteAll, base mapper)`` of
    ``uow.postsort_actions``, each run as ``ActionRunner`` runs its
    action, without its per-action dispatch; the flush is counted as
    ``ActionRunner``'s are, even if it fails."""
    session = uow.session
    persist = session._turbo.persist
    # the hierarchy's mappers as the plan keeps them (the tuple of
    # self_and_descendants), rather than iterating its WeakSequence
    states_of = session._turbo.unitofwork.states_of_mappers
    reason = None
    try:
        for key in steps:
            kind, mapper = key
            # _plan(mapper), its kept value found without the two calls
            entry = mapper._memoized_values.get(_PLAN_KEY)
            if entry is not None and entry[0] is mapper._sorted_tables:
                plan = entry[1]
            else:
                plan = _plan(mapper)
            step_reason = plan.reason if session._fast_flush else "disabled"
            if step_reason is not None:
                if reason is None and any(uow.mappers.get(m) for m in plan.mappers):
                    reason = step_reason
                uow.postsort_actions[key].execute(uow)
            elif kind is _SaveUpdateAll:
                states = states_of(uow, plan.mappers, False, False)
                if mapper.batch:
                    _save_batch(uow, mapper, persist, states, plan)
                else:
                    _save(uow, mapper, persist, states)
            else:
                states = states_of(uow, plan.mappers, True, False)
                if states or not _asks_nothing(uow, mapper):
                    _delete(uow, mapper, persist, states)
    finally:
        if reason is None:
            _counts["fast"] += 1
        else:
            record(reason)


def insert_single(uow):
    """Run a flush of one new object whose hierarchy is one mapper writing
    one table (``_Plan.single_table``), as ``_save_batch`` and the empty
    delete step run its two planned steps, without sorting them and
    without their per-step lists, runs, generators and batches
    (``_insert_one_state``).

    Its actions are the mapper's save and delete steps and their one
    dependency, which ``plans.sorted_steps`` would find and order save
    first (counted there as ``cached``); the flush is counted as fast, even
    if it fails.  Returns False, with nothing done, for any other flush
    (``UOWTransaction.execute`` then sorts and runs its steps)."""
    # the flush's one state (the caller asked for exactly one)
    ((state, flags),) = uow.states.items()
    if flags != _SAVE_FLAGS or state.key is not None:
        return False
    mapper = state.manager.mapper
    actions = uow.postsort_actions
    if len(actions) != 2 or len(uow.dependencies) != 1:
        return False
    save = actions.get((_SaveUpdateAll, mapper))
    delete = actions.get((_DeleteAll, mapper))
    if (
        type(save) is not _SaveUpdateAll
        or type(delete) is not _DeleteAll
        or save.disabled
        or delete.disabled
        or (save, delete) not in uow.dependencies
    ):
        return False
    return _insert_one_state(uow, state, mapper)


def insert_unrecorded(uow, mapper):
    """``insert_single`` for a flush whose one new state, of ``mapper``,
    was registered without the save and delete steps' records
    (``flush.UOWTransaction.unrecorded_mapper``): the two steps it would
    have had are those ``insert_single`` recognises.  Returns False, with
    nothing done, when the flush cannot run so (the caller then makes the
    records as registering would have)."""
    ((state, flags),) = uow.states.items()
    if flags != _SAVE_FLAGS or state.key is not None:
        return False
    return _insert_one_state(uow, state, mapper)


def plan_of(mapper):
    """The ``_Plan`` of the mapper's hierarchy, the kept plan found without
    the two calls of ``_plan`` when ``mapper`` is its base (the mapper
    of a single-table plan is)."""
    entry = mapper._memoized_values.get(_PLAN_KEY)
    if entry is not None and entry[0] is mapper._sorted_tables:
        return entry[1]
    return _plan(mapper.base_mapper)


def _insert_one_state(uow, state, mapper):
    """The flush of ``insert_single``: the flush's connection, the state's
    ``before_insert``, record and INSERT (``persist.insert_one``;
    ``emit.insert_one_lastrowid`` for a key the database generates, else
    ``_emit_insert_batch``), its ``after_insert``, then the empty delete
    step's connection check.  False, with nothing done, where the flush's
    session or the mapper's listeners ask for the planned steps."""
    table = plan_of(mapper).single_table
    session = uow.session
    if (
        table is None
        or not session._fast_flush
        or session.connection_callable
        or mapper.eager_defaults is True
        or persistence._sort_states is not _STOCK_SORT_STATES
        or _refresh_flush((mapper,))
    ):
        return False
    plans.count_cached()
    persist = session._turbo.persist
    try:
        connection = persist.flush_connection(uow, mapper)
        record = persist.insert_one(table, mapper, uow, connection, state)
        emit = session._turbo.emit
        # a key the database generates: insert_autoincrement's one-row
        # case in one compiled call, unless it gives a reason not to
        if (
            record[5]
            or record[6]
            or emit.insert_one_lastrowid(
                connection, mapper, table, record, uow, emission.INSERT_ONE_CONTEXT
            ) is not None
        ):
            _emit_insert_batch(
                uow, mapper, mapper, table, [record], persist, emit,
                connection, bool(record[5]), record[6], record[7], False,
            )
        after_insert = mapper.dispatch.after_insert
        if after_insert.parent_listeners if type(after_insert) is _EMPTY else after_insert:
            after_insert(mapper, connection, state)
        # the empty delete step, which asks for the connection
        # (_asks_nothing, the session having no connection_callable)
        if persist.held_connection(uow, mapper) is None:
            _delete(uow, mapper, persist, [])
    finally:
        _counts["fast"] += 1
    return True


_SAVE_FLAGS = (False, False)


def _asks_nothing(uow, base_mapper):
    """Whether stock's delete step with no states does nothing the
    application could see: it asks for the connection (the session's
    ``connection_callable`` is not called without states), which the
    transaction already holds and ``persist.held_connection`` can
    look up without a call of the application's, then finds no rows to
    delete and no events to dispatch."""
    return bool(uow.session.connection_callable) or (
        uow.session._turbo.persist.held_connection(uow, base_mapper) is not None
    )


_STOCK_SORT_STATES = persistence._sort_states


def _plain_sortkey(mapper):
    """Whether the mapper's ``_persistent_sortkey_fn`` sorts states by
    their identity key's values as they are (no primary key column's type
    has a ``sort_key_function``)."""
    return not {col.type.sort_key_function for col in mapper.primary_key}.difference([None])


_PLAIN_SORTKEY_KEY = ("turbosession", "plain sort key")


def _sort_states(base_mapper, persist, states):
    """``persistence._sort_states(base_mapper, states)``, its loops in
    ``persist`` (stock's function where it has been replaced)."""
    if persistence._sort_states is not _STOCK_SORT_STATES:
        return persistence._sort_states(base_mapper, states)
    sortkey = base_mapper._persistent_sortkey_fn
    # derived(base_mapper, _PLAIN_SORTKEY_KEY, ...), the kept answer found
    # without the call
    entry = base_mapper._memoized_values.get(_PLAIN_SORTKEY_KEY)
    if entry is not None and entry[0] is sortkey:
        plain = entry[1]
    else:
        plain = derived(base_mapper, _PLAIN_SORTKEY_KEY, sortkey, _plain_sortkey)
    if plain:
        sortkey = None
    return persist.sort_states(states, sortkey)


_DELETE_FLAGS = (True, False)


def _row_switch_possible(uow, base_mapper, persist, states):
    """Whether a new object may take the identity of one this flush deletes
    (stock then updates the row): only when the hierarchy deletes too."""
    if not persist.has_new(states):
        return False
    if _DELETE_FLAGS not in uow.states.values():
        # the flush deletes nothing (its states' (isdelete, listonly)
        # flags, scanned in C), so the hierarchy deletes nothing either
        return False
    deletes = uow.states_for_mapper_hierarchy(base_mapper, True, False)
    return next(deletes, None) is not None


def _organize_for_save(uow, base_mapper, persist, states):
    """``persistence._organize_states_for_save``: the records to insert and
    to update, and whether a row switch is among the updates.  The states
    are organized by stock's function (each its connection from the
    session's ``connection_callable``, row switches) when the session has
    a ``connection_callable`` or a row switch is possible."""
    # (a flush that deletes nothing, its states' flags scanned in C,
    # has no row switch: _row_switch_possible is not called)
    if uow.session.connection_callable or (
        _DELETE_FLAGS in uow.states.values()
        and _row_switch_possible(uow, base_mapper, persist, states)
    ):
        to_insert = []
        to_update = []
        row_switch = False
        for (
            state, dict_, mapper, connection, has_identity, switched, version
        ) in persistence._organize_states_for_save(base_mapper, states, uow):
            if has_identity or switched:
                to_update.append((state, dict_, mapper, connection, version))
                row_switch = row_switch or switched is not None
            else:
                to_insert.append((state, dict_, mapper, connection))
        return to_insert, to_update, row_switch
    # stock asks for the connection even with no states (it may begin
    # the transaction), and then does nothing more
    connection = persist.flush_connection(uow, base_mapper)
    states = _sort_states(base_mapper, persist, states)
    if not base_mapper._inheriting_mappers:
        to_insert, to_update = persist.organize_for_save(base_mapper, states, uow, connection)
        return to_insert, to_update, False
    to_insert, to_update = persist.organize_hierarchy_for_save(states, uow, connection)
    return to_insert, to_update, False


def _pk_changed(records):
    """Whether a state among update records has a primary key attribute
    changed while its mapper synchronises keys between its tables: stock's
    ``_collect_update_commands`` then synchronises them for a table whose
    row has no UPDATE (the key was cascaded)."""
    keys_of = {}
    for state, _, mapper, _, _ in records:
        keys = keys_of.get(mapper)
        if keys is None:
            keys = keys_of[mapper] = (
                frozenset().union(*mapper._pk_attr_keys_by_table.values())
                if any(mapper._table_to_equated.values())
                else frozenset()
            )
        if keys and not keys.isdisjoint(state.committed_state):
            return True
    return False


# The collectors chain each run's own generator (made when the one before
# it is done, as stock's single generator would get to its states): records
# pass through C, with no Python frame resumed per record.  A single run
# (one mapper, one connection: every short flush) is its own generator.


def _collect_inserts(table, runs, persist):
    """``persistence._collect_insert_commands`` over the runs of records."""
    if len(runs) == 1:
        mapper, connection, run = runs[0]
        if table in mapper._pks_by_table:
            return persist.collect_insert_commands(table, mapper, connection, run)
        return ()
    return chain.from_iterable(
        persist.collect_insert_commands(table, mapper, connection, run)
        for mapper, connection, run in runs
        if table in mapper._pks_by_table
    )


def _collect_updates(uow, table, runs, persist, column_changes):
    """``persistence._collect_update_commands`` over the runs of records."""
    if len(runs) == 1:
        mapper, _, run = runs[0]
        if table in mapper._pks_by_table:
            return persist.collect_update_commands(uow, table, mapper, run, column_changes)
        return ()
    return chain.from_iterable(
        persist.collect_update_commands(uow, table, mapper, run, column_changes)
        for mapper, _, run in runs
        if table in mapper._pks_by_table
    )


def _save(uow, base_mapper, persist, states):
    """``persistence._save_obj(base_mapper, states, uow)``: the states of a
    mapper hierarchy, each with its own mapper's columns and events, one
    table after the other in stock's order; with ``batch=False``, each
    state on its own, as stock does."""
    if not base_mapper.batch:
        for state in _sort_states(base_mapper, persist, states):
            _save_batch(uow, base_mapper, persist, [state])
        return
    _save_batch(uow, base_mapper, persist, list(states))


def _save_batch(uow, base_mapper, persist, states, plan=None):
    """One batch of ``_save`` (``plan``: the base mapper's ``_plan``, when
    the caller has it)."""
    to_insert, to_update, row_switch = _organize_for_save(uow, base_mapper, persist, states)
    if not to_insert and not to_update:
        return
    insert_runs = persist.mapper_runs(to_insert, 2)
    update_runs = persist.mapper_runs(to_update, 2)
    stock_updates = row_switch or (to_update and _pk_changed(to_update))
    column_changes = uow.session._turbo.tracking.column_changes
    if plan is None:
        plan = _plan(base_mapper)
    for table, mapper, mappers, static in plan.save_tables:
        stock_postfetch = static or _refresh_flush(mappers)
        if to_update:
            if stock_updates:
                update = persistence._collect_update_commands(uow, table, to_update)
            else:
                update = _collect_updates(uow, table, update_runs, persist, column_changes)
            _emit_updates(uow, base_mapper, mapper, table, update, persist, stock_postfetch)
        if to_insert:
            insert = _collect_inserts(table, insert_runs, persist)
            _emit_inserts(uow, base_mapper, mapper, table, insert, persist, stock_postfetch)
    if plan.finalize or base_mapper.eager_defaults is True:
        persistence._finalize_insert_update_commands(
            base_mapper,
            uow,
            chain(
                (
                    (state, state_dict, mapper, connection, False)
                    for state, state_dict, mapper, connection in to_insert
                ),
                (
                    (state, state_dict, mapper, connection, True)
                    for state, state_dict, mapper, connection, _ in to_update
                ),
            ),
        )
        return
    for mapper, _, run in insert_runs:
        after_insert = mapper.dispatch.after_insert
        if after_insert.parent_listeners if type(after_insert) is _EMPTY else after_insert:
            for state, _, _, connection in run:
                after_insert(mapper, connection, state)
    for mapper, _, run in update_runs:
        after_update = mapper.dispatch.after_update
        if after_update.parent_listeners if type(after_update) is _EMPTY else after_update:
            for state, _, _, connection, _ in run:
                after_update(mapper, connection, state)


def _refresh_flush(mappers):
    """Whether a ``refresh_flush`` listener is on one of the mappers' classes:
    stock's ``_postfetch`` then runs for their rows (listeners come and go
    without a mapper being reconfigured, so this is asked on every flush)."""
    for mapper in mappers:
        event = mapper.class_manager.dispatch.refresh_flush
        if event.parent_listeners if type(event) is _EMPTY else event:
            return True
    return False


def _postfetch(uow, table, batch, result, isupdate, persist):
    """Stock's ``_postfetch`` for each record of one executemany batch.

    ``persist.postfetch_batch`` does it for a batch of one mapper that has
    no keys to synchronise to its other tables.  Where the statement had
    nothing to prefetch, postfetch or return, all stock's ``_postfetch``
    does for a record is to synchronise the keys between its mapper's
    tables (joined inheritance), done here with stock's ``sync``;
    otherwise (a batch mixing mappers) each record is handed to stock's
    ``_postfetch`` as stock's emitters hand it, with the parameters they
    give it.
    """
    if _nothing_to_sync(table, batch):
        persist.postfetch_batch(batch[0][3], uow, table, batch, result, isupdate)
        return
    context = result.context
    compiled = context.compiled
    if not (compiled.prefetch or compiled.postfetch or compiled.effective_returning):
        _sync_batch_keys(uow, table, batch)
        return
    all_params = context.compiled_parameters
    returned = None if context.executemany else result.returned_defaults
    for index, (state, state_dict, _, record_mapper, _, value_params, _, _) in enumerate(batch):
        persistence._postfetch(
            record_mapper, uow, table, state, state_dict, result,
            all_params[0] if isupdate else all_params[index],
            value_params, isupdate, returned,
        )


def _nothing_to_sync(table, batch):
    """Whether the records of a batch are all of one mapper, which has no
    keys to synchronise between its tables for ``table`` (stock's
    ``_postfetch`` then calls no ``sync._populate`` for any of them)."""
    mapper = batch[0][3]
    if mapper._table_to_equated[table]:
        return False
    if mapper.base_mapper is mapper and not mapper._inheriting_mappers:
        # the hierarchy is this one mapper: every record is of it
        return True
    for record in batch:
        if record[3] is not mapper:
            return False
    return True


_STOCK_POPULATE = sync._populate


def _sync_keys(uow, table, batch):
    """All stock's ``_postfetch`` does for the records of a batch whose
    statement had nothing to prefetch, postfetch or return: synchronise the
    keys between each record's mapper's tables (joined inheritance), on
    the session's ``relationships`` loop (``sync_keys``) with the
    attribute keys of each mapper's pairs looked up once (``_sync_plan``),
    while ``sync._populate`` is stock's; else stock's ``sync._populate``.
    Nothing, when there are no keys to synchronise (a mapper without
    inheritance)."""
    if not _nothing_to_sync(table, batch):
        _sync_batch_keys(uow, table, batch)


def _sync_batch_keys(uow, table, batch):
    """``_sync_keys`` for a batch ``_nothing_to_sync`` has said no to."""
    if sync._populate is not _STOCK_POPULATE:
        for record in batch:
            _stock_sync(uow, record[0], record[3], table)
        return
    uow.session._turbo.relationships.sync_keys(
        uow,
        batch,
        {},
        functools.partial(_sync_plan, table=table),
        functools.partial(_stock_sync, table=table),
    )


def _stock_sync(uow, state, mapper, table):
    for m, equated_pairs in mapper._table_to_equated[table]:
        sync._populate(state, m, state, m, equated_pairs, uow, mapper.passive_updates)


def _sync_plan(mapper, table):
    """What ``sync._populate`` does over ``mapper._table_to_equated[table]``
    for each of its states, as the steps of ``sync_keys``: a tuple of
    (source attribute key, destination attribute key, column flagged
    ``pk_cascaded`` or None), in stock's order; None when a column is not
    mapped (stock raises its error).  Made again once ``_table_to_equated``
    is (``memo.derived``)."""
    return derived(
        mapper,
        ("turbosession.sync_keys", table),
        mapper._table_to_equated,
        functools.partial(_build_sync_plan, table=table),
    )


def _build_sync_plan(mapper, table):
    flag = mapper.passive_updates
    steps = []
    try:
        for m, pairs in mapper._table_to_equated[table]:
            to_property = m._columntoproperty
            for left, right in pairs:
                cascaded = (
                    flag and left.primary_key and right.primary_key and right.references(left)
                )
                steps.append(
                    (to_property[left].key, to_property[right].key, right if cascaded else None)
                )
    except orm_exc.UnmappedColumnError:
        return None
    return tuple(steps)


def _emit_inserts(uow, base_mapper, mapper, table, records, persist, stock_postfetch):
    """``persistence._emit_insert_statements`` (bookkeeping).

    A batch that has every primary key and nothing to fetch back is one
    executemany, sent here as stock sends it, with the per-row bookkeeping
    in ``persist``; a batch whose key the database generates, or whose
    server defaults come back, a row at a time (SQLite) is sent by
    ``emission.insert_autoincrement`` when it can;
    any other batch, and every batch of a table whose rows need stock's
    ``_postfetch``, goes to stock's emitter unchanged.
    """
    if stock_postfetch:
        persistence._emit_insert_statements(base_mapper, uow, mapper, table, records)
        return
    emit = uow.session._turbo.emit
    for (connection, _, hasvalue, has_all_pks, has_all_defaults), batch in persist.batches(
        records
    ):
        _emit_insert_batch(
            uow, base_mapper, mapper, table, batch, persist, emit,
            connection, hasvalue, has_all_pks, has_all_defaults,
        )


def _emit_insert_batch(
    uow, base_mapper, mapper, table, batch, persist, emit,
    connection, hasvalue, has_all_pks, has_all_defaults, keys_to_sync=True,
):
    """One batch of ``_emit_inserts``, given its grouping key's parts
    (``keys_to_sync`` False: the caller knows the table has no keys to
    synchronise, ``_Plan.single_table``)."""
    if (
        not hasvalue
        and has_all_pks
        and (
            has_all_defaults
            or not base_mapper._prefer_eager_defaults(connection.dialect, table)
            or not table.implicit_returning
            or not connection.dialect.insert_returning
        )
    ):
        # stock's memoized INSERT, found without a call when stock's
        # _memo has made it
        statement = (
            base_mapper._memoized_values.get(("insert", table))
            if type(base_mapper)._memo is _STOCK_MEMO
            else None
        )
        if statement is None:
            statement = base_mapper._memo(("insert", table), table.insert)
        rows = [record[2] for record in batch]
        if emission.execute(emit, base_mapper, connection, statement, rows, False) is None:
            result = connection.execute(
                statement,
                rows,
                execution_options={"compiled_cache": base_mapper._compiled_cache},
            )
            _postfetch(uow, table, batch, result, False, persist)
        elif keys_to_sync:
            # the statement had nothing to prefetch, postfetch or return
            _sync_keys(uow, table, batch)
        return
    # keys generated by the database, or server defaults to return (a
    # batch with every key comes here only for those), are sent a
    # statement per row where insert_autoincrement can; any other batch
    # is stock's
    if hasvalue or not emission.insert_autoincrement(
        emit, base_mapper, mapper, uow, connection, table, batch, has_all_defaults
    ):
        persistence._emit_insert_statements(base_mapper, uow, mapper, table, batch)


_STOCK_MEMO = Mapper._memo


def _pk_statement(base_mapper, mapper, table, kind):
    """Stock's memoized ``kind`` ("update" or "delete") statement for the
    table, WHERE its primary key: an UPDATE binds the key by the columns'
    labels, a DELETE (of a table without a version counter) by their keys."""
    key = (kind, table)
    if type(base_mapper)._memo is _STOCK_MEMO:
        # what stock's _memo returns when it has the statement, without
        # making the function below and calling _memo
        made = base_mapper._memoized_values.get(key)
        if made is not None:
            return made

    def statement():
        clauses = BooleanClauseList._construct_raw(operators.and_)
        for col in mapper._pks_by_table[table]:
            name = col._label if kind == "update" else col.key
            clauses._append_inplace(col == sql.bindparam(name, type_=col.type))
        return (table.update() if kind == "update" else table.delete()).where(clauses)

    return base_mapper._memo(key, statement)


def _emit_updates(uow, base_mapper, mapper, table, records, persist, stock_postfetch):
    """``persistence._emit_update_statements`` (bookkeeping).

    A batch of plain values locating rows by unchanged primary keys is one
    executemany with stock's row-count check, sent here; any other batch
    (with eager defaults to return, too), and every batch of a table whose
    rows need stock's ``_postfetch``, goes to stock's emitter unchanged.
    """
    if stock_postfetch:
        persistence._emit_update_statements(base_mapper, uow, mapper, table, records)
        return
    emit = uow.session._turbo.emit
    for (connection, _, hasvalue, has_all_defaults, has_all_pks), batch in persist.batches(records):
        if hasvalue or not has_all_pks or not has_all_defaults:
            persistence._emit_update_statements(base_mapper, uow, mapper, table, batch)
            continue
        dialect = connection.dialect
        check_rowcount = dialect.supports_sane_rowcount and (
            dialect.supports_sane_multi_rowcount or len(batch) == 1
        )
        statement = _pk_statement(base_mapper, mapper, table, "update")
        params = [record[2] for record in batch]
        rows = emission.execute(emit, base_mapper, connection, statement, params, True)
        if rows is None:
            result = connection.execute(
                statement,
                params,
                execution_options={"compiled_cache": base_mapper._compiled_cache},
            )
            rows = result.rowcount
            _postfetch(uow, table, batch, result, True, persist)
        else:
            _sync_keys(uow, table, batch)
        if check_rowcount and rows != len(batch):
            raise orm_exc.StaleDataError(
                "UPDATE statement on table '%s' expected to "
                "update %d row(s); %d were matched."
                % (table.description, len(batch), rows)
            )


def _organize_for_delete(uow, base_mapper, persist, states):
    """``persistence._organize_states_for_delete``: ``before_delete`` of
    each state's mapper, in stock's order."""
    if uow.session.connection_callable:
        return list(persistence._organize_states_for_delete(base_mapper, states, uow))
    connection = persist.flush_connection(uow, base_mapper)
    states = _sort_states(base_mapper, persist, states)
    if not base_mapper._inheriting_mappers:
        return persist.organize_for_delete(base_mapper, states, connection)
    return persist.organize_hierarchy_for_delete(states, connection)


def _collect_deletes(table, runs, persist):
    """``persistence._collect_delete_commands`` over the runs of records."""
    return chain.from_iterable(
        persist.collect_delete_commands(table, mapper, run)
        for mapper, _, run in runs
        if table in mapper._pks_by_table
    )


def _delete(uow, base_mapper, persist, states):
    """``persistence._delete_obj(base_mapper, states, uow)``: the tables of
    the hierarchy in reverse order, each state's own mapper's events."""
    to_delete = _organize_for_delete(uow, base_mapper, persist, states)
    if not to_delete:
        return
    runs = persist.mapper_runs(to_delete, 2)
    for table, mapper in _plan(base_mapper).delete_tables:
        _emit_deletes(uow, base_mapper, mapper, table, runs, persist)
    for mapper, _, run in runs:
        after_delete = mapper.dispatch.after_delete
        if after_delete.parent_listeners if type(after_delete) is _EMPTY else after_delete:
            for state, _, _, connection, _ in run:
                after_delete(mapper, connection, state)


def _emit_deletes(uow, base_mapper, mapper, table, runs, persist):
    """``persistence._emit_delete_statements`` of the DELETE rows of
    ``table`` for the runs of records (``persist.mapper_runs``).

    For a table without a version counter, the batch (the records share
    one connection) is one executemany with stock's row-count check (a
    warning); the rows are all collected first (``persist.delete_rows``),
    as stock's ``groupby`` collects them for one connection.  With a
    ``connection_callable`` or a version counter, stock's emitter runs.
    """
    if (
        uow.session.connection_callable
        or (mapper.version_id_col is not None
            and mapper.version_id_col in mapper._cols_by_table[table])
    ):
        persistence._emit_delete_statements(
            base_mapper, uow, mapper, table, _collect_deletes(table, runs, persist)
        )
        return
    connection, rows = persist.delete_rows(table, runs)
    if not rows:
        return
    statement = _pk_statement(base_mapper, mapper, table, "delete")
    expected = len(rows)
    matched = emission.execute(
        uow.session._turbo.emit, base_mapper, connection, statement, rows, True
    )
    if matched is None:
        matched = connection.execute(
            statement, rows, execution_options={"compiled_cache": base_mapper._compiled_cache}
        ).rowcount
    if (
        base_mapper.confirm_deleted_rows
        and matched > -1
        and expected != matched
        and (connection.dialect.supports_sane_multi_rowcount or expected == 1)
    ):
        warn(
            "DELETE statement on table '%s' expected to "
            "delete %d row(s); %d were matched.  Please set "
            "confirm_deleted_rows=False within the mapper "
            "configuration to prevent this warning."
            % (table.description, expected, matched)
        )
