"""Memory of N loaded objects, stock against turbosession (tracemalloc).

Three figures per session class, all from ``tracemalloc`` (Python allocations;
allocations made by SQLite's C library are not traced, and are the same for
every session):

* peak: the highest traced memory while ``session.scalars(select(Item)).all()``
  loads N rows, above what was traced before;
* retained per object: what is still traced once the load returned, with the
  session and its objects alive, divided by N;
* identity-map overhead per object: what a fresh map of the session's map class
  allocates to hold the N already-existing states (through ``_add_unpresent``,
  the call loading makes), divided by N.
"""

import gc
import tracemalloc

from sqlalchemy import inspect, select

from .models import Item


def _traced():
    return tracemalloc.get_traced_memory()[0]


def identity_map_overhead(map_class, states):
    """Bytes a fresh ``map_class`` allocates to hold ``states``."""
    gc.collect()
    before = _traced()
    probe = map_class()
    add = probe._add_unpresent
    for state in states:
        add(state, state.key)
    overhead = _traced() - before
    return probe, overhead


def measure_session(session_cls, db, n):
    db.ensure_items(n)
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = _traced()
        session = session_cls(db.engine)
        objects = session.scalars(select(Item)).all()
        retained, peak = tracemalloc.get_traced_memory()
        retained -= before
        peak -= before
        if len(objects) != n or len(session.identity_map) != n:
            raise AssertionError(f"loaded {len(objects)} objects, expected {n}")

        states = [inspect(o) for o in objects]
        own_map = session.identity_map
        probe, map_bytes = identity_map_overhead(type(own_map), states)
        if len(probe) != n:
            raise AssertionError("the probe map does not hold every state")
        for state in states:  # hand the states back to the session's map
            state._instance_dict = own_map._wr
        del probe, states
    finally:
        tracemalloc.stop()
    session.close()
    del objects, session
    gc.collect()
    return {
        "identity_map_class": f"{type(own_map).__module__}.{type(own_map).__qualname__}",
        "objects": n,
        "peak_bytes": peak,
        "retained_bytes_per_object": retained / n,
        "identity_map_bytes_per_object": map_bytes / n,
    }


def measure(db, session_classes, n):
    """name -> figures, for every session class."""
    return {name: measure_session(cls, db, n) for name, cls in session_classes.items()}
