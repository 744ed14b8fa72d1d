"""asyncio sessions that run turbosession's Session underneath.

Equivalent to ``AsyncSession(engine, sync_session_class=turbosession.Session)``.
"""

from sqlalchemy.ext import asyncio as sa_asyncio

from ..session import Session

__all__ = ["AsyncSession", "async_sessionmaker"]


class AsyncSession(sa_asyncio.AsyncSession):
    sync_session_class = Session


class async_sessionmaker(sa_asyncio.async_sessionmaker):
    def __init__(self, bind=None, *, class_=AsyncSession, **kw):
        super().__init__(bind, class_=class_, **kw)
