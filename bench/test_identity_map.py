"""turbosession's identity map (compiled and pure) against SQLAlchemy's _WeakInstanceDict.

100,000 real InstanceStates: rows loaded by a stock Session, so the states
are persistent, keyed and unmodified, as the ones a Session's map holds.
Every operation is driven through ``map()`` over the keys (or states), a C
loop, so that the Python loop around the call is not what gets measured:
the per-key cost is the map's own.  Each round's result is verified.

Issue 2's target: compiled ``get`` hits at least 2x faster than stock.
"""

import operator
from itertools import repeat

import pytest
from sqlalchemy import inspect, orm, select
from sqlalchemy.orm.identity import _WeakInstanceDict

from turbosession import _impl
from turbosession.benchmarks.database import SQLITE_URL, Database
from turbosession.benchmarks.models import Item

N = 100_000
ROUNDS = 15
WARMUP = 2

MAP_CLASSES = {"stock": _WeakInstanceDict, "pure": _impl.pure.identity.WeakIdentityMap}
if _impl.compiled is not None:
    MAP_CLASSES["compiled"] = _impl.compiled.identity.WeakIdentityMap


@pytest.fixture(scope="module")
def loaded():
    db = Database(SQLITE_URL)
    db.ensure_items(N)
    session = orm.Session(db.engine)
    objects = session.scalars(select(Item).order_by(Item.id)).all()
    states = [inspect(o) for o in objects]
    mapper = inspect(Item)
    data = {
        "objects": objects,
        "states": states,
        "keys": [s.key for s in states],
        "miss_keys": [mapper.identity_key_from_primary_key((N + i + 1,)) for i in range(N)],
    }
    yield data
    session.close()
    db.dispose()


@pytest.fixture(params=sorted(MAP_CLASSES, key=["stock", "compiled", "pure"].index))
def implementation(request):
    return request.param


def populated(map_cls, states):
    identity_map = map_cls()
    for state in states:
        identity_map.add(state)
    return identity_map


def run(benchmark, implementation, group, target, setup, check):
    benchmark.group = f"identity_map-{group}"
    benchmark.extra_info.update(implementation=implementation, ops=N, unit="key")
    results = []

    def timed(*args):
        results.append(target(*args))

    benchmark.pedantic(timed, setup=setup, rounds=ROUNDS, warmup_rounds=WARMUP)
    assert len(results) == ROUNDS + WARMUP
    for result in results:
        check(result)


def test_get_hit(benchmark, loaded, implementation):
    identity_map = populated(MAP_CLASSES[implementation], loaded["states"])
    objects = loaded["objects"]

    def check(found):
        assert len(found) == N and all(a is b for a, b in zip(found, objects))

    run(benchmark, implementation, "get_hit",
        lambda: list(map(identity_map.get, loaded["keys"])), None, check)


def test_get_miss(benchmark, loaded, implementation):
    identity_map = populated(MAP_CLASSES[implementation], loaded["states"])

    def check(found):
        assert found == [None] * N

    run(benchmark, implementation, "get_miss",
        lambda: list(map(identity_map.get, loaded["miss_keys"])), None, check)


def test_contains(benchmark, loaded, implementation):
    identity_map = populated(MAP_CLASSES[implementation], loaded["states"])

    def check(found):
        assert found == [True] * N

    # operator.contains(m, key) is ``key in m``: the slot the ``in`` operator uses
    run(benchmark, implementation, "contains",
        lambda: list(map(operator.contains, repeat(identity_map, N), loaded["keys"])),
        None, check)


def test_add(benchmark, loaded, implementation):
    map_cls = MAP_CLASSES[implementation]
    states = loaded["states"]

    def setup():
        return (map_cls(),), {}

    def check(result):
        identity_map, added = result
        assert added == [True] * N and len(identity_map) == N
        assert all(identity_map.contains_state(s) for s in states)

    run(benchmark, implementation, "add",
        lambda identity_map: (identity_map, list(map(identity_map.add, states))), setup, check)


def test_iterate_keys(benchmark, loaded, implementation):
    identity_map = populated(MAP_CLASSES[implementation], loaded["states"])
    keys = set(loaded["keys"])

    def check(found):
        assert len(found) == N and set(found) == keys

    run(benchmark, implementation, "iterate_keys", lambda: list(identity_map), None, check)


def test_values(benchmark, loaded, implementation):
    identity_map = populated(MAP_CLASSES[implementation], loaded["states"])
    ids = {id(o) for o in loaded["objects"]}

    def check(found):
        assert len(found) == N and {id(o) for o in found} == ids

    run(benchmark, implementation, "values", lambda: identity_map.values(), None, check)
