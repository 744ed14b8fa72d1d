"""A self-referential flush of new objects ordered from the states' links
(``_unitofwork.tree_rounds``) against stock's.

Each scenario runs on stock's ``Session`` and on the session under test
(``tests/support.py``), both modes, SQLite and PostgreSQL: every statement
with its parameters and batching down to the DBAPI cursor, every mapper
event with its target, the session's lifecycle events, and the objects'
states and keys must be equal.  The shapes: deep chains, wide fans, a
forest, nodes added in random order, the one-to-many or the many-to-one
alone, a node under a parent already persistent (ordered by the split),
links that loop (stock's error), and seeded random trees.  The rounds
themselves are compared with stock's split and sort, record by record.
"""

import random

import pytest
from sqlalchemy import ForeignKey, String, event, inspect, orm
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, unitofwork
from sqlalchemy.util import topological

import turbosession
from turbosession import flush
from support import assert_same_as_stock, normalize_error, object_state


class Base(DeclarativeBase):
    pass


class Node(Base):
    """Both processors: the one-to-many and its many-to-one back."""

    __tablename__ = "tr_node"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("tr_node.id"))
    children: Mapped[list["Node"]] = relationship(
        back_populates="parent", cascade="all, delete-orphan"
    )
    parent: Mapped["Node | None"] = relationship(back_populates="children", remote_side=[id])


class Folder(Base):
    """The one-to-many alone."""

    __tablename__ = "tr_folder"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("tr_folder.id"))
    children: Mapped[list["Folder"]] = relationship(cascade="all")


class Step(Base):
    """The many-to-one alone."""

    __tablename__ = "tr_step"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    previous_id: Mapped[int | None] = mapped_column(ForeignKey("tr_step.id"))
    previous: Mapped["Step | None"] = relationship(remote_side=[id])


MODELS = (Node, Folder, Step)
MAPPER_EVENTS = ("before_insert", "after_insert", "before_update", "after_update")
SESSION_EVENTS = ("before_flush", "after_flush", "after_flush_postexec", "after_commit")


def render(arg):
    if isinstance(arg, MODELS):
        state = inspect(arg)
        return f"{type(arg).__name__}({state.dict.get('name') or state.identity})"
    if isinstance(arg, orm.Mapper):
        return ("mapper", arg.class_.__name__)
    if isinstance(arg, orm.Session):
        return "session"
    if isinstance(arg, unitofwork.UOWTransaction):
        return "flush_context"
    return type(arg).__name__


class _Current:
    log = None


def _mapper_listener(name):
    def listener(mapper, connection, target):
        if _Current.log is not None:
            _Current.log.note(name, render(mapper), render(target))

    return listener


for _model in MODELS:
    for _name in MAPPER_EVENTS:
        event.listen(_model, _name, _mapper_listener(_name))


def check(scenario, session_cls, engine, flush_listeners=True):
    """``scenario(session, log)`` side by side with stock's; without
    ``flush_listeners`` the session's flush events are not listened to
    (the presort then keeps its answers, which the rounds read)."""

    def logged(session_cls_, engine_, log):
        _Current.log = log
        try:
            session = session_cls_(engine_)
            for name in SESSION_EVENTS if flush_listeners else ("after_commit",):
                event.listen(
                    session, name,
                    lambda *args, name=name: log.note(name, *[render(a) for a in args]),
                )
            with session:
                try:
                    objects = scenario(session)
                except Exception as exc:
                    # the cycle's actions, listed in set order (memory
                    # addresses, which vary between two stock runs too)
                    kind, message = normalize_error(exc)
                    head, _, listed = message.partition("(")
                    log.note("error", kind, head, sorted(listed[:-1].split(", ")))
                    session.rollback()
                    return
                for obj in objects:
                    log.note("object", render(obj), object_state(obj), inspect(obj).key)
        finally:
            _Current.log = None

    return assert_same_as_stock(logged, session_cls, engine, Base.metadata)


def counted_cycles(session_cls, engine, scenario, flush_listeners=True):
    """How turbosession ordered the scenario's flushes with cycles."""
    turbosession.reset_stats()
    check(scenario, session_cls, engine, flush_listeners)
    return turbosession.stats()["cycles"]


def tree(cls, link, size, parent_of, prefix="n"):
    """``size`` new objects, object i linked (``link(child, parent)``)
    under object ``parent_of(i)`` (None for a root)."""
    nodes = [cls(name=f"{prefix}{i}") for i in range(size)]
    for i, node in enumerate(nodes):
        parent = parent_of(i)
        if parent is not None:
            link(node, nodes[parent])
    return nodes


def by_parent(child, parent):
    child.parent = parent


def by_children(child, parent):
    parent.children.append(child)


def by_previous(child, parent):
    child.previous = parent


SHAPES = {
    # parent index of node i (i > 0; node 0 is a root)
    "chain": lambda i: i - 1 if i else None,
    "fan": lambda i: 0 if i else None,
    "fan_out_3": lambda i: (i - 1) // 3 if i else None,
    "forest": lambda i: None if i % 10 == 0 else i - 1 - (i % 3 == 2),
}


@pytest.mark.parametrize("flush_listeners", [True, False], ids=["listened", "unlistened"])
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("link", [by_parent, by_children], ids=["parent", "children"])
def test_tree_of_new_nodes(session_cls, engine, shape, link, flush_listeners):
    def scenario(session):
        nodes = tree(Node, link, 40, SHAPES[shape])
        session.add_all(nodes)
        session.commit()
        return nodes

    assert counted_cycles(session_cls, engine, scenario, flush_listeners) == {
        "tree": 1, "split": 0,
    }


def test_nodes_added_in_random_order(session_cls, engine):
    """Parents chosen at random among earlier nodes, then the nodes added
    (and so inserted) in a shuffled order."""

    def scenario(session):
        rng = random.Random(7)
        parents = [None] + [rng.randrange(i) for i in range(1, 60)]
        nodes = tree(Node, by_parent, 60, parents.__getitem__)
        shuffled = nodes[:]
        rng.shuffle(shuffled)
        for node in shuffled:
            session.add(node)
        session.flush()
        extra = tree(Node, by_children, 12, lambda i: i - 1 if i else None, prefix="x")
        nodes[5].children.append(extra[0])  # nodes[5] is persistent now
        session.commit()
        return nodes + extra

    assert counted_cycles(session_cls, engine, scenario) == {"tree": 1, "split": 1}


@pytest.mark.parametrize("flush_listeners", [True, False], ids=["listened", "unlistened"])
@pytest.mark.parametrize("cls,link", [(Folder, by_children), (Step, by_previous)])
def test_one_processor_alone(session_cls, engine, cls, link, flush_listeners):
    def scenario(session):
        nodes = tree(cls, link, 30, SHAPES["fan_out_3"])
        session.add_all(nodes)
        session.commit()
        return nodes

    assert counted_cycles(session_cls, engine, scenario, flush_listeners) == {
        "tree": 1, "split": 0,
    }


def test_new_nodes_under_a_persistent_parent(session_cls, engine):
    """The parent is flushed again (its collection changed): the split."""

    def scenario(session):
        root = Node(name="root")
        session.add(root)
        session.commit()
        nodes = tree(Node, by_parent, 20, SHAPES["fan_out_3"])
        nodes[0].parent = root
        session.add_all(nodes)
        session.commit()
        return [root] + nodes

    # (the root alone is a flush of one new object, without a sort)
    assert counted_cycles(session_cls, engine, scenario) == {"tree": 0, "split": 1}


def test_links_that_loop(session_cls, engine):
    """Two new steps each after the other: stock's sort raises, from the
    split (the rounds are not computed)."""

    def scenario(session):
        first, second = Step(name="first"), Step(name="second")
        first.previous, second.previous = second, first
        session.add_all([first, second])
        session.flush()
        return [first, second]

    assert counted_cycles(session_cls, engine, scenario) == {"tree": 0, "split": 1}


@pytest.mark.parametrize("flush_listeners", [True, False], ids=["listened", "unlistened"])
@pytest.mark.parametrize("seed", range(12))
def test_random_trees(session_cls, engine, seed, flush_listeners):
    """Random forests (random depths and fan-outs, some links made from
    the collection side, some from the many-to-one), added in random
    order, in one or two flushes of new nodes."""

    def scenario(session):
        rng = random.Random(seed)
        size = rng.randrange(2, 80)
        parents = [None] + [
            None if rng.random() < 0.1 else rng.randrange(max(0, i - rng.choice((1, 3, 50))), i)
            for i in range(1, size)
        ]
        nodes = [Node(name=f"r{i}") for i in range(size)]
        for i, parent in enumerate(parents):
            if parent is not None:
                rng.choice((by_parent, by_children))(nodes[i], nodes[parent])
        order = nodes[:]
        rng.shuffle(order)
        cut = rng.randrange(len(order) + 1) if rng.random() < 0.3 else len(order)
        session.add_all(order[:cut])
        session.flush()
        session.add_all(order[cut:])
        session.commit()
        return nodes

    check(scenario, session_cls, engine, flush_listeners)


def stock_rounds(session):
    """Stock's unit of work for the session's changes: its rounds (stock's
    split, then its sort) and its registered records."""
    uow = unitofwork.UOWTransaction(session)
    flush._register_states(session, uow, None, session._dirty_states)
    ordered = sorted(uow._generate_actions(), key=lambda rec: rec.sort_key)
    return list(topological.sort_as_subsets(uow.dependencies, ordered)), uow.postsort_actions


def tree_rounds(session):
    """turbosession's unit of work for the session's changes: the rounds
    of ``tree_rounds`` and the records it registered."""
    uow = flush.UOWTransaction(session)
    flush._register_states(session, uow, None, session._dirty_states)
    uow._run_presort_actions()
    turbo = session._turbo
    rounds = turbo.unitofwork.tree_rounds(
        uow, uow._find_cycles(), turbo.attach.pending_pairs,
        turbo.relationships.collection_answers,
    )
    assert rounds is not None
    return rounds, uow.postsort_actions


def names(rounds, registered):
    return (
        [sorted(map(record_name, round_)) for round_ in rounds],
        sorted(map(record_name, registered.values())),
    )


def record_name(rec):
    fields = [type(rec).__name__, rec.disabled, repr(rec.sort_key)]
    for slot in ("state", "dependency_processor", "isdelete"):
        value = getattr(rec, slot, None)
        if isinstance(value, orm.InstanceState):
            value = value.obj().name
        fields.append(repr(value))
    return tuple(fields)


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_rounds_and_records_as_stock(session_cls, engine, shape):
    """Round by round the same actions as stock's sort of its split, and
    the same records registered (fields and ``disabled``)."""

    def make():
        rng = random.Random(shape)
        nodes = tree(Node, by_parent, 30, SHAPES[shape])
        rng.shuffle(nodes)
        return nodes

    Base.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            session.add_all(make())
            expected = names(*stock_rounds(session))
            actual = names(*tree_rounds(session))
            session.rollback()
    finally:
        Base.metadata.drop_all(engine)
    assert actual == expected
    assert len(expected[0]) > 2


def test_tree_rounds_memoize_state_mapper_as_stock(session_cls, engine):
    """Stock's record constructor reads each state's ``mapper`` (a memoized
    property, then kept in the state's ``__dict__``): so do the rounds."""
    Base.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            nodes = tree(Node, by_children, 20, SHAPES["fan_out_3"])
            session.add_all(nodes)
            states = [inspect(node) for node in nodes]
            assert not any("mapper" in state.__dict__ for state in states)
            tree_rounds(session)
            assert all(state.__dict__["mapper"] is Node.__mapper__ for state in states)
            session.rollback()
    finally:
        Base.metadata.drop_all(engine)


@pytest.mark.parametrize("cls,link", [(Node, by_children), (Folder, by_children)])
def test_rounds_read_the_presort_answers(session_cls, engine, cls, link):
    """Without flush listeners the one-to-many's presort keeps its answers
    for every node (its collection not loaded, or its members all added),
    and the rounds made from them are those made from the pending pairs
    (each in a unit of work of its own)."""

    def rounds(session, answered):
        turbo = session._turbo
        uow = flush.UOWTransaction(session)
        flush._register_states(session, uow, None, session._dirty_states)
        uow._run_presort_actions()
        dp = cls.children.property._dependency_processor
        answers = turbo.relationships.collection_answers(uow, dp)
        leaves = {inspect(node) for node in nodes if "children" not in inspect(node).dict}
        assert set(answers) == {inspect(node) for node in nodes}
        assert {state for state, answer in answers.items() if answer is True} == leaves
        assert len(leaves) == 17
        found = turbo.unitofwork.tree_rounds(
            uow, uow._find_cycles(), turbo.attach.pending_pairs,
            turbo.relationships.collection_answers if answered else None,
        )
        assert found is not None
        return names(found, uow.postsort_actions)

    Base.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            nodes = tree(cls, link, 25, SHAPES["fan_out_3"])
            session.add_all(nodes)
            assert rounds(session, True) == rounds(session, False)
            session.rollback()
    finally:
        Base.metadata.drop_all(engine)
