"""The databases the tests run on: SQLite always, PostgreSQL when configured.

PostgreSQL is configured by ``TURBOSESSION_PG_URL`` (and ``TURBOSESSION_PG_URL_2``
for a second database), which ``scripts/pg.sh run -- pytest ...`` exports.
Without them the PostgreSQL cases skip with the reason, unless
``TURBOSESSION_REQUIRE_PG`` is set (CI), where a missing server is a failure.

Each PostgreSQL test gets its own schema, made first on the connection's
``search_path``: tables a test creates land there without the test naming a
schema (so the SQL it emits is exactly what an application would emit), tests
running side by side under pytest-xdist do not see each other, and dropping
the schema afterwards removes whatever the test left behind.
"""

import contextlib
import os
import uuid

import pytest
from sqlalchemy import create_engine

import support

PG_URL = os.environ.get("TURBOSESSION_PG_URL")
PG_URL_2 = os.environ.get("TURBOSESSION_PG_URL_2")
REQUIRE_PG = bool(os.environ.get("TURBOSESSION_REQUIRE_PG"))

BACKENDS = ("sqlite", "postgresql")


def require_postgresql(*urls):
    """Skip (or fail, when PostgreSQL is required) unless every URL is set."""
    if all(urls):
        return
    reason = (
        "PostgreSQL not configured (TURBOSESSION_PG_URL / TURBOSESSION_PG_URL_2 "
        "unset); run the tests under `scripts/pg.sh run -- pytest ...`"
    )
    if REQUIRE_PG:
        pytest.fail(reason)
    pytest.skip(reason)


_admin_engines = {}


def _admin(url):
    # one small pool per database and process for creating and dropping schemas
    if url not in _admin_engines:
        _admin_engines[url] = create_engine(url, pool_size=1)
    return _admin_engines[url]


@contextlib.contextmanager
def scratch_engine(url, **engine_kw):
    """An engine on ``url`` whose tables go to a schema of its own, dropped after."""
    schema = f"ts_{uuid.uuid4().hex[:16]}"
    admin = _admin(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine = create_engine(
        url,
        connect_args={
            "options": f"-c search_path={schema}",
            # lets the cleanup find connections a failed test left checked out
            "application_name": schema,
            # cursors that note what they receive (tests/support.py)
            "cursor_factory": support.recording_psycopg_cursor(),
        },
        **engine_kw,
    )
    try:
        yield engine
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = %(schema)s",
                {"schema": schema},
            )
            # a prepared transaction left behind would block the drop forever
            conn.exec_driver_sql("SET LOCAL lock_timeout = '10s'")
            conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")


@contextlib.contextmanager
def sqlite_engine():
    # connections whose cursors note what they receive (tests/support.py)
    engine = create_engine(
        "sqlite://", connect_args={"factory": support.RecordingSQLiteConnection}
    )
    try:
        yield engine
    finally:
        engine.dispose()


@contextlib.contextmanager
def backend_engine(backend):
    """A fresh, empty database of the named backend, cleaned up afterwards."""
    if backend == "sqlite":
        with sqlite_engine() as engine:
            yield engine
    else:
        require_postgresql(PG_URL)
        with scratch_engine(PG_URL) as engine:
            yield engine
