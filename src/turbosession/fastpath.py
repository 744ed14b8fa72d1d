"""turbosession's own unit of work, and where it takes over from stock's.

A flush runs stock's dependency graph (turbosession's ``UOWTransaction``:
relationship processing, sorting), but each mapper's save and delete steps
(``_SaveUpdateAll`` / ``_DeleteAll``, stock's ``_save_obj``/``_delete_obj``;
in a flush split per state for a cycle between mappers, the per-state
``_SaveUpdateState`` / ``_DeleteState`` aggregated per mapper) run on
turbosession's unit of work when the mapper is one this module handles
exactly as stock does: one table, no inheritance (the reasons below).
Otherwise that step runs as stock's.  A flush is counted as fast
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

import logging
from collections import Counter
from itertools import chain

from sqlalchemy import sql
from sqlalchemy.orm import exc as orm_exc
from sqlalchemy.orm import persistence
from sqlalchemy.orm.unitofwork import (
    _DeleteAll,
    _DeleteState,
    _SaveUpdateAll,
    _SaveUpdateState,
)
from sqlalchemy.sql import operators
from sqlalchemy.sql.elements import BooleanClauseList
from sqlalchemy.sql.schema import Table

__all__ = ["FALLBACK_REASONS", "ActionRunner", "reset_stats", "stats"]

log = logging.getLogger("turbosession")

FALLBACK_REASONS = {
    "connection_callable": "the session picks a connection per object (horizontal sharding)",
    "inheritance": "the mapper inherits or is inherited from",
    "polymorphic": "the mapper has a polymorphic discriminator",
    "not_one_table": "the mapper is not mapped to exactly one Table",
    "batch_false": "the mapper was configured with batch=False",
    "row_switch_possible": "one mapper has both inserts and deletes in the flush",
    "disabled": "the session class sets _fast_flush = False",
}

_counts = Counter()


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


def mapper_fallback_reason(mapper):
    """Why this mapper's states cannot be flushed by the fast path, or None."""
    if mapper.inherits is not None or mapper._inheriting_mappers:
        return "inheritance"
    if mapper.polymorphic_on is not None:
        return "polymorphic"
    table = mapper.local_table
    if (
        not isinstance(table, Table)
        or mapper.persist_selectable is not table
        or len(mapper._sorted_tables) != 1
        or table not in mapper._pks_by_table
    ):
        return "not_one_table"
    if not mapper.batch:
        return "batch_false"
    if mapper._table_to_equated[table]:
        return "inheritance"
    return None


def _step_fallback_reason(uow, mapper):
    """Why this mapper's save and delete steps must be stock's, or None."""
    session = uow.session
    if not session._fast_flush:
        return "disabled"
    if session.connection_callable:
        return "connection_callable"
    reason = mapper_fallback_reason(mapper)
    if reason is not None:
        return reason
    # a new object may take the identity of a deleted one (a "row switch"),
    # which stock turns into an UPDATE; the saves are only looked through
    # when the flush deletes objects of this mapper too
    deletes = uow.states_for_mapper_hierarchy(mapper, True, False)
    if next(deletes, None) is not None and any(
        state.key is None
        for state in uow.states_for_mapper_hierarchy(mapper, False, False)
    ):
        return "row_switch_possible"
    return None


class ActionRunner:
    """Runs the sorted actions of one flush, mapper steps on the fast path.

    Whole-mapper steps (``_SaveUpdateAll`` / ``_DeleteAll``) and, in a flush
    split per state for a cycle, the per-state steps (``_SaveUpdateState`` /
    ``_DeleteState``, aggregated per mapper as stock aggregates them) run
    on turbosession's unit of work where the mapper allows it; every other
    action (relationship processing, post updates) is stock's.  ``reason``
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
                uow.mappers.get(m) for m in mapper.self_and_descendants
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
                states = uow.states_for_mapper_hierarchy(mapper, True, False)
                _delete(uow, mapper, self.persist, states)
            return
        action.execute(self.uow)

    def aggregate(self, action, actions):
        """``action.execute_aggregate(uow, actions)``: run ``action`` with
        the actions of the same kind and mapper among ``actions`` (removed
        from it), as stock's per-state steps do."""
        kind = type(action)
        if kind is _SaveUpdateAll or kind is _DeleteAll:
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
        action.execute_aggregate(self.uow, actions)


def _save(uow, mapper, persist, states):
    """``persistence._save_obj(mapper, states, uow)`` for a single-table mapper."""
    # stock asks for the connection even with no states (it may begin
    # the transaction), and then does nothing more
    connection = uow.transaction.connection(mapper)
    states = persistence._sort_states(mapper, states)
    if not states:
        return
    to_insert, to_update = persist.organize_for_save(mapper, states, uow, connection)
    table = mapper.local_table
    insert = persist.collect_insert_commands(table, mapper, connection, to_insert)
    update = persist.collect_update_commands(
        uow, table, mapper, to_update, uow.session._turbo.tracking.column_changes
    )
    _emit_updates(uow, mapper, table, update, persist)
    _emit_inserts(uow, mapper, table, insert, persist)
    if _needs_finalize(mapper):
        persistence._finalize_insert_update_commands(
            mapper,
            uow,
            chain(
                (
                    (state, state_dict, mapper, connection, False)
                    for state, state_dict, _, connection in to_insert
                ),
                (
                    (state, state_dict, mapper, connection, True)
                    for state, state_dict, _, connection, _ in to_update
                ),
            ),
        )
        return
    after_insert = mapper.dispatch.after_insert
    if after_insert:
        for state, _, _, state_connection in to_insert:
            after_insert(mapper, state_connection, state)
    after_update = mapper.dispatch.after_update
    if after_update:
        for state, _, _, state_connection, _ in to_update:
            after_update(mapper, state_connection, state)


def _needs_finalize(mapper):
    """Whether stock's ``_finalize_insert_update_commands`` has work for the
    mapper's states besides the ``after_*`` events: read-only properties to
    expire, eager defaults or a server-side version to SELECT, a version to
    check for NULL."""
    return bool(
        mapper._readonly_props
        or mapper.eager_defaults is True
        or mapper.version_id_col is not None
    )


def _stock_postfetch(mapper, table):
    """Whether stock's ``_postfetch`` does more for a row of the mapper than
    ``persist.postfetch_batch``: a version to take from the parameters,
    ORM-level defaults to treat as prefetched, ``refresh_flush`` events."""
    return bool(
        mapper.version_id_col is not None
        or mapper._insert_orm_defaults[table]
        or mapper.class_manager.dispatch.refresh_flush
    )


def _emit_inserts(uow, mapper, table, records, persist):
    """``persistence._emit_insert_statements`` (bookkeeping).

    A batch that has every primary key and nothing to fetch back is one
    executemany, sent here as stock sends it, with the per-row bookkeeping
    in ``persist``; any other batch, and every batch of a mapper whose rows
    need stock's ``_postfetch``, goes to stock's emitter unchanged.
    """
    if _stock_postfetch(mapper, table):
        persistence._emit_insert_statements(mapper, uow, mapper, table, records)
        return
    for (connection, _, hasvalue, has_all_pks, has_all_defaults), batch in persist.batches(
        records
    ):
        if (
            not hasvalue
            and has_all_pks
            and (
                has_all_defaults
                or not mapper._prefer_eager_defaults(connection.dialect, table)
                or not table.implicit_returning
                or not connection.dialect.insert_returning
            )
        ):
            result = connection.execute(
                mapper._memo(("insert", table), table.insert),
                [record[2] for record in batch],
                execution_options={"compiled_cache": mapper._compiled_cache},
            )
            persist.postfetch_batch(mapper, uow, table, batch, result, False)
        else:
            persistence._emit_insert_statements(mapper, uow, mapper, table, batch)


def _update_statement(mapper, table):
    """Stock's memoized UPDATE .. WHERE <primary key> for the table."""

    def update_stmt():
        clauses = BooleanClauseList._construct_raw(operators.and_)
        for col in mapper._pks_by_table[table]:
            clauses._append_inplace(col == sql.bindparam(col._label, type_=col.type))
        return table.update().where(clauses)

    return mapper._memo(("update", table), update_stmt)


def _emit_updates(uow, mapper, table, records, persist):
    """``persistence._emit_update_statements`` (bookkeeping).

    A batch of plain values locating rows by unchanged primary keys is one
    executemany with stock's row-count check, sent here; any other batch
    (with eager defaults to return, too), and every batch of a mapper whose
    rows need stock's ``_postfetch``, goes to stock's emitter unchanged.
    """
    if _stock_postfetch(mapper, table):
        persistence._emit_update_statements(mapper, uow, mapper, table, records)
        return
    for (connection, _, hasvalue, has_all_defaults, has_all_pks), batch in persist.batches(records):
        if hasvalue or not has_all_pks or not has_all_defaults:
            persistence._emit_update_statements(mapper, uow, mapper, table, batch)
            continue
        dialect = connection.dialect
        check_rowcount = dialect.supports_sane_rowcount and (
            dialect.supports_sane_multi_rowcount or len(batch) == 1
        )
        result = connection.execute(
            _update_statement(mapper, table),
            [record[2] for record in batch],
            execution_options={"compiled_cache": mapper._compiled_cache},
        )
        rows = result.rowcount
        persist.postfetch_batch(mapper, uow, table, batch, result, True)
        if check_rowcount and rows != len(batch):
            raise orm_exc.StaleDataError(
                "UPDATE statement on table '%s' expected to "
                "update %d row(s); %d were matched."
                % (table.description, len(batch), rows)
            )


def _delete(uow, mapper, persist, states):
    """``persistence._delete_obj(mapper, states, uow)`` for a single-table mapper."""
    connection = uow.transaction.connection(mapper)
    states = persistence._sort_states(mapper, states)
    if not states:
        return
    to_delete = persist.organize_for_delete(mapper, states, connection)
    table = mapper.local_table
    delete = persist.collect_delete_commands(table, mapper, to_delete)
    persistence._emit_delete_statements(mapper, uow, mapper, table, delete)
    after_delete = mapper.dispatch.after_delete
    if after_delete:
        for state, _, _, state_connection, _ in to_delete:
            after_delete(mapper, state_connection, state)
