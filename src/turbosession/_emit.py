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
"""

from __future__ import annotations

try:
    import cython
except ModuleNotFoundError:
    from turbosession import _cython_shim as cython

if cython.compiled:
    from cython.cimports.cpython.ref import Py_INCREF
    from cython.cimports.cpython.tuple import PyTuple_New, PyTuple_SET_ITEM

__all__ = ["dbapi_parameters", "send"]


def _is_compiled():
    return cython.compiled


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
