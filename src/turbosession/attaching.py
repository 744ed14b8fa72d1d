"""What attaching (``add`` / ``add_all`` / ``delete`` / ``delete_all``) took
turbosession's path, and the per-mapper cascade plans that path follows.

The per-object walk lives in the ``attach`` hot path (``turbosession._attach``,
compiled or the same module uncompiled).  What it needs to know about a
mapper is decided here, in Python, once per mapper and cascade, and kept
with the mapper's memoized values (``cascade_plan``): which of its
properties may cascade, and whether each one is a relationship whose
``cascade_iterator`` the walk may follow inline.

``stats()`` counts, per object handed to those methods, whether it took the
walk (``fast``) or stock's method, by reason; the counters live in the hot
path modules and are added up here over both implementations.
"""

import logging

from sqlalchemy.orm import Mapper
from sqlalchemy.orm.relationships import RelationshipProperty

from .memo import derived

__all__ = ["FALLBACK_REASONS", "cascade_plan", "reset_stats", "stats"]

log = logging.getLogger("turbosession")

FALLBACK_REASONS = {
    "attach_unmapped": "the object is not a mapped instance (stock raises)",
    "attach_listeners": "an attach event (before_attach, after_attach, "
    "transient_to_pending, detached_to_persistent) has a listener",
    "attach_state": "delete() of an object stock refuses or must check: not "
    "persisted, or attached to another session",
    "attach_custom_cascade": "the mapper's class overrides Mapper.cascade_iterator, or "
    "class instrumentation replaces instance_dict",
}

_STOCK_MAPPER_CASCADE = Mapper.cascade_iterator
_STOCK_REL_CASCADE = RelationshipProperty.cascade_iterator
_STOCK_REL_CASCADE_ATTR = RelationshipProperty.__dict__["cascade"]
_STOCK_REL_VALUES = RelationshipProperty._value_as_iterable


def _inline(prop):
    """Whether the walk may read this property's cascade and follow it as
    stock's ``RelationshipProperty.cascade_iterator`` does."""
    cls = type(prop)
    return (
        isinstance(prop, RelationshipProperty)
        and cls.cascade_iterator is _STOCK_REL_CASCADE
        and cls._value_as_iterable is _STOCK_REL_VALUES
        and _class_attr(cls, "cascade") is _STOCK_REL_CASCADE_ATTR
    )


def _class_attr(cls, name):
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    return None


def build_plan(mapper):
    """``(custom, props)`` of one mapper: ``custom`` when its class overrides
    ``cascade_iterator`` (only stock's may be walked); ``props`` the
    properties, in ``_props`` order, that may have a cascade, each as
    ``(prop, inline, key, target_mapper, cascade, saves, deletes)``.  A
    property left out has no cascade (stock skips it), as columns, synonyms
    and composites have.

    For a relationship the walk follows inline, ``cascade`` is its
    ``_cascade`` now and ``saves`` / ``deletes`` whether that holds
    ``save-update`` / ``delete``: the walk reads the relationship's
    ``_cascade`` per object, and while it is this same (immutable)
    ``CascadeOptions`` takes the answers from here instead of asking the
    set again (setting ``prop.cascade`` stores a new one, which is asked).
    Any other property has None and False there: its own
    ``cascade_iterator`` decides."""
    custom = type(mapper).cascade_iterator is not _STOCK_MAPPER_CASCADE
    props = []
    for prop in mapper._props.values():
        if _inline(prop):
            cascade = prop._cascade
            props.append((
                prop, True, prop.key, prop.mapper.class_manager.mapper, cascade,
                bool(cascade) and "save-update" in cascade,
                bool(cascade) and "delete" in cascade,
            ))
        elif prop.cascade or isinstance(prop, RelationshipProperty):
            props.append((prop, False, prop.key, None, None, False, False))
    return custom, tuple(props)


def cascade_plan(mapper):
    """``build_plan(mapper)``, kept with the mapper's memoized values and
    rebuilt once SQLAlchemy has reset those (a property added, the mapper
    configured: ``_propkey_to_col`` is then a new object)."""
    return derived(mapper, _PLAN_KEY, mapper._propkey_to_col, build_plan)


# a string rather than a tuple: the walk looks the plan up per object, and a
# tuple's hash is computed again at every lookup
_PLAN_KEY = "turbosession cascade_plan"


def _bundles():
    from . import _impl

    return [bundle for bundle in (_impl.compiled, _impl.pure) if bundle is not None]


def stats():
    """``{"fast": n, "fallback": {reason: n}}``: objects handed to add /
    add_all / delete / delete_all, over both implementations."""
    fast = 0
    fallback = {}
    for bundle in _bundles():
        counts = bundle.attach.counts()
        fast += counts["fast"]
        for reason, n in counts["fallback"].items():
            fallback[reason] = fallback.get(reason, 0) + n
    return {"fast": fast, "fallback": fallback}


def reset_stats():
    for bundle in _bundles():
        bundle.attach.reset_counts()
