"""Measuring rounds: setup untimed, run timed, verify untimed; medians.

The implementations of a workload are interleaved round by round (and the
order rotates), so that a slow spell of a shared machine lands on all of them
rather than on one: the ratios to stock are what the report is about.  The
garbage of the previous round is collected before the clock starts; the
collector stays on while the step runs, as it is in an application.  The
clock is the database's (``Database.clock``: CPU time for in-process SQLite,
wall time for a server).
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
    verified: int = 0  # runs whose result was checked and right
    error: str = ""

    @property
    def median(self):
        return statistics.median(self.times) if self.times else None

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
            "us_per_op": self.us_per_op,
            "verified_runs": self.verified,
            "error": self.error,
        }


def timed_round(case, clock):
    """One round of ``case``: returns the seconds ``run`` took; verifies the result."""
    state = case.setup()
    try:
        gc.collect()
        start = clock()
        case.run(state)
        elapsed = clock() - start
        case.verify(state)
    finally:
        case.teardown(state)
    return elapsed


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
                    elapsed = timed_round(case, clock)
                except Exception as exc:  # a wrong result or a crash: reported, never timed
                    measurement.error = f"{type(exc).__name__}: {exc}"
                else:
                    measurement.verified += 1
                    if round_ >= warmup:
                        measurement.times.append(elapsed)
            if progress is not None:
                progress.update(1)
    return [measurements[case.implementation] for case in cases]
