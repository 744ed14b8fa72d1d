"""Per-object work of the flush, pure-Python twin of ``_persist_c``.

The loops ``sqlalchemy.orm.persistence`` and ``Session`` run once per state
during a flush: ordering and ``before_*`` events, INSERT/UPDATE/DELETE
parameters, ``after_*`` events, and making states persistent or deleted
afterwards.  Each function gives exactly the results, events, warnings and
exceptions of its stock counterpart (named in its docstring) for the mappers
``turbosession.fastpath`` lets through: one table, no inheritance, no
relationship work.  Version counters, eager defaults and ORM-level defaults
go into the records exactly as stock puts them there, since stock's own
emitters send every batch that has anything to fetch back or check.
The parameter collectors are generators because stock's are: the emitters
consume them group by group, interleaved with execution.
"""

from sqlalchemy.orm import exc as orm_exc
from sqlalchemy.orm import persistence
from sqlalchemy.orm.base import (
    PassiveFlag,
    _none_set,
    instance_state,
    state_str,
)
from sqlalchemy.sql.elements import ClauseElement
from sqlalchemy.util import EMPTY_DICT

from turbosession._warn import warn

__all__ = [
    "batches",
    "collect_delete_commands",
    "collect_insert_commands",
    "collect_update_commands",
    "organize_for_delete",
    "organize_for_save",
    "postfetch_batch",
    "register_deletes",
    "register_persistent",
    "register_saves",
    "remove_newly_deleted",
]

_RETURN_NO_VALUE = PassiveFlag.PASSIVE_RETURN_NO_VALUE
_PASSIVE_OFF = PassiveFlag.PASSIVE_OFF
_PASSIVE_NO_FETCH = PassiveFlag.PASSIVE_NO_FETCH
_PASSIVE_NO_INITIALIZE = PassiveFlag.PASSIVE_NO_INITIALIZE
_PLAIN_TYPES = frozenset([int, str, float, bool, bytes, type(None)])


def _is_compiled():
    return False


def _sql_expression(value):
    """The SQL expression ``value`` stands for, or None for a plain value."""
    if type(value) in _PLAIN_TYPES:
        return None
    if hasattr(value, "__clause_element__"):
        return value.__clause_element__()
    if isinstance(value, ClauseElement):
        return value
    return None


def _identity_key(mapper, state, dict_):
    """``mapper._identity_key_from_state(state)``, reading the dict first."""
    manager = state.manager
    values = []
    for prop in mapper._identity_key_props:
        key = prop.key
        if key in dict_:
            values.append(dict_[key])
        else:
            values.append(manager[key].impl.get(state, dict_, _RETURN_NO_VALUE))
    return (mapper._identity_class, tuple(values), state.identity_token)


def _committed_version(mapper, state, dict_, version_col):
    """The version an UPDATE or DELETE expects the row to have, or None."""
    if version_col is None:
        return None
    return mapper._get_committed_state_attr_by_column(state, dict_, version_col)


def organize_for_save(mapper, states, uow, connection):
    """``persistence._organize_states_for_save`` for one single-table mapper.

    ``states`` come sorted as ``_sort_states`` sorts them.  Fires
    ``before_insert``/``before_update`` and warns on a new object whose
    identity is already persistent, as stock does.  Returns the lists of
    ``(state, dict, mapper, connection)`` to insert and
    ``(state, dict, mapper, connection, update_version_id)`` to update, the
    version being the committed one (loaded if expired, as stock does).
    """
    before_insert = mapper.dispatch.before_insert
    before_update = mapper.dispatch.before_update
    version_col = mapper.version_id_col
    identity_map = uow.session.identity_map
    to_insert = []
    to_update = []
    for state in states:
        dict_ = state.dict
        has_identity = bool(state.key)
        instance_key = state.key or _identity_key(mapper, state, dict_)
        if not has_identity:
            if before_insert:
                before_insert(mapper, connection, state)
        elif before_update:
            before_update(mapper, connection, state)
        if not has_identity and instance_key in identity_map:
            existing = instance_state(identity_map[instance_key])
            if not uow.was_already_deleted(existing):
                # fastpath sends flushes that also delete this mapper's
                # objects to stock, so no row switch can be due here
                assert not uow.is_deleted(existing)
                warn(
                    "New instance %s with identity key %s conflicts "
                    "with persistent instance %s"
                    % (state_str(state), instance_key, state_str(existing))
                )
        if has_identity:
            to_update.append(
                (state, dict_, mapper, connection,
                 _committed_version(mapper, state, dict_, version_col))
            )
        else:
            to_insert.append((state, dict_, mapper, connection))
    return to_insert, to_update


def _table_version_col(mapper, table):
    """The mapper's version column when ``table`` holds it, else None."""
    col = mapper.version_id_col
    if col is not None and col in mapper._cols_by_table[table]:
        return col
    return None


def collect_insert_commands(table, mapper, connection, states_to_insert):
    """``persistence._collect_insert_commands`` (not bulk) for one mapper."""
    propkey_to_col = mapper._propkey_to_col[table]
    orm_defaults = mapper._insert_orm_defaults[table]
    version_col = _table_version_col(mapper, table)
    generate_version = mapper.version_id_generator
    if generate_version is False:
        version_col = None
    propkeys = set(propkey_to_col)
    eval_none = mapper._insert_cols_evaluating_none[table]
    as_none = mapper._insert_cols_as_none[table]
    pk_keys = mapper._pk_keys_by_table[table]
    if mapper.base_mapper._prefer_eager_defaults(connection.dialect, table):
        server_default_keys = mapper._server_default_col_keys[table]
    else:
        server_default_keys = None
    for state, state_dict, state_mapper, state_connection in states_to_insert:
        params = {}
        value_params = {}
        for propkey in propkeys.intersection(state_dict):
            value = state_dict[propkey]
            col = propkey_to_col[propkey]
            if value is None and col not in eval_none:
                continue
            expression = _sql_expression(value)
            if expression is None:
                params[col.key] = value
            else:
                value_params[col] = expression
        # ORM-level (dataclass) defaults the column's own would not deliver
        for _, col, value in orm_defaults:
            if col.key not in params and col not in value_params:
                expression = _sql_expression(value)
                if expression is None:
                    params[col.key] = value
                else:
                    value_params[col] = expression
        for colkey in as_none.difference(params).difference(
            [c.key for c in value_params]
        ):
            params[colkey] = None
        has_all_pks = pk_keys.issubset(params)
        if server_default_keys is None:
            has_all_defaults = True
        else:
            has_all_defaults = server_default_keys.issubset(params)
        if version_col is not None:
            params[version_col.key] = generate_version(None)
        yield (
            state,
            state_dict,
            params,
            state_mapper,
            state_connection,
            # one shared empty mapping when there are none (nothing writes
            # to a record's value_params): no dict per state stays alive
            value_params or EMPTY_DICT,
            has_all_pks,
            has_all_defaults,
        )


def _primary_key_param(uow, state, state_dict, committed, mapper, col, value_params):
    """Where an UPDATE finds its row: (value, pk changed, has_all_pks)."""
    propkey = mapper._columntoproperty[col].key
    if propkey in state_dict and propkey not in committed:
        return state_dict[propkey], False, True
    history = state.manager[propkey].impl.get_history(
        state, state_dict, _PASSIVE_OFF
    )
    if history.added:
        if not history.deleted or ("pk_cascaded", state, col) in uow.attributes:
            return history.added[0], True, True
        # locate the row by the old value
        return history.deleted[0], False, col not in value_params
    return history.unchanged[0], False, True


def _has_added_history(mapper, state, state_dict):
    """Whether any column attribute of ``state`` has a value added.

    Stock asks this of a versioned row with no net change on its table
    (the change may be on another table of the mapper): without one, no
    UPDATE and no version bump.
    """
    manager = state.manager
    for prop in mapper._columntoproperty.values():
        history = manager[prop.key].impl.get_history(
            state, state_dict, _PASSIVE_NO_INITIALIZE
        )
        if history.added:
            return True
    return False


def collect_update_commands(uow, table, mapper, states_to_update, column_changes):
    """``persistence._collect_update_commands`` (not bulk).

    ``column_changes`` is the tracking twin's net changes of one state.
    With a version counter the row is located by its committed version too
    and the new one is generated (or, with ``version_id_generator=False``,
    left to the database or the application), as stock does.
    """
    propkey_to_col = mapper._propkey_to_col[table]
    keys = frozenset(propkey_to_col)
    pks = mapper._pks_by_table[table]
    if mapper.base_mapper.eager_defaults is True:
        onupdate_keys = mapper._server_onupdate_default_col_keys[table]
    else:
        onupdate_keys = None
    version_col = _table_version_col(mapper, table)
    generate_version = mapper.version_id_generator
    for state, state_dict, state_mapper, connection, update_version_id in states_to_update:
        committed = state.committed_state
        params, value_params = column_changes(state, state_dict, keys, propkey_to_col)
        if onupdate_keys is None:
            has_all_defaults = True
        else:
            has_all_defaults = onupdate_keys.issubset(params)
        if update_version_id is not None and version_col is not None:
            no_params = not (params or value_params)
            if no_params and not _has_added_history(mapper, state, state_dict):
                continue
            params[version_col._label] = update_version_id
            if generate_version is not False:
                if version_col.key not in params:
                    params[version_col.key] = generate_version(update_version_id)
            elif no_params:
                # nothing else to set: the version is set to itself so that
                # there is an UPDATE
                params[version_col.key] = update_version_id
        elif not (params or value_params):
            continue
        has_all_pks = True
        pk_params = {}
        for col in pks:
            value, changed, found = _primary_key_param(
                uow, state, state_dict, committed, mapper, col, value_params
            )
            if changed:
                params.pop(col.key, None)
            if not found:
                has_all_pks = False
            pk_params[col._label] = value
            if value is None:
                raise orm_exc.FlushError(
                    "Can't update table %s using NULL for primary "
                    "key value on column %s" % (table, col)
                )
        if not (params or value_params):
            # only the primary key changed, and the database cascaded it
            continue
        params.update(pk_params)
        yield (
            state,
            state_dict,
            params,
            state_mapper,
            connection,
            value_params,
            has_all_defaults,
            has_all_pks,
        )


def postfetch_batch(mapper, uow, table, records, result, isupdate):
    """``persistence._postfetch`` for each record of one executemany batch.

    Prefetched values (Python-side defaults) go into the objects and out of
    their committed state, server-generated columns are expired.  As stock
    does, an UPDATE batch hands every record the first row's parameters.
    A batch whose statement returned rows is handed to stock's ``_postfetch``.
    """
    context = result.context
    compiled = context.compiled
    all_params = context.compiled_parameters
    returned = None if context.executemany else result.returned_defaults
    if compiled.effective_returning and returned is not None:
        for index, record in enumerate(records):
            params = all_params[0] if isupdate else all_params[index]
            persistence._postfetch(
                mapper, uow, table, record[0], record[1], result, params,
                record[5], isupdate, returned,
            )
        return
    columns = mapper._columntoproperty
    prefetch = [(c.key, columns[c].key) for c in compiled.prefetch if c in columns]
    postfetch = compiled.postfetch
    if isupdate and postfetch:
        # stock's _postfetch extends this list for SQL-expression primary
        # keys; a plain-value batch has none to add
        postfetch = list(postfetch)
    expire = [columns[c].key for c in postfetch if c in columns]
    if not prefetch and not postfetch:
        return
    for index, record in enumerate(records):
        state = record[0]
        dict_ = record[1]
        params = all_params[0] if isupdate else all_params[index]
        for column_key, prop_key in prefetch:
            if column_key in params:
                dict_[prop_key] = params[column_key]
                state.committed_state.pop(prop_key, None)
        if postfetch:
            state._expire_attributes(dict_, expire)


def organize_for_delete(mapper, states, connection):
    """``persistence._organize_states_for_delete``: fires ``before_delete``
    and reads each state's committed version, if the mapper has one."""
    before_delete = mapper.dispatch.before_delete
    version_col = mapper.version_id_col
    to_delete = []
    for state in states:
        if before_delete:
            before_delete(mapper, connection, state)
        dict_ = state.dict
        to_delete.append(
            (state, dict_, mapper, connection,
             _committed_version(mapper, state, dict_, version_col))
        )
    return to_delete


def collect_delete_commands(table, mapper, states_to_delete):
    """``persistence._collect_delete_commands``: the row by its primary key
    and, with a version counter, its committed version."""
    pks = mapper._pks_by_table[table]
    version_col = _table_version_col(mapper, table)
    for state, state_dict, state_mapper, connection, update_version_id in states_to_delete:
        committed = state.committed_state
        params = {}
        for col in pks:
            propkey = mapper._columntoproperty[col].key
            if propkey in state_dict and propkey not in committed:
                value = state_dict[propkey]
            else:
                value = mapper._get_committed_state_attr_by_column(
                    state, state_dict, col
                )
            params[col.key] = value
            if value is None:
                raise orm_exc.FlushError(
                    "Can't delete from table %s "
                    "using NULL for primary "
                    "key value on column %s" % (table, col)
                )
        if update_version_id is not None and version_col is not None:
            params[version_col.key] = update_version_id
        yield params, connection


def _check_identity_key(state, mapper, instance_key):
    pk = instance_key[1]
    if (
        _none_set.intersection(pk) and not mapper.allow_partial_pks
    ) or _none_set.issuperset(pk):
        raise orm_exc.FlushError(
            "Instance %s has a NULL identity key.  If this is an "
            "auto-generated value, check that the database table "
            "allows generation of new primary key values, and "
            "that the mapped Column object is configured to "
            "expect these generated values.  Ensure also that "
            "this flush() is not occurring at an inappropriate "
            "time, such as within a load() event." % state_str(state)
        )


def _switch_key(session, state, instance_key):
    # a primary key changed: safe_discard() in case another state already
    # replaced this one in the identity map
    session.identity_map.safe_discard(state)
    transaction = session._transaction
    assert transaction is not None
    key_switches = transaction._key_switches
    if state in key_switches:
        orig_key = key_switches[state][0]
    else:
        orig_key = state.key
    key_switches[state] = (orig_key, instance_key)
    state.key = instance_key


def register_persistent(session, states, commit_all_states):
    """``Session._register_persistent``: flushed states become persistent.

    ``commit_all_states`` is the tracking twin's reset of flushed states.
    """
    pending_to_persistent = session.dispatch.pending_to_persistent or None
    identity_map = session.identity_map
    # the states and their dicts to reset afterwards: every flushed object
    # is held strongly (by _new, _deleted or its modified state) until then.
    # Two lists zipped, not a list of pairs: stock hands its reset a
    # generator, and 10,000 live pairs would bring a full GC pass forward
    committing = []
    committing_dicts = []
    for state in states:
        mapper = state.manager.mapper
        # hold the object against a last-minute dereference
        obj = state.obj()
        dict_ = state.dict
        committing.append(state)
        committing_dicts.append(dict_)
        if obj is None:
            continue
        instance_key = _identity_key(mapper, state, dict_)
        _check_identity_key(state, mapper, instance_key)
        if state.key is None:
            state.key = instance_key
        elif state.key != instance_key:
            _switch_key(session, state, instance_key)
        old = identity_map.replace(state)
        if (
            old is not None
            and old.obj() is not None
            and mapper._identity_key_from_state(old, _PASSIVE_NO_FETCH)
            == instance_key
        ):
            warn(
                "Identity map already had an identity for %s, "
                "replacing it with newly flushed object.   Are there "
                "load operations occurring inside of an event handler "
                "within the flush?" % (instance_key,)
            )
        state._orphaned_outside_of_session = False

    commit_all_states(zip(committing, committing_dicts), identity_map)

    new = session._new
    transaction = session._transaction
    if transaction:
        for state in states:
            if state in new:
                transaction._new[state] = True
            else:
                transaction._dirty[state] = True

    if pending_to_persistent is not None:
        for state in states.intersection(new):
            pending_to_persistent(session, state)

    # remove from new last, it might hold the last strong reference
    for state in set(states).intersection(new):
        new.pop(state)


def remove_newly_deleted(session, states):
    """``Session._remove_newly_deleted``: flushed deletes become deleted."""
    persistent_to_deleted = session.dispatch.persistent_to_deleted or None
    identity_map = session.identity_map
    deleted = session._deleted
    transaction = session._transaction
    for state in states:
        if transaction:
            transaction._deleted[state] = True
        if persistent_to_deleted is not None:
            # a strong reference before the state leaves _deleted
            obj = state.obj()  # noqa: F841
        identity_map.safe_discard(state)
        deleted.pop(state, None)
        state._deleted = True
        if persistent_to_deleted is not None:
            persistent_to_deleted(session, state)


def _orphan_possible(mapper):
    """Whether ``mapper._is_orphan`` can be true: some mapper up its
    hierarchy is the target of a delete-orphan relationship."""
    return any(m._delete_orphans for m in mapper.iterate_to_root())


def _register(session, uow, state, isdelete):
    """``UOWTransaction.register_object(state, isdelete)`` from the flush."""
    if not session._contains_state(state):
        return False
    states = uow.states
    if state not in states:
        mapper = state.manager.mapper
        if mapper not in uow.mappers:
            uow._per_mapper_flush_actions(mapper)
        uow.mappers[mapper].add(state)
        states[state] = (isdelete, False)
    elif isdelete:
        states[state] = (True, False)
    return True


def register_saves(session, uow, states, processed):
    """The save half of ``Session._flush``'s registration loop.

    Pending orphans outside of the session are expunged, persistent orphans
    registered as deletes, the rest as saves (and added to ``processed``);
    ``_is_orphan`` is only asked where it can be true.
    """
    orphan_possible = {}
    for state in states:
        mapper = state.manager.mapper
        possible = orphan_possible.get(mapper)
        if possible is None:
            possible = orphan_possible[mapper] = _orphan_possible(mapper)
        is_orphan = possible and mapper._is_orphan(state)
        is_persistent_orphan = is_orphan and state.has_identity
        if is_orphan and not is_persistent_orphan and state._orphaned_outside_of_session:
            session._expunge_states([state])
        else:
            registered = _register(session, uow, state, is_persistent_orphan)
            assert registered, "Failed to add object to the flush context!"
            processed.add(state)


def register_deletes(session, uow, states):
    """The delete half of ``Session._flush``'s registration loop."""
    for state in states:
        registered = _register(session, uow, state, True)
        assert registered, "Failed to add object to the flush context!"


def batches(records):
    """``itertools.groupby`` of INSERT/UPDATE records as stock's emitters
    group them (connection, parameter keys, SQL-expression values, the two
    flags), each batch as a list.  As with stock's ``list(group)``, a batch
    is handed on once the first record of the next one has been collected.
    """
    batch = None
    current = None
    for record in records:
        key = (record[4], set(record[2]), bool(record[5]), record[6], record[7])
        if batch is not None and key == current:
            batch.append(record)
            continue
        if batch is not None:
            yield current, batch
        current = key
        batch = [record]
    if batch is not None:
        yield current, batch
