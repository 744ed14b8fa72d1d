"""Plain flush batches sent straight to the DBAPI cursor, when nothing can tell.

Stock's emitters send every INSERT/UPDATE/DELETE batch through Core's
``Connection.execute``, which builds an execution context and runs
``construct_params`` for every row.  For a plain batch (no RETURNING, no SQL
expressions among the values, nothing prefetched, postfetched or fetched back,
no insertmanyvalues, no expanding or post-compile parameters) the cursor
receives one ``executemany`` (or ``execute`` for one row) whose statement is the
compiled statement's string and whose parameters are each row's values run
through that statement's bind processors.  ``execute`` sends exactly that
itself (``turbosession._emit``), with the statement compiled once per mapper,
dialect and batch shape, whenever nothing could observe the difference:

- the Connection is SQLAlchemy's own class, with an active transaction on a
  valid DBAPI connection (anything else goes to Core, which raises or begins);
- no execution events on the engine or connection, no dialect events
  (``do_execute``/``do_executemany``, ``handle_error``), SQL logging off;
- execution options that do not change execution (``compiled_cache``,
  ``isolation_level``, ``logging_token``) and none on the statement;
- a single-row INSERT whose table has an autoincrement column (SQLite,
  MySQL: Core reads ``cursor.lastrowid``) only when the row gives that
  column its value, which Core then returns as is (``cursor.lastrowid`` is
  read all the same, where Core reads it);
- the dialect's ``do_execute``/``do_executemany`` and the execution
  context's cursor, pre/post-execution, result and error hooks as
  SQLAlchemy ships them, no ``setinputsizes`` binding, statement caching
  supported.

Any other batch goes through Core as before; each batch is counted as
``direct`` or by the reason it was not, in ``turbosession.stats()["emission"]``.
DBAPI errors are handed to the Connection's ``_handle_dbapi_exception``, which
wraps them exactly as for Core's own execution.
"""

import inspect
import logging
import weakref
from collections import Counter

from sqlalchemy.engine import Connection
from sqlalchemy.engine.default import DefaultDialect, DefaultExecutionContext
from sqlalchemy.engine.interfaces import BindTyping
from sqlalchemy.sql import compiler

__all__ = ["FALLBACK_REASONS", "execute", "reset_stats", "stats"]

log = logging.getLogger("turbosession")

FALLBACK_REASONS = {
    "connection_class": "the Connection is a subclass of SQLAlchemy's",
    "connection_state": "no active transaction on a valid connection",
    "engine_events": "the engine or connection has execution events",
    "dialect_events": "the dialect has events (do_execute*, handle_error)",
    "echo": "SQL logging (echo) is on",
    "execution_options": "execution options that may change execution",
    "dialect": "the dialect or its execution context changes Core's execution",
    "statement": "the compiled statement has RETURNING, defaults to fetch, "
    "insertmanyvalues, expanding, escaped or unsupplied parameters",
}

# execution options that change nothing the DBAPI receives or the result
_HARMLESS_OPTIONS = frozenset(["compiled_cache", "isolation_level", "logging_token"])

_DIALECT_METHODS = ("do_execute", "do_executemany")
_CONTEXT_METHODS = (
    "create_cursor",
    "create_default_cursor",
    "pre_exec",
    "post_exec",
    "rowcount",
    "handle_dbapi_exception",
    "_setup_result_proxy",
    "_setup_dml_or_text_result",
    "_init_compiled",
)

_counts = Counter()


def stats():
    """Batches the fast path sent: ``direct`` to the cursor, else by reason."""
    fallback = {k: v for k, v in _counts.items() if k != "direct"}
    return {"direct": _counts["direct"], "fallback": fallback}


def reset_stats():
    _counts.clear()


def _fallback(reason):
    _counts[reason] += 1
    if log.isEnabledFor(logging.DEBUG):
        log.debug("batch goes through Core: %s (%s)", reason, FALLBACK_REASONS[reason])


def _stock(cls, base, names):
    """Whether ``cls`` has ``base``'s own definition of each name."""
    return all(
        inspect.getattr_static(cls, name) is inspect.getattr_static(base, name)
        for name in names
    )


_dialect_ok = weakref.WeakKeyDictionary()


def _dialect_reason(dialect):
    """Why this dialect's executions cannot be sent directly: its class's
    overrides and the settings fixed once the dialect is made (kept per
    dialect), or execution methods set on the instance (asked each time)."""
    ok = _dialect_ok.get(dialect)
    if ok is None:
        ok = _dialect_ok[dialect] = bool(
            _stock(type(dialect), DefaultDialect, _DIALECT_METHODS)
            and _stock(dialect.execution_ctx_cls, DefaultExecutionContext, _CONTEXT_METHODS)
            and dialect.bind_typing is not BindTyping.SETINPUTSIZES
            and not dialect.server_side_cursors
            and dialect._supports_statement_cache
        )
    if not ok:
        return "dialect"
    attributes = vars(dialect)
    if "do_executemany" in attributes or "do_execute" in attributes or (
        "execution_ctx_cls" in attributes
    ):
        return "dialect"
    return None


def _connection_reason(connection):
    """Why Core's execution on this connection could be told apart now."""
    if type(connection) is not Connection:
        return "connection_class"
    if connection._has_events or connection.engine._has_events:
        return "engine_events"
    dialect = connection.dialect
    if dialect._has_events:
        return "dialect_events"
    if connection._echo:
        return "echo"
    options = connection._execution_options
    if options and not _HARMLESS_OPTIONS.issuperset(options):
        return "execution_options"
    transaction = connection._transaction
    nested = connection._nested_transaction
    trans_context = connection._trans_context_manager
    if (
        connection._dbapi_connection is None
        or transaction is None
        or not transaction.is_active
        or (nested is not None and not nested.is_active)
        or (trans_context and not trans_context._transaction_is_active())
    ):
        return "connection_state"
    return _dialect_reason(dialect)


# what Core runs to read cursor.lastrowid after a single-row INSERT
_LASTROWID_METHODS = ("get_lastrowid", "_setup_ins_pk_from_lastrowid")


# what a single-row INSERT does with cursor.lastrowid (the plan's last item)
NO_LASTROWID = 0
LASTROWID_READ = 1  # read and ignored: the row gave the key
LASTROWID_KEY = 2  # read and the row's primary key: the row gave none


def _reads_lastrowid(compiled, dialect, keys, many):
    """What Core, sending one row of this INSERT, does with
    ``cursor.lastrowid`` (``postfetch_lastrowid``: the table has an
    autoincrement column), when it is no more than reading it:

    - ``LASTROWID_READ``: the row gives that column a value (the ORM's
      ``has_all_pks``), which Core's primary key getter returns as is;
    - ``LASTROWID_KEY``: the row gives no value and the column is the
      table's whole primary key, which Core's getter makes of the lastrowid.

    Either way the column's type has no result processor for Core to run
    on the lastrowid, and the execution context reads it as SQLAlchemy
    ships it; otherwise the statement goes through Core.
    """
    if many or not compiled.postfetch_lastrowid:
        return NO_LASTROWID
    table = compiled.statement.table
    column = table._autoincrement_column
    if (
        column is None
        or column.type._cached_result_processor(dialect, None) is not None
        or not _stock(dialect.execution_ctx_cls, DefaultExecutionContext, _LASTROWID_METHODS)
    ):
        return NO_LASTROWID
    if column.key in keys:
        return LASTROWID_READ
    if list(table.primary_key) == [column]:
        return LASTROWID_KEY
    return NO_LASTROWID


def _plan(compiled, param_dict, keys, lastrowid):
    """(statement, keys, processors, names or None, lastrowid) for the rows
    of a compiled plain statement, or the reason it is not plain."""
    if (
        param_dict
        or compiled._collect_params
        or compiled.effective_returning
        or compiled.implicit_returning
        or compiled.returning
        or compiled.insert_prefetch
        or compiled.update_prefetch
        or compiled.postfetch
        or (compiled.postfetch_lastrowid and not lastrowid)
        or compiled._insertmanyvalues
        or compiled.literal_execute_params
        or compiled.post_compile_params
        or compiled._render_postcompile
        or compiled.schema_translate_map
        or compiled.escaped_bind_names
        or compiled.has_out_parameters
    ):
        return "statement"
    key_of = {}
    for bindparam, name in compiled.bind_names.items():
        if bindparam.key not in keys or name in key_of:
            return "statement"
        key_of[name] = bindparam.key
    processors = compiled._bind_processors
    if compiled.positional:
        names = tuple(compiled.positiontup)
        if set(names) != set(key_of) or len(names) != len(key_of):
            return "statement"
    else:
        names = tuple(key_of)
    return (
        compiled.string,
        tuple(key_of[name] for name in names),
        tuple(processors.get(name) for name in names),
        None if compiled.positional else names,
        lastrowid,
    )


_PLANS_LIMIT = 256


# compile with the mapper's compiled cache (the default of the functions below)
MAPPER_CACHE = object()


def _plan_for(base_mapper, statement, dialect, keys, many, compiled_cache=MAPPER_CACHE):
    """The plan of ``statement`` for rows with ``keys``, compiled as Core
    compiles it (``_compile_w_cache`` with the mapper's compiled cache, or
    the one given: the Connection's for a statement stock executes without
    the mapper's), kept with the mapper's memoized values per dialect and
    shape."""
    memo = base_mapper._memoized_values
    plans = memo.get("turbosession_emission")
    if plans is None or len(plans) > _PLANS_LIMIT:
        plans = memo["turbosession_emission"] = {}
    key = (statement, dialect, keys, many)
    plan = plans.get(key)
    if plan is None:
        if statement._execution_options:
            plan = "execution_options"
        else:
            compiled, _, param_dict, _ = statement._compile_w_cache(
                dialect=dialect,
                compiled_cache=(
                    base_mapper._compiled_cache
                    if compiled_cache is MAPPER_CACHE
                    else compiled_cache
                ),
                column_keys=list(keys),
                for_executemany=many,
                schema_translate_map=None,
                linting=dialect.compiler_linting | compiler.WARN_LINTING,
            )
            keys = frozenset(keys)
            plan = _plan(
                compiled, param_dict, keys, _reads_lastrowid(compiled, dialect, keys, many)
            )
        plans[key] = plan
    return plan


def execute(
    emit, base_mapper, connection, statement, rows, rowcount, compiled_cache=MAPPER_CACHE
):
    """Send ``statement`` with ``rows`` (dicts of the same keys) directly,
    returning the rowcount (with ``rowcount``, else -1); or None, with
    nothing done, when the batch must go through Core.  ``compiled_cache``
    is the cache Core would compile the statement with, when it is not the
    mapper's."""
    reason = _connection_reason(connection)
    if reason is None:
        dialect = connection.dialect
        plan = _plan_for(
            base_mapper, statement, dialect, tuple(sorted(rows[0])), len(rows) > 1,
            compiled_cache,
        )
        if type(plan) is str:
            reason = plan
        elif plan[4] == LASTROWID_KEY:
            # the caller has no use for the generated key: Core's
            reason = "statement"
        else:
            parameters = emit.dbapi_parameters(
                rows, plan[1], plan[2], plan[3], dialect.execute_sequence_format
            )
            result = emit.send(connection, plan[0], parameters, rows, rowcount, plan[4])
            _counts["direct"] += 1
            return result
    _fallback(reason)
    return None


def insert_one(emit, base_mapper, connection, statement, row):
    """Send a single-row INSERT whose row gives no value for its table's
    autoincrement primary key directly, returning ``(lastrowid,)``: the
    primary key Core's ``inserted_primary_key`` would give; or None, with
    nothing done, when it must go through Core."""
    reason = _connection_reason(connection)
    if reason is None:
        dialect = connection.dialect
        plan = _plan_for(base_mapper, statement, dialect, tuple(sorted(row)), False)
        if type(plan) is str:
            reason = plan
        elif plan[4] != LASTROWID_KEY:
            reason = "statement"
        else:
            parameters = emit.dbapi_parameters(
                [row], plan[1], plan[2], plan[3], dialect.execute_sequence_format
            )
            lastrowid = emit.send(connection, plan[0], parameters, [row], False, True)
            _counts["direct"] += 1
            return (lastrowid,)
    _fallback(reason)
    return None
