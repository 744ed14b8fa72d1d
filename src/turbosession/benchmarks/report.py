"""The report: a Markdown table, the JSON results, a PNG chart, a stability check.

The ratio is stock's median divided by the implementation's median: "3.0x" is
three times faster than the stock Session, "0.5x" twice as slow.  Everything a
figure was measured on (date, cores, versions, N, rounds) goes into the JSON
and under the table, so that a pasted table says where it came from.
"""

import json
import os
import platform
import textwrap
from datetime import datetime, timezone

from . import implementations as impls

STABILITY_TOLERANCE = 0.15


def ratio(stock, other):
    if stock is None or other is None or other <= 0:
        return None
    return stock / other


def environment(databases, n, rounds, warmup):
    import sqlalchemy

    import turbosession

    try:
        import Cython

        cython = Cython.__version__
    except ImportError:
        cython = None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"cores": os.cpu_count(), "cpu": cpu, "platform": platform.platform()},
        "versions": {
            "turbosession": turbosession.__version__,
            "active_implementation": turbosession.implementation,
            "sqlalchemy": sqlalchemy.__version__,
            "python": platform.python_version(),
            "cython": cython,
            "databases": databases,
        },
        "n": n,
        "rounds": rounds,
        "warmup_rounds": warmup,
    }


def _by_key(results):
    return {(r["database"], r["workload"], r["implementation"]): r for r in results}


def add_ratios(results):
    """Sets ``ratio_to_stock`` on every result (stock's median / this median)."""
    keyed = _by_key(results)
    for r in results:
        stock = keyed.get((r["database"], r["workload"], impls.STOCK))
        r["ratio_to_stock"] = ratio(stock and stock["median_s"], r["median_s"])
    return results


def _cell(result):
    if result is None:
        return "-"
    if result["error"]:
        return "FAILED"
    us = result["us_per_op"]
    text = f"{us:,.2f}" if us < 10 else f"{us:,.1f}"
    if result["implementation"] != impls.STOCK and result["ratio_to_stock"] is not None:
        text += f" ({result['ratio_to_stock']:.2f}x)"
    return text


def table(results, database):
    """Markdown table for one database: µs per unit, (ratio to stock)."""
    rows = [r for r in results if r["database"] == database]
    columns = [name for name in impls.ORDER if any(r["implementation"] == name for r in rows)]
    keyed = _by_key(rows)
    workloads = list(dict.fromkeys((r["workload"], r["title"], r["unit"]) for r in rows))
    header = ["workload (µs per unit)"] + [impls.LABELS[c] for c in columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|",
    ]
    for name, title, unit in workloads:
        cells = [_cell(keyed.get((database, name, c))) for c in columns]
        lines.append(f"| {title} (per {unit}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


_GC_COLUMNS = (impls.STOCK, impls.COMPILED, impls.PURE)


def _gc_cell(result):
    if result is None or result["error"] or result.get("gc_share") is None:
        return "-"
    return f"{result['gc_share']:.0%} ({result['full_collections_in_median_run']})"


def gc_table(results, database):
    """The collector's share of each median run, its full passes, and the
    ratio to stock of the time outside the collector."""
    rows = [r for r in results if r["database"] == database and r.get("gc_share") is not None]
    columns = [c for c in _GC_COLUMNS if any(r["implementation"] == c for r in rows)]
    if not rows or impls.STOCK not in columns:
        return ""
    keyed = _by_key(rows)
    header = ["workload"] + [f"{impls.LABELS[c]}: in GC (full passes)" for c in columns]
    others = [c for c in columns if c != impls.STOCK]
    header += [f"{impls.LABELS[c]}: ratio outside GC" for c in others]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for name, title in dict.fromkeys((r["workload"], r["title"]) for r in rows):
        stock = keyed.get((database, name, impls.STOCK))
        cells = [_gc_cell(keyed.get((database, name, c))) for c in columns]
        for c in others:
            other = keyed.get((database, name, c))
            value = None
            if stock and other and not stock["error"] and not other["error"]:
                value = ratio(stock["outside_gc_s"], other["outside_gc_s"])
            cells.append("-" if value is None else f"{value:.2f}x")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def memory_table(memory):
    lines = [
        "| session | peak traced (MiB) | retained (bytes/object) | identity map (bytes/object) |",
        "|---|---:|---:|---:|",
    ]
    for name, m in memory["sessions"].items():
        lines.append(
            f"| {impls.LABELS[name]} | {m['peak_bytes'] / 2**20:,.1f} | "
            f"{m['retained_bytes_per_object']:,.0f} | {m['identity_map_bytes_per_object']:,.1f} |"
        )
    return "\n".join(lines)


def footer(env):
    versions = env["versions"]
    dbs = ", ".join(f"{name} {v}" for name, v in versions["databases"].items())
    return (
        f"{env['date']}; {env['machine']['cores']} cores ({env['machine']['cpu']}); "
        f"Python {versions['python']}, SQLAlchemy {versions['sqlalchemy']}, "
        f"turbosession {versions['turbosession']}, "
        f"Cython {versions['cython'] or '(not installed at run time)'}; {dbs}; "
        f"N = {env['n']:,}, median of {env['rounds']} rounds after {env['warmup_rounds']} warm-up"
        + "".join(f"; {db} timed in {clock}" for db, clock in env.get("clocks", {}).items())
    )


def markdown(report):
    parts = []
    for database in report["environment"]["versions"]["databases"]:
        parts.append(f"### {database}\n\n" + table(report["results"], database))
    for database in report["environment"]["versions"]["databases"]:
        gc_part = gc_table(report["results"], database)
        if gc_part:
            parts.append(
                f"### garbage collector, {database}\n\n"
                "The collector's share of each median run above (it stays on while "
                "the runs are timed), with the full passes in that run in brackets; "
                "a full pass walks every object of the process, so what it costs is "
                "the heap's size, the same for every session that leaves the same "
                "objects alive. Then the ratio to stock of the time outside the "
                "collector.\n\n" + gc_part
            )
    if report.get("memory"):
        parts.append(
            f"### memory, {report['memory']['objects']:,} loaded objects "
            f"({report['memory']['database']})\n\n" + memory_table(report["memory"])
        )
    if report.get("stability"):
        parts.append(stability_text(report["stability"]))
    parts.append(footer(report["environment"]))
    return "\n\n".join(parts) + "\n"


def compare(previous, current, tolerance=STABILITY_TOLERANCE):
    """Ratio by ratio agreement of two reports (relative difference)."""
    before = _by_key(previous["results"])
    rows = []
    for r in current["results"]:
        old = before.get((r["database"], r["workload"], r["implementation"]))
        if r["implementation"] == impls.STOCK or old is None:
            continue
        if r["ratio_to_stock"] is None or old.get("ratio_to_stock") is None:
            continue
        change = r["ratio_to_stock"] / old["ratio_to_stock"] - 1
        rows.append(
            {
                "database": r["database"],
                "workload": r["workload"],
                "implementation": r["implementation"],
                "previous": old["ratio_to_stock"],
                "current": r["ratio_to_stock"],
                "change": change,
                "within_tolerance": abs(change) <= tolerance,
            }
        )
    return {
        "previous_date": previous["environment"]["date"],
        "tolerance": tolerance,
        "ratios": rows,
        "all_within_tolerance": all(row["within_tolerance"] for row in rows),
    }


def stability_text(stability):
    outside = [row for row in stability["ratios"] if not row["within_tolerance"]]
    tolerance = f"{stability['tolerance']:.0%}"
    head = (
        f"Stability against the run of {stability['previous_date']}: "
        f"{len(stability['ratios']) - len(outside)} of {len(stability['ratios'])} ratios "
        f"agree within {tolerance}."
    )
    if not outside:
        return head
    lines = [head + " Outside it (a noisy shared machine shows here, it is not hidden):"]
    for row in outside:
        lines.append(
            f"- {row['database']} {row['workload']} {row['implementation']}: "
            f"{row['previous']:.2f}x then {row['current']:.2f}x ({row['change']:+.0%})"
        )
    return "\n".join(lines)


def chart(report, path):
    """Grouped bars per workload (µs per unit, log scale), labelled with the ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    databases = list(report["environment"]["versions"]["databases"])
    results = report["results"]
    colors = {
        impls.STOCK: "#7f7f7f",
        impls.COMPILED: "#d62728",
        impls.PURE: "#ff9896",
        impls.ORM_BULK: "#1f77b4",
        impls.CORE: "#9ecae1",
        impls.DBAPI: "#2ca02c",
        impls.PONY: "#9467bd",
    }
    fig, axes = plt.subplots(len(databases), 1, figsize=(15, 6 * len(databases)), squeeze=False)
    for ax, database in zip(axes[:, 0], databases):
        rows = [r for r in results if r["database"] == database and not r["error"]]
        keyed = _by_key(rows)
        workloads = list(dict.fromkeys((r["workload"], r["title"]) for r in rows))
        columns = [c for c in impls.ORDER if any(r["implementation"] == c for r in rows)]
        width = 0.8 / len(columns)
        for j, column in enumerate(columns):
            xs, ys, labels = [], [], []
            for i, (name, _) in enumerate(workloads):
                r = keyed.get((database, name, column))
                if r is None:
                    continue
                xs.append(i + (j - (len(columns) - 1) / 2) * width)
                ys.append(r["us_per_op"])
                labels.append(
                    "" if column == impls.STOCK or r["ratio_to_stock"] is None
                    else f"{r['ratio_to_stock']:.1f}x"
                )
            bars = ax.bar(xs, ys, width, label=impls.LABELS[column], color=colors[column])
            ax.bar_label(bars, labels=labels, fontsize=7, rotation=90, padding=2)
        ax.set_yscale("log")
        ax.set_xticks(range(len(workloads)))
        ax.set_xticklabels([title for _, title in workloads], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("µs per object / get / request (log scale)")
        ax.set_title(f"{database}: lower is better; labels are speed-ups over the stock Session")
        ax.legend(fontsize=8, ncol=3, loc="upper left")
        ax.margins(y=0.25)
    caption = textwrap.fill(f"turbosession benchmark: {footer(report['environment'])}", 190)
    fig.suptitle(caption, fontsize=8)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.05 / len(databases)))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write(report, out_dir, name):
    """Writes <name>.json, <name>.md and <name>.png into ``out_dir``; returns the paths."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {kind: os.path.join(out_dir, f"{name}.{ext}")
             for kind, ext in (("json", "json"), ("table", "md"), ("chart", "png"))}
    with open(paths["json"], "w") as f:
        json.dump(report, f, indent=1)
    with open(paths["table"], "w") as f:
        f.write(markdown(report))
    chart(report, paths["chart"])
    return paths
