"""The sorted steps of a flush whose shape repeats.

After the presort actions have run, stock's unit of work looks for cycles
in its dependency graph, sorts the postsort actions by sort key and then
topologically, on every flush.  In a flush whose only postsort actions
are the save and delete steps of each mapper hierarchy with states
(``_SaveUpdateAll`` / ``_DeleteAll``, as ``_per_mapper_flush_actions``
makes them: no relationship with work in this flush, no post update) and
whose only dependencies are those steps' save-before-delete edges, the
graph has no cycle and the sorted order depends only on which hierarchies
take part.  ``sorted_steps`` gives that order, computed the first time by
stock's algorithm (the sort key, then turbosession's topological sort)
and kept with the base mapper's memoized values, so it is dropped when
SQLAlchemy resets them (mappers configured or changed).

Only the search for cycles and the sort are skipped: the unit of work's
records, dependencies and states are built as stock builds them (``cycles``
is the empty set stock's search returns), so a listener given the flush
context sees stock's.  Any other flush (a relationship with work, a post
update, a cycle split per state, an edge a listener added, two hierarchies
with the same sort key, whose order stock leaves to set iteration) is
sorted as stock sorts it; ``stats()`` counts both, by reason.

One shape goes further: a flush of one new object of a single-table mapper
without relationship processors registers its state without the two steps'
records and their dependency (``flush.UOWTransaction.unrecorded_mapper``),
which only the sort would read, unless a session listener is given the
flush context (``before_flush``, ``after_flush``, ``after_flush_postexec``),
which could read them: that flush keeps stock's records, counted under
``recorded`` by reason (``RECORDED_REASONS``).
"""

from collections import Counter, defaultdict
from operator import attrgetter

from sqlalchemy.orm.unitofwork import _DeleteAll, _SaveUpdateAll

from .memo import derived

__all__ = [
    "REASONS", "RECORDED_REASONS", "count_cached", "count_recorded", "reset_stats",
    "sorted_steps", "stats",
]

REASONS = {
    "actions": "postsort actions besides the hierarchies' save and delete steps "
    "(a relationship with work in this flush, a post update)",
    "dependencies": "dependencies besides the save-before-delete edges "
    "(added by a listener given the flush context)",
    "sort_key": "two mapper hierarchies with the same sort key (stock's order then "
    "follows set iteration)",
}

RECORDED_REASONS = {
    "flush_context_listeners": "a before_flush, after_flush or after_flush_postexec "
    "listener is given the flush context, whose records it could read",
}

# (a defaultdict: see transaction's counts)
_counts = defaultdict(int)
_recorded = Counter()

_KEY = ("turbosession", "flush steps")
_sort_key = attrgetter("sort_key")
_mapper_sort_key = attrgetter("_sort_key")


def stats():
    """``cached``: flushes run on sorted steps known for their shape;
    ``sorted``: flushes whose graph was searched and sorted, by reason;
    ``recorded``: flushes of one new object that could have left out their
    steps' records and did not, by reason."""
    return {
        "cached": _counts["cached"],
        "sorted": {k: v for k, v in _counts.items() if k != "cached"},
        "recorded": dict(_recorded),
    }


def reset_stats():
    _counts.clear()
    _recorded.clear()


def _new_cache(mapper):
    return {}


def sorted_steps(uow):
    """The keys of ``uow.postsort_actions`` in the order stock's sort
    runs them, or None when the flush is not of a shape with known steps
    (its graph is then searched and sorted as stock does)."""
    actions = uow.postsort_actions
    dependencies = uow.dependencies
    if len(actions) != 2 * len(dependencies):
        return _unknown(actions)
    mappers = []
    for before, after in dependencies:
        mapper = before.mapper
        if (
            type(before) is not _SaveUpdateAll
            or type(after) is not _DeleteAll
            or after.mapper is not mapper
            or actions.get((_SaveUpdateAll, mapper)) is not before
            or actions.get((_DeleteAll, mapper)) is not after
        ):
            # the edges do not pair each hierarchy's two steps: either
            # other actions, or edges stock's steps did not add
            return _unknown(actions)
        if before.disabled or after.disabled:
            _counts["actions"] += 1
            return None
        mappers.append(mapper)
    if not mappers:
        _counts["actions"] += 1
        return None
    if len(mappers) == 1:
        holder = shape = mappers[0]
    else:
        keys = {m._sort_key for m in mappers}
        if len(keys) != len(mappers):
            _counts["sort_key"] += 1
            return None
        holder = min(mappers, key=_mapper_sort_key)
        shape = frozenset(mappers)
    # derived(holder, _KEY, ...), its kept cache found without the call
    entry = holder._memoized_values.get(_KEY)
    if entry is not None and entry[0] is holder._sorted_tables:
        cache = entry[1]
    else:
        cache = derived(holder, _KEY, holder._sorted_tables, _new_cache)
    steps = cache.get(shape)
    if steps is None:
        steps = cache[shape] = _sort(uow, actions, dependencies)
    _counts["cached"] += 1
    return steps


def count_cached():
    """Count a flush run on its known steps without asking ``sorted_steps``
    (``fastpath.insert_single``: one mapper's save and delete steps)."""
    _counts["cached"] += 1


def count_recorded(reason):
    """Count a flush of one new object that keeps its steps' records
    (``RECORDED_REASONS``)."""
    _recorded[reason] += 1


def _unknown(actions):
    """None, counted: ``dependencies`` when every action is a hierarchy's
    save or delete step (so an edge is not theirs), else ``actions``."""
    only_steps = all(type(a) is _SaveUpdateAll or type(a) is _DeleteAll for a in actions.values())
    _counts["dependencies" if only_steps else "actions"] += 1
    return None


def _sort(uow, actions, dependencies):
    """Stock's order for these actions: by sort key, then topologically."""
    topological = uow._topological
    ordered = sorted(actions.values(), key=_sort_key)
    assert not topological.find_cycles(dependencies, ordered)
    return tuple((type(action), action.mapper) for action in topological.sort(dependencies, ordered))
