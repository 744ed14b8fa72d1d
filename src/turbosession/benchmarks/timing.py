"""Measuring rounds: setup untimed, run timed, verify untimed; medians.

The implementations of a workload are interleaved round by round (and the
order rotates), so that a slow spell of a shared machine lands on all of them
rather than on one: the ratios to stock are what the report is about.  The
garbage of the previous round is collected before the clock starts; the
collector stays on while the step runs, as it is in an application.  The
clock is the database's (``Database.clock``: CPU time for in-process SQLite,
wall time for a server).

The collector's own passes inside a timed run are timed too, on the same
clock, through ``gc.callbacks``: how long they took and how many were full
(oldest-generation) passes.  They stay in the run's time; the report shows
them beside it, since a full pass walks every object of the process, so its
cost is the heap's size, not the code's, and is the same for every
implementation that leaves the same objects alive.
"""

import gc
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class Measurement:
    workload: str
    title: str
    unit: str
    database: str
    implementation: str
    ops: int
    times: list = field(default_factory=list)  # seconds per timed run
    gc_times: list = field(default_factory=list)  # of which in the collector
    full_collections: list = field(default_factory=list)  # oldest-generation passes
    verified: int = 0  # runs whose result was checked and right
    error: str = ""

    @property
    def median(self):
        return statistics.median(self.times) if self.times else None

    def _middle(self):
        """The index of the run whose time is the median (with an even
        count, the upper middle one)."""
        return sorted(range(len(self.times)), key=self.times.__getitem__)[len(self.times) // 2]

    @property
    def gc_share(self):
        """The collector's share of the middle run."""
        if not self.times:
            return None
        middle = self._middle()
        total = self.times[middle]
        return self.gc_times[middle] / total if total else None

    @property
    def full_in_middle(self):
        """The full collections of the middle run."""
        return self.full_collections[self._middle()] if self.times else None

    @property
    def outside_gc(self):
        """The middle run's seconds outside the collector."""
        if not self.times:
            return None
        middle = self._middle()
        return self.times[middle] - self.gc_times[middle]

    @property
    def us_per_op(self):
        median = self.median
        return None if median is None else median * 1e6 / self.ops

    def as_dict(self):
        return {
            "workload": self.workload,
            "title": self.title,
            "unit": self.unit,
            "database": self.database,
            "implementation": self.implementation,
            "ops": self.ops,
            "times_s": self.times,
            "median_s": self.median,
            "gc_s": self.gc_times,
            "full_collections": self.full_collections,
            "gc_share": self.gc_share,
            "outside_gc_s": self.outside_gc,
            "full_collections_in_median_run": self.full_in_middle,
            "us_per_op": self.us_per_op,
            "verified_runs": self.verified,
            "error": self.error,
        }


class _CollectorClock:
    """A ``gc.callbacks`` entry that adds up the collector's passes."""

    def __init__(self, clock):
        self.clock = clock
        self.seconds = 0.0
        self.full = 0
        self._started = None

    def __call__(self, phase, info):
        if phase == "start":
            self._started = self.clock()
        elif self._started is not None:
            self.seconds += self.clock() - self._started
            self._started = None
            if info["generation"] == 2:
                self.full += 1


def timed_round(case, clock):
    """One round of ``case``: ``(seconds run took, seconds of it in the
    collector, full collections)``; verifies the result."""
    state = case.setup()
    collector = _CollectorClock(clock)
    try:
        gc.collect()
        gc.callbacks.append(collector)
        try:
            start = clock()
            case.run(state)
            elapsed = clock() - start
        finally:
            gc.callbacks.remove(collector)
        case.verify(state)
    finally:
        case.teardown(state)
    return elapsed, collector.seconds, collector.full


def measure_workload(cases, database, rounds, warmup, progress=None, clock=time.perf_counter):
    """Interleaved rounds of every case of one workload; returns Measurements."""
    measurements = {
        case.implementation: Measurement(
            workload=case.workload.name,
            title=case.workload.title,
            unit=case.workload.unit,
            database=database,
            implementation=case.implementation,
            ops=case.ops,
        )
        for case in cases
    }
    for round_ in range(warmup + rounds):
        shift = round_ % len(cases)
        for case in cases[shift:] + cases[:shift]:
            measurement = measurements[case.implementation]
            if progress is not None:
                progress.set_postfix_str(f"{database} {case.workload.name} {case.implementation}")
            if not measurement.error:
                try:
                    elapsed, in_gc, full = timed_round(case, clock)
                except Exception as exc:  # a wrong result or a crash: reported, never timed
                    measurement.error = f"{type(exc).__name__}: {exc}"
                else:
                    measurement.verified += 1
                    if round_ >= warmup:
                        measurement.times.append(elapsed)
                        measurement.gc_times.append(in_gc)
                        measurement.full_collections.append(full)
            if progress is not None:
                progress.update(1)
    return [measurements[case.implementation] for case in cases]
