"""The save-side per-state work of the one-to-many and many-to-one
relationship processors (``OneToManyDP.process_saves`` /
``ManyToOneDP.process_saves`` of ``sqlalchemy.orm.dependency``).

For each state of the step: the relationship's history (the unit of work's
cached ``get_attribute_history``), the foreign-key values copied from the
referenced object to the referencing one as ``sync._populate`` copies them
(the source attribute's ``impl.get`` with ``PASSIVE_OFF``, the destination's
``impl.set``, events and all), and the primary-key check of the one-to-many
side (``sync._source_modified``), in stock's order.  The attribute keys of
the synchronised columns come from ``relationships.sync_plan`` (per
relationship, made once).  Whatever is not the plain case is handed to the
processor's own methods at the point stock calls them: a child not in the
session (stock warns), a None or a foreign-type child (stock raises or
clears), removed children, children to update after a primary-key change.
"""

from __future__ import annotations

from sqlalchemy.orm.base import PassiveFlag

try:
    import cython
except ModuleNotFoundError:
    from turbosession import _cython_shim as cython

__all__ = ["many_to_one_saves", "one_to_many_saves"]

_NO_INITIALIZE = cython.declare(object, PassiveFlag.PASSIVE_NO_INITIALIZE)
_OFF = cython.declare(object, PassiveFlag.PASSIVE_OFF)


def _is_compiled():
    return cython.compiled


@cython.cfunc
@cython.inline
def _is_deleted(uow_states: dict, state) -> cython.bint:
    """``UOWTransaction.is_deleted``."""
    entry = uow_states.get(state)
    return entry is not None and bool(entry[0])


@cython.cfunc
def _populate(source, dest, keys: tuple):
    """``sync._populate`` with the attribute keys looked up (no cascaded-pk flag)."""
    source_dict = source.dict
    dest_dict = dest.dict
    pair: tuple
    for pair in keys:
        value = source.manager[pair[0]].impl.get(source, source_dict, _OFF)
        dest.manager[pair[1]].impl.set(dest, dest_dict, value, None)


def many_to_one_saves(uow, dp, states, keys: tuple, target):
    """``ManyToOneDP.process_saves`` without ``post_update``: ``keys`` pairs
    the referenced mapper's attribute keys with the referencing one's;
    ``target`` is the processor's mapper when it is its class's primary
    mapper (a child of exactly that mapper passes ``_verify_canload``)."""
    key = dp.key
    session = uow.session
    uow_states: dict = uow.states
    for state in states:
        history = uow.get_attribute_history(state, key, _NO_INITIALIZE)
        if not history:
            continue
        added = history.added
        if added:
            for child in added:
                if state is None or _is_deleted(uow_states, state):
                    continue
                if child is None or not session._contains_state(child):
                    # clears the keys, or warns that the child is not in
                    # the session
                    dp._synchronize(state, child, None, False, uow, "add")
                    continue
                if child.manager.mapper is not target:
                    dp._verify_canload(child)
                _populate(child, state, keys)
        elif history.deleted:
            dp._synchronize(state, None, None, True, uow, "delete")


def one_to_many_saves(uow, dp, states, keys: tuple, source_keys: tuple, target):
    """``OneToManyDP.process_saves`` without ``post_update``: ``keys`` pairs
    the parent's attribute keys with the child's; ``source_keys`` are the
    parent's keys ``_pks_changed`` looks at; ``target`` as above."""
    key = dp.key
    uow_states: dict = uow.states
    should_null_fks: cython.bint = (
        not dp.cascade.delete_orphan and not dp.passive_deletes == "all"
    )
    uselist: cython.bint = bool(dp.prop.uselist)
    for state in states:
        history = uow.get_attribute_history(state, key, _NO_INITIALIZE)
        if not history:
            continue
        for child in history.added:
            if child is None:
                if uselist:
                    dp._verify_canload(child)  # raises
                continue
            if child.manager.mapper is not target:
                dp._verify_canload(child)
            if _is_deleted(uow_states, child):
                continue
            _populate(state, child, keys)
        for child in history.deleted:
            if should_null_fks and not dp.cascade.delete_orphan and not dp.hasparent(child):
                dp._synchronize(state, child, None, True, uow, False)
        if _source_modified(uow, state, source_keys):
            for child in history.unchanged:
                dp._synchronize(state, child, None, False, uow, True)


@cython.cfunc
@cython.exceptval(-1, check=False)
def _source_modified(uow, state, source_keys: tuple) -> cython.bint:
    """``sync._source_modified``."""
    for source_key in source_keys:
        history = uow.get_attribute_history(state, source_key, _NO_INITIALIZE)
        if history.deleted:
            return True
    return False
