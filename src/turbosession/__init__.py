"""turbosession: SQLAlchemy's ORM Session with compiled unit-of-work hot paths.

Change one import::

    from turbosession import Session, sessionmaker, scoped_session

``turbosession.compiled`` tells whether the Cython modules are in use.
"""

from . import (
    _impl,
    attaching,
    emission,
    fastpath,
    flush,
    instances,
    loads,
    plans,
    relationships,
    transaction,
)
from .session import Session, TurboSessionMixin, scoped_session, sessionmaker

# the one hook into SQLAlchemy (README, "Seams"): stock's row processor for
# every session that is not turbosession's
instances.install()

__version__ = "0.1.0"

compiled = _impl.active is _impl.compiled
"""True when the compiled (Cython) hot paths are active."""

implementation = _impl.active.name
"""``"compiled"`` or ``"pure"``."""



def stats():
    """Flushes: ``fast`` and ``fallback`` (by reason); loads under ``"loads"``;
    the fast path's statement batches under ``"emission"``; the objects handed
    to add / add_all / delete / delete_all under ``"attach"``.

    ``{"fast": n, "fallback": {reason: n}, "loads": {"get": {"fast": n,
    "loaded": n, "direct": n, "cursor": n, "fallback": {reason: n},
    "cursor_fallback": {reason: n}}, "instances": {"fast": n, "fallback": {reason:
    n}, "rows": n, "rows_to_stock": n, "collections": n, "scalars": n,
    "collections_to_stock": {reason: n}}}, "emission": {"direct": n,
    "fallback": {reason: n}}, "attach": {"fast": n, "fallback": {reason:
    n}}, "transactions": {"subtransactions": {...}, "commits": {...}, "roots": {...},
    "first_connections": n},
    "sorted_steps": {"cached": n, "sorted": {reason: n}, "recorded": {reason: n}},
    "relationships": {"fast": n, "fallback": {reason: n}}, "cycles": {"tree": n,
    "split": n}}`` (the flushes whose sorted steps were known for their shape,
    ``turbosession.plans``; the relationship processors' steps; the flushes
    with cycles ordered from a tree's links or by the per-state split and
    sort, ``flush.cycle_stats``); the reasons are described in
    ``fastpath.FALLBACK_REASONS``, ``loads.FALLBACK_REASONS``,
    ``loads.CURSOR_FALLBACK_REASONS``,
    ``instances.FALLBACK_REASONS``, ``emission.FALLBACK_REASONS``,
    ``attaching.FALLBACK_REASONS``, ``transaction.FALLBACK_REASONS``,
    ``plans.REASONS``, ``plans.RECORDED_REASONS`` and
    ``relationships.FALLBACK_REASONS``.
    """
    result = fastpath.stats()
    result["loads"] = loads.stats()
    result["emission"] = emission.stats()
    result["attach"] = attaching.stats()
    result["transactions"] = transaction.stats()
    result["sorted_steps"] = plans.stats()
    result["relationships"] = relationships.stats()
    result["cycles"] = flush.cycle_stats()
    return result


def reset_stats():
    fastpath.reset_stats()
    loads.reset_stats()
    emission.reset_stats()
    attaching.reset_stats()
    transaction.reset_stats()
    plans.reset_stats()
    relationships.reset_stats()
    flush.reset_cycle_stats()


__all__ = [
    "Session",
    "TurboSessionMixin",
    "compiled",
    "implementation",
    "reset_stats",
    "scoped_session",
    "sessionmaker",
    "stats",
]
