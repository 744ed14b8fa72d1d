"""Dirty scan: 100,000 loaded objects, 1% of them touched, stock side by side.

Each round touches 1,000 of the 100,000 persistent objects (a column set to
the value it already has: the object is in ``Session.dirty`` but has no net
change), untimed, then times one step:

- ``dirty``: ``Session.dirty``
- ``is_modified``: ``Session.is_modified`` of each touched object
- ``flush``: ``Session.flush()``, which writes nothing
- ``dirty+flush``: the dirty scan of issue 5 (``Session.dirty``, then the flush)

``Session.dirty`` and ``is_modified`` are the tracking hot path; the flush
is turbosession's flush (its fast path when the mapper qualifies, else
stock's unit of work), which uses the tracking hot path only to reset the
flushed states; the split shows where the time goes.  Every round is
verified (the dirty set, the is_modified answers, no SQL written, a clean
session afterwards).

Timed in CPU time of the benchmark process (``time.process_time``), see
the marker below.  ``TURBOSESSION_DIRTY_SCAN_N`` changes the number of
objects (default 100,000), ``TURBOSESSION_DIRTY_SCAN_ROUNDS`` the rounds (11).
Summary: the group's medians per touched object and ratios to stock are
printed by bench/conftest.py when present (extra_info ``implementation``,
``ops``, ``unit``); pytest-benchmark's own table has the raw numbers.
"""

import gc
import os
import time

import pytest
from sqlalchemy import String, create_engine, event, insert, select
from sqlalchemy import orm
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import turbosession
from turbosession import _impl

N = int(os.environ.get("TURBOSESSION_DIRTY_SCAN_N", 100_000))
EVERY = 100  # 1% of the objects are touched
ROUNDS = int(os.environ.get("TURBOSESSION_DIRTY_SCAN_ROUNDS", 11))


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "dirty_scan_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(20))
    qty: Mapped[int]


def session_classes():
    classes = {"stock": orm.Session}
    if _impl.compiled is not None:
        classes["compiled"] = type(
            "Session_compiled", (turbosession.Session,), {"_turbo": _impl.compiled}
        )
    classes["pure"] = type("Session_pure", (turbosession.Session,), {"_turbo": _impl.pure})
    return classes


@pytest.fixture(scope="module")
def engine():
    eng = create_engine("sqlite://")
    Base.metadata.create_all(eng)
    with eng.begin() as conn:
        conn.execute(
            insert(Item), [dict(id=i, name=f"n{i}", qty=i) for i in range(1, N + 1)]
        )
    statements = []
    event.listen(eng, "before_cursor_execute", lambda *a: statements.append(a[2]))
    eng.statements = statements
    yield eng
    eng.dispose()


@pytest.fixture(scope="module")
def loaded():
    """implementation -> (session, objects, touched), loaded once per module."""
    cache = {}
    yield cache
    for session, _, _ in cache.values():
        session.close()
    cache.clear()


def load(engine, cache, name, session_cls):
    # every implementation keeps its own loaded session for the whole module
    # (about 100 MB each at 100,000 objects): a session loaded into memory
    # just freed by another measured faster than the others, whatever its
    # implementation, so no session is closed and reloaded in between
    if name not in cache:
        session = session_cls(engine)
        objects = session.scalars(select(Item).order_by(Item.id)).all()
        assert len(objects) == N
        cache[name] = (session, objects, objects[::EVERY])
    return cache[name]


STEPS = ("dirty", "is_modified", "flush", "dirty+flush")
CLASSES = session_classes()


# CPU time of this process: on the shared 2-core machine wall time mostly
# measured how long the other processes held the core
@pytest.mark.benchmark(timer=time.process_time)
@pytest.mark.parametrize("implementation", list(CLASSES))
@pytest.mark.parametrize("step", STEPS)
def test_dirty_scan(benchmark, engine, loaded, step, implementation):
    session, objects, touched = load(engine, loaded, implementation, CLASSES[implementation])
    benchmark.group = f"dirty-scan-{step}"
    benchmark.extra_info.update(
        implementation=implementation, ops=len(touched), unit="touched object", n=N
    )

    def setup():
        session.flush()  # leaves nothing dirty from a previous round
        for obj in touched:
            obj.qty = obj.qty  # dirty, no net change
        gc.collect()
        del engine.statements[:]
        return (), {}

    def run_dirty():
        return session.dirty

    def run_is_modified():
        return [session.is_modified(obj) for obj in touched]

    def run_flush():
        session.flush()

    def run_dirty_and_flush():
        dirty = session.dirty
        session.flush()
        return dirty

    run = {
        "dirty": run_dirty,
        "is_modified": run_is_modified,
        "flush": run_flush,
        "dirty+flush": run_dirty_and_flush,
    }[step]
    result = benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=1)

    if step in ("dirty", "dirty+flush"):
        assert len(result) == len(touched)
        assert all(obj in result for obj in touched)
    if step == "is_modified":
        assert result == [False] * len(touched)
    if step in ("flush", "dirty+flush"):
        assert not session.dirty and not session.identity_map._modified
    # nothing was written: no net change (a flush with work begins a
    # transaction on the connection; the SELECTs of loading happen earlier)
    assert not [s for s in engine.statements if not s.startswith("SELECT")]
