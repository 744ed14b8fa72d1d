"""The flush: stock's orchestration around turbosession's unit of work.

Stock ``Session._flush`` instantiates ``sqlalchemy.orm.unitofwork.UOWTransaction``
itself, so a Session that runs its own unit of work has to run the
orchestration around it too.  ``flush`` (bound as ``TurboSessionMixin._flush``)
does exactly what stock's does, step for step: the same events with the same
arguments, the same orphan handling, the same transaction and rollback on
error, the same warning for states modified inside the flush.  What differs
is the unit of work it builds: ``UOWTransaction`` below, stock's class with
its dependency sorts and per-state cycle handling on turbosession's
implementation (``session._turbo``).

``UOWTransaction.execute`` runs the sorted actions; each mapper's save and
delete steps go to turbosession's own unit of work (``fastpath``) where the
mapper allows it, and the flush is counted as fast or as a fallback.
"""

from collections import Counter, defaultdict
from operator import attrgetter

from sqlalchemy import exc as sa_exc
from sqlalchemy import orm, util
from sqlalchemy.orm import attributes
from sqlalchemy.orm import exc
from sqlalchemy.orm import unitofwork
from sqlalchemy.event.attr import _EmptyListener as _EMPTY
from sqlalchemy.orm.unitofwork import _DeleteAll, _SaveUpdateAll
from sqlalchemy.util.deprecations import _sanitize_restructured_text, _warn_with_version

from . import fastpath, plans, relationships, transaction as _transaction
from .memo import derived
from ._warn import warn

__all__ = ["UOWTransaction", "flush"]

_sort_key = attrgetter("sort_key")

class _MadeOnFirstUse:
    """A flush context's ``defaultdict`` that most flushes never read
    (``deps``: the relationship processors by base mapper;
    ``post_update_states``): stock's constructor makes it for every flush
    (about 1.2k instructions each).  ``_unitofwork.new_flush_context``
    leaves it out; the first read makes the same empty ``defaultdict`` and
    keeps it in the instance, so that every later use, stock's included,
    is a plain attribute (a flush context made by the constructor has its
    own from the start).  ``factory(uow)`` is the ``defaultdict``'s
    factory."""

    __slots__ = ("name", "factory")

    def __init__(self, factory):
        self.factory = factory

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, uow, owner=None):
        if uow is None:
            return self
        value = uow.__dict__[self.name] = defaultdict(self.factory(uow))
        return value


def _made_for_listeners(flush_context):
    """Before a session listener is given the flush context: the
    attributes ``_MadeOnFirstUse`` makes on first use made now, so that
    the listener finds every attribute stock's constructor stores in the
    instance (``vars()`` included)."""
    flush_context.deps
    flush_context.post_update_states


class UOWTransaction(unitofwork.UOWTransaction):
    """Stock's unit of work, sorting with turbosession's ``_topological``.

    Stock reaches ``sqlalchemy.util.topological`` as a module global from
    ``_generate_actions`` and ``execute``; these two methods are therefore
    restated here around ``self._topological``, with the per-state split of
    cyclic mappers and the per-state lookups (attribute history, states of
    a mapper hierarchy) on ``self._unitofwork``.  Everything else is
    inherited.
    """

    # the mapper of the flush's one new state when that state was
    # registered without its hierarchy's save and delete steps
    # (_register_states), else None
    unrecorded_mapper = None

    deps = _MadeOnFirstUse(lambda uow: set)
    post_update_states = _MadeOnFirstUse(lambda uow: uow._unitofwork.post_update_entry)

    def __init__(self, session):
        super().__init__(session)
        self._topological = session._turbo.topological
        self._unitofwork = session._turbo.unitofwork
        # the relationship loops look histories up through this function
        # directly while get_attribute_history is this class's
        self._history_lookup = (
            self._unitofwork.attribute_history
            if type(self).get_attribute_history is UOWTransaction.get_attribute_history
            else None
        )

    # the per-state loops of stock's bookkeeping, on turbosession's hot paths

    def get_attribute_history(
        self, state, key, passive=attributes.PASSIVE_NO_INITIALIZE
    ):
        return self._unitofwork.attribute_history(self, state, key, passive)

    def states_for_mapper_hierarchy(self, mapper, isdelete, listonly):
        return iter(
            self._unitofwork.states_for_mapper_hierarchy(
                self, mapper, isdelete, listonly
            )
        )

    def finalize_flush_changes(self):
        """Flushed states become persistent or deleted (per-state loops in
        ``persist``), unless the session overrides stock's
        bookkeeping methods, which then run as they are."""
        session = self.session
        if not _stock_bookkeeping(type(session)):
            return super().finalize_flush_changes()
        flags = self.states
        if not flags:
            return
        states = set(flags)
        values = flags.values()
        if (True, False) in values or (True, True) in values:
            isdel = {s for (s, (isdelete, listonly)) in flags.items() if isdelete}
        else:
            # a flush that deletes nothing (its states' (isdelete,
            # listonly) flags scanned in C) has none to pick out; the
            # difference below copies the set as stock's does
            isdel = _NO_STATES
        other = states.difference(isdel)
        persist = session._turbo.persist
        if isdel:
            persist.remove_newly_deleted(session, isdel)
        if other:
            persist.register_persistent(
                session, other, session._turbo.tracking.commit_all_states
            )

    def _per_mapper_flush_actions(self, mapper):
        """Stock's: the hierarchy's save and delete steps, the first
        dependency between them, the relationships' preprocessors.  The two
        steps are made as stock's ``_PostSortRec.__new__`` and their
        ``__init__`` make them (the record already there for the key, or a
        new one registered with ``disabled`` False; then its mapper and sort
        key), without the two Python frames each class call costs, while
        those methods are stock's."""
        if mapper is self.unrecorded_mapper:
            # its steps are made by execute() only if it needs them
            return
        if not _stock_records():
            return super()._per_mapper_flush_actions(mapper)
        # each step (_SaveUpdateAll, then _DeleteAll) as
        # _PostSortRec.__new__ (the record registered under (cls, base), or
        # a new one with disabled False) and its class's __init__ (mapper,
        # sort key) make it, then the dependency between them
        self._unitofwork.base_steps(self, mapper.base_mapper, _BASE_STEPS)

        for dep in mapper._dependency_processors:
            dep.per_property_preprocessors(self)
        for dep in _processors_of(mapper):
            dep.per_property_preprocessors(self)

    def _run_presort_actions(self):
        # run the presort actions until none adds new states to the flush
        loops = self.session._turbo.relationships
        while True:
            ret = False
            for action in list(self.presort_actions.values()):
                if relationships.preprocess(self, action, loops):
                    ret = True
            if not ret:
                break

    def _generate_actions(self):
        self._run_presort_actions()
        return self._postsort_actions()

    def _postsort_actions(self):
        """The second half of stock's ``_generate_actions``: the postsort
        actions to sort, once the presort actions have run."""
        cycles = self._find_cycles()
        if cycles:
            self._unitofwork.split_per_state(
                self, cycles, self.session._turbo.attach.pending_pairs
            )
        return self._unsplit_actions(cycles)

    def _find_cycles(self):
        # mappers that depend on each other (self-referential relationships)
        # cannot be ordered as a whole: their actions are split per state
        self.cycles = cycles = self._topological.find_cycles(
            self.dependencies, list(self.postsort_actions.values())
        )
        return cycles

    def _unsplit_actions(self, cycles):
        return {
            a for a in self.postsort_actions.values() if not a.disabled
        }.difference(cycles)

    def _sorted_rounds(self):
        """The rounds of per-state actions to run, or None for a flush
        without cycles (then sorted as one sequence): for a tree of new
        objects (``_unitofwork.tree_rounds``) computed from the states'
        links, else as stock's ``sort_as_subsets`` gives them once the
        cycle is split."""
        cycles = self._find_cycles()
        if not cycles:
            return None
        turbo = self.session._turbo
        pending = turbo.attach.pending_pairs
        rounds = self._unitofwork.tree_rounds(
            self, cycles, pending, turbo.relationships.collection_answers
        )
        if rounds is not None:
            _cycle_counts["tree"] += 1
            return rounds
        _cycle_counts["split"] += 1
        self._unitofwork.split_per_state(self, cycles, pending)
        return self._topological.sort_as_subsets(
            self.dependencies, sorted(self._unsplit_actions(cycles), key=_sort_key)
        )

    def execute(self):
        # (a flush with no relationship work has no presort actions to run)
        if self.presort_actions:
            self._run_presort_actions()
        # each mapper's save and delete steps on turbosession's unit of work
        # where the mapper allows it (fastpath), the rest as stock's; the
        # flush is counted, fast or by its fallback reason, even if it fails
        # stock's find_cycles finds none in the shapes below (both set
        # cycles; the generic sort sets them again)
        self.cycles = set()
        mapper = self.unrecorded_mapper
        if mapper is not None:
            if fastpath.insert_unrecorded(self, mapper):
                return
            # the steps registering would have made, made now
            del self.unrecorded_mapper
            self._per_mapper_flush_actions(mapper)
        if len(self.states) == 1 and fastpath.insert_single(self):
            # one new object of a single-table mapper: its two steps in
            # one call, in the order plans.sorted_steps gives them
            return
        steps = plans.sorted_steps(self)
        if steps is not None:
            # a shape whose sorted actions are known: stock's find_cycles
            # finds none and its sort gives these steps
            fastpath.run_steps(self, steps)
            return
        rounds = self._sorted_rounds()
        if rounds is None:
            postsort_actions = sorted(
                self._unsplit_actions(self.cycles), key=_sort_key
            )
        run = fastpath.ActionRunner(self)
        try:
            if rounds is not None:
                # per-state actions of one round run in aggregates (one
                # statement batch per mapper), in stock's set order
                for subset in rounds:
                    set_ = set(subset)
                    while set_:
                        run.aggregate(set_.pop(), set_)
            else:
                for rec in self._topological.sort(self.dependencies, postsort_actions):
                    run(rec)
        finally:
            fastpath.record(run.reason)


def _processors_of(mapper):
    """``derived(mapper, _PROCESSORS_KEY, ...)`` of ``_relationship_processors``,
    its kept value found without the call."""
    relationships_ = mapper.relationships
    entry = mapper._memoized_values.get(_PROCESSORS_KEY)
    if entry is not None and entry[0] is relationships_:
        return entry[1]
    return derived(mapper, _PROCESSORS_KEY, relationships_, _relationship_processors)


def _relationship_processors(mapper):
    """The dependency processors of the mapper's relationships that are
    not view-only, in ``mapper.relationships`` order: kept with that
    memoized collection (``memo.derived``), which SQLAlchemy replaces when
    the mapper's relationships change."""
    return tuple(
        prop._dependency_processor for prop in mapper.relationships if not prop.viewonly
    )


_NO_STATES = frozenset()
# flushes with cycles: "tree" when their rounds came from the states' links
# (_unitofwork.tree_rounds), "split" when from the split and the sort
_cycle_counts = Counter()


def cycle_stats():
    """How the flushes with cycles were ordered (``_cycle_counts``)."""
    return {"tree": _cycle_counts["tree"], "split": _cycle_counts["split"]}


def reset_cycle_stats():
    _cycle_counts.clear()

_BASE_STEPS = ((_SaveUpdateAll, "SaveUpdateAll"), (_DeleteAll, "DeleteAll"))
_PROCESSORS_KEY = ("turbosession", "relationship processors")
_POSTSORT_NEW = unitofwork._PostSortRec.__new__
_SAVE_INIT = _SaveUpdateAll.__init__
_DELETE_INIT = _DeleteAll.__init__


_STOCK_UOW_INIT = unitofwork.UOWTransaction.__init__


def _new_flush_context_applies():
    """Whether ``_unitofwork.new_flush_context`` stores what this
    SQLAlchemy's ``UOWTransaction.__init__`` and turbosession's store
    (the same attribute names, each of the same type, its defaultdicts'
    factories giving the same values); decided once at import (else every
    flush calls the constructor)."""
    from . import _impl

    class _Session:
        _turbo = _impl.pure

    session = _Session()
    made = UOWTransaction(session)
    restated = _impl.pure.unitofwork.new_flush_context(UOWTransaction, session, _impl.pure)
    # (the names _MadeOnFirstUse makes on first use are not stored yet)
    if vars(made).keys() != vars(restated).keys() | {"deps", "post_update_states"}:
        return False
    for name, value in vars(made).items():
        other = getattr(restated, name)
        if type(value) is not type(other):
            return False
        if type(value) is defaultdict and value.default_factory() != other.default_factory():
            return False
        if name != "session" and value != other:
            return False
    return True


def _stock_records():
    """Whether the two step classes are made by stock's ``__new__`` and
    ``__init__`` (a patched one is called as stock calls it)."""
    return (
        _SaveUpdateAll.__new__ is _POSTSORT_NEW
        and _DeleteAll.__new__ is _POSTSORT_NEW
        and _SaveUpdateAll.__init__ is _SAVE_INIT
        and _DeleteAll.__init__ is _DELETE_INIT
    )


_REGISTER_PERSISTENT = orm.Session._register_persistent
_REGISTER_ALTERED = orm.Session._register_altered
_REMOVE_NEWLY_DELETED = orm.Session._remove_newly_deleted


def _stock_bookkeeping(session_cls):
    """True when the session class keeps stock's post-flush bookkeeping
    (three attribute lookups: a method patched on the class, or on
    ``orm.Session`` itself, is then called as stock calls it)."""
    return (
        session_cls._register_persistent is _REGISTER_PERSISTENT
        and session_cls._register_altered is _REGISTER_ALTERED
        and session_cls._remove_newly_deleted is _REMOVE_NEWLY_DELETED
    )


def _register_states(session, flush_context, objects, dirty):
    """Put the flush's states into the unit of work, as stock does.

    Saves first (pending orphans outside of the session are expunged,
    persistent orphans become deletes), then the remaining deletes; with
    ``objects``, only states of those objects.
    """
    persist = session._turbo.persist
    if not objects and not dirty and not session._deleted and len(session._new) == 1:
        # one new object and nothing else: stock's sets below reduce to
        # the one state, and there is nothing to delete
        new = set(session._new)
        if not flush_context.states:
            mapper = _unrecorded_mapper(session, new)
            if mapper is not None:
                flush_context.unrecorded_mapper = mapper
        persist.register_saves(session, flush_context, new, set())
        return
    deleted = set(session._deleted)
    new = set(session._new)
    dirty = set(dirty).difference(deleted)

    if objects:
        objset = set()
        for o in objects:
            try:
                state = attributes.instance_state(o)
            except exc.NO_STATE as err:
                raise exc.UnmappedInstanceError(o) from err
            objset.add(state)
    else:
        objset = None

    # states whose fate has been decided
    processed = set()

    if objset:
        proc = new.union(dirty).intersection(objset).difference(deleted)
    else:
        proc = new.union(dirty).difference(deleted)

    # the per-state loops (orphan check, register_object) in persist
    persist.register_saves(session, flush_context, proc, processed)

    if objset:
        proc = deleted.intersection(objset).difference(processed)
    else:
        proc = deleted.difference(processed)
    if proc:
        persist.register_deletes(session, flush_context, proc)


def _unrecorded_mapper(session, new):
    """The mapper of the flush's one new state when registering it can
    leave out its hierarchy's save and delete steps and their dependency,
    which the flush of one new object of a single-table mapper
    (``fastpath.insert_unrecorded``) never reads: its plan says so
    (``_Plan.unrecorded``: no relationship processors), no other mapper's
    many-to-one has put a processor on it (``_dependency_processors``),
    the step classes are stock's (``_stock_records``), and
    no session listener is given the flush context (``before_flush``,
    ``after_flush``, ``after_flush_postexec``), which could read the
    records; that last reason is counted (``plans.count_recorded``).
    Else None."""
    (state,) = new
    mapper = state.manager.mapper
    if not (
        fastpath.plan_of(mapper).unrecorded
        and not mapper._dependency_processors
        and _stock_records()
    ):
        return None
    dispatch = session.dispatch
    before, after, postexec = (
        dispatch.before_flush, dispatch.after_flush, dispatch.after_flush_postexec
    )
    if (
        (before.parent_listeners if type(before) is _EMPTY else before)
        or (after.parent_listeners if type(after) is _EMPTY else after)
        or (postexec.parent_listeners if type(postexec) is _EMPTY else postexec)
    ):
        plans.count_recorded("flush_context_listeners")
        return None
    return mapper


_NEW_FLUSH_CONTEXT = _new_flush_context_applies()


def _reset_inner_flush_changes(session):
    """Reset states modified by listeners during the flush, with stock's warning."""
    modified = session.identity_map._modified
    len_ = len(modified)
    session._turbo.tracking.commit_all_states(
        [(state, state.dict) for state in modified],
        instance_dict=session.identity_map,
    )
    warn(
        "Attribute history events accumulated on %d "
        "previously clean instances "
        "within inner-flush event handlers have been "
        "reset, and will not result in database updates. "
        "Consider using set_committed_value() within "
        "inner-flush event handlers to avoid this warning." % len_
    )


# stock's _flush is wrapped by deprecated_params(objects=...): two more
# Python calls per flush, for a warning given only when objects are
_OBJECTS_DEPRECATED = _sanitize_restructured_text(
    "The `objects` parameter of `Session.flush` is deprecated"
)


def flush(self, objects=None):
    """``Session._flush`` building turbosession's ``UOWTransaction``.

    A function rather than a method so that ``TurboSessionMixin`` binds it
    as ``_flush``.  The deprecation of ``objects`` is warned here as stock's
    wrapper warns it (its message, category and version, found from the
    same frame: this function's caller), without the wrapper.
    """
    if objects is not None:
        _warn_with_version(_OBJECTS_DEPRECATED, "2.1", sa_exc.SADeprecationWarning, 2)
    dirty = self._dirty_states
    if not dirty and not self._deleted and not self._new:
        self.identity_map._modified.clear()
        return

    if _NEW_FLUSH_CONTEXT and unitofwork.UOWTransaction.__init__ is _STOCK_UOW_INIT:
        # UOWTransaction(self), its attributes stored without the two
        # constructors' frames
        turbo = self._turbo
        flush_context = turbo.unitofwork.new_flush_context(UOWTransaction, self, turbo)
    else:
        flush_context = UOWTransaction(self)

    # an event nothing listens to is the shared _EmptyListener, asked by
    # its class-level listeners (turbosession.transaction._EMPTY)
    event = self.dispatch.before_flush
    if event.parent_listeners if type(event) is _EMPTY else event:
        _made_for_listeners(flush_context)
        self.dispatch.before_flush(self, flush_context, objects)
        # listeners may have added or changed objects
        dirty = self._dirty_states

    _register_states(self, flush_context, objects, dirty)

    if not flush_context.has_work:
        return

    # stock's _begin() and commit() of the subtransaction, without the
    # state machine's wrappers where nothing could see the difference
    flush_context.transaction = transaction = _transaction.begin_flush(self)
    try:
        self._warn_on_events = True
        try:
            flush_context.execute()
        finally:
            self._warn_on_events = False

        event = self.dispatch.after_flush
        if type(event) is not _EMPTY or event.parent_listeners:
            _made_for_listeners(flush_context)
            event(self, flush_context)

        flush_context.finalize_flush_changes()

        if not objects and self.identity_map._modified:
            _reset_inner_flush_changes(self)

        event = self.dispatch.after_flush_postexec
        if type(event) is not _EMPTY or event.parent_listeners:
            _made_for_listeners(flush_context)
            event(self, flush_context)

        _transaction.commit_flush(self, transaction)

    except:
        with util.safe_reraise():
            transaction.rollback(_capture_exception=True)
