"""Fault sweep: every statement and every event of a flush fails in turn.

For each flush scenario below, a run without faults first counts what the
commit under test does on stock ``Session``: its statements, and how often
each mapper event and each session (lifecycle, flush, transaction) event
fires.  Then, for every k of each count, the commit runs again with the k-th
one failing:

* the k-th statement, with a DBAPI error raised before it is sent (from a
  ``before_cursor_execute`` hook, so SQLAlchemy wraps it as it wraps a
  driver's error), and with a plain Python error raised after it ran (from
  ``after_cursor_execute``);
* the k-th firing of each mapper event, and of each session event, with a
  plain Python error from a listener installed for that event only.

Each case runs on stock ``Session`` and on turbosession's (the implementation under
test), each on a database of its own, and compares what a program could
observe after the failure, after ``rollback()`` and after a retry of the same
changes: the exception, each object's state, loaded values, expired
attributes and attribute history, ``new`` / ``dirty`` / ``deleted``, the
identity map's keys, the transaction flags, the rows in the database, and
the SQL sent (including the retry's).  The number of cases and of
divergences is recorded per test and summed in the terminal summary
(tests/conftest.py).
"""

import gc
import warnings

import pytest
from sqlalchemy import ForeignKey, String, create_engine, event, inspect, orm, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

import backends
from support import normalize_error, object_state, scrub


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "fs_item"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(30))
    qty: Mapped[int] = mapped_column(default=0)


class Author(Base):
    __tablename__ = "fs_author"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(30))
    books: Mapped[list["Book"]] = relationship(
        back_populates="author", cascade="all, delete-orphan", order_by="Book.id"
    )


class Book(Base):
    __tablename__ = "fs_book"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("fs_author.id"))
    title: Mapped[str] = mapped_column(String(30))
    author: Mapped[Author | None] = relationship(back_populates="books")


class Doc(Base):
    """An ORM-generated version counter."""

    __tablename__ = "fs_doc"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    title: Mapped[str] = mapped_column(String(30))
    version: Mapped[int] = mapped_column(nullable=False)
    __mapper_args__ = {"version_id_col": version}


class Stamp(Base):
    """Ids from the database and a server default, fetched back (RETURNING)."""

    __tablename__ = "fs_stamp"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))
    made: Mapped[str] = mapped_column(String(20), server_default=text("'server'"))
    __mapper_args__ = {"eager_defaults": True}


class Node(Base):
    """A self-referential tree: the flush is split per state."""

    __tablename__ = "fs_node"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("fs_node.id"))
    name: Mapped[str] = mapped_column(String(30))
    children: Mapped[list["Node"]] = relationship(cascade="all, delete-orphan", order_by="Node.id")


MAPPED = (Item, Author, Book, Doc, Stamp, Node)
TABLES = Base.metadata.sorted_tables

MAPPER_EVENTS = ("before_insert", "after_insert", "before_update", "after_update",
                 "before_delete", "after_delete")
SESSION_EVENTS = ("before_commit", "after_commit", "after_transaction_create",
                  "after_transaction_end", "after_begin", "before_flush", "after_flush",
                  "after_flush_postexec", "pending_to_persistent", "persistent_to_deleted",
                  "deleted_to_detached", "persistent_to_detached", "loaded_as_persistent",
                  "transient_to_pending", "pending_to_transient", "persistent_to_transient",
                  "detached_to_persistent", "deleted_to_persistent", "before_attach",
                  "after_attach")

# insertmanyvalues in small pages, so that a bulk insert with RETURNING is
# several statements (a fault can hit the second page)
PAGE_SIZE = 8
BULK = 20


# -- the scenarios: ``setup`` fills the database (committed, not swept);
# ``change`` makes the changes the swept commit flushes.  ``change`` is
# called again for the retry, with the objects of the first call in
# ``objs`` (setdefault): pending objects come back, loaded ones are
# changed again after the rollback expired them.


def setup_library(session):
    session.add_all([Item(id=i, name=f"i{i}", qty=i) for i in (1, 2, 3)])
    session.add_all([
        Author(id=1, name="a1", books=[Book(id=1, title="b1"), Book(id=2, title="b2")]),
        Author(id=2, name="a2", books=[Book(id=3, title="b3")]),
    ])
    session.add_all([Doc(id=1, title="d1"), Doc(id=2, title="d2")])
    session.add_all([Stamp(name="s1"), Stamp(name="s2")])


def change_inserts(session, objs):
    items = objs.setdefault("items", [Item(id=i, name=f"i{i}", qty=i) for i in (11, 12, 13)])
    author = objs.setdefault("author", Author(id=11, name="a11"))
    books = objs.setdefault("books", [Book(id=11, title="b11"), Book(id=12, title="b12")])
    for book in books:
        if book not in author.books:
            author.books.append(book)
    doc = objs.setdefault("doc", Doc(id=11, title="d11"))
    stamps = objs.setdefault("stamps", [Stamp(name="s11"), Stamp(name="s12")])
    session.add_all([*items, author, doc, *stamps])


def change_updates(session, objs):
    item = objs.setdefault("item", session.get(Item, 1))
    item.qty = 10                                       # one column
    item2 = objs.setdefault("item2", session.get(Item, 2))
    item2.name, item2.qty = "two", 20                   # two columns: another batch
    doc = objs.setdefault("doc", session.get(Doc, 1))
    doc.title = "d1 new"                                # version bump
    a1 = objs.setdefault("a1", session.get(Author, 1))
    a2 = objs.setdefault("a2", session.get(Author, 2))
    b1 = objs.setdefault("b1", session.get(Book, 1))
    b1.title = "b1 new"
    b2 = objs.setdefault("b2", session.get(Book, 2))
    b2.author = a2                                      # moves between collections
    a1.name = "a1 new"
    stamp = objs.setdefault("stamp", session.get(Stamp, 1))
    stamp.name = "s1 new"


def change_deletes(session, objs):
    session.delete(objs.setdefault("item", session.get(Item, 3)))
    a2 = objs.setdefault("a2", session.get(Author, 2))
    session.delete(a2)                                  # cascades to book 3
    a1 = objs.setdefault("a1", session.get(Author, 1))
    b1 = objs.setdefault("b1", session.get(Book, 1))
    if b1 in a1.books:
        a1.books.remove(b1)                             # an orphan: deleted
    session.delete(objs.setdefault("doc", session.get(Doc, 2)))   # versioned DELETE
    session.delete(objs.setdefault("stamp", session.get(Stamp, 2)))


def change_mixed(session, objs):
    session.add(objs.setdefault("new_item", Item(id=20, name="new")))
    item = objs.setdefault("item", session.get(Item, 1))
    item.qty = 100
    session.delete(objs.setdefault("doc", session.get(Doc, 2)))
    doc = objs.setdefault("doc1", session.get(Doc, 1))
    doc.title = "d1 mixed"
    a1 = objs.setdefault("a1", session.get(Author, 1))
    book = objs.setdefault("new_book", Book(id=20, title="b20"))
    if book not in a1.books:
        a1.books.append(book)
    b3 = objs.setdefault("b3", session.get(Book, 3))
    session.delete(b3)
    session.add(objs.setdefault("stamp", Stamp(name="s20")))


def change_primary_keys(session, objs):
    item = objs.setdefault("item", session.get(Item, 1))
    item.id = 31
    item2 = objs.setdefault("item2", session.get(Item, 2))
    item2.id, item2.name = 32, "moved"
    objs.setdefault("item3", session.get(Item, 3)).qty = 33
    doc = objs.setdefault("doc", session.get(Doc, 2))
    doc.id = 32                                         # versioned, new key


def setup_tree(session):
    session.add(Node(id=1, name="root", children=[
        Node(id=2, name="n2"),
        Node(id=3, name="n3", children=[Node(id=4, name="n4"), Node(id=7, name="n7")]),
    ]))


def change_tree(session, objs):
    n2 = objs.setdefault("n2", session.get(Node, 2))
    n3 = objs.setdefault("n3", session.get(Node, 3))
    n4 = objs.setdefault("n4", session.get(Node, 4))
    n5 = objs.setdefault("n5", Node(id=5, name="n5", children=[Node(id=6, name="n6")]))
    objs.setdefault("n6", n5.children[0])
    if n5 not in n2.children:
        n2.children.append(n5)                          # a new subtree
    if n4 not in n2.children:
        n2.children.append(n4)                          # moved: its parent_id changes
    n3.name = "n3 renamed"
    # one delete per flush: with two, stock lazy-loads their children in
    # set order, which is by memory address
    session.delete(objs.setdefault("n7", session.get(Node, 7)))


def change_bulk(session, objs):
    items = objs.setdefault("items", [Item(id=100 + i, name=f"bulk{i}", qty=i) for i in range(BULK)])
    stamps = objs.setdefault("stamps", [Stamp(name=f"bulk{i}") for i in range(BULK)])
    session.add_all(items + stamps)


SCENARIOS = {
    "inserts": (setup_library, change_inserts),
    "updates": (setup_library, change_updates),
    "deletes": (setup_library, change_deletes),
    "mixed": (setup_library, change_mixed),
    "primary_keys": (setup_library, change_primary_keys),
    "tree": (setup_tree, change_tree),
    "bulk": (setup_library, change_bulk),
}


# -- faults


class Fault:
    """Raises at the ``k``-th statement or event of one kind while armed.

    ``kind`` is ``("statement", "dbapi")``, ``("statement", "python")``,
    ``("mapper", event)`` or ``("session", event)``; ``k`` None only counts.
    """

    def __init__(self, kind, k):
        self.kind, self.k = kind, k
        self.count = 0
        self.fired = False
        self.armed = False

    def arm(self, on):
        self.armed = on

    def __repr__(self):
        return f"{self.kind[0]}:{self.kind[1]}#{self.k}"

    def hit(self, exc_type):
        if not self.armed:
            return
        self.count += 1
        if self.count == self.k:
            self.fired = True
            raise exc_type(f"injected fault: {self!r}")

    def install(self, world, session):
        group, name = self.kind
        if group == "statement":
            dbapi_error = world.engine.dialect.loaded_dbapi.OperationalError
            if name == "dbapi":
                def before(conn, cursor, statement, parameters, context, executemany):
                    self.hit(dbapi_error)
                return [(world.engine, "before_cursor_execute", before)]

            def after(conn, cursor, statement, parameters, context, executemany):
                self.hit(RuntimeError)
            return [(world.engine, "after_cursor_execute", after)]

        def listener(*args, **kw):
            self.hit(RuntimeError)
        targets = MAPPED if group == "mapper" else (session,)
        return [(target, name, listener) for target in targets]


class Counter:
    """Counts, without raising, what each fault kind would see in a commit."""

    fired = None

    def __init__(self):
        self.faults = [Fault(("statement", "dbapi"), None)] + [
            Fault(("mapper", name), None) for name in MAPPER_EVENTS
        ] + [Fault(("session", name), None) for name in SESSION_EVENTS]

    def install(self, world, session):
        return [h for f in self.faults for h in f.install(world, session)]

    def arm(self, on):
        for fault in self.faults:
            fault.arm(on)

    def cases(self):
        """Every (kind, k, n) the commit has, the statements with both errors."""
        out = []
        for fault in self.faults:
            kinds = [("statement", "dbapi"), ("statement", "python")] if fault.kind[0] == "statement" else [fault.kind]
            out += [(kind, k, fault.count) for kind in kinds for k in range(1, fault.count + 1)]
        return out


# Stock fires these for a set of states, one state after the other in set
# order (by memory address): with the k-th of n failing, k < n, which states
# went through the transition before the failure differs from run to run of
# stock itself.  Those cases compare everything up to the failure exactly,
# and after it how many objects are in each state, the sizes of the
# session's sets and identity map, the flags and the rows; later stages
# follow from which objects failed, so they are not compared.  With k = n
# every state has gone through (the failing one included, as each is
# marked before its event), and the whole record is compared.
SET_ORDER_EVENTS = ("persistent_to_deleted", "deleted_to_detached")


def up_to_failure(log):
    """The part of a record that does not depend on set order (see above)."""
    out, states = [], []
    for entry in log:
        stage = entry[0]
        if stage == "rollback":
            break
        if stage == "after failure" and entry[1] not in ("flags", "rows"):
            if entry[1] in ("new", "dirty", "deleted", "identity map"):
                out.append((stage, entry[1], len(entry[2])))
            else:
                states.append(entry[2:4])
            continue
        out.append(entry)
    out.append(("after failure", "states", sorted(states)))
    return out


# -- one database and session class, playing a scenario


class World:
    def __init__(self, session_cls, engine):
        self.session_cls = session_cls
        self.engine = engine
        self.recording = False
        self.log = []
        event.listen(engine, "before_cursor_execute", self._record)
        Base.metadata.create_all(engine)

    def _record(self, conn, cursor, statement, parameters, context, executemany):
        if self.recording:
            self.log.append(("sql", statement, scrub(repr(parameters))))

    def note(self, *what):
        self.log.append(what)

    def reset(self):
        with self.engine.begin() as conn:
            for table in reversed(TABLES):
                conn.execute(table.delete())
            if self.engine.dialect.name == "postgresql":
                # SQLite numbers from the largest id left; a sequence does not
                conn.exec_driver_sql("SELECT setval('fs_stamp_id_seq', 1, false)")

    def rows(self):
        with self.engine.connect() as conn:
            return {
                t.name: conn.execute(select(t).order_by(*t.primary_key.columns)).all()
                for t in TABLES
            }

    def attempt(self, stage, action):
        """Run ``action``; note its outcome and the warnings it raised (their
        text: where a warning points is a known difference, see README)."""
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                action()
            except Exception as exc:
                self.note(stage, "raised", *normalize_error(exc))
            else:
                self.note(stage, "ok")
        for w in caught:
            self.note(stage, "warned", w.category.__name__, scrub(str(w.message)))

    def play(self, scenario, fault):
        """The record of one run: ``scenario`` with ``fault`` in its commit."""
        setup, change = SCENARIOS[scenario]
        self.log = []
        self.reset()
        # no garbage collection during a run: objects in reference cycles
        # then leave the weak identity map at the same point in both worlds
        gc.disable()
        try:
            with self.session_cls(self.engine) as session:
                setup(session)
                session.commit()
            session = self.session_cls(self.engine)
            objs = {}
            self.recording = True
            self.attempt("change", lambda: change(session, objs))
            handles = fault.install(self, session)
            for target, name, fn in handles:
                event.listen(target, name, fn)
            fault.arm(True)
            try:
                self.attempt("commit", session.commit)
            finally:
                fault.arm(False)
                for target, name, fn in handles:
                    event.remove(target, name, fn)
            self.note("fault fired", fault.fired)
            self.observe("after failure", session, objs)
            self.attempt("rollback", session.rollback)
            self.observe("after rollback", session, objs)
            self.attempt("retry changes", lambda: change(session, objs))
            self.attempt("retry commit", session.commit)
            self.observe("after retry", session, objs)
            session.close()
        finally:
            self.recording = False
            gc.enable()
            orm.close_all_sessions()
        return self.log

    def observe(self, stage, session, objs):
        named = {}
        for name, value in objs.items():
            if isinstance(value, list):
                named.update((f"{name}[{i}]", v) for i, v in enumerate(value))
            else:
                named[name] = value
        labels = {id(obj): name for name, obj in named.items()}

        def show(value):
            if isinstance(value, Base):
                return labels.get(id(value)) or f"{type(value).__name__}({value.__dict__.get('id')})"
            if isinstance(value, (list, tuple)):
                return [show(v) for v in value]
            return scrub(repr(value))

        # and the objects reachable from them (loaded relationships), such
        # as children a cascade loaded
        todo = list(named.values())
        while todo:
            for value in list(todo.pop().__dict__.values()):
                for obj in value if isinstance(value, list) else [value]:
                    if isinstance(obj, Base) and id(obj) not in labels:
                        labels[id(obj)] = label = show(obj)
                        named[label] = obj
                        todo.append(obj)

        self.note(stage, "flags", session.in_transaction(), session.is_active,
                  session.in_nested_transaction())
        for name, obj in sorted(named.items()):
            insp = inspect(obj)
            values = {k: show(v) for k, v in sorted(obj.__dict__.items()) if not k.startswith("_")}
            history = {}
            for attr in insp.attrs:
                hist = attr.history
                if hist.has_changes():
                    history[attr.key] = tuple(show(list(part or ())) for part in hist)
            self.note(stage, name, object_state(obj), obj in session, repr(insp.key),
                      values, sorted(insp.expired_attributes), history)
        for label in ("new", "dirty", "deleted"):
            self.note(stage, label, sorted(show(o) for o in getattr(session, label)))
        self.note(stage, "identity map", sorted(map(repr, session.identity_map.keys())))
        recording, self.recording = self.recording, False
        try:
            self.note(stage, "rows", self.rows())
        finally:
            self.recording = recording


@pytest.fixture(params=backends.BACKENDS)
def two_databases(request, tmp_path):
    """An engine for stock and one for turbosession, on separate databases."""
    kw = {"insertmanyvalues_page_size": PAGE_SIZE}
    if request.param == "sqlite":
        engines = [create_engine(f"sqlite:///{tmp_path}/{name}.db", **kw) for name in ("stock", "turbo")]
        for engine in engines:
            @event.listens_for(engine, "connect")
            def fast(dbapi_conn, record):
                dbapi_conn.execute("PRAGMA synchronous = OFF")
                dbapi_conn.execute("PRAGMA journal_mode = MEMORY")
        try:
            yield request.param, engines
        finally:
            for engine in engines:
                engine.dispose()
    else:
        backends.require_postgresql(backends.PG_URL)
        with backends.scratch_engine(backends.PG_URL, **kw) as stock, \
                backends.scratch_engine(backends.PG_URL, **kw) as turbo:
            yield request.param, [stock, turbo]


# stock's record per (backend, scenario, case): the same for every implementation
_stock_records = {}


def first_difference(expected, actual):
    for index, (e, a) in enumerate(zip(expected, actual)):
        if e != a:
            return index, e, a
    return min(len(expected), len(actual)), expected[len(actual):][:1], actual[len(expected):][:1]


def sweep(backend, scenario, stock, turbo, baseline, cases):
    """The cases whose records differ between the worlds (the run without a
    fault first), and how many were compared up to the failure only."""
    divergences = []
    turbo_baseline = turbo.play(scenario, Counter())
    if turbo_baseline != baseline:
        divergences.append(("no fault", first_difference(baseline, turbo_baseline)))
    order_dependent = 0
    for kind, k, n in cases:
        key = (backend, scenario, kind, k)
        expected = _stock_records.get(key)
        if expected is None:
            expected = _stock_records[key] = stock.play(scenario, Fault(kind, k))
        assert ("fault fired", True) in expected, (kind, k)
        actual = turbo.play(scenario, Fault(kind, k))
        if kind[1] in SET_ORDER_EVENTS and k < n:
            order_dependent += 1
            expected, actual = up_to_failure(expected), up_to_failure(actual)
        if actual != expected:
            divergences.append((f"{kind[0]}:{kind[1]}#{k}", first_difference(expected, actual)))
    return divergences, order_dependent


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_fault_sweep(scenario, session_cls, two_databases, record_property):
    backend, (stock_engine, turbo_engine) = two_databases
    stock = World(orm.Session, stock_engine)
    turbo = World(session_cls, turbo_engine)

    counter = Counter()
    baseline = stock.play(scenario, counter)
    assert ("commit", "ok") in baseline
    cases = counter.cases()
    # every scenario fails somewhere in each group
    assert {kind[0] for kind, _, _ in cases} == {"statement", "mapper", "session"}

    divergences, order_dependent = sweep(backend, scenario, stock, turbo, baseline, cases)
    record_property("fault_sweep", {"cases": len(cases) + 1, "divergences": len(divergences),
                                    "order_dependent": order_dependent})
    assert not divergences, f"{len(divergences)} of {len(cases) + 1} cases differ from stock: {divergences[:3]}"


def test_sweep_sees_a_divergence(session_cls, tmp_path):
    """The sweep's comparison is not blind: a session that differs from
    stock only after a failed commit (it expunges one loaded object) is
    caught in the failing cases and not in the run without a fault."""

    class ExpungesOnFailure(session_cls):
        def commit(self):
            try:
                super().commit()
            except Exception:
                for obj in list(self.identity_map.values())[:1]:
                    self.expunge(obj)
                raise

    stock_engine, mutant_engine = (create_engine(f"sqlite:///{tmp_path}/{n}.db") for n in "ab")
    try:
        stock, mutant = World(orm.Session, stock_engine), World(ExpungesOnFailure, mutant_engine)
        counter = Counter()
        baseline = stock.play("updates", counter)
        statements = [case for case in counter.cases() if case[0][0] == "statement"]
        divergences, _ = sweep("sqlite", "updates", stock, mutant, baseline, statements)
        assert statements and len(divergences) == len(statements)
        assert "no fault" not in [name for name, _ in divergences]
    finally:
        stock_engine.dispose()
        mutant_engine.dispose()
