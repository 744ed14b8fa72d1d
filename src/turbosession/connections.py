"""Core's steps on the connection of a session transaction: BEGIN, COMMIT
and the return to the pool.

The root transaction begins a ``RootTransaction`` on the connection it
acquires, commits it in ``Session.commit()`` and then closes the
connection, which returns the DBAPI connection to its pool (the pool's
reset on return, the record checked in).  Core runs each of these through
five to fifteen Python calls (the transaction's and connection's
``_do_commit`` / ``_commit_impl`` layers, the ``connection`` property, the
dialect's ``do_*``, the pool proxy's ``__getattr__``, ``_finalize_fairy``
and the record's ``checkin``), asking at each step questions whose answers
do not change between two connections of the same engine: whether the
connection, engine or pool has listeners, whether they log, whether the
dialect's ``do_begin`` / ``do_commit`` / ``do_rollback`` are the default
ones.

``begin``, ``commit`` and ``close`` make the same DBAPI calls
(``commit()``, the pool's ``rollback()`` or ``commit()`` on return) and
leave the connection, its transaction, the pool proxy, the connection
record and the pool exactly as Core's calls would, when nothing could see
the steps in between: no engine, connection or pool (``reset``,
``checkin``) listener, no logging, the Core classes and methods stock's
(checked per class, not per object), the objects in the state the step
expects.  Otherwise each is Core's call, counted by reason (``stats()``,
``FALLBACK_REASONS``).
"""

import logging
from collections import Counter

from sqlalchemy.engine import base as _engine_base
from sqlalchemy.engine.default import DefaultDialect
from sqlalchemy.event.attr import _EmptyListener
from sqlalchemy.pool import base as _pool_base

__all__ = ["FALLBACK_REASONS", "begin", "close", "commit", "reset_stats", "stats"]

log = logging.getLogger("turbosession")

FALLBACK_REASONS = {
    "classes": "the connection, its transaction, pool proxy or record is of another "
    "class than Core's, or a method of theirs or the dialect's that the step "
    "replaces is not stock's",
    "events": "the connection or its engine has event listeners, or the pool has "
    "reset or checkin listeners",
    "echo": "the connection or the pool logs (echo)",
    "state": "the connection, its transaction or pool proxy is not in the state the "
    "direct step expects (Core's call then does what that state asks)",
    "reset": "the pool's reset on return is not a plain rollback, commit or nothing "
    "(skip_autocommit_rollback, an asyncio dialect)",
}

_Connection = _engine_base.Connection
_RootTransaction = _engine_base.RootTransaction
_Fairy = _pool_base._ConnectionFairy
_Record = _pool_base._ConnectionRecord
_RESET_ROLLBACK = _pool_base.reset_rollback
_RESET_COMMIT = _pool_base.reset_commit
_RESET_NONE = _pool_base.reset_none
_STOCK_FINALIZE_FAIRY = _pool_base._finalize_fairy
_EMPTY = _EmptyListener

_counts = {"begin": Counter(), "commit": Counter(), "close": Counter()}


def stats():
    """Per step (``begin``, ``commit``, ``close``): ``fast`` (the direct
    steps) and ``fallback`` (Core's call) by reason."""
    return {
        step: {
            "fast": counts["fast"],
            "fallback": {k: v for k, v in counts.items() if k != "fast"},
        }
        for step, counts in _counts.items()
    }


def reset_stats():
    for counts in _counts.values():
        counts.clear()


def _fall_back(step, reason):
    _counts[step][reason] += 1
    if log.isEnabledFor(logging.DEBUG):
        log.debug("%s of a connection runs as Core's: %s (%s)",
                  step, reason, FALLBACK_REASONS[reason])


def _methods(cls, names):
    return tuple((name, False, getattr(cls, name)) for name in names)


# what each step replaces, as Core's classes have it at import: a class
# resolving one of these names to something else takes Core's call
_CONNECTION_METHODS = _methods(_Connection, (
    "begin", "_begin_impl", "_commit_impl", "close", "connection",
))
_TRANSACTION_METHODS = _methods(_RootTransaction, (
    "__init__", "_connection_begin_impl", "commit", "_do_commit",
    "_connection_commit_impl", "_deactivate_from_connection",
))
_FAIRY_METHODS = _methods(_Fairy, ("close", "_checkin", "_reset", "__getattr__"))
_RECORD_METHODS = _methods(_Record, ("checkin", "in_use"))
_DIALECT_METHODS = {
    name: _methods(DefaultDialect, (name,)) for name in ("do_begin", "do_commit", "do_rollback")
}

# Core's classes the steps replace methods of, with those methods, and the
# default dialect's method each step skips or calls directly
_CORE_CLASSES = (
    (_Connection, _CONNECTION_METHODS),
    (_RootTransaction, _TRANSACTION_METHODS),
    (_Fairy, _FAIRY_METHODS),
    (_Record, _RECORD_METHODS),
)

# the compiled attach module's classes_like when compiled is active
# (turbosession.session sets it with transaction's class check); None:
# getattr checks
_classes_like = None


def set_classes_check(classes_like):
    """``classes_like(pairs)``, answered per class by its version tag while
    it has not changed (see ``transaction.set_class_check``)."""
    global _classes_like
    _classes_like = classes_like


def _core_like(dialect, dialect_method):
    """Whether Core's classes, and the dialect's class for
    ``dialect_method`` (None: no method of the dialect), resolve every
    method a step replaces to stock's."""
    pairs = _CORE_CLASSES
    if dialect_method is not None:
        pairs += ((type(dialect), _DIALECT_METHODS[dialect_method]),)
    if _classes_like is not None:
        return _classes_like(pairs)
    for cls, expected in pairs:
        for name, _after_mixin, method in expected:
            if getattr(cls, name) is not method:
                return False
    return True


def _has_events(conn):
    return conn._has_events or conn.engine._has_events


def _listened(event):
    return event.parent_listeners if type(event) is _EMPTY else event


def begin(conn):
    """``conn.begin()`` of a connection just acquired by the session.

    Core's begin makes a ``RootTransaction`` whose ``__init__`` runs the
    connection's ``_begin_impl``: the ``begin`` event, the dialect's
    ``do_begin`` (the default one does nothing: the DBAPI begins
    implicitly) inside the connection's ``in begin`` mark.  Without a
    listener, logging or another ``do_begin``, nothing of that can be
    seen: this makes the same transaction object with the same
    attributes."""
    reason = None
    if type(conn) is not _Connection or not _core_like(conn.engine.dialect, "do_begin"):
        reason = "classes"
    elif _has_events(conn):
        reason = "events"
    elif conn._echo:
        reason = "echo"
    elif (
        conn._transaction is not None
        or conn._dbapi_connection is None
        or conn._trans_context_manager is not None
    ):
        reason = "state"
    if reason is not None:
        _fall_back("begin", reason)
        return conn.begin()
    _counts["begin"]["fast"] += 1
    trans = _RootTransaction.__new__(_RootTransaction)
    trans.connection = conn
    conn._transaction = trans
    trans.is_active = True
    return trans


def commit(db_trans):
    """``db_trans.commit()`` of the root transaction a session holds on a
    connection (``should_commit``).

    Core's commit of an active ``RootTransaction`` runs the connection's
    ``_commit_impl`` (the ``commit`` event, the log, the dialect's
    ``do_commit``: the DBAPI connection's ``commit()``, a DBAPI error
    handled by the connection's ``_handle_dbapi_exception``), then makes
    the transaction inactive and, if the commit succeeded, no longer the
    connection's.  Without a listener or logging, with the default
    ``do_commit`` and no savepoint open, this does the same."""
    conn = db_trans.connection
    reason = None
    if (
        type(db_trans) is not _RootTransaction
        or type(conn) is not _Connection
        or not _core_like(conn.engine.dialect, "do_commit")
    ):
        reason = "classes"
    elif _has_events(conn):
        reason = "events"
    elif conn._echo:
        reason = "echo"
    else:
        fairy = conn._dbapi_connection
        if (
            not db_trans.is_active
            or conn._transaction is not db_trans
            or conn._nested_transaction is not None
            or fairy is None
            or type(fairy) is not _Fairy
            or fairy.dbapi_connection is None
        ):
            reason = "state"
    if reason is not None:
        _fall_back("commit", reason)
        db_trans.commit()
        return
    _counts["commit"]["fast"] += 1
    try:
        try:
            fairy.dbapi_connection.commit()
        except BaseException as err:
            conn._handle_dbapi_exception(err, None, None, None, None)
    finally:
        db_trans.is_active = False
    conn._transaction = None


def _reset_reason(pool):
    """Why the pool's reset on return has to be Core's, or None: it is the
    DBAPI connection's ``rollback()`` (the default dialect's
    ``do_rollback`` without ``skip_autocommit_rollback``), its ``commit()``
    (the default ``do_commit``) or nothing; Core's classes are checked
    with the dialect's method."""
    dialect = pool._dialect
    if dialect.is_async:
        return "reset"
    reset = pool._reset_on_return
    if reset is _RESET_ROLLBACK:
        if dialect.skip_autocommit_rollback:
            return "reset"
        method = "do_rollback"
    elif reset is _RESET_COMMIT:
        method = "do_commit"
    elif reset is _RESET_NONE:
        method = None
    else:
        return "reset"
    return None if _core_like(dialect, method) else "classes"


def close(conn):
    """``conn.close()`` of a session's connection after its transaction
    ended (``autoclose``).

    Core's close, with no transaction left on the connection, closes the
    pool proxy; the proxy's last close (its counter at 0) checks it in:
    ``_finalize_fairy`` resets the DBAPI connection as the pool says
    (``reset`` event, then ``rollback()``, ``commit()`` or nothing), checks
    the record in (its finalize callbacks, the ``checkin`` event, the
    pool's ``_return_conn``) and detaches the proxy from the record and its
    garbage-collection finalizer; the connection then holds no DBAPI
    connection and cannot reconnect.  Without pool or connection
    listeners and logging, the same steps in the same order; a failed
    reset is handled as ``_finalize_fairy`` handles it (logged, the record
    invalidated, or checked in as failed before the error propagates)."""
    reason = None
    if type(conn) is not _Connection or _pool_base._finalize_fairy is not _STOCK_FINALIZE_FAIRY:
        reason = "classes"
    elif conn._transaction is not None:
        reason = "state"
    else:
        fairy = conn._dbapi_connection
        if fairy is None or type(fairy) is not _Fairy or fairy._counter != 1:
            reason = "state"
        else:
            record = fairy._connection_record
            pool = fairy._pool
            if (
                record is None
                or type(record) is not _Record
                or record.fairy_ref is None
                or fairy.dbapi_connection is None
            ):
                reason = "state"
            elif fairy._echo:
                reason = "echo"
            else:
                dispatch = pool.dispatch
                if _listened(dispatch.reset) or _listened(dispatch.checkin):
                    reason = "events"
                else:
                    reason = _reset_reason(pool)
    if reason is not None:
        _fall_back("close", reason)
        conn.close()
        return
    _counts["close"]["fast"] += 1
    try:
        fairy._counter = 0
        dbapi_connection = fairy.dbapi_connection
        try:
            reset = pool._reset_on_return
            if reset is _RESET_ROLLBACK:
                dbapi_connection.rollback()
            elif reset is _RESET_COMMIT:
                dbapi_connection.commit()
        except BaseException as err:
            pool.logger.error("Exception during reset or similar", exc_info=True)
            if not isinstance(err, Exception):
                fairy._finalizer.detach()
                fairy.dbapi_connection = None
                fairy._connection_record = None
                record._checkin_failed(err)
                raise
            record.invalidate(e=err)
        if record.fairy_ref is not None:
            _check_in(record)
        fairy._finalizer.detach()
        fairy.dbapi_connection = None
        fairy._connection_record = None
    finally:
        conn._dbapi_connection = None
        conn._Connection__can_reconnect = False


def _check_in(record):
    """The record's ``checkin()`` of a record in use."""
    record.fairy_ref = None
    connection = record.dbapi_connection
    pool = record._ConnectionRecord__pool
    callbacks = record.finalize_callback
    while callbacks:
        finalizer = callbacks.pop()
        if connection is not None:
            finalizer(connection)
    event = pool.dispatch.checkin
    if _listened(event):
        event(connection, record)
    pool._return_conn(record)
