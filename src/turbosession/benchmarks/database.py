"""A benchmark database: one engine, the benchmark tables, and cheap resets.

Every workload of a run shares one engine per database, so SQLAlchemy's
statement cache is as warm for one implementation as for the others.  Rounds
that change rows start from ``reset()``; rounds that only read share one
filled table (``ensure_items``) instead of refilling it every round.
"""

import time

from sqlalchemy import create_engine, func, insert, select, text

from .models import TABLES_DELETE_ORDER, Base, Item

SQLITE_URL = "sqlite://"


def normalize_url(url):
    """Point a plain ``postgresql://`` URL at psycopg 3, the driver we ship for."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix):]
    return url


def item_row(i):
    """Row ``i`` of the filled item table: ids from 1, ``qty`` one less than ``id``."""
    return {"id": i + 1, "name": f"item {i}", "qty": i}


class Database:
    def __init__(self, url=SQLITE_URL):
        self.url = normalize_url(url)
        self.engine = create_engine(self.url)
        self.name = self.engine.dialect.name
        # the DBAPI placeholder, for the raw-driver references
        self.placeholder = "?" if self.engine.dialect.paramstyle == "qmark" else "%s"
        # SQLite does all its work in this process, so its rounds are timed
        # in CPU time, which a busy shared machine does not stretch; a server
        # works in another process, so there only the wall clock is complete.
        if self.name == "sqlite":
            self.clock, self.clock_name = time.process_time, "process CPU time"
        else:
            self.clock, self.clock_name = time.perf_counter, "wall time"
        Base.metadata.drop_all(self.engine)
        Base.metadata.create_all(self.engine)
        self._filled_items = None

    def server_version(self):
        with self.engine.connect() as conn:
            if self.name == "sqlite":
                return conn.exec_driver_sql("select sqlite_version()").scalar()
            return conn.exec_driver_sql("show server_version").scalar()

    def reset(self):
        """Empty every benchmark table; autoincrement ids start at 1 again."""
        with self.engine.begin() as conn:
            if self.name == "postgresql":
                conn.exec_driver_sql(
                    "TRUNCATE " + ", ".join(TABLES_DELETE_ORDER) + " RESTART IDENTITY CASCADE"
                )
            else:
                # no AUTOINCREMENT keyword: SQLite reuses max(rowid) + 1, so 1
                for table in TABLES_DELETE_ORDER:
                    conn.exec_driver_sql(f"DELETE FROM {table}")
        self._filled_items = None

    def fill_items(self, n):
        self.reset()
        with self.engine.begin() as conn:
            conn.execute(insert(Item.__table__), [item_row(i) for i in range(n)])
            if self.name == "postgresql" and n:
                # explicit ids leave the serial's sequence behind: move it past them
                conn.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('tsbench_item', 'id'), {n})"
                )

    def ensure_items(self, n):
        """Fill the item table with ``n`` rows unless a read-only round already did.

        Only workloads that never change the table may rely on this; any
        ``reset()`` or ``fill_items()`` forgets it.
        """
        if self._filled_items != n:
            self.fill_items(n)
            self._filled_items = n

    def scalar(self, statement):
        with self.engine.connect() as conn:
            return conn.execute(statement).scalar()

    def item_totals(self):
        """(row count, sum of qty, sum of id) of the item table."""
        with self.engine.connect() as conn:
            return tuple(
                conn.execute(
                    select(
                        func.count(),
                        func.coalesce(func.sum(Item.qty), 0),
                        func.coalesce(func.sum(Item.id), 0),
                    ).select_from(Item.__table__)
                ).one()
            )

    def pairs(self, sql):
        with self.engine.connect() as conn:
            return set(map(tuple, conn.execute(text(sql)).all()))

    def dispose(self):
        if self.name != "sqlite":
            Base.metadata.drop_all(self.engine)
        self.engine.dispose()


def driver_version(db):
    module = db.engine.dialect.dbapi
    if db.name == "sqlite":
        return f"sqlite3 (SQLite {module.sqlite_version})"
    return f"{module.__name__} {getattr(module, '__version__', '?')}"
