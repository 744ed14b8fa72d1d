"""``python -m turbosession bench --quick`` end to end: table, JSON and chart.

It runs in a directory without bench/, as from an installed wheel where the
repository's bench/ is absent, so the report lands in the current directory,
beside (never over) a full report there.
Only that the report is produced and every measured run was verified is
checked here: speed is the benchmark's business, never a test's.
"""

import json
import struct
import subprocess
import sys

from support import optional_package
from turbosession.benchmarks import implementations as impls
from turbosession.benchmarks.workloads import WORKLOADS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_quick_report(tmp_path):
    optional_package("matplotlib", "bench")
    optional_package("tqdm", "bench")
    full_report = b'{"a full report": "kept"}'
    (tmp_path / "turbosession-bench.json").write_bytes(full_report)
    done = subprocess.run(
        [sys.executable, "-m", "turbosession", "bench", "--quick", "-n", "60", "--memory-n", "300"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    assert (tmp_path / "turbosession-bench.json").read_bytes() == full_report
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "turbosession-bench-quick.json",
        "turbosession-bench-quick.md",
        "turbosession-bench-quick.png",
        "turbosession-bench.json",
    ]
    report = json.loads((tmp_path / "turbosession-bench-quick.json").read_text())
    results = report["results"]
    available = impls.session_classes()
    expected = {
        (w.name, name) for w in WORKLOADS for name in w(None, 1).implementations(available)
    }
    assert {(r["workload"], r["implementation"]) for r in results} == expected
    for r in results:
        assert r["error"] == "", r
        assert r["verified_runs"] == 1 and len(r["times_s"]) == 1, r
        assert r["us_per_op"] > 0
        # the collector's passes inside the timed run, on the run's clock
        assert len(r["gc_s"]) == len(r["full_collections"]) == 1, r
        assert 0 <= r["gc_s"][0] <= r["times_s"][0], r
        assert r["full_collections"][0] >= 0 and 0 <= r["gc_share"] <= 1, r
        assert r["outside_gc_s"] == r["times_s"][0] - r["gc_s"][0], r
        if r["implementation"] == impls.STOCK:
            assert r["ratio_to_stock"] == 1.0
        else:
            assert r["ratio_to_stock"] > 0
    assert report["environment"]["n"] == 60
    assert report["environment"]["versions"]["sqlalchemy"].startswith("2.1")
    assert set(report["memory"]["sessions"]) == set(available)
    for figures in report["memory"]["sessions"].values():
        assert figures["objects"] == 300 and figures["peak_bytes"] > 0
        assert figures["identity_map_bytes_per_object"] > 0

    table = (tmp_path / "turbosession-bench-quick.md").read_text()
    assert table in done.stdout + "\n"
    assert "### sqlite" in table and "FAILED" not in table
    for w in WORKLOADS:
        assert f"| {w.title} (per {w.unit}) |" in table
    for name in available:
        assert impls.LABELS[name] in table
    assert "### garbage collector, sqlite" in table
    gc_part = table.split("### garbage collector, sqlite")[1]
    for w in WORKLOADS:
        assert f"| {w.title} |" in gc_part

    png = (tmp_path / "turbosession-bench-quick.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE)
    width, height = struct.unpack(">II", png[16:24])
    assert width > 800 and height > 400


def test_help_lists_the_options_and_workloads():
    done = subprocess.run(
        [sys.executable, "-m", "turbosession", "bench", "--help"],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0
    for option in ("-n", "--rounds", "--pg-url", "--out", "--quick", "--memory-n", "--compare"):
        assert option in done.stdout
    for w in WORKLOADS:
        assert f"  {w.name} " in done.stdout and w.title in done.stdout
    assert "turbosession[bench]" in done.stdout


def test_missing_bench_extra_names_it(tmp_path):
    # tqdm and matplotlib made unimportable, as in an install without [bench]
    script = (
        "import sys; sys.modules['tqdm'] = sys.modules['matplotlib'] = None; "
        "from turbosession.__main__ import main; sys.exit(main(['bench', '--quick']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "needs tqdm and matplotlib" in done.stderr
    assert "pip install 'turbosession[bench]'" in done.stderr
    assert list(tmp_path.iterdir()) == []


def test_gc_table_figures():
    """The collector's share and full passes of the median run, and the ratio
    of the time outside the collector, from the recorded runs."""
    from turbosession.benchmarks import report
    from turbosession.benchmarks.timing import Measurement

    def result(implementation, times, gc_times, full):
        m = Measurement("w", "a workload", "object", "sqlite", implementation, ops=10)
        m.times, m.gc_times, m.full_collections = times, gc_times, full
        return m.as_dict()

    results = report.add_ratios([
        # median run: the 2.0 s one, 1.0 s of it in the collector, one full pass
        result(impls.STOCK, [3.0, 2.0, 1.0], [0.5, 1.0, 0.0], [1, 1, 0]),
        # median run: the 1.0 s one, 0.75 s in the collector, one full pass
        result(impls.COMPILED, [1.0, 0.5, 4.0], [0.75, 0.0, 1.0], [1, 0, 2]),
    ])
    lines = report.gc_table(results, "sqlite").splitlines()
    assert lines[0] == (
        "| workload | stock Session: in GC (full passes) | turbosession compiled: in GC "
        "(full passes) | turbosession compiled: ratio outside GC |"
    )
    # outside the collector: stock 1.0 s, compiled 0.25 s
    assert lines[2] == "| a workload | 50% (1) | 75% (1) | 4.00x |"
