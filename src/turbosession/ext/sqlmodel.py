"""SQLModel's sessions on turbosession.

``Session`` is ``sqlmodel.Session`` (its ``exec()``, its typed ``get()``)
with turbosession's hot paths; ``AsyncSession`` is
``sqlmodel.ext.asyncio.session.AsyncSession`` running that Session
underneath.  Use them where you used SQLModel's::

    from turbosession.ext.sqlmodel import Session
"""

import sqlmodel

from ..session import TurboSessionMixin

__all__ = ["AsyncSession", "Session"]


class Session(TurboSessionMixin, sqlmodel.Session):
    pass


def __getattr__(name):
    # made on first use: SQLAlchemy's asyncio extension needs greenlet (the
    # asyncio extra) even to import, and Session must not
    if name != "AsyncSession":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from sqlmodel.ext.asyncio import session as sqlmodel_asyncio

    global AsyncSession

    class AsyncSession(sqlmodel_asyncio.AsyncSession):
        sync_session_class = Session

    AsyncSession.__module__ = __name__
    return AsyncSession
