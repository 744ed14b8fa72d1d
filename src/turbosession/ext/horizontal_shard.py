"""SQLAlchemy's horizontal sharding on turbosession's Session.

``ShardedSession`` takes the same arguments as
``sqlalchemy.ext.horizontal_shard.ShardedSession`` (``shards``,
``shard_chooser``, ``identity_chooser``, ``execute_chooser``).  Its flushes
pick a connection per object, which turbosession's fast path does not do, so
they run on stock's unit of work (fallback reason ``connection_callable``);
the identity map, dirty tracking, attaching and commit expiry are turbosession's.
"""

from sqlalchemy.ext import horizontal_shard

from ..session import TurboSessionMixin

__all__ = ["ShardedSession"]


class ShardedSession(TurboSessionMixin, horizontal_shard.ShardedSession):
    pass
