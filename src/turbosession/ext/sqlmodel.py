"""SQLModel's sessions on turbosession.

``Session`` is ``sqlmodel.Session`` (its ``exec()``, its typed ``get()``)
with turbosession's hot paths; ``AsyncSession`` is
``sqlmodel.ext.asyncio.session.AsyncSession`` running that Session
underneath.  Use them where you used SQLModel's::

    from turbosession.ext.sqlmodel import Session
"""

import sqlmodel
from sqlmodel.ext.asyncio import session as sqlmodel_asyncio

from ..session import TurboSessionMixin

__all__ = ["AsyncSession", "Session"]


class Session(TurboSessionMixin, sqlmodel.Session):
    pass


class AsyncSession(sqlmodel_asyncio.AsyncSession):
    sync_session_class = Session
