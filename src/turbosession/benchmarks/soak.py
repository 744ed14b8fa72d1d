"""Soak check: many objects through one long-lived session, memory sampled per batch.

``python -m turbosession soak`` sends ``-n`` objects (default a million) through
one session in batches (default 10,000): add + commit, load + update + commit,
``expunge_all()``, load + delete + commit.  After every batch it samples the
process's resident memory, ``len(gc.get_objects())`` after a full collection,
and the identity map, and it checks the batch's rows.  Each session class runs
in a fresh interpreter of its own, so one cannot leave memory behind for the
next.  The report gives the growth from batch 10 (by then every cache that
fills once is full) to the last batch; a session that keeps something per
object or per flush grows linearly there.

Not a timing: nothing here is timed, and the figures are memory only.
"""

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile

from sqlalchemy import create_engine, event, func, select
from sqlalchemy.pool import NullPool

from . import implementations as impls
from .database import normalize_url
from .models import Base, Item

DEFAULT_N = 1_000_000
DEFAULT_BATCH = 10_000
REFERENCE_BATCH = 10  # growth is reported from this batch to the last
RESULT_NAME = "turbosession-soak"


def rss_bytes():
    """The process's resident memory now (Linux), else its peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class SoakError(AssertionError):
    """A batch left the database or the session other than it should."""


def check(condition, message):
    if not condition:
        raise SoakError(message)




def soak(session_cls, engine, n, batch, on_batch=None):
    """Run the soak on ``engine`` (its tables must exist and be empty); one
    sample per batch, each passed to ``on_batch`` as it is taken."""
    session = session_cls(engine)
    samples = []
    try:
        for number in range(1, n // batch + 1):
            low = (number - 1) * batch + 1
            high = low + batch - 1
            in_batch = Item.id.between(low, high)

            new = [Item(id=i, name=f"item {i}", qty=i) for i in range(low, high + 1)]
            session.add_all(new)
            session.commit()
            del new
            # nothing holds the objects now: refcounting alone must have
            # taken them out of the (weak) identity map, as in stock
            after_insert = len(session.identity_map)

            loaded = session.scalars(select(Item).where(in_batch)).all()
            check(len(loaded) == batch, f"batch {number}: loaded {len(loaded)} rows to update")
            for obj in loaded:
                obj.qty += 1
            session.commit()
            del loaded, obj
            after_update = len(session.identity_map)
            total = session.scalar(select(func.sum(Item.qty)).where(in_batch))
            check(total == (low + high) * batch // 2 + batch, f"batch {number}: updates missing")

            session.expunge_all()
            loaded = session.scalars(select(Item).where(in_batch)).all()
            check(len(loaded) == batch, f"batch {number}: loaded {len(loaded)} rows to delete")
            for obj in loaded:
                session.delete(obj)
            session.commit()
            del loaded, obj
            after_delete = len(session.identity_map)
            left = session.scalar(select(func.count()).select_from(Item))
            check(left == 0, f"batch {number}: {left} rows left after the deletes")
            session.commit()  # end the transaction the checks began

            gc.collect()
            sample = {
                "batch": number,
                "objects_done": number * batch,
                "rss_bytes": rss_bytes(),
                "gc_objects": len(gc.get_objects()),
                "identity_map_after_insert": after_insert,
                "identity_map_after_update": after_update,
                "identity_map_after_delete": after_delete,
                "identity_map_after_gc": len(session.identity_map),
            }
            samples.append(sample)
            if on_batch is not None:
                on_batch(sample)
    finally:
        session.close()
    return samples


def growth(samples, reference=REFERENCE_BATCH):
    """Growth of RSS and gc objects from batch ``reference`` to the last."""
    first = samples[min(reference, len(samples)) - 1]
    last = samples[-1]
    return {
        "from_batch": first["batch"],
        "to_batch": last["batch"],
        "rss_bytes": last["rss_bytes"] - first["rss_bytes"],
        "gc_objects": last["gc_objects"] - first["gc_objects"],
        "rss_bytes_at_reference": first["rss_bytes"],
        "gc_objects_at_reference": first["gc_objects"],
        "max_identity_map": max(
            max(s[k] for k in s if k.startswith("identity_map")) for s in samples
        ),
    }


def sqlite_file_engine(path):
    """SQLite in a file, a connection per transaction (NullPool).

    The sqlite3 driver keeps a weak reference per cursor in its connection
    and prunes them only every 200 cursors, so on one long-lived connection
    the object count saws up and down by up to 200 whatever the session
    does; a connection per transaction keeps that out of the figures.
    """
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)

    @event.listens_for(engine, "connect")
    def no_sync(dbapi_connection, record):
        dbapi_connection.execute("PRAGMA synchronous = OFF")

    Base.metadata.create_all(engine)
    return engine


def _engine(url, folder):
    if url is None:
        return sqlite_file_engine(os.path.join(folder, "soak.db"))
    engine = create_engine(normalize_url(url))
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    return engine


def worker(name, url, n, batch):
    """Run one session class in this interpreter; JSON lines on stdout."""
    session_cls = impls.session_classes()[name]
    with tempfile.TemporaryDirectory(prefix="turbosession-soak-") as folder:
        engine = _engine(url, folder)
        try:
            def emit(sample):
                print(json.dumps(sample), flush=True)

            soak(session_cls, engine, n, batch, emit)
        finally:
            if engine.dialect.name != "sqlite":
                Base.metadata.drop_all(engine)
            engine.dispose()


def run_in_subprocess(name, url, n, batch, progress):
    command = [sys.executable, "-m", "turbosession.benchmarks.soak", "--worker", name,
               "-n", str(n), "--batch", str(batch)] + (["--url", url] if url else [])
    samples = []
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True) as proc:
        for line in proc.stdout:
            samples.append(json.loads(line))
            progress(name, samples[-1])
    if proc.returncode:
        raise SoakError(f"{name}: the soak failed (exit status {proc.returncode})")
    return samples


def report(result):
    mb = 1024 * 1024
    lines = [
        f"soak: {result['objects']:,} objects in batches of {result['batch']:,} "
        f"(add+commit, load+update+commit, expunge_all, load+delete+commit), one session, "
        f"{result['database']}",
        "",
        f"| session | RSS at batch {REFERENCE_BATCH} (MB) | RSS growth to the end (MB) | "
        f"gc objects at batch {REFERENCE_BATCH} | gc object growth to the end | "
        "largest identity map after a step |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, data in result["sessions"].items():
        g = data["growth"]
        lines.append(
            f"| {impls.LABELS[name]} | {g['rss_bytes_at_reference'] / mb:.1f} | "
            f"{g['rss_bytes'] / mb:+.1f} | {g['gc_objects_at_reference']:,} | "
            f"{g['gc_objects']:+,} | {g['max_identity_map']:,} |"
        )
    return "\n".join(lines)


def add_arguments(parser):
    parser.add_argument("-n", type=int, default=DEFAULT_N, help=f"objects (default {DEFAULT_N:,})")
    parser.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                        help=f"objects per batch (default {DEFAULT_BATCH:,})")
    parser.add_argument("--sessions", default=None,
                        help="comma-separated: stock,compiled,pure (default: all available)")
    parser.add_argument("--pg-url", default=None,
                        help="run on this PostgreSQL database instead of SQLite")
    parser.add_argument("--out", default=None,
                        help="directory for the JSON (default bench/results/ in a checkout, "
                             "else the current directory)")


def run(args):
    url = args.pg_url
    available = impls.session_classes()
    names = args.sessions.split(",") if args.sessions else list(available)
    for name in names:
        if name not in available:
            raise SystemExit(f"unknown or unavailable session: {name}")
    if args.n // args.batch < REFERENCE_BATCH:
        raise SystemExit(f"-n must give at least {REFERENCE_BATCH} batches")

    def progress(name, sample):
        print(f"\r{name}: batch {sample['batch']:>4} of {args.n // args.batch}, "
              f"RSS {sample['rss_bytes'] / 2**20:7.1f} MB, gc objects {sample['gc_objects']:,}",
              end="", file=sys.stderr, flush=True)

    sessions = {}
    for name in names:
        samples = run_in_subprocess(name, url, args.n, args.batch, progress)
        print(file=sys.stderr)
        sessions[name] = {"growth": growth(samples), "samples": samples}
    result = {
        "objects": args.n,
        "batch": args.batch,
        "database": "postgresql" if url else "sqlite (a file, a connection per transaction)",
        "sessions": sessions,
    }
    out = args.out or (os.path.join("bench", "results") if os.path.isdir("bench") else ".")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{RESULT_NAME}.json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(report(result))
    print(f"json   {path}")
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m turbosession.benchmarks.soak")
    add_arguments(parser)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--url", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.url, args.n, args.batch)
        return 0
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
