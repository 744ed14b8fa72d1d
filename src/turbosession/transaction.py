"""The session transaction of turbosession's sessions.

Stock's commit expires every object of the identity map, one
``InstanceState._expire`` call per object; this subclass runs that loop on
turbosession's ``_expire``.  Stock creates ``SessionTransaction`` by
name in exactly two places, ``Session._autobegin_t`` (the root transaction,
whether autobegun or from ``begin()``) and ``SessionTransaction._begin``
(subtransactions and savepoints); the mixin overrides the first and this
class the second, so every transaction of a turbosession session is one of
these and no stock session ever gets one.

Every flush runs in a subtransaction of the session's transaction
(``_begin()`` ... ``commit()``), and its save and delete steps ask that
subtransaction for their connection; ``Session.commit()`` commits the root
transaction and every execution asks it for its connection.  Stock goes
through the state machine of ``_StateChange`` for each of these calls (a
generated wrapper, a context manager per expected state); ``begin_flush``,
``commit_flush``, ``commit`` and ``connection_for_bind`` (and the hot
path's ``persist.flush_connection``) do the same steps directly where no
listener or patched method could see the difference, and are stock's
calls otherwise (the first two and ``commit`` counted by reason:
``stats()``, ``FALLBACK_REASONS``).  ``autobegin`` builds the root
transaction the same way (counted as ``roots``).  The transaction's first
connection is acquired by the hot path's ``persist.provision`` in stock's
steps, with the transaction provisioning and marked as stock's wrappers
mark it while engine, pool and ``after_begin`` listeners run (counted as
``first_connections``).
"""

import functools
import logging
import operator
from collections import defaultdict
from weakref import WeakKeyDictionary

from sqlalchemy import exc as sa_exc
from sqlalchemy import orm
from sqlalchemy.orm import exc as orm_exc
from sqlalchemy.engine import Connection
from sqlalchemy.engine.util import TransactionalContext
from sqlalchemy.event.attr import _EmptyListener
from sqlalchemy.orm.session import (
    SessionTransactionOrigin,
    SessionTransactionState,
    _SessionCloseState,
)
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.orm.state_changes import _StateChange, _StateChangeStates

__all__ = [
    "FALLBACK_REASONS",
    "SessionTransaction",
    "autobegin",
    "begin_flush",
    "commit_flush",
    "reset_stats",
    "stats",
]

log = logging.getLogger("turbosession")

FALLBACK_REASONS = {
    "listeners": "after_transaction_create or after_transaction_end listeners on the "
    "session (for a commit: before_commit, after_commit or after_transaction_end)",
    "patched": "a method of SessionTransaction or Session that the step runs is not stock's",
    "state": "the transaction is not in the state the direct step expects "
    "(stock's call then raises or does what that state asks)",
    "not_root": "commit() of a savepoint (or of a subtransaction)",
    "twophase": "the session is two-phase: stock's commit prepares first",
}

# Counts are defaultdicts, not Counters: a Python subclass of dict stores an
# item through its ``__setitem__`` wrapper (about 1k instructions for each
# ``counts[key] += 1``, several per session), a defaultdict as dict does.
_counts = defaultdict(int)
_commit_counts = defaultdict(int)
_root_counts = defaultdict(int)
# the root transactions' first connections acquired by persist.provision
_first_connections = defaultdict(int)


def _section(counts):
    return {
        "fast": counts["fast"],
        "fallback": {k: v for k, v in counts.items() if k != "fast"},
    }


def stats():
    """``subtransactions``: the flushes' subtransactions, ``fast`` (begun
    and committed directly) and ``fallback`` by reason; ``commits``: the
    root transaction's ``Session.commit()`` likewise; ``roots``: the root
    transactions begun (autobegun or by ``begin()``), built directly or
    by stock's constructor; ``first_connections``: the root transactions'
    first connections acquired directly (the others by stock's
    ``_connection_for_bind``)."""
    return {
        "subtransactions": _section(_counts),
        "commits": _section(_commit_counts),
        "roots": _section(_root_counts),
        "first_connections": _first_connections["fast"],
    }


def reset_stats():
    _counts.clear()
    _commit_counts.clear()
    _root_counts.clear()
    _first_connections.clear()


# An event of a dispatcher nothing listens to is the event class's shared
# ``_EmptyListener``, whose truth and call are those of its class-level
# listeners (``parent_listeners``).  ``_EMPTY`` is checked by type and the
# class-level listeners read directly, where each check would otherwise be a
# Python-level ``__bool__`` call (an empty event then is not called: its
# call would run no listener); any other member (the dispatcher's own
# listener collection) is asked as stock asks it.
_EMPTY = _EmptyListener


def _fall_back(reason, counts=_counts, what="flush subtransaction"):
    counts[reason] += 1
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s runs as stock's: %s (%s)", what, reason, FALLBACK_REASONS[reason])

# what stock's commit calls per state; a patched one is called as in stock
_stock_expire = InstanceState._expire
_stock_detach_states = InstanceState.__dict__["_detach_states"]


class StateMarks(list):
    """The states marked in a transaction's ``_new``, ``_dirty`` or
    ``_deleted`` before that collection is first read: weak references
    without a callback, oldest first, kept in the transaction boundary's
    ``__dict__`` under ``MARKS[name]`` (``persist.register_persistent`` and
    ``persist.remove_newly_deleted`` append them).

    Only rollback and a savepoint's commit read those collections (the
    root's commit reads the deleted states' marks themselves, to detach
    them), and most transactions end in a commit of the root: marking a state here
    costs a weak reference and an append, where a ``WeakKeyDictionary``
    costs its construction, a dict entry per state and a Python call of its
    callback for each state released before the transaction ends.
    ``_Snapshot`` turns the marks into the collection when it is first
    read: the states still alive, each marked once, in the order they were
    first marked, which is what the ``WeakKeyDictionary`` would hold.
    References to released states are dropped whenever the list has
    doubled since it was last compacted, so that a long transaction
    inserting and releasing many objects does not keep them.

    The first threshold is the class's, so that ``StateMarks()`` runs no
    Python ``__init__`` (a one-object flush makes a new list of marks);
    ``compact`` gives the instance its own."""

    compact_at = 1024

    def compact(self):
        self[:] = [ref for ref in self if ref() is not None]
        self.compact_at = max(2 * len(self), StateMarks.compact_at)

    def fill(self, mapping):
        """``mapping[state] = True`` for each state still alive, in order."""
        for ref in self:
            state = ref()
            if state is not None:
                mapping[state] = True

    def states(self):
        """The states still alive, each once, in the order they were first
        marked: the keys of the ``WeakKeyDictionary`` ``fill`` would fill
        (the references called and the states kept once in C loops; the
        released ones give None)."""
        alive = dict.fromkeys(map(operator.call, self))
        alive.pop(None, None)
        return list(alive)


# the collections marked through StateMarks, and the key of the marks in
# the transaction's __dict__
MARKS = {
    "_new": "_turbosession_new_marks",
    "_dirty": "_turbosession_dirty_marks",
    "_deleted": "_turbosession_deleted_marks",
}


class _Snapshot:
    """One of a transaction's four snapshot collections (``_new``,
    ``_deleted``, ``_dirty``, ``_key_switches``), made on first use.

    Stock's ``_take_snapshot`` gives a root transaction or a savepoint
    four new ``WeakKeyDictionary`` objects (most of what beginning a
    transaction costs) and a subtransaction its parent's four; a short
    transaction uses one or two of them, a read-only one none.  This
    gives the same object on first use (a new one for a transaction
    boundary, holding the states marked so far in ``StateMarks``; the
    parent's for a subtransaction: the parent never replaces its own) and
    keeps it in the instance, so that every later use, stock's included,
    is a plain attribute."""

    __slots__ = ("name", "marks")

    def __set_name__(self, owner, name):
        self.name = name
        self.marks = MARKS.get(name)

    def __get__(self, trans, owner=None):
        if trans is None:
            return self
        if trans._is_transaction_boundary:
            value = WeakKeyDictionary()
            if self.marks is not None:
                marks = trans.__dict__.pop(self.marks, None)
                if marks is not None:
                    marks.fill(value)
        else:
            value = getattr(trans._parent, self.name)
        trans.__dict__[self.name] = value
        return value


_SNAPSHOT_NAMES = ("_new", "_deleted", "_dirty", "_key_switches")
_BEGIN = SessionTransactionOrigin.BEGIN
_AUTOBEGIN = SessionTransactionOrigin.AUTOBEGIN


class SessionTransaction(orm.SessionTransaction):
    """``sqlalchemy.orm.SessionTransaction`` whose commit expires objects
    through ``session._turbo.expire`` and whose snapshot collections are
    made on first use (``_Snapshot``)."""

    _new = _Snapshot()
    _deleted = _Snapshot()
    _dirty = _Snapshot()
    _key_switches = _Snapshot()

    def _take_snapshot(self):
        # stock's: a savepoint flushes first; the collections a transaction
        # boundary gets new, and a subtransaction shares with its parent,
        # are _Snapshot's, made when first used
        if not self._is_transaction_boundary:
            return
        if self.origin is not _BEGIN and self.origin is not _AUTOBEGIN and (
            not self.session._flushing
        ):
            self.session.flush()
        members = self.__dict__
        for name in _SNAPSHOT_NAMES:
            members.pop(name, None)
        for marks in MARKS.values():
            members.pop(marks, None)

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
        # _deleted not made yet (_Snapshot) holds the states marked in it,
        # if any: those are detached as the collection's would be, in the
        # order they were first marked
        deleted = self.__dict__.get("_deleted")
        if deleted is None:
            marks = self.__dict__.pop(MARKS["_deleted"], None)
            if marks:
                expire.detach_all(session, marks.states())
            return
        # an empty WeakKeyDictionary is told by its dict (iterating it
        # enters and leaves its iteration guard, for nothing)
        if deleted.data:
            # stock's _detach_states of no states only reads the session's
            # dispatch
            expire.detach_all(session, list(deleted))
        # WeakKeyDictionary.clear() pops one item per Python call; emptying
        # the dict behind it ends the same (its weakref callbacks and
        # pending removals skip keys that are already gone)
        deleted.data.clear()


def autobegin(session, begin=False):
    """``Session._autobegin_t`` creating this module's SessionTransaction
    (the mixin's method itself: no Python call in between)."""
    if session._transaction is None:
        if not begin and not session.autobegin:
            raise sa_exc.InvalidRequestError(
                "Autobegin is disabled on this Session; please call "
                "session.begin() to start a new transaction"
            )
        # (the members kept: an Enum class's attribute is a slow lookup)
        origin = _BEGIN if begin else _AUTOBEGIN
        if not _stock_methods():
            _fall_back("patched", _root_counts, "root transaction")
            trans = SessionTransaction(session, origin)
        else:
            event = session.dispatch.after_transaction_create
            if event.parent_listeners if type(event) is _EMPTY else event:
                _fall_back("listeners", _root_counts, "root transaction")
                trans = SessionTransaction(session, origin)
            else:
                # SessionTransaction(session, origin), its steps without
                # the constructor's (persist.new_root)
                trans = session._turbo.persist.new_root(session, origin)
        assert session._transaction is trans
        return trans
    return session._transaction


_ACTIVE = SessionTransactionState.ACTIVE
_CLOSED = SessionTransactionState.CLOSED
_ANY = _StateChangeStates.ANY
_SUBTRANSACTION = SessionTransactionOrigin.SUBTRANSACTION
_SESSION_CLOSED = _SessionCloseState.CLOSED
# (it raises only for a session in a transaction context manager, ``with
# session.begin():``, which the callers read first: no call otherwise)
_trans_ctx_check = TransactionalContext._trans_ctx_check


# what stock's _begin, commit and connection of a flush's subtransaction
# run, as this module's class has them at import
_ST = SessionTransaction
_S_BEGIN = _ST._begin
_S_INIT = _ST.__init__
_S_TAKE_SNAPSHOT = _ST._take_snapshot
_S_COMMIT = _ST.commit
_S_PREPARE_IMPL = _ST._prepare_impl
_S_CLOSE = _ST.close
_S_CONNECTION = _ST.connection
_S_CONNECTION_FOR_BIND = _ST._connection_for_bind


_STOCK_METHODS = tuple(
    (name, False, method)
    for name, method in (
        ("_begin", _S_BEGIN),
        ("__init__", _S_INIT),
        ("_take_snapshot", _S_TAKE_SNAPSHOT),
        ("commit", _S_COMMIT),
        ("_prepare_impl", _S_PREPARE_IMPL),
        ("close", _S_CLOSE),
        ("connection", _S_CONNECTION),
        ("_connection_for_bind", _S_CONNECTION_FOR_BIND),
    )
)

def _identical_stock_methods():
    """Whether those methods are still the ones the class had at import
    (one of them patched since, on this class or a base: the step is
    stock's call), by identity checks that stop at the first difference."""
    cls = _ST
    return (
        cls._begin is _S_BEGIN
        and cls.__init__ is _S_INIT
        and cls._take_snapshot is _S_TAKE_SNAPSHOT
        and cls.commit is _S_COMMIT
        and cls._prepare_impl is _S_PREPARE_IMPL
        and cls.close is _S_CLOSE
        and cls.connection is _S_CONNECTION
        and cls._connection_for_bind is _S_CONNECTION_FOR_BIND
    )


# the check asked several times per flush (called as _stock_methods(),
# looked up when called): the identity checks, or set_class_check's
_stock_methods = _identical_stock_methods


def set_class_check(class_like):
    """Have ``_stock_methods`` be ``class_like(cls, expected)`` for the
    class and its methods, bound with ``functools.partial`` (the compiled
    ``_attach.class_like``, which answers from the class's version tag
    while neither it nor a base has changed: no Python frame per check);
    None: the identity checks.  ``turbosession.session`` sets it when
    compiled is active (this module is imported by the hot paths, before
    they are bundled); uncompiled, the call would cost several Python
    frames per check."""
    global _stock_methods
    _stock_methods = (
        _identical_stock_methods
        if class_like is None
        else functools.partial(class_like, _ST, _STOCK_METHODS)
    )


_STOCK_GET_BIND = orm.Session.get_bind
_STOCK_FLUSH = orm.Session.flush

# TurboSessionMixin's _autobegin_t and _is_clean (set_session_methods)
_mixin_autobegin_t = None
_mixin_is_clean = None


def set_session_methods(mixin):
    """Keep the mixin's ``_autobegin_t`` and ``_is_clean`` (``turbosession.session``
    calls this once it has defined the mixin, which imports this module)."""
    global _mixin_autobegin_t, _mixin_is_clean
    _mixin_autobegin_t = mixin._autobegin_t
    _mixin_is_clean = mixin._is_clean


def _autobegins_as_mixin(session):
    """Whether ``session._autobegin_t()`` is the mixin's, which returns the
    session's transaction when it has one (no Python call needed then)."""
    return (
        type(session)._autobegin_t is _mixin_autobegin_t
        and "_autobegin_t" not in session.__dict__
    )


def begin_flush(session):
    """``session._autobegin_t()._begin()``: the flush's subtransaction.

    Stock's ``_begin`` checks that the parent is active and constructs a
    ``SessionTransaction`` whose ``__init__`` checks the session, takes
    the parent's snapshot, makes itself the session's transaction and
    dispatches ``after_transaction_create``.  With no listener for that
    event, nothing runs while it does so; this builds the same object,
    attribute for attribute, without the state machine's wrappers.
    """
    parent = session._transaction
    if parent is None or not _autobegins_as_mixin(session):
        parent = session._autobegin_t()
    if type(parent) is not SessionTransaction or not _stock_methods():
        _fall_back("patched")
        return parent._begin()
    event = session.dispatch.after_transaction_create
    if event.parent_listeners if type(event) is _EMPTY else event:
        _fall_back("listeners")
        return parent._begin()
    if parent._state is not _ACTIVE or session._close_state is _SESSION_CLOSED:
        _fall_back("state")
        return parent._begin()
    # the subtransaction as stock's constructor makes it (persist.new_subtransaction)
    return session._turbo.persist.new_subtransaction(session, parent)


def commit_flush(session, sub):
    """``sub.commit()`` at the end of a successful flush.

    A subtransaction's commit, while the session is flushing and the
    subtransaction is the session's innermost one, prepares (no event, no
    flush: the session is flushing), commits no connection (it holds
    none: its parent's are asked), closes (the session's transaction
    becomes the parent) and dispatches ``after_transaction_end``.  With no
    listener for that event, this does those steps directly; in any other
    case (a savepoint begun inside the flush, the transaction rolled back
    by a listener, ...) it is stock's commit.
    """
    if (
        sub._state is not _ACTIVE
        or sub._next_state is not _ANY
        or session._transaction is not sub
        or not session._flushing
        or sub._connections
        or sub.nested
        or type(sub) is not SessionTransaction
    ):
        _fall_back("state")
        sub.commit()
        return
    if not _stock_methods():
        _fall_back("patched")
        sub.commit()
        return
    event = session.dispatch.after_transaction_end
    if event.parent_listeners if type(event) is _EMPTY else event:
        _fall_back("listeners")
        sub.commit()
        return
    session._transaction = sub._parent
    sub._state = _CLOSED
    # what commit's wrapper leaves on the subtransaction
    sub._next_state = _ANY
    sub._current_fn = None
    _counts["fast"] += 1


_PREPARED = SessionTransactionState.PREPARED
_COMMITTED = SessionTransactionState.COMMITTED
_CHANGING = _StateChangeStates.CHANGE_IN_PROGRESS
# the undecorated methods stock's state machine names as the one running
_COMMIT_FN = orm.SessionTransaction.commit.__wrapped__
_PREPARE_FN = orm.SessionTransaction._prepare_impl.__wrapped__
_CLOSE_FN = orm.SessionTransaction.close.__wrapped__


def commit(session, trans):
    """``trans.commit(_to_root=True)``: ``Session.commit()`` of the root
    transaction.

    Stock's commit runs three wrapped methods (``commit``,
    ``_prepare_impl``, ``close``) and two expected-state context managers.
    With no ``before_commit``, ``after_commit`` or ``after_transaction_end``
    listener, the code of the application that can run meanwhile is that
    of the flushes (mapper, attribute, engine events) and of the engine and
    pool (commit, checkin): this runs stock's steps in stock's order and
    leaves on the transaction, while each of those runs, the method in
    progress and the state expected next that stock's wrappers leave there,
    so that whatever they call is refused or allowed as in stock.  Any
    other case is stock's commit.
    """
    reason = None
    if type(trans) is not SessionTransaction or not _stock_methods():
        reason = "patched"
    elif trans._parent is not None:
        reason = "not_root"
    elif session.twophase:
        reason = "twophase"
    elif (
        trans._state is not _ACTIVE
        or trans._next_state is not _ANY
        or trans._current_fn is not None
        or session._transaction is not trans
        or session._flushing
    ):
        reason = "state"
    else:
        dispatch = session.dispatch
        for event in (
            dispatch.before_commit, dispatch.after_commit, dispatch.after_transaction_end
        ):
            if event.parent_listeners if type(event) is _EMPTY else event:
                reason = "listeners"
                break
    dispatch = session.dispatch
    if reason is not None:
        _fall_back(reason, _commit_counts, "commit")
        trans.commit(_to_root=True)
        return
    _commit_counts["fast"] += 1
    try:
        # _prepare_impl: flush until clean
        trans._current_fn = _PREPARE_FN
        trans._next_state = _CHANGING
        for _flush_guard in range(100):
            cls = type(session)
            if (
                cls.flush is not _STOCK_FLUSH
                or cls._is_clean is not _mixin_is_clean
                or "flush" in session.__dict__
                or "_is_clean" in session.__dict__
            ):
                if session._is_clean():
                    break
                session.flush()
                continue
            # the mixin's _is_clean() without its method call, then stock's
            # flush() without asking it again: it reads the session and
            # changes nothing, and nothing ran since it was asked
            if session._turbo.tracking.is_clean(
                session.identity_map, session._new, session._deleted
            ):
                break
            if session._flushing:
                session.flush()  # stock's raises
            else:
                try:
                    session._flushing = True
                    session._flush(None)
                finally:
                    session._flushing = False
        else:
            raise orm_exc.FlushError(
                "Over 100 subsequent flushes have occurred within "
                "session.commit() - is an after_flush() hook "
                "creating new objects?"
            )
        trans._state = _PREPARED
        # back in commit
        trans._current_fn = _COMMIT_FN
        for conn, db_trans, should_commit, autoclose in set(trans._connections.values()):
            if should_commit:
                db_trans.commit()
        trans._state = _COMMITTED
        # no listener when the commit began; one added since runs as in stock
        event = dispatch.after_commit
        if type(event) is not _EMPTY or event.parent_listeners:
            event(session)
        trans._remove_snapshot()
        # close
        trans._current_fn = _CLOSE_FN
        session._transaction = None
        for connection, db_trans, should_commit, autoclose in set(
            trans._connections.values()
        ):
            if should_commit and db_trans.is_active:
                db_trans.close()
            if autoclose:
                connection.close()
        trans._state = _CLOSED
        event = dispatch.after_transaction_end
        if type(event) is not _EMPTY or event.parent_listeners:
            event(session, trans)
    finally:
        trans._next_state = _ANY
        trans._current_fn = None


def connection_for_bind(session, bind, execution_options):
    """``Session._connection_for_bind(bind, execution_options)`` without
    stock's state-machine wrappers, or None (stock's call then runs).

    The connection the session's transaction already holds for ``bind``
    is returned as is; the root transaction's first connection to an
    engine (autobegun first if the session has no transaction) is
    acquired by ``persist.provision``.  Stock's call runs in any other case:
    a connection given as the bind, a two-phase session, a
    subtransaction or savepoint asked for a connection it does not hold,
    execution options given for a connection already there (stock
    warns), a transaction in another state (stock raises)."""
    if not _stock_methods():
        return None
    trans = session._transaction
    if trans is None:
        if session.twophase or isinstance(bind, Connection):
            return None
        if session._trans_context_manager:
            _trans_ctx_check(session)
        trans = session._autobegin_t()
    elif trans._state is not _ACTIVE or type(trans) is not SessionTransaction:
        return None
    else:
        entry = trans._connections.get(bind)
        if entry is not None:
            if execution_options:
                return None
            if session._trans_context_manager:
                _trans_ctx_check(session)
            return entry[0]
        if trans._parent is not None or not session._turbo.persist.provisions_directly(
            session, bind
        ):
            return None
        if session._trans_context_manager:
            _trans_ctx_check(session)
    if (
        type(trans) is not SessionTransaction
        or trans._parent is not None
        or trans._state is not _ACTIVE
        or bind in trans._connections
    ):
        # stock's call finds the transaction the autobegin made (or a
        # subclass's _autobegin_t returned) as it is
        return trans._connection_for_bind(bind, execution_options)
    return session._turbo.persist.provision(session, trans, bind, execution_options)


_PROVISIONING = SessionTransactionState.PROVISIONING_CONNECTION
_CONNECTION_FOR_BIND_FN = orm.SessionTransaction._connection_for_bind.__wrapped__
