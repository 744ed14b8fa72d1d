"""Whether an event has listeners, read as SQLAlchemy's listener classes
read it.

``bool(dispatch.some_event)`` is a Python-level ``__bool__`` call on
SQLAlchemy's ``_EmptyListener`` (an event nobody listens to on this
target) or ``_ListenerCollection``.  The hot paths ask it several times per
object, so they read the same lists that ``__bool__`` reads, while the
classes' ``__bool__`` is still SQLAlchemy's own; any other listener class,
or a patched ``__bool__``, is asked as ``bool()`` asks it.

The compiled modules use ``_cpython.has_listeners`` (the same check,
inlined); the pure modules call :func:`has_listeners` below.  Both take
``KINDS``, so that the classes are read from SQLAlchemy once, here.
"""

from sqlalchemy.event import attr as _event_attr

#: the two listener classes and their ``__bool__`` as SQLAlchemy ships them
KINDS = (
    _event_attr._EmptyListener,
    _event_attr._EmptyListener.__bool__,
    _event_attr._ListenerCollection,
    _event_attr._ListenerCollection.__bool__,
)


def has_listeners(listeners, kinds):
    """``bool(listeners)`` for a dispatch attribute."""
    kind = type(listeners)
    if kind is kinds[0] and kind.__bool__ is kinds[1]:
        return bool(listeners.parent_listeners)
    if kind is kinds[2] and kind.__bool__ is kinds[3]:
        return bool(listeners.listeners) or bool(listeners.parent_listeners)
    return bool(listeners)
