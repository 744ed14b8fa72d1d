"""add / add_all / delete / delete_all of objects whose relationships
cascade, turbosession against stock.

Each scenario runs on stock's Session and on turbosession's (pinned to one
implementation of ``turbosession._attach``) and records what a program could
observe: session events with their arguments in order, object states, the
order of ``session.new`` and ``session.deleted``, ``insert_order``, the
attachment bookkeeping on each InstanceState, the identity map, exceptions
and SQL.  The models cover one-to-many and many-to-one with backrefs, a
self-referential tree, cycles, many-to-many, list / set / dict collections,
``passive_deletes`` and a relationship without save-update cascade.
"""

import pytest
from sqlalchemy import Column, ForeignKey, String, Table, event, inspect, orm, select
from sqlalchemy.orm import DeclarativeBase, Mapped, attribute_keyed_dict, mapped_column, relationship

import turbosession
from test_attach import bookkeeping, compare_with_stock, guarded


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "ts_casc_author"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    books: Mapped[list["Book"]] = relationship(
        back_populates="author", cascade="all, delete-orphan", order_by="Book.id",
        foreign_keys="Book.author_id",
    )
    # a set collection, delete cascade with passive_deletes
    notes: Mapped[set["Note"]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, collection_class=set
    )
    # a dict collection keyed by the tag's name
    tags: Mapped[dict[str, "Tag"]] = relationship(
        secondary="ts_casc_author_tag", collection_class=attribute_keyed_dict("name")
    )
    # no cascade at all: never followed
    fans: Mapped[list["Fan"]] = relationship(cascade="", viewonly=False)

    def __repr__(self):
        return f"Author({self.__dict__.get('name')!r})"


class Book(Base):
    __tablename__ = "ts_casc_book"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50))
    author_id: Mapped[int | None] = mapped_column(ForeignKey("ts_casc_author.id"))
    author: Mapped[Author | None] = relationship(
        back_populates="books", foreign_keys=[author_id]
    )
    editor_id: Mapped[int | None] = mapped_column(ForeignKey("ts_casc_author.id"))
    # a second many-to-one to the same class: a cycle back to an author
    editor: Mapped[Author | None] = relationship(foreign_keys=[editor_id])

    def __repr__(self):
        return f"Book({self.__dict__.get('title')!r})"


class Note(Base):
    __tablename__ = "ts_casc_note"
    id: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(50))
    author_id: Mapped[int | None] = mapped_column(
        ForeignKey("ts_casc_author.id", ondelete="CASCADE")
    )

    def __repr__(self):
        return f"Note({self.__dict__.get('text')!r})"


author_tag = Table(
    "ts_casc_author_tag",
    Base.metadata,
    Column("author_id", ForeignKey("ts_casc_author.id"), primary_key=True),
    Column("tag_id", ForeignKey("ts_casc_tag.id"), primary_key=True),
)


class Tag(Base):
    __tablename__ = "ts_casc_tag"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))

    def __repr__(self):
        return f"Tag({self.__dict__.get('name')!r})"


class Fan(Base):
    __tablename__ = "ts_casc_fan"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    author_id: Mapped[int | None] = mapped_column(ForeignKey("ts_casc_author.id"))

    def __repr__(self):
        return f"Fan({self.__dict__.get('name')!r})"


class Node(Base):
    __tablename__ = "ts_casc_node"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("ts_casc_node.id"))
    children: Mapped[list["Node"]] = relationship(
        back_populates="parent", cascade="all, delete-orphan", order_by="Node.id"
    )
    parent: Mapped["Node | None"] = relationship(back_populates="children", remote_side=[id])

    def __repr__(self):
        return f"Node({self.__dict__.get('name')!r})"


def everything(session, log, **objects):
    bookkeeping(session, log, **objects)
    log.note("dirty", sorted(repr(o) for o in session.dirty))


def sc_graph_add(session_cls, engine, log):
    session = session_cls(engine)
    a = Author(name="a")
    b1, b2 = Book(title="b1"), Book(title="b2")
    a.books = [b1, b2]
    other = Author(name="other")
    b2.editor = other  # save-update through the many-to-one
    a.notes = {Note(text="n1")}
    a.tags = {"x": Tag(name="x"), "y": Tag(name="y")}
    fan = Fan(name="f")
    a.fans = [fan]  # no cascade: stays transient
    lone = Book(title="lone", author=Author(name="via backref"))
    session.add_all([b1, lone, a])
    everything(session, log, a=a, b1=b1, b2=b2, other=other, fan=fan, lone=lone,
               via=lone.author)
    session.add(fan)
    session.commit()
    everything(session, log, a=a, b1=b1, other=other, fan=fan)
    log.note("rows", session.scalars(select(Book.title).order_by(Book.id)).all())
    session.close()


def sc_tree_and_cycle(session_cls, engine, log):
    session = session_cls(engine)
    nodes = [Node(name="n0")]
    for i in range(1, 12):
        node = Node(name=f"n{i}")
        nodes[(i - 1) // 3].children.append(node)
        nodes.append(node)
    session.add(nodes[5])  # from the middle: up through parent, down through children
    everything(session, log, **{n.name: n for n in nodes})
    session.commit()
    log.note("loaded", [n.name for n in nodes])
    # move a subtree, add again: persistent objects, one new leaf
    nodes[4].parent = nodes[11]
    nodes[4].children.append(Node(name="leaf"))
    session.add(nodes[0])
    everything(session, log, n0=nodes[0], n4=nodes[4], n11=nodes[11])
    session.commit()
    log.note("edges", session.execute(
        select(Node.name, Node.parent_id).order_by(Node.id)).all())
    session.close()


def sc_readd_and_detached(session_cls, engine, log):
    with session_cls(engine) as first:
        a = Author(name="a", books=[Book(title="b1"), Book(title="b2")])
        first.add(a)
        first.commit()
        a.books  # loaded
    # a detached graph with a new book: detached ones become persistent
    a.books.append(Book(title="b3"))
    session = session_cls(engine)
    session.add(Author(name="first"))
    session.add(a)
    everything(session, log, a=a, b1=a.books[0], b3=a.books[2])
    session.add_all([a, a.books[1]])  # already there: nothing happens
    everything(session, log, a=a)
    session.commit()
    log.note("rows", session.scalars(select(Book.title).order_by(Book.id)).all())
    session.close()


def sc_other_session_and_errors(session_cls, engine, log):
    first = session_cls(engine)
    held = Book(title="held")
    first.add(held)
    second = session_cls(engine)
    second.add(Author(name="begin"))
    a = Author(name="a", books=[Book(title="free"), held, Book(title="after")])
    guarded(log, lambda: second.add(a))  # raises on the book of another session
    everything(second, log, a=a, free=a.books[0], held=held, after=a.books[2])
    guarded(log, lambda: second.add_all([Author(name="ok"), "not mapped"]))
    guarded(log, lambda: second.add(Book))
    first.close()
    second.add(a)  # held's session is gone now
    everything(second, log, a=a, held=held)
    second.commit()
    # a deleted object reached by the cascade
    b = a.books[0]
    second.delete(b)
    second.flush()
    c = Author(name="c")
    c.books.append(b)
    guarded(log, lambda: second.add(c))
    everything(second, log, c=c, b=b)
    second.rollback()
    everything(second, log, a=a, b=b)
    second.close()


def sc_delete_cascades(session_cls, engine, log):
    with session_cls(engine) as setup:
        for i in range(3):
            setup.add(Author(name=f"a{i}", books=[Book(title=f"b{i}.{j}") for j in range(2)],
                             notes={Note(text=f"n{i}")}))
        setup.commit()
    session = session_cls(engine)
    authors = session.scalars(select(Author).order_by(Author.id)).all()
    a0, a1, a2 = authors
    a0.books  # loaded; a1's are lazy-loaded by the delete cascade
    session.delete(a0)
    everything(session, log, a0=a0)
    session.delete_all([a1, a0])
    everything(session, log, a0=a0, a1=a1)
    orphan = a2.books[0]
    a2.books.remove(orphan)  # delete-orphan at flush
    guarded(log, lambda: session.delete(Author(name="transient")))
    session.commit()
    everything(session, log, a0=a0, a1=a1, a2=a2, orphan=orphan)
    log.note("rows", session.scalars(select(Book.title).order_by(Book.id)).all(),
             session.scalars(select(Note.text).order_by(Note.id)).all())
    session.close()


def sc_delete_detached_and_other_session(session_cls, engine, log):
    with session_cls(engine) as setup:
        setup.add_all([Author(name="a", books=[Book(title="b")]), Author(name="z")])
        setup.commit()
    with session_cls(engine) as first:
        a = first.scalars(select(Author).where(Author.name == "a")).one()
        a.books
    session = session_cls(engine)
    z = session.scalars(select(Author).where(Author.name == "z")).one()
    session.delete(a)  # detached, with a detached loaded book
    everything(session, log, a=a, b=a.books[0], z=z)
    other = session_cls(engine)
    z2 = other.get(Author, z.id)
    guarded(log, lambda: session.delete(z2))
    session.commit()
    everything(session, log, a=a, z=z)
    other.close()
    session.close()


def sc_delete_listened_after_load(session_cls, engine, log):
    """A delete cascade that reads only loaded collections keeps what the
    gate found about attach listeners; one that loads (here a ``load``
    listener adds a ``before_attach`` listener) has them read again."""
    with session_cls(engine) as setup:
        for i in range(3):
            setup.add(Author(name=f"a{i}", books=[Book(title=f"b{i}.{j}") for j in range(2)]))
        setup.commit()
    session = session_cls(engine)
    a0, a1, a2 = session.scalars(select(Author).order_by(Author.id)).all()
    a0.books
    a2.books

    def on_attach(sess, instance):
        log.note("event", "before_attach", repr(instance))

    def on_load(target, context):
        log.note("event", "load", repr(target))
        if not event.contains(session, "before_attach", on_attach):
            event.listen(session, "before_attach", on_attach)

    # one author per flush: the flush loads the deleted authors' tags in
    # the order of a set of states, which differs from run to run
    session.delete(a0)  # loaded: nothing runs, nothing read again
    everything(session, log, a0=a0)
    session.flush()
    event.listen(Book, "load", on_load)
    try:
        session.delete(a1)  # the cascade loads a1's books
        everything(session, log, a1=a1)
        session.flush()
        session.delete(a2)  # listened from the gate on
        everything(session, log, a2=a2)
        session.commit()
    finally:
        event.remove(Book, "load", on_load)
    everything(session, log, a0=a0, a1=a1, a2=a2)
    log.note("rows", session.scalars(select(Book.title).order_by(Book.id)).all())
    session.close()


def sc_delete_without_cascade(session_cls, engine, log):
    """Objects whose mappers cascade no delete (fans and notes: no
    relationship of their own) take delete() without a walk: deleted
    twice, one of another session, a transient one, in a delete_all.
    (Not books: their ``editor`` makes a cycle with the authors, whose
    per-state flush leaves stock's loaded attributes to a set's order.)"""
    with session_cls(engine) as setup:
        fan = Fan(name="f")  # "fans" cascades nothing: added itself
        setup.add_all([Author(name="a", fans=[fan], notes={Note(text="n")}), fan, Fan(name="g")])
        setup.commit()
    session = session_cls(engine)
    f, g = session.scalars(select(Fan).order_by(Fan.id)).all()
    n = session.scalars(select(Note)).one()
    session.delete(f)
    session.delete(f)
    everything(session, log, f=f, g=g)
    other = session_cls(engine)
    g2 = other.get(Fan, g.id)
    guarded(log, lambda: session.delete(g2))
    guarded(log, lambda: session.delete(Fan(name="transient")))
    session.delete_all([g, n])
    everything(session, log, f=f, g=g, n=n)
    session.commit()
    everything(session, log, f=f, g=g, n=n)
    log.note("rows", session.scalars(select(Fan.name).order_by(Fan.id)).all(),
             session.scalars(select(Note.text).order_by(Note.id)).all())
    other.close()
    session.close()


def sc_autobegin(session_cls, engine, log):
    """The first add / delete begins the transaction; a listener of that
    event makes the attach events listened from then on."""
    session = session_cls(engine)
    a = Author(name="a", books=[Book(title="b1")])
    session.add(a)  # begins, nothing listened
    everything(session, log, a=a, b1=a.books[0])
    session.commit()
    a.books  # loaded (begins again)
    session.commit()

    def on_begin(sess, transaction):
        log.note("event", "after_transaction_create", transaction.nested)
        if not event.contains(sess, "before_attach", on_attach):
            event.listen(sess, "before_attach", on_attach)

    def on_attach(sess, instance):
        log.note("event", "before_attach", repr(instance))

    event.listen(session, "after_transaction_create", on_begin)
    b = Author(name="b", books=[Book(title="b2"), Book(title="b3")])
    session.add(b)
    everything(session, log, b=b)
    session.commit()
    session.delete(a)
    everything(session, log, a=a)
    session.commit()
    log.note("rows", session.scalars(select(Book.title).order_by(Book.id)).all())
    session.close()
    nope = session_cls(engine, autobegin=False)
    guarded(log, lambda: nope.add(Author(name="c", books=[Book(title="b4")])))
    log.note("new", len(nope.new))
    nope.close()


SCENARIOS = [
    sc_autobegin,
    sc_graph_add,
    sc_tree_and_cycle,
    sc_readd_and_detached,
    sc_other_session_and_errors,
    sc_delete_cascades,
    sc_delete_detached_and_other_session,
    sc_delete_listened_after_load,
    sc_delete_without_cascade,
]


@pytest.mark.parametrize("listened", [False, True], ids=["quiet", "listened"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__[3:])
def test_same_as_stock(scenario, listened, session_cls, engine):
    compare_with_stock(scenario, listened, session_cls, engine, Base.metadata)


def test_counted_fast_and_by_reason(session_cls, engine):
    Base.metadata.create_all(engine)
    try:
        turbosession.reset_stats()
        with session_cls(engine) as session:
            session.add(Author(name="begins"))  # begins the transaction
            session.add_all([Author(name="a", books=[Book(title="b")]), Node(name="n")])
            guarded_log = []
            try:
                session.add("not mapped")
            except Exception as exc:
                guarded_log.append(type(exc))
            session.commit()
            session.delete(session.scalars(select(Author)).first())
            session.delete(session.scalars(select(Node)).one())
            event.listen(session, "before_attach", lambda *a: None)
            session.add(Author(name="listened"))
        stats = turbosession.stats()["attach"]
        assert guarded_log == [orm.exc.UnmappedInstanceError]
        assert stats == {
            "fast": 5,
            "fallback": {"attach_unmapped": 1, "attach_listeners": 1},
        }
    finally:
        orm.close_all_sessions()
        Base.metadata.drop_all(engine)


def test_plan_follows_a_reconfigured_cascade(session_cls, engine):
    """A relationship's cascade changed after the plan was made is read anew."""
    Base.metadata.create_all(engine)
    rel = inspect(Author).relationships["fans"]
    try:
        for cascade in ("save-update", ""):
            rel.cascade = cascade
            for cls in (orm.Session, session_cls):
                with cls(engine) as session:
                    session.add(Author(name="x"))
                    fan = Fan(name="f")
                    session.add(Author(name="a", fans=[fan]))
                    assert (fan in session) is (cascade == "save-update")
    finally:
        rel.cascade = ""
        Base.metadata.drop_all(engine)


def test_delete_follows_a_reconfigured_cascade(session_cls, engine):
    """A relationship given a delete cascade after its mapper's plan was
    made is followed by delete() (which takes no walk while no property
    cascades delete), as stock follows it."""
    Base.metadata.create_all(engine)
    rel = inspect(Author).relationships["fans"]
    try:
        for cascade in ("", "save-update, delete", ""):
            rel.cascade = cascade
            found = []
            for cls in (orm.Session, session_cls):
                with cls(engine) as session:
                    fan = Fan(name="f")
                    author = Author(name="a", fans=[fan])
                    session.add_all([author, fan])
                    session.flush()
                    session.delete(author)
                    found.append(fan in session.deleted)
                    session.rollback()
            assert found == [cascade != ""] * 2
    finally:
        rel.cascade = ""
        Base.metadata.drop_all(engine)


def test_cascade_read_follows_the_relationships_class(session_cls, engine):
    """The walk reads a relationship's ``_cascade`` from the relationship's
    own dict while its class has no such attribute (compiled: the check
    kept by the class's version tag); once the class gains a data
    descriptor of that name the walk reads it through that, as stock's
    ``cascade`` property does."""
    Base.metadata.create_all(engine)
    rel_class = type(inspect(Author).relationships["books"])
    assert "_cascade" not in vars(rel_class)

    def books_attached(cls):
        with cls(engine) as session:
            session.add(Author(name="x"))
            book = Book(title="b")
            session.add_all([Author(name="a", books=[book])])
            return book in session

    try:
        assert [books_attached(c) for c in (orm.Session, session_cls)] == [True, True]
        rel_class._cascade = property(lambda self: orm.util.CascadeOptions("merge"))
        try:
            assert [books_attached(c) for c in (orm.Session, session_cls)] == [False, False]
        finally:
            del rel_class._cascade
        assert [books_attached(c) for c in (orm.Session, session_cls)] == [True, True]
    finally:
        orm.close_all_sessions()
        Base.metadata.drop_all(engine)


def test_state_bookkeeping_through_a_patched_class(session_cls, engine):
    """The walk reads and stores a state's attach bookkeeping (``key``,
    ``session_id``, ``insert_order``, ``modified``, ``_strong_obj``,
    ``_orphaned_outside_of_session``) in the state's own ``__dict__`` only
    while InstanceState has no descriptor of those names (compiled): with
    properties patched onto the class, add_all and delete with their
    cascades store each through them, in stock's order."""
    from sqlalchemy.orm.state import InstanceState

    defaults = {
        "key": None, "session_id": None, "insert_order": None, "modified": False,
        "_strong_obj": None, "_orphaned_outside_of_session": False,
    }

    def recorded(session_cls):
        accesses = []

        def described(name, value):
            if name == "session_id" and value is not None:
                return "a session's hash_key"  # numbered per process
            if value is None or type(value) in (bool, int):
                return value
            return type(value).__name__

        def plain_property(name, default):
            def get(self):
                return self.__dict__.get(name, default)

            def set_(self, value):
                accesses.append(("set", name, described(name, value)))
                self.__dict__[name] = value

            return property(get, set_)

        def patched(action):
            for name, default in defaults.items():
                setattr(InstanceState, name, plain_property(name, default))
            try:
                action()
            finally:
                for name, default in defaults.items():
                    setattr(InstanceState, name, default)

        Base.metadata.create_all(engine)
        session = session_cls(engine, expire_on_commit=False)
        session.add(Author(name="begins"))
        a = Author(name="a", books=[Book(title="b1"), Book(title="b2")])
        c = Author(name="c")
        patched(lambda: session.add_all([a, c]))
        adds = list(accesses)
        accesses.clear()
        session.commit()
        session.close()
        # detached with the books loaded: delete() attaches each of them
        other = session_cls(engine)
        patched(lambda: other.delete(a))
        deletes = list(accesses)
        kept = [
            (st.insert_order, st.session_id == other.hash_key, st._strong_obj is not None,
             st in other._deleted)
            for st in (inspect(o) for o in (a, c, *a.books))
        ]
        other.close()
        Base.metadata.drop_all(engine)
        return adds, deletes, kept

    expected = recorded(orm.Session)
    assert recorded(session_cls) == expected
    assert ("set", "insert_order", 2) in expected[0]
    assert ("set", "_strong_obj", "Book") in expected[0]
    assert expected[1].count(("set", "session_id", "a session's hash_key")) == 3
