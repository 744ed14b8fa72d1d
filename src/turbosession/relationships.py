"""Which relationship steps of a flush run on turbosession's per-state loops
(``turbosession._relationships``), and the per-relationship plan they follow.

A ``ProcessAll`` step that saves (``process_saves``) runs there when its
processor is stock's ``OneToManyDP`` or ``ManyToOneDP`` as is (no subclass,
no method replaced on the instance), without ``post_update``, and
``sync._populate`` / ``sync._source_modified`` are stock's; every other
relationship step (deletes, many-to-many, post updates, per-state steps of
a cycle) runs as stock's.  The plan (``sync_plan``) is the attribute keys of
the relationship's synchronised columns on each side, kept with the parent
mapper's memoized values.
"""

from sqlalchemy.orm import dependency, exc as orm_exc, sync

__all__ = ["saves_runner"]

_STOCK_POPULATE = sync._populate
_STOCK_SOURCE_MODIFIED = sync._source_modified
_PROCESSORS = (dependency._ManyToOneDP, dependency._OneToManyDP)
_METHODS = frozenset(
    ("process_saves", "_synchronize", "_verify_canload", "hasparent", "_pks_changed")
)
_PLAN_KEY = "turbosession", "sync_plan"


def _build(dp):
    """``(keys, target)`` or None when a column is not mapped (stock raises
    its own error when it gets there)."""
    if type(dp) is dependency._ManyToOneDP:
        source, dest = dp.mapper, dp.parent
    else:
        source, dest = dp.parent, dp.mapper
    try:
        keys = tuple(
            (source._columntoproperty[l].key, dest._columntoproperty[r].key)
            for l, r in dp.prop.synchronize_pairs
        )
    except orm_exc.UnmappedColumnError:
        return None
    mapper = dp.mapper
    target = mapper if mapper.class_manager.mapper is mapper else None
    return keys, target


def sync_plan(dp):
    """``_build(dp)``, rebuilt when either mapper's memoized values are reset."""
    memo = dp.parent._memoized_values
    key = _PLAN_KEY + (dp.prop,)
    sources = dp.parent._propkey_to_col, dp.mapper._propkey_to_col
    entry = memo.get(key)
    if entry is None or entry[0][0] is not sources[0] or entry[0][1] is not sources[1]:
        entry = memo[key] = (sources, _build(dp))
    return entry[1]


def saves_runner(dp):
    """``(function, extra args)`` that does ``dp.process_saves(uow, states)``
    as ``function(uow, dp, states, *extra)``, or None: stock's then."""
    if type(dp) not in _PROCESSORS or dp.post_update or not _METHODS.isdisjoint(dp.__dict__):
        return None
    if sync._populate is not _STOCK_POPULATE or sync._source_modified is not _STOCK_SOURCE_MODIFIED:
        return None
    plan = sync_plan(dp)
    if plan is None:
        return None
    keys, target = plan
    if type(dp) is dependency._ManyToOneDP:
        return "many_to_one_saves", (keys, target)
    return "one_to_many_saves", (keys, tuple(k[0] for k in keys), target)
