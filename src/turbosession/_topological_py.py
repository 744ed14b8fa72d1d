"""Topological sort of flush actions, pure-Python twin of ``_topological_c``.

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
"""

from sqlalchemy.exc import CircularDependencyError

__all__ = ["sort", "sort_as_subsets", "find_cycles"]


def _is_compiled():
    return False


def _levels(pairs, items):
    """Round of every position of ``items``; ``None`` for items never ready."""
    index = {}
    for node in items:
        if node not in index:
            index[node] = len(index)
    size = len(index)
    children = [[] for _ in range(size)]
    waiting = [0] * size
    for parent, child in pairs:
        p = index.get(parent)
        c = index.get(child)
        if p is not None and c is not None:
            # a repeated edge counts twice here and is released twice
            children[p].append(c)
            waiting[c] += 1
    level = [0] * size
    ready = [i for i in range(size) if not waiting[i]]
    for node in ready:  # grows while iterating: Kahn's queue
        below = level[node] + 1
        for child in children[node]:
            if level[child] < below:
                level[child] = below
            waiting[child] -= 1
            if not waiting[child]:
                ready.append(child)
    return [
        None if waiting[i] else level[i] for i in (index[node] for node in items)
    ]


def _circular_error(pairs, tuples, allitems):
    # stock's child -> parents dict, rebuilt the same way so that the
    # ``edges`` set is built in the same order
    parents_of = {}
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


def sort_as_subsets(tuples, allitems):
    """Yield lists of items in dependency rounds; see the module docstring."""
    pairs = [(parent, child) for parent, child in tuples]
    items = list(allitems)
    levels = _levels(pairs, items)
    rounds = []
    for node, level in zip(items, levels):
        if level is not None:
            while len(rounds) <= level:
                rounds.append([])
            rounds[level].append(node)
    yield from rounds
    if None in levels:
        raise _circular_error(pairs, tuples, allitems)


def sort(tuples, allitems, deterministic_order=True):
    """Yield items in dependency order (``deterministic_order`` is ignored,
    as stock ignores it: the order always follows ``allitems``)."""
    for round_ in sort_as_subsets(tuples, allitems):
        yield from round_


def find_cycles(tuples, allitems):
    """The set of nodes that lie on a cycle; ``allitems`` is unused, as in stock."""
    children_of = {}
    for parent, child in tuples:
        children = children_of.get(parent)
        if children is None:
            children_of[parent] = children = set()
        children.add(child)
    # only nodes with children can be on a cycle; stock visits them in the
    # iteration order of set(its defaultdict), and their children in their
    # sets' order.  set() presizes from an exact dict, not from a
    # defaultdict: iterating the keys builds the same table as stock's.
    order = list(set(iter(children_of)))
    index = {node: i for i, node in enumerate(order)}
    adjacency = [
        [index[c] for c in children_of[node] if c in index] for node in order
    ]

    output = set()
    in_output = [False] * len(order)
    stamp = [-1] * len(order)  # == start: visited in the search from start
    stack_pos = [-1] * len(order)
    resume = [0] * len(order)
    for start in range(len(order)):
        stamp[start] = start
        stack = [start]
        stack_pos[start] = 0
        resume[start] = 0
        while stack:
            top = stack[-1]
            children = adjacency[top]
            pushed = False
            while resume[top] < len(children):
                child = children[resume[top]]
                resume[top] += 1
                if stack_pos[child] >= 0:
                    for node in stack[stack_pos[child] :]:
                        if not in_output[node]:
                            in_output[node] = True
                            output.add(order[node])
                if stamp[child] != start:
                    stamp[child] = start
                    stack_pos[child] = len(stack)
                    resume[child] = 0
                    stack.append(child)
                    pushed = True
                    break
            if not pushed:
                stack_pos[stack.pop()] = -1
    return output
