"""SQLAlchemy's horizontal sharding session with turbosession's unit of work.

``ShardedSession`` is ``sqlalchemy.ext.horizontal_shard.ShardedSession``
with ``TurboSessionMixin`` in front: the same constructor (``shards``,
``shard_chooser``, ``identity_chooser``, ``execute_chooser``), the same
shard routing.  Its flushes take turbosession's fast path: each object's
connection comes from the session's ``connection_callable`` as stock's
flush asks it, per object and in stock's order.
"""

from sqlalchemy.ext import horizontal_shard

from ..session import TurboSessionMixin

__all__ = ["ShardedSession"]


class ShardedSession(TurboSessionMixin, horizontal_shard.ShardedSession):
    pass
