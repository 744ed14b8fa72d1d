"""Per-row work of a plain batch sent straight to the DBAPI cursor.

``turbosession.emission`` decides, per statement shape and connection,
whether a batch can skip Core's execution context; when it can, this module
turns each row's ORM parameters into the DBAPI parameters Core's
``DefaultExecutionContext._init_compiled`` would build (``construct_params``
by bind key, the compiled statement's bind processors, positional order and
the dialect's sequence type, or a dict by bind name) and hands them to the
cursor as Core's ``_exec_single_context`` does: ``executemany`` for more
than one row, else ``execute``, DBAPI errors through the Connection's own
``_handle_dbapi_exception``.

INSERTs whose primary key the database generates are sent as Core sends
them on a backend that inserts them a row at a time (SQLite): one
``INSERT .. RETURNING`` per row on one cursor (``insert_returning``, Core's
"insertmanyvalues" downgraded to a row at a time) or a statement per row
whose key is the cursor's ``lastrowid`` (``send``); each new key
goes into its object's dictionary as the ORM's ``_emit_insert_statements``
puts it there, with the expiry of server-generated columns and the key
synchronisation of ``persistence._postfetch`` (``finish_returning``,
``insert_each_lastrowid``).
"""

from __future__ import annotations

try:
    import cython
except ModuleNotFoundError:
    from turbosession import _cython_shim as cython

if cython.compiled:
    from cython.cimports.cpython.ref import Py_INCREF
    from cython.cimports.cpython.tuple import PyTuple_New, PyTuple_SET_ITEM

from sqlalchemy.orm.sync import _populate

__all__ = [
    "connection_reason",
    "dbapi_parameters",
    "execute",
    "finish_returning",
    "insert_each_lastrowid",
    "insert_one_lastrowid",
    "insert_returning",
    "send",
]


def _is_compiled():
    return cython.compiled


def connection_reason(
    connection, connection_cls, harmless: frozenset, dialect_ok: dict, dialect_entry
):
    """``emission._connection_reason``: why Core's execution on this
    connection could be told apart now (its class, engine or dialect
    events, echo, execution options other than ``harmless``, no active
    transaction, the dialect's), or None.  ``dialect_ok`` maps
    ``id(dialect)`` to ``(weak reference to the dialect, whether its class
    and fixed settings allow it)``; ``dialect_entry(dialect)`` makes and
    stores the entry when there is none for this dialect.  Asked for every
    statement sent directly: the same checks as emission's, without the
    interpreter's per-bytecode cost."""
    if type(connection) is not connection_cls:
        return "connection_class"
    if connection._has_events or connection.engine._has_events:
        return "engine_events"
    dialect = connection.dialect
    if dialect._has_events:
        return "dialect_events"
    if connection._echo:
        return "echo"
    options = connection._execution_options
    if options and not harmless.issuperset(options):
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
    entry = dialect_ok.get(id(dialect))
    if entry is None or entry[0]() is not dialect:
        entry = dialect_entry(dialect)
    if not entry[1]:
        return "dialect"
    attributes: dict = vars(dialect)
    if "do_executemany" in attributes or "do_execute" in attributes or (
        "execution_ctx_cls" in attributes
    ):
        return "dialect"
    return None


def execute(
    connection,
    base_mapper,
    statement,
    rows: list,
    rowcount: cython.bint,
    compiled_cache,
    checks: tuple,
    plan_for,
    counts,
):
    """``emission.execute``'s work for one batch: the connection checked
    (``connection_reason`` given ``checks``, its last four arguments), the
    plan kept for the statement and the rows' keys found (``plan_for``
    makes a missing one), the DBAPI parameters built and sent
    (``dbapi_parameters``, ``send``), the batch counted ``direct`` in
    ``counts``.  Returns what ``send`` returns, or the reason (a str) the
    batch must go through Core, with nothing done."""
    reason = connection_reason(connection, checks[0], checks[1], checks[2], checks[3])
    if reason is not None:
        return reason
    dialect = connection.dialect
    keys: tuple = tuple(sorted(rows[0]))
    many = len(rows) > 1
    plans = base_mapper._memoized_values.get("turbosession_emission")
    plan = None if plans is None else plans.get((statement, dialect, keys, many))
    if plan is None:
        plan = plan_for(base_mapper, statement, dialect, keys, many, compiled_cache)
    if type(plan) is str:
        return plan
    counts["direct"] += 1
    try:
        parameters = dbapi_parameters(
            rows, plan[1], plan[2], plan[3], dialect.execute_sequence_format
        )
    except BaseException as e:
        # as Core reports it when making the execution context
        connection._handle_dbapi_exception(e, plan[0], rows, None, None)
    return send(connection, plan[0], parameters, rows, rowcount, plan[4])


def dbapi_parameters(rows: list, keys: tuple, processors: tuple, names, sequence):
    """The DBAPI parameters of each row (a dict of the batch's keys).

    Position ``i`` takes ``row[keys[i]]`` through ``processors[i]`` (None:
    as it is); with ``names`` each row is a dict of ``names[i]``, else a
    ``sequence`` (the dialect's ``execute_sequence_format``) in order.
    """
    out: list = []
    n: cython.Py_ssize_t = len(keys)
    i: cython.Py_ssize_t
    row: dict
    named: dict
    as_tuple: cython.bint = sequence is tuple
    for row in rows:
        if names is not None:
            named = {}
            for i in range(n):
                processor = processors[i]
                value = row[keys[i]]
                named[names[i]] = value if processor is None else processor(value)
            out.append(named)
        elif as_tuple and cython.compiled:
            values = PyTuple_New(n)
            for i in range(n):
                processor = processors[i]
                value = row[keys[i]]
                if processor is not None:
                    value = processor(value)
                Py_INCREF(value)
                PyTuple_SET_ITEM(values, i, value)
            out.append(values)
        else:
            listed: list = []
            for i in range(n):
                processor = processors[i]
                value = row[keys[i]]
                listed.append(value if processor is None else processor(value))
            out.append(sequence(listed))
    return out


class _Execution:
    """What ``Connection._handle_dbapi_exception`` reads of an execution
    context when the dialect has no events (the only case sent here):
    whether it was an executemany, and its ``handle_dbapi_exception``
    (``DefaultExecutionContext``'s, which does nothing)."""

    __slots__ = ("executemany",)

    def __init__(self, executemany):
        self.executemany = executemany

    def handle_dbapi_exception(self, e):
        pass


def send(
    connection,
    statement: str,
    parameters: list,
    rows: list,
    isdml_rowcount: cython.bint,
    lastrowid: cython.bint,
):
    """One ``cursor.executemany`` (or ``execute`` for one row) as Core's
    ``_execute_context`` and ``_exec_single_context`` run it for a statement
    that returns nothing: a new cursor from the pool's connection, the
    description read and the cursor closed as ``CursorResult`` closes it.
    Returns the cursor's rowcount for an UPDATE or DELETE
    (``isdml_rowcount``); with ``lastrowid`` (a single-row INSERT after
    which Core reads the cursor's lastrowid) the cursor's ``lastrowid``,
    read before its description as Core's ``_setup_dml_or_text_result``
    reads them; else -1.  ``rows`` are the ORM parameters Core
    would report if making the cursor fails.
    """
    try:
        cursor = connection._dbapi_connection.cursor()
    except BaseException as e:
        connection._handle_dbapi_exception(e, statement, rows, None, None)
    many: cython.bint = len(parameters) > 1
    effective = parameters if many else parameters[0]
    returned: object = -1
    try:
        if many:
            cursor.executemany(statement, effective)
        else:
            cursor.execute(statement, effective)
            if lastrowid:
                returned = cursor.lastrowid
        cursor.description
        if isdml_rowcount:
            returned = cursor.rowcount
    except BaseException as e:
        connection._handle_dbapi_exception(e, statement, effective, cursor, _Execution(many))
    connection._safe_close_cursor(cursor)
    return returned


def insert_returning(connection, statement, long_statement, parameters: list, rows: list) -> list:
    """Core's insertmanyvalues a row at a time ("ordered; batch not
    supported"): on one cursor, ``execute`` and ``fetchall`` for each row's
    parameters, errors reported as Core reports a sub-execution's (the
    statement as ``long_statement``, SQLAlchemy's ``_long_statement`` of it,
    and that row's parameters); then the cursor's description read and the
    cursor closed.  Returns the rows the statements returned, in order.
    ``rows`` are the ORM parameters Core would report if making the cursor
    fails."""
    try:
        cursor = connection._dbapi_connection.cursor()
    except BaseException as e:
        connection._handle_dbapi_exception(e, statement, rows, None, None)
    returned: list = []
    row_at_a_time = _Execution(False)
    for params in parameters:
        try:
            cursor.execute(statement, params)
        except BaseException as e:
            connection._handle_dbapi_exception(e, long_statement, params, cursor, row_at_a_time)
        try:
            returned.extend(cursor.fetchall())
        except BaseException as e:
            connection._handle_dbapi_exception(e, long_statement, params, None, row_at_a_time)
    try:
        cursor.description
    except BaseException as e:
        connection._handle_dbapi_exception(e, statement, parameters, cursor, _Execution(True))
    connection._safe_close_cursor(cursor)
    return returned


def finish_returning(
    uow, batch: list, returned: list, key_index: cython.Py_ssize_t, finishing: dict, describe,
    missing,
):
    """The bookkeeping of ``_emit_insert_statements`` after a batch's
    INSERT .. RETURNING: each record's key from its returned row (at
    ``key_index``) and the other returned values (``finish_insert``), in
    order; a record without a row raises ``missing(mapper)`` (stock's
    FlushError) once the records before it have theirs."""
    n: cython.Py_ssize_t = len(returned)
    i: cython.Py_ssize_t
    record: tuple
    for i in range(len(batch)):
        record = batch[i]
        if i >= n:
            raise missing(record[3])
        row = returned[i]
        _finish_insert(uow, record, row[key_index], finishing, describe, row)


def insert_each_lastrowid(
    connection, plan: tuple, sequence, batch: list, uow, finishing: dict, describe
):
    """Stock's single-row INSERTs for a batch: for each record in turn, its
    DBAPI parameters (``plan``: statement, keys, processors, names, as for
    ``dbapi_parameters``; an error of a bind processor reported as Core
    reports it when making the execution context), its statement
    (``send``, reading ``lastrowid``), then its key from it
    and its bookkeeping, so that a failure leaves the records before it as
    stock leaves them."""
    statement: str = plan[0]
    i: cython.Py_ssize_t
    record: tuple
    for i in range(len(batch)):
        record = batch[i]
        rows = [record[2]]
        try:
            parameters = dbapi_parameters(rows, plan[1], plan[2], plan[3], sequence)
        except BaseException as e:
            connection._handle_dbapi_exception(e, statement, rows, None, None)
        new_key = send(connection, statement, parameters, rows, False, True)
        _finish_insert(uow, record, new_key, finishing, describe)


def insert_one_lastrowid(
    connection, base_mapper, table, record: tuple, uow, context: tuple
):
    """``emission.insert_autoincrement``'s work for a batch of one record
    (``_collect_insert_commands``' tuple, its key absent, no SQL
    expression among its values) sent by ``insert_each_lastrowid``: the
    connection checked (``connection_reason``), the mapper's eager
    defaults asked as stock's ``_emit_insert_statements`` asks them, the
    plan kept for the table, dialect and the row's keys found
    (``context``: the connection checks, the maker of a missing plan and
    the counts, ``emission.INSERT_ONE_CONTEXT``), the batch counted
    ``direct``.  Returns None once sent, or the reason (a str) the record
    must take ``insert_autoincrement``'s path, with nothing done."""
    checks: tuple = context[0]
    reason = connection_reason(connection, checks[0], checks[1], checks[2], checks[3])
    if reason is not None:
        return reason
    dialect = connection.dialect
    if not record[7] and base_mapper._prefer_eager_defaults(dialect, table):
        return "eager_defaults"
    keys: tuple = tuple(sorted(record[2]))
    plans = base_mapper._memoized_values.get("turbosession_emission")
    plan = None if plans is None else plans.get(("autoincrement", table, dialect, keys, False, False))
    if plan is None:
        plan = context[1](base_mapper, table, dialect, keys, False)
    if type(plan) is str:
        return plan
    context[2]["direct"] += 1
    insert_each_lastrowid(
        connection, plan.parameters, dialect.execute_sequence_format, [record], uow,
        plan.finishing, plan.describe,
    )
    return None


@cython.cfunc
def _finish_insert(uow, record: tuple, new_key, finishing: dict, describe, row=None):
    """Stock's bookkeeping for one inserted record whose primary key the
    database generated (or gave back): ``new_key`` into the object's
    dictionary unless it has a value there (``_emit_insert_statements``),
    then ``_postfetch``'s values of the other columns the statement
    returned (``row``), its expiry of server-generated columns and the key
    synchronisation between the mapper's tables.  ``finishing`` maps a
    record's mapper to (attribute of the key, attributes to expire,
    equated pairs, passive_updates, (row index, attribute) of the returned
    values, (attribute, value) of the prefetched defaults),
    ``describe(mapper)`` computes a missing entry."""
    mapper = record[3]
    entry: tuple = finishing.get(mapper)
    if entry is None:
        entry = finishing[mapper] = describe(mapper)
    state = record[0]
    state_dict: dict = record[1]
    attribute = entry[0]
    if state_dict.get(attribute) is None:
        state_dict[attribute] = new_key
    if row is not None:
        pair: tuple
        for pair in entry[4]:
            state_dict[pair[1]] = row[pair[0]]
        for pair in entry[5]:
            state_dict[pair[0]] = pair[1]
            state.committed_state.pop(pair[0], None)
    expire = entry[1]
    if expire:
        state._expire_attributes(state.dict, expire)
    for m, equated_pairs in entry[2]:
        _populate(state, m, state, m, equated_pairs, uow, entry[3])
