# cython: boundscheck=False, wraparound=False, cdivision=True
"""Topological sort of flush actions.

Drop-in for ``sqlalchemy.util.topological``: the same results for the same
input, in the same order, because the unit of work's flush order is the order
of the SQL it emits.

Why the output matches stock although the algorithms differ:

* stock ``sort_as_subsets`` repeats "take, in ``allitems`` order, every item
  none of whose parents is still to do" until nothing is left.  The round an
  item lands in is therefore the length of the longest chain of parents above
  it (among ``allitems``).  Computing that once (Kahn's algorithm, linear)
  and then bucketing ``allitems`` by it gives the same rounds, each in
  ``allitems`` order, duplicates included, instead of one pass over all the
  remaining items per round.  Items left without a round sit on or below a
  cycle: stock yields every earlier round and then raises, and so do we.
* stock ``find_cycles`` runs a depth-first search from every node.  Its
  result is a set whose iteration order (visible in the error message)
  depends on the order in which nodes are first added, so we run the very
  same search in the same visiting order (the same dict-of-sets built the
  same way), but mark "visited" with a per-start stamp and resume each
  node's child iteration where it stopped instead of copying the node set
  and rescanning.  Rescans only ever re-reported cycles already in the
  output, so the sequence of first additions is unchanged.

Nodes are numbered once through a dict; the per-edge and per-node loops then
index arrays of ints (``_ints``): C arrays compiled, lists uncompiled.
"""

from __future__ import annotations

from sqlalchemy.exc import CircularDependencyError
from sqlalchemy.util import topological as _stock

try:
    import cython
except ModuleNotFoundError:
    from turbosession import _cython_shim as cython

if cython.compiled:
    from cython.cimports.cpython.dict import PyDict_GetItem
    from cython.cimports.cpython.mem import PyMem_Free, PyMem_Malloc
    from cython.cimports.cpython.object import PyObject
    from cython.cimports.cpython.tuple import PyTuple_GET_ITEM, PyTuple_GET_SIZE

__all__ = ["sort", "sort_as_subsets", "find_cycles"]


def _is_compiled():
    return cython.compiled


@cython.cfunc
@cython.exceptval(check=True)
def _ints(count: cython.Py_ssize_t, fill: cython.int) -> cython.p_int:
    """``count + 1`` ints set to ``fill``: a C block (give it to ``_free``)
    compiled, a list uncompiled."""
    if not cython.compiled:
        return [fill] * (count + 1)
    block: cython.p_int = cython.cast(
        cython.p_int, PyMem_Malloc((count + 1) * cython.sizeof(cython.int))
    )
    i: cython.Py_ssize_t
    if block == cython.NULL:
        raise MemoryError()
    for i in range(count + 1):
        block[i] = fill
    return block


@cython.cfunc
@cython.inline
def _free(block: cython.p_int):
    if cython.compiled:
        PyMem_Free(block)


@cython.cfunc
@cython.inline
def _number(index: dict, node) -> cython.int:
    """The number of ``node`` in ``index``, -1 when it is not an item."""
    if not cython.compiled:
        return index.get(node, -1)
    found: cython.pointer(PyObject) = PyDict_GetItem(index, node)
    if found == cython.NULL:
        return -1
    return cython.cast(cython.int, cython.cast(object, found))


@cython.cfunc
def _adjacency(
    size: cython.int,
    src: cython.p_int,
    dst: cython.p_int,
    count: cython.Py_ssize_t,
    start: cython.p_int,
    child: cython.p_int,
):
    """Adjacency lists of numbered nodes, children in the order given: the
    children of n are ``child[start[n]:start[n + 1]]`` (``start`` holds
    ``size + 1`` ints, zeroed; ``child`` ``count``)."""
    k: cython.Py_ssize_t
    n: cython.int
    total: cython.int = 0
    degree: cython.int
    for k in range(count):
        start[src[k]] += 1
    for n in range(size + 1):
        degree = start[n]
        start[n] = total
        total += degree
    for k in range(count):
        # start[src] walks forward while filling, then is moved back
        child[start[src[k]]] = dst[k]
        start[src[k]] += 1
    for n in range(size, 0, -1):
        start[n] = start[n - 1]
    start[0] = 0


@cython.cfunc
def _rounds(pairs, items: list) -> tuple:
    """Stock's rounds of ``items``, and whether some items were never ready.

    ``pairs`` is sized (a collection): it bounds the number of edges.
    """
    if not cython.compiled:
        return _rounds_uncompiled(pairs, items)
    index: dict = {}
    n_items: cython.Py_ssize_t = len(items)
    k: cython.Py_ssize_t
    count: cython.Py_ssize_t = 0
    size: cython.int = 0
    node: cython.int
    parent: cython.int
    child: cython.int
    below: cython.int
    head: cython.int = 0
    tail: cython.int = 0
    deepest: cython.int = -1
    position_of: cython.p_int = cython.NULL  # position in items -> number
    src: cython.p_int = cython.NULL  # edges: src[k] -> dst[k] for k < count
    dst: cython.p_int = cython.NULL
    waiting: cython.p_int = cython.NULL
    start: cython.p_int = cython.NULL
    children: cython.p_int = cython.NULL
    level: cython.p_int = cython.NULL
    ready: cython.p_int = cython.NULL
    rounds: list
    round_: list
    try:
        position_of = _ints(n_items, 0)
        for k in range(n_items):
            item = items[k]
            node = _number(index, item)
            if node < 0:
                node = size
                index[item] = size
                size += 1
            position_of[k] = node

        waiting = _ints(size, 0)
        src = _ints(len(pairs), 0)
        dst = _ints(len(pairs), 0)
        for pair in pairs:
            if cython.compiled and type(pair) is tuple and PyTuple_GET_SIZE(pair) == 2:
                parent = _number(index, cython.cast(object, PyTuple_GET_ITEM(pair, 0)))
                child = _number(index, cython.cast(object, PyTuple_GET_ITEM(pair, 1)))
            else:
                parent_obj, child_obj = pair
                parent = index.get(parent_obj, -1)
                child = index.get(child_obj, -1)
            if parent < 0 or child < 0:
                continue
            # a repeated edge counts twice here and is released twice
            src[count] = parent
            dst[count] = child
            count += 1
            waiting[child] += 1
        start = _ints(size, 0)
        children = _ints(count, 0)
        _adjacency(size, src, dst, count, start, children)

        level = _ints(size, 0)
        ready = _ints(size, 0)
        for node in range(size):
            if waiting[node] == 0:
                ready[tail] = node
                tail += 1
        while head < tail:
            node = ready[head]
            head += 1
            below = level[node] + 1
            if below > deepest:
                deepest = below - 1
            for k in range(start[node], start[node + 1]):
                child = children[k]
                if level[child] < below:
                    level[child] = below
                waiting[child] -= 1
                if waiting[child] == 0:
                    ready[tail] = child
                    tail += 1

        rounds = [[] for _ in range(deepest + 1)]
        for k in range(n_items):
            node = position_of[k]
            if waiting[node] == 0:
                round_ = rounds[level[node]]
                round_.append(items[k])
        return rounds, tail < size
    finally:
        _free(position_of)
        _free(src)
        _free(dst)
        _free(waiting)
        _free(start)
        _free(children)
        _free(level)
        _free(ready)


def _rounds_uncompiled(pairs, items: list) -> tuple:
    """``_rounds`` as Python runs it fastest: the same numbering, edges,
    release order and rounds, with lists of children instead of the C
    arrays' adjacency (built in four passes, which uncompiled cost a third
    more on a graph of 10,000 nodes)."""
    index: dict = {}
    for item in items:
        if item not in index:
            index[item] = len(index)
    size = len(index)
    children: list = [[] for _ in range(size)]
    waiting: list = [0] * size
    get = index.get
    for parent_obj, child_obj in pairs:
        parent = get(parent_obj)
        child = get(child_obj)
        if parent is not None and child is not None:
            # a repeated edge counts twice here and is released twice
            children[parent].append(child)
            waiting[child] += 1
    level: list = [0] * size
    ready: list = [node for node in range(size) if not waiting[node]]
    deepest = -1
    for node in ready:  # grows while iterating: Kahn's queue
        below = level[node] + 1
        if below > deepest:
            deepest = below - 1
        for child in children[node]:
            if level[child] < below:
                level[child] = below
            waiting[child] -= 1
            if not waiting[child]:
                ready.append(child)
    rounds: list = [[] for _ in range(deepest + 1)]
    for item in items:
        node = index[item]
        if not waiting[node]:
            rounds[level[node]].append(item)
    return rounds, len(ready) < size


def _circular_error(pairs, tuples, allitems):
    # stock's child -> parents dict, rebuilt the same way so that the
    # ``edges`` set is built in the same order; stock reads ``tuples`` again
    # for the cycles (an iterator is exhausted by then)
    parents_of: dict = {}
    parents: set
    for parent, child in pairs:
        parents = parents_of.get(child)
        if parents is None:
            parents_of[child] = parents = set()
        parents.add(parent)
    return CircularDependencyError(
        "Circular dependency detected.",
        find_cycles(tuples, allitems),
        {(right, left) for left in parents_of for right in parents_of[left]},
    )


@cython.cfunc
def _pairs(tuples) -> object:
    """The edges, read once into a list unless ``tuples`` is a collection
    (the edges are needed again on a cycle, and their count bounds the
    arrays)."""
    kind = type(tuples)
    if kind is set or kind is list or kind is tuple or kind is frozenset:
        return tuples
    return list(tuples)


# Uncompiled, numbering the nodes and filling the int lists costs more
# than stock's own passes over the few actions of a small flush; stock's
# functions give the same results (see above), so up to this many items
# (and four times as many edges) the uncompiled module hands them over.
_STOCK_UP_TO = 16


def _small(tuples, allitems) -> cython.bint:
    if cython.compiled:
        return False
    kind = type(allitems)
    if kind is not list and kind is not tuple:
        return False
    kind = type(tuples)
    if kind is not set and kind is not list and kind is not tuple:
        return False
    return len(allitems) <= _STOCK_UP_TO and len(tuples) <= 4 * _STOCK_UP_TO


def sort_as_subsets(tuples, allitems):
    """Lists of items in dependency rounds; see the module docstring."""
    if _small(tuples, allitems):
        return _stock.sort_as_subsets(tuples, allitems)
    return _sort_as_subsets(tuples, allitems)


def _sort_as_subsets(tuples, allitems):
    pairs = _pairs(tuples)
    rounds, stuck = _rounds(pairs, list(allitems))
    yield from rounds
    if stuck:
        raise _circular_error(pairs, tuples, allitems)


def sort(tuples, allitems, deterministic_order=True):
    """Items in dependency order (``deterministic_order`` is ignored,
    as stock ignores it: the order always follows ``allitems``)."""
    if _small(tuples, allitems):
        return _stock.sort(tuples, allitems, deterministic_order)
    return _sort(tuples, allitems)


def _sort(tuples, allitems):
    round_: list
    pairs = _pairs(tuples)
    rounds, stuck = _rounds(pairs, list(allitems))
    for round_ in rounds:
        yield from round_
    if stuck:
        raise _circular_error(pairs, tuples, allitems)


def find_cycles(tuples, allitems):
    """The set of nodes that lie on a cycle; ``allitems`` is unused, as in stock."""
    if _small(tuples, allitems):
        return _stock.find_cycles(tuples, allitems)
    return _find_cycles(tuples, allitems)


def _find_cycles(tuples, allitems):
    children_of: dict = {}
    children: set
    for parent_obj, child_obj in tuples:
        children = children_of.get(parent_obj)
        if children is None:
            children_of[parent_obj] = children = set()
        children.add(child_obj)
    # only nodes with children can be on a cycle; stock visits them in the
    # iteration order of set(its defaultdict), and their children in their
    # sets' order.  set() presizes from an exact dict, not from a
    # defaultdict: iterating the keys builds the same table as stock's.
    order: list = list(set(iter(children_of)))
    size: cython.int = len(order)
    index: dict = {key: i for i, key in enumerate(order)}
    n_edges: cython.Py_ssize_t = 0
    k: cython.Py_ssize_t
    node: cython.int
    top: cython.int
    child: cython.int
    depth: cython.int = 0
    first: cython.int
    pushed: cython.bint
    output: set = set()
    src: cython.p_int = cython.NULL
    dst: cython.p_int = cython.NULL
    start: cython.p_int = cython.NULL
    adjacent: cython.p_int = cython.NULL
    stamp: cython.p_int = cython.NULL  # == first: visited in the search from first
    stack_pos: cython.p_int = cython.NULL
    resume: cython.p_int = cython.NULL
    stack: cython.p_int = cython.NULL
    in_output: cython.p_int = cython.NULL
    for node in range(size):
        children = children_of[order[node]]
        n_edges += len(children)
    try:
        src = _ints(n_edges, 0)
        dst = _ints(n_edges, 0)
        n_edges = 0
        for node in range(size):
            children = children_of[order[node]]
            for child_obj in children:
                child = _number(index, child_obj)
                if child >= 0:
                    src[n_edges] = node
                    dst[n_edges] = child
                    n_edges += 1
        start = _ints(size, 0)
        adjacent = _ints(n_edges, 0)
        _adjacency(size, src, dst, n_edges, start, adjacent)

        stamp = _ints(size, -1)
        stack_pos = _ints(size, -1)
        resume = _ints(size, 0)
        stack = _ints(size, 0)
        in_output = _ints(size, 0)

        for first in range(size):
            stamp[first] = first
            stack[0] = first
            depth = 1
            stack_pos[first] = 0
            resume[first] = start[first]
            while depth:
                top = stack[depth - 1]
                pushed = False
                while resume[top] < start[top + 1]:
                    child = adjacent[resume[top]]
                    resume[top] += 1
                    if stack_pos[child] >= 0:
                        for k in range(stack_pos[child], depth):
                            node = stack[k]
                            if not in_output[node]:
                                in_output[node] = 1
                                output.add(order[node])
                    if stamp[child] != first:
                        stamp[child] = first
                        stack_pos[child] = depth
                        resume[child] = start[child]
                        stack[depth] = child
                        depth += 1
                        pushed = True
                        break
                if not pushed:
                    depth -= 1
                    stack_pos[stack[depth]] = -1
        return output
    finally:
        _free(src)
        _free(dst)
        _free(start)
        _free(adjacent)
        _free(stamp)
        _free(stack_pos)
        _free(resume)
        _free(stack)
        _free(in_output)
