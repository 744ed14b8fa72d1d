"""Which relationship steps of a flush run on turbosession's per-state loops
(``turbosession._relationships``), and the per-relationship plan they follow.

A ``ProcessAll`` step runs there when its processor is stock's
``OneToManyDP``, ``ManyToOneDP`` or ``ManyToManyDP`` as is (no subclass, no
method replaced on the instance), without ``post_update``, and the ``sync``
functions are stock's:

- saves (``process_saves``) of all three;
- deletes (``process_deletes``) of the one-to-many (foreign keys of the
  children left behind cleared) and of the many-to-many (association rows of
  the deleted parents).  The many-to-one's ``process_deletes`` does nothing
  without ``post_update``: stock's is called.

The many-to-many's association rows are collected there and written here
as stock's ``_run_crud`` writes them (deletes, updates, inserts; one
statement each, stock's row-count checks), through ``emission.execute``
straight to the DBAPI cursor where nothing can tell, else through the
Connection as stock.  Every other step is stock's, counted in
``stats()`` by reason (``FALLBACK_REASONS``).  The plan (``sync_plan``) is
the attribute keys of the relationship's synchronised columns on each side,
kept with the parent mapper's memoized values.
"""

import functools
import logging
from collections import Counter

from sqlalchemy import sql
from sqlalchemy.orm import attributes, dependency, exc as orm_exc, sync
from sqlalchemy.orm.interfaces import MANYTOONE
from sqlalchemy.orm.unitofwork import _Preprocess

from . import emission

__all__ = ["FALLBACK_REASONS", "plan_for", "preprocess", "reset_stats", "run", "stats"]

log = logging.getLogger("turbosession")

FALLBACK_REASONS = {
    "disabled": "the session class sets _fast_flush = False",
    "processor": "the dependency processor is not stock's class, or has a method "
    "replaced on the instance",
    "post_update": "the relationship has post_update",
    "sync": "sqlalchemy.orm.sync's functions are replaced",
    "unmapped": "a synchronised column is not mapped (stock raises its error)",
}

_counts = Counter()


def stats():
    """Relationship steps (``ProcessAll``) run on turbosession's loops
    (``fast``), and those run by stock's processor, by reason."""
    fallback = {k: v for k, v in _counts.items() if k != "fast"}
    return {"fast": _counts["fast"], "fallback": fallback}


def reset_stats():
    _counts.clear()


def _fallback(reason):
    _counts[reason] += 1
    if log.isEnabledFor(logging.DEBUG):
        log.debug("relationship step runs as stock's: %s (%s)", reason, FALLBACK_REASONS[reason])


_SYNC = (sync._populate, sync._source_modified, sync._clear, sync._update, sync._populate_dict)
_PROCESSORS = (dependency._ManyToOneDP, dependency._OneToManyDP, dependency._ManyToManyDP)
_METHODS = frozenset(
    (
        "process_saves",
        "process_deletes",
        "presort_deletes",
        "presort_saves",
        "prop_has_changes",
        "_synchronize",
        "_verify_canload",
        "hasparent",
        "_pks_changed",
        "_run_crud",
        "_get_reversed_processed_set",
    )
)
_PLAN_KEY = "turbosession", "sync_plan"
_PREPROCESS = _Preprocess.execute


def _keys(mapper, pairs, side):
    """The attribute keys on ``mapper`` of the ``side`` (0: left, 1: right)
    column of each pair."""
    return tuple(mapper._columntoproperty[pair[side]].key for pair in pairs)


def _build(dp):
    """The processor's plan, or None when a column is not mapped (stock
    raises its own error when it gets there):

    - one-to-many / many-to-one: ``(keys, target, clear_keys)``: ``keys``
      pairs the referenced side's attribute keys with the referencing
      side's; ``clear_keys`` the referencing side's keys to set to None
      (None when one is a primary key column: stock's ``sync._clear``);
    - many-to-many: ``(parent_keys, child_keys, target)``, each side's
      attribute keys paired with the association table's column keys.

    ``target`` is the processor's mapper when it is its class's primary
    mapper (a child of exactly that mapper passes ``_verify_canload``).
    """
    prop = dp.prop
    mapper = dp.mapper
    target = mapper if mapper.class_manager.mapper is mapper else None
    try:
        if type(dp) is dependency._ManyToManyDP:
            parent_keys = tuple(
                zip(_keys(dp.parent, prop.synchronize_pairs, 0),
                    (r.key for _, r in prop.synchronize_pairs))
            )
            child_keys = tuple(
                zip(_keys(mapper, prop.secondary_synchronize_pairs, 0),
                    (r.key for _, r in prop.secondary_synchronize_pairs))
            )
            return parent_keys, child_keys, target
        if type(dp) is dependency._ManyToOneDP:
            source, dest = mapper, dp.parent
        else:
            source, dest = dp.parent, mapper
        pairs = prop.synchronize_pairs
        keys = tuple(zip(_keys(source, pairs, 0), _keys(dest, pairs, 1)))
    except orm_exc.UnmappedColumnError:
        return None
    clear_keys = None if any(r.primary_key for _, r in pairs) else tuple(k[1] for k in keys)
    return keys, target, clear_keys


def sync_plan(dp):
    """``_build(dp)``, rebuilt when either mapper's memoized values are reset."""
    memo = dp.parent._memoized_values
    key = _PLAN_KEY + (dp.prop,)
    sources = dp.parent._propkey_to_col, dp.mapper._propkey_to_col
    entry = memo.get(key)
    if entry is None or entry[0][0] is not sources[0] or entry[0][1] is not sources[1]:
        entry = memo[key] = (sources, _build(dp))
    return entry[1]


def _reason(uow, dp):
    if not uow.session._fast_flush:
        return "disabled"
    if type(dp) not in _PROCESSORS or not _METHODS.isdisjoint(dp.__dict__):
        return "processor"
    if dp.post_update:
        return "post_update"
    if (
        sync._populate is not _SYNC[0]
        or sync._source_modified is not _SYNC[1]
        or sync._clear is not _SYNC[2]
        or sync._update is not _SYNC[3]
        or sync._populate_dict is not _SYNC[4]
    ):
        return "sync"
    return None


def plan_for(uow, dp, isdelete):
    """The plan of ``dp``'s ``process_deletes`` (``isdelete``) or
    ``process_saves`` on turbosession's loops, or None: stock's method then
    (counted by reason, except a many-to-one's ``process_deletes``, which
    does nothing without ``post_update``)."""
    reason = _reason(uow, dp)
    if reason is None:
        if isdelete and type(dp) is dependency._ManyToOneDP:
            return None
        plan = sync_plan(dp)
        if plan is not None:
            _counts["fast"] += 1
            return plan
        reason = "unmapped"
    _fallback(reason)
    return None


def run(uow, dp, isdelete, states, plan, loops):
    """``dp.process_deletes(uow, states)`` (``isdelete``) or
    ``dp.process_saves(uow, states)`` on ``loops`` (the session's
    ``_relationships`` module), following ``plan`` (``plan_for``)."""
    kind = type(dp)
    if kind is dependency._ManyToManyDP:
        parent_keys, child_keys, target = plan
        processed = dp._get_reversed_processed_set(uow)
        if isdelete:
            rows = loops.many_to_many_deletes(
                uow, dp, states, parent_keys, child_keys, target, processed
            )
        else:
            rows = loops.many_to_many_saves(
                uow, dp, states, parent_keys, child_keys, target, processed,
                not dp.passive_updates,
            )
        _run_crud(uow, dp, *rows)
        return
    keys, target, clear_keys = plan
    if kind is dependency._ManyToOneDP:
        loops.many_to_one_saves(uow, dp, states, keys, target)
    elif isdelete:
        loops.one_to_many_deletes(uow, dp, states, clear_keys, target)
    else:
        loops.one_to_many_saves(uow, dp, states, keys, tuple(k[0] for k in keys), target)


def preprocess(uow, action, loops):
    """``action.execute(uow)`` for a presort action (``_Preprocess``), as
    stock's runs it, with the states gathered on ``loops`` and, where the
    processor's steps run there (``_reason``), its ``presort_deletes``
    (one-to-many, many-to-many, many-to-one with a delete cascade),
    ``presort_saves`` (one-to-many, many-to-one without delete-orphan) and
    ``prop_has_changes`` there too; anything else is stock's."""
    if type(action) is not _Preprocess or _Preprocess.execute is not _PREPROCESS:
        return action.execute(uow)
    dp = action.dependency_processor
    kind = type(dp)
    presort_deletes = presort_saves = None
    fast = _reason(uow, dp) is None
    if fast:
        if kind is dependency._ManyToManyDP:
            presort_deletes = loops.many_to_many_presort_deletes
        elif kind is dependency._ManyToOneDP:
            if dp.cascade.delete or dp.cascade.delete_orphan:
                presort_deletes = loops.many_to_one_presort_deletes
            if not dp.cascade.delete_orphan:
                presort_saves = loops.many_to_one_presort_saves
        else:
            plan = sync_plan(dp)
            if plan is not None:
                presort_deletes = loops.one_to_many_presort_deletes
                source_keys = tuple(k[0] for k in plan[0])
                presort_saves = functools.partial(
                    loops.one_to_many_presort_saves, source_keys=source_keys
                )
    processed = action.processed
    delete_states, save_states = loops.presort_states(uow, action._mappers(uow), processed)
    if delete_states:
        if presort_deletes is None:
            dp.presort_deletes(uow, delete_states)
        else:
            presort_deletes(uow, dp, delete_states)
        processed.update(delete_states)
    if save_states:
        if presort_saves is None:
            dp.presort_saves(uow, save_states)
        else:
            presort_saves(uow, dp, save_states)
        processed.update(save_states)
    if delete_states or save_states:
        if not action.setup_flush_actions and (
            _prop_has_changes(uow, dp, delete_states, True, fast, loops)
            or _prop_has_changes(uow, dp, save_states, False, fast, loops)
        ):
            dp.per_property_flush_actions(uow)
            action.setup_flush_actions = True
        return True
    return False


_PENDING_NO_INITIALIZE = attributes.PASSIVE_NO_INITIALIZE | attributes.INCLUDE_PENDING_MUTATIONS
_PENDING_OFF = attributes.PASSIVE_OFF | attributes.INCLUDE_PENDING_MUTATIONS


def _prop_has_changes(uow, dp, states, isdelete, fast, loops):
    """``dp.prop_has_changes(uow, states, isdelete)``: for a processor whose
    steps run on ``loops`` (``fast``), its histories looked at there with
    the flag stock's method picks."""
    if not fast:
        return dp.prop_has_changes(uow, states, isdelete)
    if not isdelete or dp.passive_deletes:
        passive = _PENDING_NO_INITIALIZE
    elif dp.direction is MANYTOONE:
        passive = attributes.PASSIVE_NO_FETCH_RELATED
    else:
        passive = _PENDING_OFF
    return loops.prop_has_changes(uow, dp, states, passive)


def _secondary_statement(dp, kind, columns):
    """Stock's association-table statement of ``_run_crud`` (``kind``:
    "delete" or "update" WHERE the given columns, or "insert"), made once
    per relationship and shape and kept with the parent mapper's memoized
    values, so that the emission plan made for it is found again."""

    def build():
        table = dp.secondary
        if kind == "insert":
            return table.insert()
        prefix = "old_" if kind == "update" else ""
        where = sql.and_(*[c == sql.bindparam(prefix + c.key, type_=c.type) for c in columns])
        return (table.delete() if kind == "delete" else table.update()).where(where)

    return dp.parent._memo(("turbosession", "secondary", dp.prop, kind, columns), build)


def _execute(uow, dp, connection, statement, rows, rowcount):
    """``connection.execute(statement, rows)`` as stock's ``_run_crud``
    runs it: the rowcount (with ``rowcount``) and whether the dialect's
    multi-row count can be trusted, sent straight to the cursor where
    ``emission`` allows it."""
    base_mapper = dp.parent.base_mapper
    options = connection._execution_options
    cache = options.get("compiled_cache", connection.engine._compiled_cache)
    matched = emission.execute(
        uow.session._turbo.emit, base_mapper, connection, statement, rows, rowcount,
        compiled_cache=cache,
    )
    if matched is None:
        result = connection.execute(statement, rows)
        return result.rowcount if rowcount else -1, result.supports_sane_multi_rowcount()
    return matched, connection.dialect.supports_sane_multi_rowcount


def _run_crud(uow, dp, secondary_insert, secondary_update, secondary_delete):
    """``ManyToManyDP._run_crud``: the association rows deleted, updated and
    inserted, each kind one statement (executemany for several rows), with
    stock's ``StaleDataError`` when the rows matched are not the rows sent."""
    connection = uow.transaction.connection(dp.mapper)
    for kind, rows in (("delete", secondary_delete), ("update", secondary_update)):
        if not rows:
            continue
        columns = tuple(c for c in dp.secondary.c if c.key in rows[0])
        statement = _secondary_statement(dp, kind, columns)
        matched, sane = _execute(uow, dp, connection, statement, rows, True)
        if sane and matched != len(rows):
            raise orm_exc.StaleDataError(
                "%s statement on table '%s' expected to %s "
                "%d row(s); Only %d were matched."
                % (kind.upper(), dp.secondary.description, kind, len(rows), matched)
            )
    if secondary_insert:
        statement = _secondary_statement(dp, "insert", ())
        _execute(uow, dp, connection, statement, secondary_insert, False)
