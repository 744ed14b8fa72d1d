"""The session transaction of turbosession's sessions.

Stock's commit expires every object of the identity map, one
``InstanceState._expire`` call per object; this subclass runs that loop on
turbosession's ``_expire``.  Stock creates ``SessionTransaction`` by
name in exactly two places, ``Session._autobegin_t`` (the root transaction,
whether autobegun or from ``begin()``) and ``SessionTransaction._begin``
(subtransactions and savepoints); the mixin overrides the first and this
class the second, so every transaction of a turbosession session is one of
these and no stock session ever gets one.
"""

from sqlalchemy import exc as sa_exc
from sqlalchemy import orm
from sqlalchemy.orm.session import SessionTransactionOrigin, SessionTransactionState
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.orm.state_changes import _StateChange, _StateChangeStates

__all__ = ["SessionTransaction", "autobegin"]

# what stock's commit calls per state; a patched one is called as in stock
_stock_expire = InstanceState._expire
_stock_detach_states = InstanceState.__dict__["_detach_states"]


class SessionTransaction(orm.SessionTransaction):
    """``sqlalchemy.orm.SessionTransaction`` whose commit expires objects
    through ``session._turbo.expire``."""

    @_StateChange.declare_states(
        (SessionTransactionState.ACTIVE,), _StateChangeStates.NO_CHANGE
    )
    def _begin(self, nested=False):
        origin = (
            SessionTransactionOrigin.BEGIN_NESTED
            if nested
            else SessionTransactionOrigin.SUBTRANSACTION
        )
        return type(self)(self.session, origin, self)

    def _remove_snapshot(self):
        session = self.session
        if (
            self.nested
            or not session.expire_on_commit
            or InstanceState._expire is not _stock_expire
            or InstanceState.__dict__["_detach_states"] is not _stock_detach_states
        ):
            return super()._remove_snapshot()
        assert self._is_transaction_boundary
        expire = session._turbo.expire
        expire.expire_all(session, session.identity_map.all_states())
        expire.detach_all(session, list(self._deleted))
        # WeakKeyDictionary.clear() pops one item per Python call; emptying
        # the dict behind it ends the same (its weakref callbacks and
        # pending removals skip keys that are already gone)
        self._deleted.data.clear()


def autobegin(session, begin):
    """``Session._autobegin_t`` creating this module's SessionTransaction."""
    if session._transaction is None:
        if not begin and not session.autobegin:
            raise sa_exc.InvalidRequestError(
                "Autobegin is disabled on this Session; please call "
                "session.begin() to start a new transaction"
            )
        origin = (
            SessionTransactionOrigin.BEGIN
            if begin
            else SessionTransactionOrigin.AUTOBEGIN
        )
        trans = SessionTransaction(session, origin)
        assert session._transaction is trans
        return trans
    return session._transaction
