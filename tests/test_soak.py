"""A short soak: 100,000 objects through one session must not grow it.

The same soak as ``python -m turbosession soak`` (turbosession.benchmarks.soak),
a tenth of its length: 10 batches of 10,000 objects through add + commit,
load + update + commit, ``expunge_all()``, load + delete + commit.  Nothing is
timed.  What must hold:

* after each step, once the test drops its own references, the identity map
  is empty: objects no one holds leave the (weak) map, through refcounting
  alone, as with stock's;
* the number of objects the garbage collector tracks (after a full
  collection) is the same after the last batch as after the second, within
  ``TOLERANCE``.  The first batch is left out: it fills caches that fill once
  (compiled statements, the mappers' memoized values, turbosession's per-mapper
  precomputations).  After it, stock and turbosession measure a growth of 0
  over the remaining batches (on a connection per transaction: see
  ``sqlite_file_engine``).  A leak of one object per flushed object would be
  80,000 objects over those 8 batches, and one per commit (4 a batch) 32; the tolerance
  of 8 (one object per compared batch) catches both, and leaves room only
  for a cache entry or two that a later batch might still add.
"""

from turbosession.benchmarks import soak

N = 100_000
BATCH = 10_000
TOLERANCE = 8


def test_soak_does_not_grow(session_cls, tmp_path):
    engine = soak.sqlite_file_engine(tmp_path / "soak.db")
    try:
        samples = soak.soak(session_cls, engine, N, BATCH)
    finally:
        engine.dispose()

    assert [s["batch"] for s in samples] == list(range(1, N // BATCH + 1))
    for sample in samples:
        held = {k: v for k, v in sample.items() if k.startswith("identity_map")}
        assert set(held.values()) == {0}, (sample["batch"], held)
    counts = [s["gc_objects"] for s in samples]
    assert abs(counts[-1] - counts[1]) <= TOLERANCE, counts
    # no steady climb hidden under the tolerance either
    assert max(counts[1:]) - min(counts[1:]) <= TOLERANCE, counts
