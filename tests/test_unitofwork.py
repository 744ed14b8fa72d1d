"""The unit of work's per-state bookkeeping (``_unitofwork``, both implementations) against stock's.

Stock's ``UOWTransaction`` and turbosession's are built over the same
session and the same states, and their internals compared after
``_generate_actions``: the same flush actions (class, state, dependency
processor, flags, sort key), the same dependency edges, the same cycles, and
the same rounds from the topological sort.  (The
records themselves are different objects in the two unit of works, so they
are compared through a name that does not depend on memory addresses.)
``attribute_history`` is compared call for call, cache included.
"""

import pytest
from sqlalchemy import ForeignKey, String, create_engine, event
from sqlalchemy.orm import (
    InstanceState,
    DeclarativeBase,
    Mapped,
    attributes,
    mapped_column,
    relationship,
    unitofwork,
)
from sqlalchemy.util import topological

from turbosession import flush


class Base(DeclarativeBase):
    pass


class Node(Base):
    __tablename__ = "uw_node"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("uw_node.id"))
    children: Mapped[list["Node"]] = relationship(
        back_populates="parent", cascade="all, delete-orphan", order_by="Node.id"
    )
    parent: Mapped["Node | None"] = relationship(
        back_populates="children", remote_side=[id]
    )


class Owner(Base):
    __tablename__ = "uw_owner"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    favourite_id: Mapped[int | None] = mapped_column(ForeignKey("uw_node.id"))
    favourite: Mapped[Node | None] = relationship()


@pytest.fixture
def db():
    eng = create_engine("sqlite://")
    Base.metadata.create_all(eng)
    yield eng
    eng.dispose()


def tree(prefix, size, fanout):
    nodes = [Node(name=f"{prefix}0")]
    for i in range(1, size):
        nodes.append(Node(name=f"{prefix}{i}", parent=nodes[(i - 1) // fanout]))
    return nodes


def name_of(thing):
    if thing is None:
        return None
    if isinstance(thing, InstanceState):
        return thing.obj().name
    if isinstance(thing, unitofwork._PostSortRec):
        return record_name(thing)
    return repr(thing)


def record_name(rec):
    fields = [type(rec).__name__]
    for slot in ("state", "dependency_processor", "mapper", "isdelete", "fromparent"):
        if hasattr(rec, slot):
            fields.append((slot, name_of(getattr(rec, slot))))
    fields.append(("disabled", rec.disabled))
    fields.append(("sort_key", repr(rec.sort_key)))
    return tuple(fields)


def internals(uow_cls, session):
    """What ``_generate_actions`` leaves behind, in address-free form."""
    uow = uow_cls(session)
    flush._register_states(session, uow, None, session._dirty_states)
    actions = uow._generate_actions()
    # not the registration order: stock iterates sets of records and of
    # states (memory-address order) while registering, so that order varies
    # from one stock unit of work to the next
    kinds = {}
    for rec in uow.postsort_actions.values():
        kind = (type(rec).__name__, getattr(rec, "isdelete", None))
        kinds.setdefault(kind, []).append(repr(record_name(rec)))
    for names in kinds.values():
        names.sort()
    edges = sorted(
        (repr(name_of(a)), repr(name_of(b))) for a, b in uow.dependencies
    )
    ordered = sorted(actions, key=lambda item: item.sort_key)
    rounds = [
        sorted(repr(record_name(rec)) for rec in round_)
        for round_ in topological.sort_as_subsets(uow.dependencies, ordered)
    ]
    return {
        "registered": kinds,
        "edges": edges,
        "cycles": sorted(repr(record_name(rec)) for rec in uow.cycles),
        "actions": sorted(repr(record_name(rec)) for rec in actions),
        "rounds": rounds,
        "states": sorted(
            (name_of(s), flags) for s, flags in uow.states.items()
        ),
        "mappers": sorted(m.class_.__name__ for m in uow.mappers),
    }


def assert_same_internals(session_cls, session):
    expected = internals(unitofwork.UOWTransaction, session)
    actual = internals(flush.UOWTransaction, session)
    assert actual == expected
    return actual


def test_tree_insert(session_cls, db):
    with session_cls(db) as session:
        session.add(tree("n", 200, 4)[0])
        found = assert_same_internals(session_cls, session)
        # the per-state split happened: one save per node
        assert len(found["registered"][("_SaveUpdateState", None)]) == 200


def test_tree_reparent_delete_and_insert(session_cls, db):
    with session_cls(db) as session:
        nodes = tree("n", 80, 3)
        session.add(nodes[0])
        session.commit()
        for node in nodes:
            node.children, node.parent
        nodes[4].parent = nodes[60]
        nodes[9].children.append(Node(name="extra"))
        session.delete(nodes[2])
        nodes[61].children.clear()
        session.add(Owner(name="o", favourite=nodes[30]))
        found = assert_same_internals(session_cls, session)
        assert found["registered"][("_DeleteState", None)]
        session.rollback()


def memoized_mappers(uow_cls, session_cls, db, changes):
    """The names of the states whose ``mapper`` (a memoized property) is in
    their ``__dict__`` after ``_generate_actions`` of a fresh session."""
    with session_cls(db) as session:
        nodes = changes(session)
        uow = uow_cls(session)
        flush._register_states(session, uow, None, session._dirty_states)
        uow._generate_actions()
        found = sorted(
            node.name for node in nodes
            if "mapper" in attributes.instance_state(node).__dict__
        )
        session.rollback()
        return found


def new_tree(session):
    nodes = tree("m", 60, 3)
    session.add(nodes[0])
    return nodes


def changed_tree(session):
    nodes = tree("c", 40, 3)
    session.add(nodes[0])
    session.commit()
    for node in nodes:
        node.children, node.parent
    # the per-state records of saves and deletes made again for these
    nodes[4].parent = nodes[30]
    session.delete(nodes[2])
    return nodes


@pytest.mark.parametrize("changes", [new_tree, changed_tree])
def test_cycle_records_memoize_state_mapper_as_stock(session_cls, db, changes):
    """A per-state record found registered is not made again, but the
    state's ``mapper`` is memoized as stock's constructor would do it."""
    expected = memoized_mappers(unitofwork.UOWTransaction, session_cls, db, changes)
    actual = memoized_mappers(flush.UOWTransaction, session_cls, db, changes)
    assert actual == expected
    assert expected


def test_flush_without_cycles(session_cls, db):
    with session_cls(db) as session:
        session.add(Owner(name="o"))
        found = assert_same_internals(session_cls, session)
        assert found["cycles"] == []


def history_tuple(history):
    # the parts' types too: History((), [], ()) is true, HISTORY_BLANK false
    return type(history).__name__, bool(history), tuple(
        None if part is None else (
            type(part).__name__, [name_of(x) if hasattr(x, "obj") else x for x in part]
        )
        for part in history
    )


PASSIVES = (
    # the first lookup of a (state, key) is cached for the passive ones after it
    attributes.PASSIVE_NO_INITIALIZE | attributes.INCLUDE_PENDING_MUTATIONS,
    attributes.PASSIVE_NO_INITIALIZE,
    attributes.PASSIVE_NO_FETCH_RELATED,
    attributes.PASSIVE_OFF | attributes.INCLUDE_PENDING_MUTATIONS,
    attributes.PASSIVE_NO_INITIALIZE,
)


def history_run(get_history):
    """Histories of a changed tree, passive then loading, on a fresh database."""
    from sqlalchemy.orm import Session

    eng = create_engine("sqlite://")
    Base.metadata.create_all(eng)
    statements = []
    try:
        # no autoflush: the loading lookups must not flush the changes
        with Session(eng, autoflush=False) as session:
            nodes = tree("h", 10, 3)
            session.add(nodes[0])
            session.commit()
            new = Node(name="new")
            nodes[1].children.append(new)
            nodes[2].name = "renamed"
            session.expire(nodes[3], ["children"])
            nodes[4].name = nodes[4].name  # the value it has
            nodes[5].parent = None
            nodes[6].parent = nodes[7]
            nodes[7].parent_id = None  # a column of a relationship set directly
            nodes[8].name = "other"
            session.expire(nodes[9], ["name", "parent"])  # absent: blank, or loaded
            event.listen(eng, "before_cursor_execute", lambda *a: statements.append(a[2]))
            uow = unitofwork.UOWTransaction(session)
            results = []
            for node in nodes + [new]:
                state = attributes.instance_state(node)
                for key in ("children", "parent", "name", "id", "parent_id"):
                    for passive in PASSIVES:
                        history = history_tuple(get_history(uow, state, key, passive))
                        # a lookup of pending mutations memoizes stock's dict of them
                        results.append((history, "_pending_mutations" in state.__dict__))
            cache = sorted(
                (name_of(k[1]), k[2], history_tuple(v[1]), int(v[2]))
                for k, v in uow.attributes.items()
            )
            # the states whose pending mutations were looked at keep the
            # memoized (empty) dict stock's property stores
            memoized = [
                attributes.instance_state(node).__dict__.get("_pending_mutations")
                for node in nodes + [new]
            ]
            memoized = [
                None if m is None else sorted((k, type(v).__name__) for k, v in m.items())
                for m in memoized
            ]
            return results, statements, cache, memoized
    finally:
        eng.dispose()


def test_attribute_history_matches_stock(impl):
    expected = history_run(unitofwork.UOWTransaction.get_attribute_history)
    actual = history_run(impl.unitofwork.attribute_history)
    assert actual == expected
    # the passive lookups were re-done (and loaded) when asked for SQL
    assert any("SELECT" in sql for sql in expected[1])
    # the lookups of pending mutations memoized stock's dict of them
    assert all(entry[1] for entry in expected[0])


def test_compiled_flag(impl):
    assert impl.unitofwork._is_compiled() == (impl.name == "compiled")


class Vehicle(Base):
    __tablename__ = "uw_vehicle"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    kind: Mapped[str] = mapped_column(String(10))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "vehicle"}


class Car(Vehicle):
    __mapper_args__ = {"polymorphic_identity": "car"}


class Truck(Vehicle):
    __mapper_args__ = {"polymorphic_identity": "truck"}


class Van(Car):
    __mapper_args__ = {"polymorphic_identity": "van"}


@pytest.mark.parametrize("classes", [(Vehicle, Car, Truck, Van), (Car,), (Van, Vehicle)])
def test_states_of_mappers_as_stock_states_for_mapper_hierarchy(impl, session_cls, db, classes):
    """``states_of_mappers`` given the hierarchy as a tuple (as the flush's
    plan keeps it) finds stock's states in stock's order, for every flag
    pair, and leaves ``uow.mappers`` as stock's lookup leaves it (an empty
    set for a mapper of the hierarchy without states)."""
    with session_cls(db, expire_on_commit=False, autoflush=False) as session:
        kept = [cls(name=f"old {i}") for i, cls in enumerate(classes * 2)]
        session.add_all(kept)
        session.commit()
        session.add_all(cls(name=f"new {i}") for i, cls in enumerate(classes * 3))
        session.delete(kept[0])
        session.delete(kept[-1])
        kept[1].name = "changed"
        base = Vehicle.__mapper__

        def run(find):
            uow = unitofwork.UOWTransaction(session)
            flush._register_states(session, uow, None, session._dirty_states)
            found = [
                [name_of(s) for s in find(uow, base, isdelete, listonly)]
                for isdelete in (False, True)
                for listonly in (False, True)
            ]
            return found, sorted(
                (m.class_.__name__, len(states)) for m, states in uow.mappers.items()
            )

        expected = run(
            lambda uow, m, d, l: list(
                unitofwork.UOWTransaction.states_for_mapper_hierarchy(uow, m, d, l)
            )
        )
        hierarchy = tuple(base.self_and_descendants)
        actual = run(lambda uow, m, d, l: impl.unitofwork.states_of_mappers(uow, hierarchy, d, l))
        by_mapper = run(impl.unitofwork.states_for_mapper_hierarchy)
        assert actual == expected == by_mapper
        assert any(expected[0][0]) and any(expected[0][2])
        session.rollback()


def test_sort_states_of_one_state_as_stock(impl, db):
    """``persist.sort_states`` of a single state (its shortcut) gives
    stock's ``persistence._sort_states`` result and raises its errors: a
    pending state's ``insert_order`` is read, a persistent state's sort
    key function is called (its ``TypeError`` reported as stock reports it)."""
    from sqlalchemy import exc as sa_exc
    from sqlalchemy.orm import Session, persistence

    mapper = Vehicle.__mapper__
    calls = []

    def sortkey(state):
        calls.append(name_of(state))
        return state.key[1]

    def bad_sortkey(state):
        raise TypeError("unsortable")

    with Session(db) as session:
        old = Car(name="old")
        session.add(old)
        session.flush()
        new = Truck(name="new")
        session.add(new)
        for obj in (old, new):
            state = attributes.instance_state(obj)
            expected = persistence._sort_states(mapper, [state])
            assert impl.persist.sort_states([state], None) == expected == [state]
            del calls[:]
            assert impl.persist.sort_states([state], sortkey) == [state]
            assert calls == ([] if obj is new else ["old"])
        state = attributes.instance_state(old)
        with pytest.raises(sa_exc.InvalidRequestError, match="unsortable"):
            impl.persist.sort_states([state], bad_sortkey)
        # a state never added (insert_order as InstanceState leaves it)
        loose = attributes.instance_state(Car(name="loose"))
        assert impl.persist.sort_states([loose], None) == persistence._sort_states(
            mapper, [loose]
        ) == [loose]


def test_sort_states_of_persistent_states_as_stock(impl, db):
    """``persist.sort_states`` of persistent states (with new ones among
    them) gives stock's ``persistence._sort_states`` result, in a new list,
    whatever their identity values are: distinct single ints (compiled,
    sorted as ints; listed in their order, and not), one state listed twice,
    an int repeated by two states (equal keys: the order of stock's set
    decides), a bool among ints, composite and string values, and values
    that do not compare, whose ``TypeError`` both report as the same
    ``InvalidRequestError``."""
    import random

    from sqlalchemy import exc as sa_exc
    from sqlalchemy.orm import Session, persistence

    mapper = Vehicle.__mapper__

    def keyed(values_list):
        states = []
        for values in values_list:
            state = attributes.instance_state(Car(name=f"car {values!r}"))
            state.key = (Vehicle, values, None)
            states.append(state)
        return states

    with Session(db) as session:
        new = [Truck(name=f"new {i}") for i in range(3)]
        session.add_all(new)
        new_states = [attributes.instance_state(o) for o in new]
        rng = random.Random(11)
        ints = list(range(1, 40))
        rng.shuffle(ints)
        in_order = keyed([(i,) for i in sorted(ints)])
        cases = [
            keyed([(i,) for i in ints]),
            in_order,
            in_order + in_order[:1],  # one state twice
            in_order[:5] + in_order[2:3],
            keyed([(2**70,), (-(2**70),), (0,)]),
            keyed([(i,) for i in ints]) + new_states,
            keyed([(5,), (3,), (5,), (1,), (4,)]),
            keyed([(2,), (True,), (0,), (3,)]),
            keyed([(2, "b"), (1, "z"), (2, "a"), (1, "a")]),
            keyed([("pear",), ("apple",), ("fig",)]),
            keyed([(3,), (1,), (2.5,), (-1,)]),
        ]
        for states in cases:
            for listed in (states, states[::-1]):
                expected = persistence._sort_states(mapper, listed)
                found = impl.persist.sort_states(listed, None)
                assert found == expected
                assert found is not listed
        unsortable = keyed([(1,), ("one",), (2,)])
        with pytest.raises(sa_exc.InvalidRequestError) as stock_error:
            persistence._sort_states(mapper, unsortable)
        with pytest.raises(sa_exc.InvalidRequestError) as found_error:
            impl.persist.sort_states(unsortable, None)
        assert str(found_error.value) == str(stock_error.value)
        assert "values must be sortable" in str(found_error.value)


def test_sort_states_of_new_states_as_stock(impl, db):
    """``persist.sort_states`` of many states gives stock's
    ``persistence._sort_states`` result, in a new list: new states listed
    in the order they were added, out of that order, with an
    ``insert_order`` repeated by an object expunged and added again (the
    order of its set then decides, as in stock's sort), and mixed with
    persistent states."""
    import random

    from sqlalchemy.orm import Session, persistence

    mapper = Vehicle.__mapper__
    with Session(db) as session:
        old = [Car(name=f"old {i}") for i in range(3)]
        session.add_all(old)
        session.flush()
        new = [Truck(name=f"new {i}") for i in range(8)]
        session.add_all(new)
        states = [attributes.instance_state(o) for o in new]
        olds = [attributes.instance_state(o) for o in old]
        shuffled = states[:]
        random.Random(7).shuffle(shuffled)
        cases = [states, shuffled, states[::-1], states[:3] + olds + states[3:], olds + states]
        for listed in cases:
            expected = persistence._sort_states(mapper, listed)
            found = impl.persist.sort_states(listed, None)
            assert found == expected
            assert found is not listed
        assert impl.persist.sort_states(states, None) == states
        session.expunge(new[2])
        session.add(new[2])  # its insert_order now repeats the last one's
        assert len({s.insert_order for s in states}) == len(states) - 1
        for listed in (states, shuffled):
            assert impl.persist.sort_states(listed, None) == persistence._sort_states(
                mapper, listed
            )
