"""Random session programs, run on stock and on turbosession side by side.

A hypothesis state machine drives two worlds with the same random sequence of
session operations (add, modify, delete, expunge, merge, flush, commit,
rollback, begin_nested, expire, refresh, get): stock ``Session`` on one
SQLite database, turbosession's (one implementation) on another.  After every step the
SQL sent, the committed rows, each object's state and loaded attribute values,
and the outcome of the step (value or exception) must be the same.

Two machines: ``MixedPrograms`` mixes simple mappers, a one-to-many with
delete-orphan, a many-to-many through an association table and a
joined-inheritance pair; ``TreePrograms`` grows, moves and prunes a
self-referential tree.  The tree has a machine of its own because a flush
whose mappers form a cycle runs each round of its sorted actions in the order
of a set (stock's ``UOWTransaction.execute``), by memory address: with other
mappers in the same flush, two runs of stock itself send unrelated mappers'
statements in different orders.  With the tree alone, stock repeats the
order of its writes; what else of a cyclic flush follows memory addresses
(its loads, which of two errors it meets first) ``TreePrograms`` says.

Each guard below leaves out something stock itself does in an order no second
run repeats.  ``test_stock_against_stock`` runs both machines with stock in
both worlds, which proves that the comparison, guards included, holds for
stock against itself: a difference with turbosession is then turbosession's.
"""

import os
import re
import shutil
import sqlite3
import tempfile
import warnings

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, precondition, rule, run_state_machine_as_test
from sqlalchemy import Column, ForeignKey, String, Table, create_engine, event, inspect, orm, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import turbosession

from support import object_state, scrub


class Base(DeclarativeBase):
    # SQLite's AUTOINCREMENT: a generated key is never one a deleted row had.
    # Otherwise a new object can be given the identity of an object the
    # session still holds, and stock then registers the two in the order of
    # a set (which one keeps the identity, how many warnings): by memory
    # address, as with the row switches the guards below leave out
    __table_args__ = {"sqlite_autoincrement": True}


class Item(Base):
    __tablename__ = "df_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    qty: Mapped[int] = mapped_column(default=0)


class Parent(Base):
    __tablename__ = "df_parent"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    children: Mapped[list["Child"]] = relationship(cascade="all, delete-orphan", order_by="Child.id")


class Child(Base):
    __tablename__ = "df_child"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("df_parent.id"))
    name: Mapped[str] = mapped_column(String(30))


class Staff(Base):
    """A joined-inheritance pair (two tables, a discriminator)."""

    __tablename__ = "df_staff"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "staff"}


class Engineer(Staff):
    __tablename__ = "df_engineer"
    id: Mapped[int] = mapped_column(ForeignKey("df_staff.id"), primary_key=True)
    qty: Mapped[int] = mapped_column(default=0)
    __mapper_args__ = {"polymorphic_identity": "engineer"}


post_tag = Table(
    "df_post_tag",
    Base.metadata,
    Column("post_id", ForeignKey("df_post.id"), primary_key=True),
    Column("tag_id", ForeignKey("df_tag.id"), primary_key=True),
)


class Post(Base):
    """A many-to-many through an association table."""

    __tablename__ = "df_post"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    tags: Mapped[list["Tag"]] = relationship(secondary=post_tag, order_by="Tag.id")


class Tag(Base):
    __tablename__ = "df_tag"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))


# the last key given to a new node, per world (by its engine): see Node
LAST_NODE_KEY = {}


def next_node_key(context):
    keys = LAST_NODE_KEY[context.root_connection.engine]
    keys[0] += 1
    return keys[0]


class Node(Base):
    """A self-referential tree: children with delete-orphan, the parent back.

    Its keys come from a counter of the world's, which no rollback takes
    back.  A key the database generates is given again after a rollback
    (of a savepoint too), while objects that had it keep it in their dict:
    a new node and a re-pended one can then share an identity, and in a
    flush that forms a cycle stock then fails, or switches the row, in the
    order of a set of states (by memory address)."""

    __tablename__ = "df_node"
    id: Mapped[int] = mapped_column(primary_key=True, default=next_node_key)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("df_node.id"))
    name: Mapped[str] = mapped_column(String(30))
    children: Mapped[list["Node"]] = relationship(
        cascade="all, delete-orphan", back_populates="parent", order_by="Node.id"
    )
    parent: Mapped["Node | None"] = relationship(back_populates="children", remote_side=[id])


TABLES = [table.name for table in Base.metadata.sorted_tables]

# the association table, whose rows a flush sends in one executemany per
# statement in the order of a set of states (see World._record)
ASSOCIATION = post_tag.name


def restore_error(exc):
    """An exception's text without memory addresses, and without the object
    a rollback's snapshot restore names when it cannot revert a deletion.

    Restoring a snapshot (a rollback, or the one a failed flush runs, whose
    error then replaces the flush's) reverts each deleted state in the
    order of a set of states, and raises for the first one without an
    identity: which one that is depends on memory addresses, in stock as in
    turbosession, so the two worlds can name different objects.  The type
    and the rest of the text are compared; the states afterwards are
    compared by ``observe``.
    """
    text = re.sub(r"Instance '<\w+ at 0x\?>' is not persisted", "Instance '<?>' is not persisted",
                  scrub(str(exc)))
    cycle = re.fullmatch(r"Circular dependency detected\. \((.*)\)", text, re.S)
    if cycle:
        # the actions of the cycle, named in the order of a set
        text = f"Circular dependency detected. {sorted(top_level_items(cycle.group(1)))}"
    return text


def top_level_items(text):
    """``text``'s comma-separated items, commas inside brackets kept."""
    items, depth, start = [], 0, 0
    for index, char in enumerate(text):
        depth += char in "([{<"
        depth -= char in ")]}>"
        if char == "," and depth == 0:
            items.append(text[start:index].strip())
            start = index + 1
    items.append(text[start:].strip())
    return items


def _unsynchronised(dbapi_connection, connection_record):
    # the worlds' files are thrown away: no fsync per commit (not a statement
    # SQLAlchemy sends, so not among those compared)
    dbapi_connection.execute("PRAGMA synchronous = OFF")


class World:
    def __init__(self, session_cls, folder, name):
        self.path = f"{folder}/{name}.db"
        self.engine = create_engine(f"sqlite:///{self.path}")
        event.listen(self.engine, "connect", _unsynchronised)
        LAST_NODE_KEY[self.engine] = [0]
        Base.metadata.create_all(self.engine)
        self.sql = []
        event.listen(self.engine, "before_cursor_execute", self._record)
        self.session = session_cls(self.engine)
        self.objects = []
        self.nested = []

    def _record(self, conn, cursor, statement, parameters, context, executemany):
        if executemany and ASSOCIATION in statement:
            # stock sends a many-to-many's association rows in the order it
            # iterates the flush's states, a set ordered by memory address,
            # so two runs of stock itself send them in different orders:
            # the rows are compared, and the statements' order and batching
            parameters = sorted(parameters)
        self.sql.append((statement, repr(parameters), self.session._flushing))

    def attempt(self, action, forget_failed_flushes):
        """The outcome of one step: its value, or the exception's type and text
        (``restore_error``), and the warnings it gave.

        Two outcomes leave the session as stock leaves it in the order of a
        set of states, which no second run of stock repeats, and the program
        goes on with the session closed and no objects (``forget``):

        - a rollback whose snapshot restore raised: it stops at the first
          deleted state without an identity, and leaves the states after it
          as they were, loaded or not;
        - with ``forget_failed_flushes``, any failed flush.  A flush whose
          mappers form a cycle runs its per-state actions in set order, so
          when two of them would fail (a new object's key taken, an orphan
          without one), which fails first, which statements went before it
          and which pending objects had their foreign keys copied all vary.
          That a flush failed is compared; its statements, exception and
          warnings are not.
        """
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result = action(self)
            except Exception as exc:
                outcome = ("raised", type(exc).__name__, restore_error(exc))
                restore_raised = "is not persisted" in outcome[2]
                flush_failed = self.session.in_transaction() and not self.session.is_active
                if flush_failed:
                    # restoring the snapshot can itself raise (stock does, for
                    # some objects deleted before a failed flush): part of
                    # the outcome, compared like the rest
                    try:
                        self.session.rollback()
                    except Exception as rollback_exc:
                        outcome += ("rollback raised", type(rollback_exc).__name__,
                                    restore_error(rollback_exc))
                        restore_raised = True
                if flush_failed and forget_failed_flushes:
                    self.forget(flushed_writes=True)
                    return ("raised", "a flush failed"), []
                if restore_raised:
                    self.forget(flushed_writes=False)
            else:
                outcome = ("ok", self.describe_value(result))
        return outcome, [(w.category.__name__, scrub(str(w.message))) for w in caught]

    def forget(self, flushed_writes):
        """Close the session and drop the objects, and the statements the
        failed flush sent: its loads, and with ``flushed_writes`` all of them
        (see ``attempt``).  The rows are still compared."""
        self.session.close()
        self.objects.clear()
        self.nested.clear()
        self.sql = [
            entry for entry in self.sql
            if not (entry[2] and (flushed_writes or entry[0].startswith("SELECT")))
        ]

    def describe_value(self, value):
        if isinstance(value, Base):
            return ("object", self.index_of(value))
        if isinstance(value, (list, tuple)):
            return [self.describe_value(v) for v in value]
        return scrub(repr(value))

    def index_of(self, obj):
        for index, known in enumerate(self.objects):
            if known is obj:
                return index
        return None

    def observe(self, arrange):
        """What the step did and left, with the statements sent as
        ``arrange`` puts them."""
        sql, self.sql = arrange(self.sql), []
        objects = []
        for obj in self.objects:
            loaded = {
                k: v if not isinstance(v, (list, Base)) else self.describe_value(v)
                for k, v in sorted(obj.__dict__.items())
                if not k.startswith("_")
            }
            objects.append((type(obj).__name__, object_state(obj), obj in self.session, loaded))
        with sqlite3.connect(self.path) as raw:
            rows = {t: raw.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in TABLES}
        sets = {
            label: sorted(self.index_of(o) or -1 for o in getattr(self.session, label))
            for label in ("new", "dirty", "deleted")
        }
        return sql, objects, rows, sets

    def close(self):
        self.session.close()
        self.engine.dispose()
        del LAST_NODE_KEY[self.engine]


def loads_unordered(sql):
    """The statements sent, with each run of consecutive SELECTs sorted.

    A flush loads what its processors need of the states it deletes (an
    expired object's row, a delete-orphan collection) in the order it iterates
    a mapper's states, which stock keeps in a set: by memory address, so two
    runs of stock itself load them in different orders.  What is loaded, and
    every INSERT, UPDATE and DELETE with its place, is still compared."""
    out, run = [], []
    for entry in sql:
        if entry[0].startswith("SELECT"):
            run.append(entry)
            continue
        out.extend(sorted(run))
        run = []
        out.append(entry)
    out.extend(sorted(run))
    return out


def flush_loads_left_out(sql):
    """The statements sent, in order, without the SELECTs sent during a flush.

    A flush whose mappers form a cycle runs its per-state actions (saving the
    states of one mapper together, or one processor's work for one state)
    round by round, each round in the order of a set: by memory address.  The
    loads those actions make depend on that order in stock itself: where they
    come among the writes, and which are made at all (loading a node's
    children refreshes their rows on the way, and a later action then needs
    no load of its own).  Every other statement is compared in place, and
    what the loads left in the objects is compared once ``settle`` has loaded
    the rest."""
    return [entry for entry in sql if not (entry[2] and entry[0].startswith("SELECT"))]


def row_switch(world, cls, ident):
    """Whether a new object with this identity would replace a deleted one.

    Stock then makes both states persistent in one set and the one it
    registers last (by memory address) keeps the identity; no second run
    repeats that, so the state machine leaves row switches to test_fastpath.
    """
    return ident is not None and any(
        isinstance(obj, cls) and obj.__dict__.get("id") == ident
        for obj in world.session.deleted
    )


def new_twin(world, cls, ident):
    """Whether a pending object already has the identity a new object of
    ``cls`` would have.  If both reach the database (one of them by a row
    switch, or with the row gone from under a persistent object), stock
    makes both states persistent in one set and the one it registers last
    (by memory address) keeps the identity, as in ``row_switch``."""
    base = inspect(cls).base_mapper
    return ident is not None and any(
        inspect(other).mapper.base_mapper is base and other.__dict__.get("id") == ident
        for other in world.session.new
    )


def pending_twin(world, obj):
    """Whether a pending object has the identity of ``obj``, so that deleting
    ``obj`` would make a row switch (see ``row_switch``)."""
    ident = obj.__dict__.get("id")
    base = inspect(obj).mapper.base_mapper
    return ident is not None and any(
        other is not obj
        and inspect(other).mapper.base_mapper is base
        and other.__dict__.get("id") == ident
        for other in world.session.new
    )


def pick(objects, cls, index):
    """The ``index``-th (modulo) of the world's objects of ``cls``, or None."""
    chosen = [o for o in objects if isinstance(o, cls)]
    return chosen[index % len(chosen)] if chosen else None


class Programs(RuleBasedStateMachine):
    """The rules every model set shares; ``session_cls`` is the second
    world's session class, ``GET_CLASSES`` what ``get`` asks for,
    ``LOAD_ALL`` the statement ``load_all`` executes, ``ARRANGE`` how a
    step's statements are compared and ``FORGET_FAILED_FLUSHES`` whether a
    failed flush ends the session (``World.attempt``)."""

    session_cls = None
    GET_CLASSES = ()
    LOAD_ALL = None
    ARRANGE = staticmethod(loads_unordered)
    FORGET_FAILED_FLUSHES = False

    def __init__(self):
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="turbosession-differential-")
        self.worlds = [World(orm.Session, self.folder, "stock"), World(self.session_cls, self.folder, "other")]

    def step(self, action):
        results = [world.attempt(action, self.FORGET_FAILED_FLUSHES) for world in self.worlds]
        for world in self.worlds:
            self.settle(world)
        observed = [world.observe(self.ARRANGE) for world in self.worlds]
        assert results[1] == results[0]
        assert observed[1] == observed[0]
        # a forgotten failed flush can have used more node keys in one world
        # (World.attempt): both go on from the same one
        last = max(LAST_NODE_KEY[world.engine][0] for world in self.worlds)
        for world in self.worlds:
            LAST_NODE_KEY[world.engine][0] = last

    def teardown(self):
        for world in self.worlds:
            world.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def has_objects(self):
        return bool(self.worlds[0].objects)

    def settle(self, world):
        """After each step, before it is observed (``TreePrograms``)."""

    def may_refresh(self, world):
        """Whether ``refresh`` runs now (``TreePrograms``)."""
        return True

    def add_new(self, world, cls, ident, **values):
        """Add a new ``cls`` with this identity (None: autoincrement), unless
        a guard above leaves it out; returns it, or None."""
        if row_switch(world, cls, ident) or new_twin(world, cls, ident):
            return None
        obj = cls(id=ident, **values) if ident is not None else cls(**values)
        world.objects.append(obj)
        world.session.add(obj)
        return obj

    @precondition(has_objects)
    @rule(index=st.integers(0, 50), kind=st.sampled_from(["delete", "expunge", "expire", "refresh", "merge"]))
    def object_operation(self, index, kind):
        def action(world):
            obj = world.objects[index % len(world.objects)]
            if kind == "expunge" and object_state(obj) == "pending":
                # a pending object expunged and added again can share its
                # insert_order with another one; stock then orders their
                # INSERTs by memory address, which no second run repeats
                return None
            if kind == "delete" and pending_twin(world, obj):
                # deleting an object a pending one shares its identity
                # with makes a row switch too (see row_switch)
                return None
            if kind == "refresh" and not self.may_refresh(world):
                return None
            if kind == "merge":
                merged = world.session.merge(obj)
                if world.index_of(merged) is None:
                    world.objects.append(merged)
                return merged
            return getattr(world.session, kind)(obj)
        self.step(action)

    @rule(ident=st.integers(1, 6), which=st.integers(0, 10))
    def get(self, ident, which):
        cls = self.GET_CLASSES[which % len(self.GET_CLASSES)]

        def action(world):
            obj = world.session.get(cls, ident)
            if obj is not None and world.index_of(obj) is None:
                world.objects.append(obj)
            return obj
        self.step(action)

    @rule(kind=st.sampled_from(["flush", "commit", "rollback", "expire_all"]))
    def session_operation(self, kind):
        self.step(lambda world: getattr(world.session, kind)())

    @rule()
    def begin_nested(self):
        def action(world):
            world.nested.append(world.session.begin_nested())
        self.step(action)

    @precondition(lambda self: self.worlds[0].nested)
    @rule(commit=st.booleans())
    def end_nested(self, commit):
        def action(world):
            nested = world.nested.pop()
            if nested.is_active:
                nested.commit() if commit else nested.rollback()
        self.step(action)

    @rule()
    def load_all(self):
        def action(world):
            loaded = world.session.scalars(self.LOAD_ALL).all()
            for obj in loaded:
                if world.index_of(obj) is None:
                    world.objects.append(obj)
            return loaded
        self.step(action)


class MixedPrograms(Programs):
    GET_CLASSES = (Item, Parent, Staff, Post, Tag)
    # one statement object for every load: executed again, it takes
    # turbosession's direct execution (README, "Repeated selects"), whose
    # autoflush and loads the programs then compare with stock's
    LOAD_ALL = select(Item).order_by(Item.id)

    @rule(ident=st.one_of(st.none(), st.integers(1, 6)), name=st.sampled_from(["a", "b", "c"]))
    def add_item(self, ident, name):
        self.step(lambda world: self.add_new(world, Item, ident, name=name))

    @rule(ident=st.integers(1, 3), kids=st.integers(0, 2))
    def add_parent(self, ident, kids):
        def action(world):
            parent = self.add_new(
                world, Parent, ident, name="p", children=[Child(name=f"k{i}") for i in range(kids)]
            )
            if parent is not None:
                world.objects.extend(parent.children)
        self.step(action)

    @rule(ident=st.one_of(st.none(), st.integers(1, 4)), engineer=st.booleans())
    def add_staff(self, ident, engineer):
        self.step(lambda world: self.add_new(world, Engineer if engineer else Staff, ident, name="s"))

    @rule(ident=st.one_of(st.none(), st.integers(1, 4)))
    def add_tag(self, ident):
        self.step(lambda world: self.add_new(world, Tag, ident, name="t"))

    @rule(ident=st.integers(1, 3), picks=st.lists(st.integers(0, 50), max_size=2))
    def add_post(self, ident, picks):
        def action(world):
            chosen = []
            for index in picks:
                tag = pick(world.objects, Tag, index)
                if tag is not None and tag not in chosen:
                    chosen.append(tag)
            self.add_new(world, Post, ident, name="p", tags=chosen)
        self.step(action)

    @precondition(Programs.has_objects)
    @rule(index=st.integers(0, 50), value=st.sampled_from(["x", "y", "a"]), qty=st.integers(0, 3))
    def modify(self, index, value, qty):
        def action(world):
            obj = world.objects[index % len(world.objects)]
            obj.name = value
            if isinstance(obj, (Item, Engineer)):
                obj.qty = qty
        self.step(action)

    @precondition(Programs.has_objects)
    @rule(index=st.integers(0, 50))
    def reparent(self, index):
        def action(world):
            parent = pick(world.objects, Parent, index)
            # a pending orphan is expunged at once, and objects added
            # after it can then tie insert_order (see object_operation)
            if parent is not None and parent.children and object_state(parent.children[-1]) != "pending":
                parent.children.pop()
        self.step(action)

    @precondition(Programs.has_objects)
    @rule(post=st.integers(0, 50), tag=st.integers(0, 50), link=st.booleans())
    def relink(self, post, tag, link):
        def action(world):
            chosen = pick(world.objects, Post, post)
            if chosen is None:
                return
            if link:
                added = pick(world.objects, Tag, tag)
                if added is not None and added not in chosen.tags:
                    chosen.tags.append(added)
            elif chosen.tags:
                chosen.tags.pop(tag % len(chosen.tags))
        self.step(action)


def descends_from(node, ancestor):
    """Whether ``ancestor`` is ``node`` or above it in the loaded tree."""
    while node is not None:
        if node is ancestor:
            return True
        node = node.parent
    return False


def doomed(world, node):
    """Whether the next flush deletes ``node``: it, or a node above it, is
    marked deleted or was taken from its parent (an orphan).  Read from the
    objects' dicts and histories, without loading."""
    while node is not None:
        parent = node.__dict__.get("parent")
        if node in world.session.deleted or (parent is None and inspect(node).attrs.parent.history.deleted):
            return True
        node = parent
    return False


class TreePrograms(Programs):
    GET_CLASSES = (Node,)
    LOAD_ALL = select(Node).order_by(Node.id)
    ARRANGE = staticmethod(flush_loads_left_out)
    FORGET_FAILED_FLUSHES = True

    def settle(self, world):
        """Load what each persistent node has unloaded (its row, children and
        parent), in the order of their keys, without autoflush.

        A flush whose mappers form a cycle runs its per-state actions round
        by round, each round in the order of a set: by memory address.  The
        loads those actions need then come in that order, and one can make
        another unnecessary (loading a parent's children refreshes an expired
        child's row), or come too late (stock sends a deleted node's DELETE
        with ``NO_VALUE`` for an expired key and the flush fails).  So two runs
        of stock itself load different rows and fail differently.  Settled
        after every step, the tree reaches each flush loaded, unless the step
        itself expired it (``may_refresh``).  These loads are compared like
        any other statement; a flush's own are left out
        (``flush_loads_left_out``), and expired objects at a flush are the
        mixed machine's."""
        with world.session.no_autoflush:
            for key, node in sorted(world.session.identity_map.items(), key=lambda item: item[0][1]):
                if object_state(node) != "persistent":
                    continue
                try:
                    for attribute in ("name", "children", "parent"):
                        getattr(node, attribute)
                except orm.exc.ObjectDeletedError:
                    # a rollback took the row of a node loaded since: noted,
                    # and compared with the statements
                    world.sql.append(("row gone", repr(key[1]), False))

    def may_refresh(self, world):
        """Only with nothing to flush: ``refresh`` expires the node before its
        query autoflushes, and the flush would meet it expired (``settle``)."""
        session = world.session
        return not (session.new or session.dirty or session.deleted)

    @rule(parent=st.one_of(st.none(), st.integers(0, 50)))
    def add_node(self, parent):
        def action(world):
            above = pick(world.objects, Node, parent) if parent is not None else None
            if above is not None and (above not in world.session or doomed(world, above)):
                # a new node under one the flush deletes: stock deletes
                # the new one too, and depending on the order of a set of
                # states sends a DELETE without its key (``NO_VALUE``).  Or
                # under one outside the session: the cascade attaches it
                # again, and it can have the identity of a node loaded since,
                # which stock then registers with it in the order of a set
                return
            node = self.add_new(world, Node, None, name="n")
            if node is not None and above is not None:
                node.parent = above
        self.step(action)

    @precondition(Programs.has_objects)
    @rule(index=st.integers(0, 50), above=st.one_of(st.none(), st.integers(0, 50)))
    def move(self, index, above):
        """Give a node another parent, or none (an orphan, which delete-orphan
        deletes at the flush); never under itself."""
        def action(world):
            node = pick(world.objects, Node, index)
            new_parent = pick(world.objects, Node, above) if above is not None else None
            if node is None or (new_parent is not None and descends_from(new_parent, node)):
                return
            if node not in world.session or (
                new_parent is not None and (new_parent not in world.session or doomed(world, new_parent))
            ):
                # see add_node
                return
            if object_state(node) == "pending" and node.parent is not None:
                # taken from its parent, a pending node is an orphan and
                # expunged at once (see MixedPrograms.reparent)
                return
            node.parent = new_parent
        self.step(action)

    @precondition(Programs.has_objects)
    @rule(index=st.integers(0, 50), value=st.sampled_from(["x", "y", "n"]))
    def rename(self, index, value):
        def action(world):
            node = pick(world.objects, Node, index)
            if node is not None:
                node.name = value
        self.step(action)


# programs per implementation and machine: 500 in CI; a release run sets more,
# e.g. TURBOSESSION_DIFFERENTIAL_EXAMPLES=20000 (README, "Reliability checks")
EXAMPLES = int(os.environ.get("TURBOSESSION_DIFFERENTIAL_EXAMPLES", "500"))
STEPS = int(os.environ.get("TURBOSESSION_DIFFERENTIAL_STEPS", "25"))
MACHINES = {"mixed": MixedPrograms, "tree": TreePrograms}


def run_programs(machine, session_cls, examples):
    run_state_machine_as_test(
        type(machine.__name__, (machine,), {"session_cls": session_cls}),
        settings=settings(
            max_examples=examples,
            stateful_step_count=STEPS,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


@pytest.mark.parametrize("models", MACHINES)
def test_random_session_programs(session_cls, models):
    turbosession.reset_stats()
    run_programs(MACHINES[models], session_cls, EXAMPLES)
    # the programs' loads took the direct execution too
    assert turbosession.stats()["loads"]["execute"]["direct"] > 0


@pytest.mark.parametrize("models", MACHINES)
def test_stock_against_stock(models):
    """The comparison and its guards hold for stock against itself."""
    run_programs(MACHINES[models], orm.Session, EXAMPLES)
