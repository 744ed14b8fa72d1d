"""Differential tests: turbosession's topological sort (both implementations) against stock.

Flush order is SQL order, so ``sort`` and ``sort_as_subsets`` must give
``sqlalchemy.util.topological``'s output element for element, including the
rounds yielded before a cycle is found; on a cycle the
``CircularDependencyError`` must carry the same message (which lists the
cycle set in its iteration order), cycles and edges.  ``find_cycles`` returns
a set: the same members, and the same iteration order too.
"""

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.exc import CircularDependencyError
from sqlalchemy.util import topological as stock


class Node:
    """Hashed by identity, as the unit of work's flush actions are."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return f"Node({self.name})"


def run_sort(module, function, tuples, allitems):
    """Everything observable: what is yielded, then the error if any."""
    out = []
    try:
        for item in getattr(module, function)(tuples, allitems):
            out.append(list(item) if function == "sort_as_subsets" else item)
    except CircularDependencyError as err:
        out.append(
            (
                "error",
                str(err),
                err.cycles,
                list(err.cycles),
                err.edges,
                list(err.edges),
            )
        )
    return out


def assert_same(module, tuples, allitems):
    # the public functions, and the module's own algorithms behind them
    # (uncompiled, the public ones hand small graphs to stock's)
    for function in ("sort_as_subsets", "sort", "_sort_as_subsets", "_sort"):
        assert run_sort(module, function, tuples, allitems) == run_sort(
            stock, function.lstrip("_"), tuples, allitems
        )
    theirs = stock.find_cycles(tuples, allitems)
    for function in ("find_cycles", "_find_cycles"):
        ours = getattr(module, function)(tuples, allitems)
        assert type(ours) is set
        assert ours == theirs
        assert list(ours) == list(theirs)


def random_graph(seed, size, edges_per_node, cyclic, node_kind, extra_items):
    rnd = random.Random(seed)
    if node_kind == "int":
        universe = list(range(size + 10))
    elif node_kind == "str":
        universe = [f"n{i}" for i in range(size + 10)]
    else:
        universe = [Node(i) for i in range(size + 10)]
    allitems = universe[:size]
    rnd.shuffle(allitems)
    # extra items: duplicates and nodes only reachable through edges
    allitems += [rnd.choice(universe) for _ in range(extra_items)]
    tuples = set()
    rank = {node: i for i, node in enumerate(universe)}
    for _ in range(int(size * edges_per_node)):
        parent, child = rnd.choice(universe), rnd.choice(universe)
        if not cyclic:
            if parent is child:
                continue
            if rank[parent] > rank[child]:
                parent, child = child, parent
        tuples.add((parent, child))
    return tuples, allitems


graphs = st.builds(
    random_graph,
    seed=st.integers(0, 2**32),
    size=st.integers(0, 300),
    edges_per_node=st.floats(0, 3),
    cyclic=st.booleans(),
    node_kind=st.sampled_from(["int", "str", "object"]),
    extra_items=st.integers(0, 5),
)


@settings(max_examples=300, deadline=None)
@given(graph=graphs)
def test_random_graphs_match_stock(impl, graph):
    tuples, allitems = graph
    assert_same(impl.topological, tuples, allitems)


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(1000, 3000),
    edges_per_node=st.floats(0.5, 2),
    node_kind=st.sampled_from(["int", "object"]),
)
def test_large_acyclic_graphs_match_stock(impl, seed, size, edges_per_node, node_kind):
    tuples, allitems = random_graph(seed, size, edges_per_node, False, node_kind, 3)
    assert_same(impl.topological, tuples, allitems)


@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32),
    size=st.integers(1000, 2000),
    cycle_edges=st.integers(1, 5),
    node_kind=st.sampled_from(["int", "object"]),
)
def test_large_graphs_with_a_few_cycles_match_stock(
    impl, seed, size, cycle_edges, node_kind
):
    # stock's find_cycles searches from every node: keep the cyclic part
    # sparse so that the reference stays quick at this size
    tuples, allitems = random_graph(seed, size, 0.7, False, node_kind, 0)
    rnd = random.Random(seed)
    for _ in range(cycle_edges):
        tuples.add((rnd.choice(allitems), rnd.choice(allitems)))
    assert_same(impl.topological, tuples, allitems)


@settings(max_examples=300, deadline=None)
@given(
    tuples=st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40)), max_size=80),
    allitems=st.lists(st.integers(0, 40), max_size=50),
)
def test_small_int_graphs_match_stock(impl, tuples, allitems):
    # lists of edges with repeats, duplicate items, edges to unknown items
    assert_same(impl.topological, tuples, allitems)


def test_tree_order_follows_allitems(impl):
    tuples = {(0, 1), (0, 2), (1, 3), (2, 4), (1, 5)}
    assert list(impl.topological.sort_as_subsets(tuples, [5, 4, 3, 2, 1, 0])) == [
        [0],
        [2, 1],
        [5, 4, 3],
    ]
    assert list(impl.topological.sort(tuples, [5, 4, 3, 2, 1, 0], False)) == [
        0,
        2,
        1,
        5,
        4,
        3,
    ]


def test_cycle_error_after_the_rounds_before_it(impl):
    tuples = [("a", "b"), ("b", "c"), ("c", "b"), ("c", "d")]
    rounds = impl.topological.sort_as_subsets(tuples, ["d", "c", "b", "a"])
    assert next(rounds) == ["a"]
    with pytest.raises(CircularDependencyError) as caught:
        next(rounds)
    assert caught.value.cycles == {"b", "c"}
    assert caught.value.edges == set(tuples)
    assert str(caught.value).startswith("Circular dependency detected. (")


def test_self_loop_is_a_cycle(impl):
    assert impl.topological.find_cycles([(1, 1), (1, 2)], [1, 2]) == {1}
    with pytest.raises(CircularDependencyError, match=r"detected\. \(1\)"):
        list(impl.topological.sort([(1, 1)], [1]))


def test_reads_input_lazily_like_stock(impl):
    # stock is a generator: nothing is read before the first next()
    def tuples():
        raise AssertionError("read too early")
        yield

    impl.topological.sort(tuples(), [1])
    impl.topological.sort_as_subsets(tuples(), [1])


@pytest.mark.parametrize("cyclic", [False, True])
def test_edges_given_as_an_iterator(impl, cyclic):
    # stock reads the edges once for the sort and, on a cycle, again for
    # find_cycles, which then sees an exhausted iterator
    edges = [(1, 2), (2, 3), (0, 3)] + ([(3, 1)] if cyclic else [])
    for function in ("sort", "sort_as_subsets"):
        assert run_sort(impl.topological, function, iter(edges), [3, 2, 1, 0]) == (
            run_sort(stock, function, iter(edges), [3, 2, 1, 0])
        )


def test_compiled_flag(impl):
    assert impl.topological._is_compiled() == (impl.name == "compiled")
