"""What loading took turbosession's path, and what fell back to stock's.

``stats()`` reports, per kind of load, how many took turbosession's path
(``fast``) and how many ran stock's code instead, by reason.  The per-call
counters live in the hot-path modules themselves (a C counter when compiled)
and are added up here over both implementations, since tests run both in one
process; ``get()`` with options is counted here.  Each fallback is logged at
DEBUG on the ``turbosession`` logger, as the flush fallbacks are.
"""

import logging

__all__ = ["FALLBACK_REASONS", "NOT_HANDLED", "reset_stats", "stats"]

log = logging.getLogger("turbosession")


class _NotHandled:
    __slots__ = ()

    def __repr__(self):
        return "NOT_HANDLED"


NOT_HANDLED = _NotHandled()
"""Returned by a hot path that leaves the call to stock's code."""

GET_LOAD_ATTR = "_turbosession_get_load"
"""The memoized attribute of a mapper (SQLAlchemy drops it when it
reconfigures the mapper) that keeps ``get()``'s primary-key load: the tuple
``(statement, bind names, execution options)`` built by ``_loading``."""

FALLBACK_REASONS = {
    "get_overridden": "the session's class or instance overrides _get_impl or "
    "_identity_lookup, or loading.get_from_identity (or, on a miss, "
    "loading._load_on_pk_identity) is patched",
    "get_entity": "the entity is not a plain mapped class (a mapper, an alias, "
    "unmapped, or custom class instrumentation)",
    "get_ident": "the identity is not an int, a str or a tuple (a dict, None, "
    "a composite, another type), or its length is not the primary key's, or "
    "(on a miss) it has a None",
    "get_identity_token": "a miss with an identity_token: stock loads the row",
    "get_session_options": "a miss in a session with execution_options: stock "
    "loads the row",
    "get_orm_execute": "a miss in a session with do_orm_execute listeners: stock "
    "loads the row",
    "get_expired": "the object is expired: stock reloads it",
    "get_class": "always_refresh, or the object found is not of the entity's class",
    "get_options": "get() was given options, populate_existing, with_for_update, "
    "execution_options or bind_arguments",
}

_get_options = 0


def record_get_option():
    global _get_options
    _get_options += 1
    if log.isEnabledFor(logging.DEBUG):
        log.debug("get() runs stock's: get_options (%s)", FALLBACK_REASONS["get_options"])


def _bundles():
    from . import _impl

    return [bundle for bundle in (_impl.compiled, _impl.pure) if bundle is not None]


def stats():
    """``{"get": {"fast": n, "loaded": n, "direct": n, "fallback": {reason: n}},
    "instances": {"fast": n, "fallback": {reason: n}, "rows": n,
    "rows_to_stock": n}}`` over both implementations: ``get`` counts calls
    answered from the identity map (``fast``), misses loaded with
    turbosession's per-mapper statement (``loaded``; ``direct``: of those, the
    ones run without ``Session.execute``'s per-call setup, which was decided
    once per mapper) and calls run by stock's
    ``get`` (by reason); ``instances`` counts query entities whose rows took
    turbosession's loop (``fast``) or stock's closure (by reason), and the rows
    that loop handled or handed to stock's closure."""
    fast = loaded = direct = 0
    fallback = {"get_options": _get_options} if _get_options else {}
    for bundle in _bundles():
        counts = bundle.loading.counts()
        fast += counts["fast"]
        loaded += counts["loaded"]
        direct += counts["direct"]
        for reason, n in counts["fallback"].items():
            fallback[reason] = fallback.get(reason, 0) + n
    from . import instances

    rows = instances.counts()
    rows["rows"] = rows["rows_to_stock"] = 0
    for bundle in _bundles():
        for key, n in bundle.instances.counts().items():
            rows[key] += n
    return {
        "get": {"fast": fast, "loaded": loaded, "direct": direct, "fallback": fallback},
        "instances": rows,
    }


def reset_stats():
    global _get_options
    _get_options = 0
    from . import instances

    instances.reset_counts()
    for bundle in _bundles():
        bundle.loading.reset_counts()
        bundle.instances.reset_counts()
