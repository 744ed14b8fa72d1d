"""What a workload runs on: three sessions and three references.

``stock`` is ``sqlalchemy.orm.Session``; ``compiled`` and ``pure`` are
turbosession's Session pinned to one implementation bundle (the way
tests/conftest.py pins them), so both implementations are measured in the same process
whichever is active.  The references are what users otherwise reach for when
the ORM is too slow: another unit-of-work ORM (Pony ORM, SQLite only), ORM bulk
statements, Core ``executemany`` and the DBAPI driver itself.
"""

from sqlalchemy import orm

import turbosession
from turbosession import _impl

STOCK = "stock"
COMPILED = "compiled"
PURE = "pure"
ORM_BULK = "orm_bulk"
CORE = "core"
DBAPI = "dbapi"
PONY = "pony"

SESSIONS = (STOCK, COMPILED, PURE)
REFERENCES = (PONY, ORM_BULK, CORE, DBAPI)
ORDER = SESSIONS + REFERENCES

LABELS = {
    STOCK: "stock Session",
    COMPILED: "turbosession compiled",
    PURE: "turbosession pure",
    ORM_BULK: "ORM bulk",
    CORE: "Core",
    DBAPI: "raw DBAPI",
    PONY: "Pony ORM",
}


def pinned_session(bundle):
    return type(f"Session_{bundle.name}", (turbosession.Session,), {"_turbo": bundle})


def session_classes():
    """name -> Session class; ``compiled`` is missing when it is not built."""
    classes = {STOCK: orm.Session}
    if _impl.compiled is not None:
        classes[COMPILED] = pinned_session(_impl.compiled)
    classes[PURE] = pinned_session(_impl.pure)
    return classes
