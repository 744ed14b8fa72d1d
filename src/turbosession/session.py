"""The drop-in Session: an acceleration mixin over SQLAlchemy's Session.

``TurboSessionMixin`` can be put in front of any ``sqlalchemy.orm.Session``
subclass (``ShardedSession``, SQLModel's or Flask-SQLAlchemy's sessions) to
accelerate it; ``Session`` is the mixin over ``sqlalchemy.orm.Session``.
Nothing in SQLAlchemy is patched: only sessions of these classes change.
"""

from sqlalchemy import orm
from sqlalchemy.orm.base import object_state
from sqlalchemy.util import IdentitySet

from . import _impl, flush

__all__ = ["TurboSessionMixin", "Session", "sessionmaker", "scoped_session"]


class TurboSessionMixin:
    """Runs a Session's hot paths on turbosession's implementation.

    ``_turbo`` is the implementation bundle (``turbosession._impl.compiled``
    or ``.pure``); tests make subclasses that pin one of them.
    """

    _turbo = _impl.active

    # False sends every flush to stock's unit of work (counted as "disabled")
    _fast_flush = True

    # stock's _flush builds stock's UOWTransaction; ours builds turbosession's
    _flush = flush.flush

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        # stock __init__ made an empty _WeakInstanceDict nothing refers to yet
        self.identity_map = self._turbo.identity.WeakIdentityMap()

    def expunge_all(self):
        # stock kills the old map, detaches its states and makes an empty
        # _WeakInstanceDict; nothing has been attached to that one yet
        super().expunge_all()
        self.identity_map = self._turbo.identity.WeakIdentityMap()

    # Dirty tracking (turbosession._tracking_*).  ``_dirty_states`` stays
    # stock's: it already returns the identity map's modified set as is.

    def _is_clean(self):
        return self._turbo.tracking.is_clean(
            self.identity_map, self._new, self._deleted
        )

    @property
    def dirty(self):
        return IdentitySet(
            self._turbo.tracking.dirty_objects(self._dirty_states, self._deleted)
        )

    def is_modified(self, instance, include_collections=True):
        # object_state first: an unmapped instance raises as in stock
        return self._turbo.tracking.has_net_changes(
            object_state(instance), include_collections
        )


class Session(TurboSessionMixin, orm.Session):
    """``sqlalchemy.orm.Session`` with turbosession's hot paths."""


class sessionmaker(orm.sessionmaker):
    """``sqlalchemy.orm.sessionmaker`` whose ``class_`` defaults to turbosession's Session."""

    def __init__(self, bind=None, *, class_=Session, **kw):
        super().__init__(bind, class_=class_, **kw)


# scoped_session only calls the factory it is given; with turbosession's
# sessionmaker (or Session) as that factory it yields turbosession sessions.
scoped_session = orm.scoped_session
