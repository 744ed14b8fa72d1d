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
wraps them exactly as for Core's own execution, and so are errors of the bind
processors, which Core meets while making the execution context.

``insert_autoincrement`` does the same for a batch of INSERTs whose single
primary key column the database generates, or whose server defaults come
back (eager defaults, the key given or generated), where Core runs a
statement per row: the ORM's ``INSERT .. RETURNING`` of the key (and of the
mapper's server defaults) for several rows on a backend whose
"insertmanyvalues" goes a row at a time when the rows' order matters
(SQLite: "ordered; batch not supported"), or one INSERT per row read back by
``cursor.lastrowid``.  The returned values are set on the objects as stock's
``_postfetch`` sets them (the server defaults the statement does not return
are expired, as stock expires them).  Python-side defaults Core would
prefetch must be plain scalars, which go into every row as Core puts them
(with RETURNING only); and Core's own insertmanyvalues, ``lastrowid`` and
RETURNING machinery must be in use (dialect, execution context and compiler
as SQLAlchemy ships them, no result processor on a returned column).  A
batch that sends its rows in one statement (PostgreSQL's insertmanyvalues),
and a single row returning its server defaults, go through Core.
"""

import inspect
import logging
import weakref
from collections import defaultdict

from sqlalchemy.engine import Connection
from sqlalchemy.engine.default import DefaultDialect, DefaultExecutionContext
from sqlalchemy.engine.interfaces import BindTyping
from sqlalchemy.orm import exc as orm_exc
from sqlalchemy.sql import compiler
from sqlalchemy.sql.util import _long_statement

__all__ = [
    "FALLBACK_REASONS", "INSERT_ONE_CONTEXT", "execute", "insert_autoincrement", "reset_stats",
    "stats",
]

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
    "eager_defaults": "a single INSERT, or one on a backend without an ordered "
    "executemany RETURNING, returns server defaults",
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

# what Core's single-row INSERTs and row-at-a-time insertmanyvalues
# call besides the above to send them and to find the new key
_INSERT_DIALECT_METHODS = ("_deliver_insertmanyvalues_batches",)
_INSERT_CONTEXT_METHODS = (
    "get_lastrowid",
    "fetchall_for_returning",
    "_setup_ins_pk_from_lastrowid",
    "_setup_ins_pk_from_implicit_returning",
)
_INSERT_COMPILER_METHODS = (
    "_deliver_insertmanyvalues_batches",
    "_inserted_primary_key_from_lastrowid_getter",
    "_inserted_primary_key_from_returning_getter",
)

# (a defaultdict: see transaction's counts)
_counts = defaultdict(int)


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


# id(dialect) -> (weak reference to the dialect, whether its class and fixed
# settings allow direct execution); the reference tells a dialect from a
# later one given a dead one's id.  A dict keyed by id, asked three times
# per short transaction, rather than a WeakKeyDictionary, whose get() makes
# a weak reference in Python on every call
_dialect_ok = {}


def _dialect_settings_ok(dialect):
    return bool(
        _stock(type(dialect), DefaultDialect, _DIALECT_METHODS)
        and _stock(dialect.execution_ctx_cls, DefaultExecutionContext, _CONTEXT_METHODS)
        and dialect.bind_typing is not BindTyping.SETINPUTSIZES
        and not dialect.server_side_cursors
        and dialect._supports_statement_cache
    )


def _forget_dialect(ref, key=None):
    entry = _dialect_ok.get(key)
    if entry is not None and entry[0] is ref:
        del _dialect_ok[key]


def _dialect_entry(dialect):
    """Make and keep ``_dialect_ok``'s entry for the dialect."""
    key = id(dialect)
    ref = weakref.ref(dialect, lambda ref: _forget_dialect(ref, key))
    entry = _dialect_ok[key] = (ref, _dialect_settings_ok(dialect))
    return entry


# connection_reason's arguments besides the connection
_CHECKS = (Connection, _HARMLESS_OPTIONS, _dialect_ok, _dialect_entry)


def _connection_reason(connection, emit):
    """Why Core's execution on this connection could be told apart now
    (``emit.connection_reason``: the connection's class, engine and
    dialect events, echo, execution options, its transaction, then the
    dialect's class and settings, kept per dialect, and execution methods
    set on the dialect instance, asked each time)."""
    return emit.connection_reason(
        connection, Connection, _HARMLESS_OPTIONS, _dialect_ok, _dialect_entry
    )


def _plan(compiled, param_dict, keys, dialect, many):
    """(statement, keys, processors, names or None, lastrowid) for the rows
    of a compiled plain statement, or the reason it is not plain.
    ``lastrowid``: a single-row INSERT after which Core reads the cursor's
    ``lastrowid`` (the table has an autoincrement column), which the row
    gives, so that Core's primary key getter returns the row's value."""
    if (
        _binds_reason(compiled, param_dict)
        or compiled.effective_returning
        or compiled.implicit_returning
        or compiled.returning
        or compiled.postfetch
        or compiled._insertmanyvalues
        or (
            compiled.postfetch_lastrowid
            and (many or not _lastrowid_unused(compiled, dialect, keys))
        )
    ):
        return "statement"
    plan = _parameters_plan(compiled, keys)
    if type(plan) is str:
        return plan
    return plan + (bool(compiled.postfetch_lastrowid),)


def _lastrowid_unused(compiled, dialect, keys):
    """Whether all Core does with the ``lastrowid`` of a single-row INSERT
    whose row gives its autoincrement column a value (the ORM takes no key
    from Core's result) is to read the cursor's attribute and put it
    through the compiler's getter, which returns the row's value: the
    execution context, compiler and the key's result processor (none) as
    SQLAlchemy ships them."""
    key = compiled.statement.table._autoincrement_column
    return bool(
        key is not None
        and key.key in keys
        and _insert_machinery_ok(dialect)
        and _stock(type(compiled), compiler.SQLCompiler, _INSERT_COMPILER_METHODS)
        and key.type._cached_result_processor(dialect, None) is None
    )


def _binds_reason(compiled, param_dict, scalar_prefetch=False):
    """Whether the statement's parameters are other than each row's values
    through the bind processors: values of its own, prefetched defaults
    (with ``scalar_prefetch``, other than ``_scalar_prefetch``'s),
    expanding, post-compile, escaped or OUT parameters."""
    return bool(
        param_dict
        or compiled._collect_params
        or (compiled.insert_prefetch and not (
            scalar_prefetch and _scalar_prefetch(compiled) is not None
        ))
        or compiled.update_prefetch
        or compiled.literal_execute_params
        or compiled.post_compile_params
        or compiled._render_postcompile
        or compiled.schema_translate_map
        or compiled.escaped_bind_names
        or compiled.has_out_parameters
    )


def _scalar_prefetch(compiled):
    """(column, parameter key, value) of each Python-side default Core puts
    into every row of an INSERT (``insert_prefetch``), when each is a plain
    scalar: what ``_process_execute_defaults`` sets, the same value for
    every row; else None."""
    key_getter = compiled._within_exec_param_key_getter
    found = []
    for column in compiled.insert_prefetch:
        arg, is_scalar, _, is_sentinel = column._default_description_tuple
        if is_sentinel or not is_scalar:
            return None
        found.append((column, key_getter(column), arg))
    return tuple(found)


def _parameters_plan(compiled, keys):
    """(statement, keys, processors, names or None): how each row's values
    become the DBAPI parameters (``_emit.dbapi_parameters``)."""
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
    )


_PLANS_LIMIT = 256


def _cached(base_mapper, key, make):
    """The plan under ``key`` kept with the mapper's memoized values (reset
    with them when a mapper is configured), ``make()`` when there is none."""
    memo = base_mapper._memoized_values
    plans = memo.get("turbosession_emission")
    if plans is None or len(plans) > _PLANS_LIMIT:
        plans = memo["turbosession_emission"] = {}
    plan = plans.get(key)
    if plan is None:
        plan = plans[key] = make()
    return plan


# compile with the mapper's compiled cache (the default of the functions below)
MAPPER_CACHE = object()


def _compile(base_mapper, statement, dialect, keys, many, compiled_cache=MAPPER_CACHE):
    """``statement`` compiled as Core compiles it for rows with ``keys``
    (``_compile_w_cache`` with the mapper's compiled cache, or the one
    given: the Connection's for a statement stock executes without the
    mapper's): the compiled form and its extracted parameters."""
    compiled, _, param_dict, _ = statement._compile_w_cache(
        dialect=dialect,
        compiled_cache=(
            base_mapper._compiled_cache if compiled_cache is MAPPER_CACHE else compiled_cache
        ),
        column_keys=list(keys),
        for_executemany=many,
        schema_translate_map=None,
        linting=dialect.compiler_linting | compiler.WARN_LINTING,
    )
    return compiled, param_dict


def _plan_for(base_mapper, statement, dialect, keys, many, compiled_cache=MAPPER_CACHE):
    """The plan of ``statement`` for rows with ``keys``, per dialect and
    shape, compiled with ``compiled_cache`` (``_compile``)."""
    key = (statement, dialect, keys, many)
    # a plan kept already, found without making the function below
    plans = base_mapper._memoized_values.get("turbosession_emission")
    if plans is not None:
        plan = plans.get(key)
        if plan is not None:
            return plan

    def make():
        if statement._execution_options:
            return "execution_options"
        compiled, param_dict = _compile(
            base_mapper, statement, dialect, keys, many, compiled_cache
        )
        return _plan(compiled, param_dict, frozenset(keys), dialect, many)

    return _cached(base_mapper, key, make)


def _dbapi_parameters(emit, connection, plan, rows, prefetched=None):
    """``emit.dbapi_parameters`` of the rows, each with the ``prefetched``
    defaults Core would add to it; an error of a bind processor is reported
    as Core reports it when making the execution context (with the rows as
    the ORM gave them)."""
    sent = rows if not prefetched else [{**row, **prefetched} for row in rows]
    try:
        return emit.dbapi_parameters(
            sent, plan[1], plan[2], plan[3], connection.dialect.execute_sequence_format
        )
    except BaseException as e:
        connection._handle_dbapi_exception(e, plan[0], rows, None, None)


def execute(
    emit, base_mapper, connection, statement, rows, rowcount, compiled_cache=MAPPER_CACHE
):
    """Send ``statement`` with ``rows`` (dicts of the same keys) directly,
    returning the rowcount (with ``rowcount``, else -1); or None, with
    nothing done, when the batch must go through Core.  ``compiled_cache``
    is the cache Core would compile the statement with, when it is not the
    mapper's."""
    # the checks, the kept plan's lookup and the sending in the hot path
    # (_emit.execute): no interpreted frame of its own for them per
    # statement of a short flush
    result = emit.execute(
        connection, base_mapper, statement, rows, rowcount, compiled_cache,
        _CHECKS, _plan_for, _counts,
    )
    if type(result) is str:
        _fallback(result)
        return None
    return result


class _InsertPlan:
    """How to send a batch of INSERTs whose key the database generates, or
    whose server defaults it returns, and how to finish its records, for
    one table, dialect and batch shape.

    ``parameters`` is the ``_parameters_plan`` of the statement; with
    ``returning`` its rows go as one INSERT .. RETURNING each (``returned``:
    its returned columns, the key at ``key_index``), else as a single-row
    INSERT each, the key read from ``lastrowid``.  ``finishing`` keeps
    ``describe(mapper)`` per mapper of the records."""

    __slots__ = ("parameters", "long_statement", "returning", "table", "key", "postfetch",
                 "returned", "key_index", "prefetch", "prefetched", "finishing")

    def __init__(self, parameters, returning, table, key, postfetch, returned, prefetch):
        self.parameters = parameters
        self.long_statement = _long_statement(parameters[0])
        self.returning = returning
        self.table = table
        self.key = key
        self.postfetch = postfetch
        self.returned = returned
        self.key_index = returned.index(key) if returning else 0
        # (column, parameter key, value) of each scalar default Core would
        # put into every row, and those values by parameter key
        self.prefetch = prefetch
        self.prefetched = {param_key: value for _, param_key, value in prefetch}
        self.finishing = {}

    def describe(self, mapper):
        """What ``persistence._postfetch`` and ``_emit_insert_statements`` do
        for a record of ``mapper``: (attribute of the key, attributes of the
        server-generated columns to expire, equated pairs to synchronise,
        passive_updates, (row index, attribute) of each returned column
        other than the key columns that the mapper maps, in the row's
        order: ``_postfetch`` sets those from the returned row; then
        (attribute, value) of each prefetched default it maps, which
        ``_postfetch`` sets and takes out of the committed state)."""
        columns = mapper._columntoproperty
        return (
            columns[self.key].key,
            [columns[c].key for c in self.postfetch if c in columns],
            mapper._table_to_equated[self.table],
            mapper.passive_updates,
            tuple(
                (index, columns[c].key)
                for index, c in enumerate(self.returned)
                if not c.primary_key and c in columns
            ),
            tuple((columns[c].key, value) for c, _, value in self.prefetch if c in columns),
        )


def _insert_reason(compiled, param_dict, table, dialect, returning, eager):
    """Why Core's execution of this compiled INSERT of a generated key (or,
    ``eager``, of rows returning their server defaults and key) is other
    than ``_emit``'s row at a time, or None."""
    key = table._autoincrement_column
    if (
        _binds_reason(compiled, param_dict, scalar_prefetch=returning)
        or key is None
        or list(table.primary_key) != [key]
        or (key.key in compiled.binds and not eager)
        or not _stock(type(compiled), compiler.SQLCompiler, _INSERT_COMPILER_METHODS)
        or key.type._cached_result_processor(dialect, None) is not None
    ):
        return "statement"
    imv = compiled._insertmanyvalues
    if returning:
        # Core's insertmanyvalues going a row at a time, each row's
        # statement the compiled one, returning the key (eager: and the
        # server defaults), every returned value as the driver gives it
        returned = list(compiled.effective_returning)
        if (
            imv is None
            or (returned != [key] if not eager else key not in returned)
            or any(c.type._cached_result_processor(dialect, None) is not None for c in returned)
            or compiled.postfetch_lastrowid
            or not imv.sort_by_parameter_order
            or imv.is_default_expr
            or imv.includes_upsert_behaviors
            or imv.has_upsert_bound_parameters
            or imv.num_sentinel_columns
            or not compiled._result_columns
            or not (imv.sentinel_columns is None or not dialect.supports_multivalues_insert)
        ):
            return "statement"
    elif (
        imv is not None
        or compiled.effective_returning
        or compiled.implicit_returning
        or compiled.returning
        or not compiled.postfetch_lastrowid
    ):
        return "statement"
    return None


def _returning_key(table):
    """The ORM's statement for several rows of generated keys:
    ``_emit_insert_statements``' ``return_defaults`` of the key."""
    return table.insert().return_defaults(*table.primary_key, sort_by_parameter_order=True)


def _returning_defaults(table, mapper):
    """The ORM's statement for several rows whose server defaults come back
    (eager defaults): ``_emit_insert_statements``' ``return_defaults`` of
    ``mapper``'s server-default columns, then of the key."""
    return (
        table.insert()
        .return_defaults(*mapper._server_default_cols[table], sort_by_parameter_order=True)
        .return_defaults(*table.primary_key, sort_by_parameter_order=True)
    )


def _insert_plan_for(base_mapper, table, dialect, keys, returning, eager_mapper=None):
    """The ``_InsertPlan`` (or the reason there is none) for rows with
    ``keys``, per dialect and shape; ``eager_mapper``: the rows return
    that mapper's server defaults (with ``returning``)."""

    def make():
        if not _insert_machinery_ok(dialect):
            return "dialect"
        if eager_mapper is not None:
            statement = base_mapper._memo(
                ("turbosession returning defaults", table),
                lambda: _returning_defaults(table, eager_mapper),
            )
        elif returning:
            statement = base_mapper._memo(
                ("turbosession returning key", table), lambda: _returning_key(table)
            )
        else:
            statement = base_mapper._memo(("insert", table), table.insert)
        if statement._execution_options:
            return "execution_options"
        compiled, param_dict = _compile(base_mapper, statement, dialect, keys, returning)
        reason = _insert_reason(
            compiled, param_dict, table, dialect, returning, eager_mapper is not None
        )
        if reason is not None:
            return reason
        prefetch = _scalar_prefetch(compiled) if returning else ()
        parameters = _parameters_plan(
            compiled, frozenset(keys).union(param_key for _, param_key, _ in prefetch)
        )
        if type(parameters) is str:
            return parameters
        return _InsertPlan(
            parameters, returning, table, table._autoincrement_column, tuple(compiled.postfetch),
            tuple(compiled.effective_returning or ()), prefetch,
        )

    return _cached(
        base_mapper,
        ("autoincrement", table, dialect, keys, returning, eager_mapper is not None),
        make,
    )


# what _emit.insert_one_lastrowid is given after the record: the
# connection checks, the maker of a missing plan, the counts
INSERT_ONE_CONTEXT = (_CHECKS, _insert_plan_for, _counts)


def _insert_machinery_ok(dialect):
    """Whether the dialect's insertmanyvalues and its execution context's
    ``lastrowid`` and RETURNING handling are SQLAlchemy's own (asked only
    while a plan is built; the plan is what is kept)."""
    return _stock(type(dialect), DefaultDialect, _INSERT_DIALECT_METHODS) and _stock(
        dialect.execution_ctx_cls, DefaultExecutionContext, _INSERT_CONTEXT_METHODS
    )


def _missing_key(mapper):
    return orm_exc.FlushError(
        "Multi-row INSERT statement for %s did not "
        "produce "
        "the correct number of INSERTed rows for "
        "RETURNING.  Ensure there are no triggers or "
        "special driver issues preventing INSERT from "
        "functioning properly." % mapper
    )


def insert_autoincrement(
    emit, base_mapper, mapper, uow, connection, table, batch, has_all_defaults
):
    """Send a batch of INSERT records (``_collect_insert_commands``' tuples,
    no SQL expressions among their values; the key absent, or given with
    server defaults to return) directly, with the
    bookkeeping of stock's ``_emit_insert_statements`` and ``_postfetch``
    (``mapper``: the table's mapper, whose server defaults stock returns);
    returns False, with nothing done, when the batch must go through Core."""
    if len(batch) == 1:
        # one record (never an executemany RETURNING): the same steps in
        # one compiled call (a record with its key has defaults to return:
        # insert_one_lastrowid answers "eager_defaults" for it)
        reason = emit.insert_one_lastrowid(
            connection, base_mapper, table, batch[0], uow, INSERT_ONE_CONTEXT
        )
        if reason is None:
            return True
        _fallback(reason)
        return False
    reason = _connection_reason(connection, emit)
    if reason is None:
        dialect = connection.dialect
        # _emit_insert_statements' choice of an executemany RETURNING, and
        # whether its statement returns the mapper's server defaults
        returning = bool(
            table.implicit_returning
            and dialect.insert_executemany_returning_sort_by_parameter_order
        )
        eager = not has_all_defaults and base_mapper._prefer_eager_defaults(dialect, table)
        if eager and not returning:
            reason = "eager_defaults"
        else:
            rows = [record[2] for record in batch]
            plan = _insert_plan_for(
                base_mapper, table, dialect, tuple(sorted(rows[0])), returning,
                mapper if eager else None,
            )
            if type(plan) is str:
                reason = plan
            elif returning:
                _counts["direct"] += 1
                parameters = _dbapi_parameters(
                    emit, connection, plan.parameters, rows, plan.prefetched
                )
                returned = emit.insert_returning(
                    connection, plan.parameters[0], plan.long_statement, parameters, rows
                )
                emit.finish_returning(
                    uow, batch, returned, plan.key_index, plan.finishing, plan.describe,
                    _missing_key,
                )
                return True
            else:
                _counts["direct"] += 1
                emit.insert_each_lastrowid(
                    connection, plan.parameters, dialect.execute_sequence_format,
                    batch, uow, plan.finishing, plan.describe,
                )
                return True
    _fallback(reason)
    return False
