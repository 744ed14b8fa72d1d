"""Topological sort of 10,000 and 100,000 nodes: stock against both implementations.

The graph has the shape of a flush of a self-referential tree after the
per-state split: nodes hashed by identity (as flush actions are), each with
one parent among the nodes before it (a random recursive tree) plus a second
edge to a random earlier node for one node in four, ``allitems`` in shuffled
order.  Each round times ``list(sort(tuples, allitems))``; the output is
checked against stock's once per implementation.

CPU time (``time.process_time``) is the timer: the machines are shared, and
the sort neither sleeps nor waits on I/O.
"""

import random
import time

import pytest
from sqlalchemy.util import topological as stock

from turbosession import _impl
from turbosession.benchmarks import implementations as impls

SIZES = (10_000, 100_000)


class Action:
    __slots__ = ("n",)

    def __init__(self, n):
        self.n = n


def graph(size, seed=5):
    rnd = random.Random(seed)
    nodes = [Action(i) for i in range(size)]
    tuples = set()
    for i in range(1, size):
        tuples.add((nodes[rnd.randrange(i)], nodes[i]))
        if i % 4 == 0:
            tuples.add((nodes[rnd.randrange(i)], nodes[i]))
    allitems = nodes[:]
    rnd.shuffle(allitems)
    return tuples, allitems


def modules():
    found = {impls.STOCK: stock}
    if _impl.compiled is not None:
        found[impls.COMPILED] = _impl.compiled.topological
    found[impls.PURE] = _impl.pure.topological
    return found


_graphs = {}


def cached_graph(size):
    if size not in _graphs:
        tuples, allitems = graph(size)
        _graphs[size] = (tuples, allitems, list(stock.sort(tuples, allitems)))
    return _graphs[size]


@pytest.mark.benchmark(timer=time.process_time)
@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n}")
@pytest.mark.parametrize("implementation", list(modules()))
def test_topological_sort(benchmark, implementation, size):
    module = modules()[implementation]
    tuples, allitems, expected = cached_graph(size)
    assert list(module.sort(tuples, allitems)) == expected

    benchmark.group = f"topological-sort-{size}"
    benchmark.extra_info.update(implementation=implementation, ops=size, unit="node")
    benchmark.pedantic(
        lambda: list(module.sort(tuples, allitems)), rounds=7, warmup_rounds=1
    )
