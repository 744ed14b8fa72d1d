"""The unit-of-work shapes the benchmark measures, and how each result is checked.

A workload is measured as rounds of ``setup`` (not timed: fresh tables, objects
built, rows loaded), ``run`` (timed: only the step the workload is about) and
``verify`` (not timed: row counts and values in the database, object states),
then ``teardown``.  A run whose result is wrong raises ``VerificationError``,
so a fast wrong answer cannot win.

The three sessions run the same ``run_session``; a reference (ORM bulk, Core,
raw DBAPI) is measured where the workload defines ``run_<reference>``.  The
pytest-benchmark files in bench/ and ``python -m turbosession bench`` both
measure these definitions: there is no second copy of a workload.
"""

from types import SimpleNamespace

from sqlalchemy import bindparam, delete, func, inspect, insert, orm, select, update

from . import implementations as impls
from . import peer_pony
from .database import item_row
from .models import Author, Book, Child, Engineer, Item, Node, Parent, Post, Tag, post_tag

ITEM = Item.__table__
PARENT = Parent.__table__
CHILD = Child.__table__

CHILDREN_PER_PARENT = 4
TREE_FAN_OUT = 4
REQUESTS_PER_OBJECT = 10  # the short-transaction workloads run N / 10 of them


class VerificationError(AssertionError):
    """A measured run produced a wrong result."""


def check(condition, message):
    if not condition:
        raise VerificationError(message)


class Case:
    """One implementation of one workload on one database."""

    def __init__(self, workload, implementation, setup, run):
        self.workload = workload
        self.implementation = implementation
        self.setup = setup
        self.run = run

    @property
    def ops(self):
        return self.workload.ops

    def verify(self, state):
        self.workload.verify(state)

    def teardown(self, state):
        if state.session is not None:
            state.session.close()
        if state.connection is not None:
            state.connection.close()


class Workload:
    name = ""
    title = ""
    unit = "object"

    def __init__(self, db, n):
        self.db = db
        self.n = n

    @property
    def ops(self):
        """How many units (objects, requests) one run handles."""
        return self.n

    def implementations(self, available_sessions):
        names = [name for name in impls.SESSIONS if name in available_sessions]
        names += [
            ref for ref in impls.REFERENCES
            if hasattr(self, f"run_{ref}")
            and (ref != impls.PONY or peer_pony.available(self.db))
        ]
        return names

    def rows_of(self, state):
        """Where the round's rows are: Pony's own database, else the benchmark's."""
        return peer_pony.peer() if state.implementation == impls.PONY else self.db

    def case(self, implementation, session_classes):
        if implementation in impls.SESSIONS:
            session_cls = session_classes[implementation]

            def setup():
                return self.setup_session(self.state(implementation, session_cls))

            return Case(self, implementation, setup, self.run_session)

        setup_reference = getattr(self, f"setup_{implementation}")

        def setup():
            return setup_reference(self.state(implementation, orm.Session))

        return Case(self, implementation, setup, getattr(self, f"run_{implementation}"))

    def state(self, implementation, session_cls):
        return SimpleNamespace(
            implementation=implementation,
            session_cls=session_cls,
            session=None,
            connection=None,
        )

    def raw_connection(self, state):
        state.connection = self.db.engine.raw_connection()
        return state.connection

    def sql(self, statement):
        """A DBAPI statement with the driver's placeholder for ``?``."""
        return statement.replace("?", self.db.placeholder)


class Construct(Workload):
    """Object construction alone: instrumentation, no session involved yet."""

    name = "construct"
    title = "construct objects"

    def setup_session(self, state):
        state.names = [f"item {i}" for i in range(self.n)]
        return state

    def run_session(self, state):
        state.objects = [Item(name=name, qty=i) for i, name in enumerate(state.names)]

    def verify(self, state):
        objects = state.objects
        check(len(objects) == self.n, f"{len(objects)} objects built, expected {self.n}")
        check(sum(o.qty for o in objects) == self.n * (self.n - 1) // 2, "wrong qty values")
        check(all(inspect(o).transient for o in objects), "objects are not transient")


class InsertReferences:
    """ORM bulk, Core and raw DBAPI inserts of ``rows()`` into ``model``'s table.

    ``dbapi_columns`` names the columns the raw driver inserts, in order.
    """

    model = None
    dbapi_columns = ()

    def setup_orm_bulk(self, state):
        self.db.reset()
        state.rows = self.rows()
        state.session = state.session_cls(self.db.engine)
        return state

    def run_orm_bulk(self, state):
        state.session.execute(insert(self.model), state.rows)
        state.session.commit()

    def setup_core(self, state):
        self.db.reset()
        state.rows = self.rows()
        return state

    def run_core(self, state):
        with self.db.engine.begin() as conn:
            conn.execute(insert(self.model.__table__), state.rows)

    def setup_dbapi(self, state):
        self.db.reset()
        columns = self.dbapi_columns
        state.params = [tuple(row[c] for c in columns) for row in self.rows()]
        state.statement = self.sql(
            f"INSERT INTO {self.model.__tablename__} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' for _ in columns)})"
        )
        self.raw_connection(state)
        return state

    def run_dbapi(self, state):
        state.connection.cursor().executemany(state.statement, state.params)
        state.connection.commit()


class InsertAutoincrement(InsertReferences, Workload):
    """add_all + commit of new objects whose ids the database assigns."""

    name = "insert_autoincrement"
    title = "insert, autoincrement PK"
    model = Item
    with_ids = False
    dbapi_columns = ("name", "qty")

    def rows(self):
        rows = [item_row(i) for i in range(self.n)]
        if not self.with_ids:
            for row in rows:
                del row["id"]
        return rows

    def setup_session(self, state):
        self.db.reset()
        state.objects = [Item(**row) for row in self.rows()]
        state.session = state.session_cls(self.db.engine)
        return state

    def run_session(self, state):
        state.session.add_all(state.objects)
        state.session.commit()

    def setup_pony(self, state):
        peer_pony.peer().reset()
        state.rows = self.rows()
        return state

    def run_pony(self, state):
        Item_ = peer_pony.peer().Item
        with peer_pony.pony.db_session:
            state.objects = [Item_(**row) for row in state.rows]

    def verify(self, state):
        n = self.n
        count, qty_sum, id_sum = self.rows_of(state).item_totals()
        check(count == n, f"{count} rows inserted, expected {n}")
        check(qty_sum == n * (n - 1) // 2, f"sum(qty) is {qty_sum}")
        check(id_sum == n * (n + 1) // 2, f"ids are not 1..{n}: sum(id) is {id_sum}")
        if state.implementation in impls.SESSIONS:
            states = [inspect(o) for o in state.objects]
            check(all(s.persistent or s.detached for s in states), "objects not persisted")
            check(len({s.key for s in states}) == n, "objects do not have distinct identities")


class InsertPrimaryKeyGiven(InsertAutoincrement):
    """add_all + commit of new objects whose ids the application chose."""

    name = "insert_pk_given"
    title = "insert, PK given"
    with_ids = True
    dbapi_columns = ("id", "name", "qty")


class UpdateOneColumn(Workload):
    """Change one column on every loaded object, then commit."""

    name = "update_one_column"
    title = "update one column"

    def setup_session(self, state):
        self.db.fill_items(self.n)
        state.session = state.session_cls(self.db.engine)
        state.objects = state.session.scalars(select(Item)).all()
        return state

    def run_session(self, state):
        for obj in state.objects:
            obj.qty += 1
        state.session.commit()

    def new_values(self):
        return [(i + 1, i + 1) for i in range(self.n)]  # (id, qty = id)

    def setup_orm_bulk(self, state):
        self.db.fill_items(self.n)
        state.params = [{"id": id_, "qty": qty} for id_, qty in self.new_values()]
        state.session = state.session_cls(self.db.engine)
        return state

    def run_orm_bulk(self, state):
        state.session.execute(update(Item), state.params)
        state.session.commit()

    def setup_core(self, state):
        self.db.fill_items(self.n)
        state.params = [{"b_id": id_, "b_qty": qty} for id_, qty in self.new_values()]
        state.statement = (
            update(ITEM).where(ITEM.c.id == bindparam("b_id")).values(qty=bindparam("b_qty"))
        )
        return state

    def run_core(self, state):
        with self.db.engine.begin() as conn:
            conn.execute(state.statement, state.params)

    def setup_dbapi(self, state):
        self.db.fill_items(self.n)
        state.params = [(qty, id_) for id_, qty in self.new_values()]
        state.statement = self.sql("UPDATE tsbench_item SET qty = ? WHERE id = ?")
        self.raw_connection(state)
        return state

    def run_dbapi(self, state):
        state.connection.cursor().executemany(state.statement, state.params)
        state.connection.commit()

    def setup_pony(self, state):
        state.db_session, state.objects = peer_pony.peer().open_session(self.n, load=True)
        return state

    def run_pony(self, state):
        for obj in state.objects:
            obj.qty += 1
        state.db_session.__exit__(None, None, None)

    def verify(self, state):
        n = self.n
        rows = self.rows_of(state)
        count, qty_sum, _ = rows.item_totals()
        check(count == n, f"{count} rows after update, expected {n}")
        check(qty_sum == n * (n + 1) // 2, f"sum(qty) is {qty_sum}: not every row was updated")
        if rows is self.db:
            updated = self.db.scalar(
                select(func.count()).select_from(ITEM).where(ITEM.c.qty == ITEM.c.id)
            )
        else:
            updated = rows.rows_with_qty_equal_to_id()
        check(updated == n, f"{n - updated} rows do not have their new qty")


class DeleteLoaded(Workload):
    """session.delete() every loaded object, then commit."""

    name = "delete_loaded"
    title = "delete loaded objects"

    def setup_session(self, state):
        self.db.fill_items(self.n)
        state.session = state.session_cls(self.db.engine)
        state.objects = state.session.scalars(select(Item)).all()
        return state

    def run_session(self, state):
        delete_ = state.session.delete
        for obj in state.objects:
            delete_(obj)
        state.session.commit()

    def setup_core(self, state):
        self.db.fill_items(self.n)
        state.params = [{"b_id": i + 1} for i in range(self.n)]
        state.statement = delete(ITEM).where(ITEM.c.id == bindparam("b_id"))
        return state

    def run_core(self, state):
        with self.db.engine.begin() as conn:
            conn.execute(state.statement, state.params)

    def setup_dbapi(self, state):
        self.db.fill_items(self.n)
        state.params = [(i + 1,) for i in range(self.n)]
        state.statement = self.sql("DELETE FROM tsbench_item WHERE id = ?")
        self.raw_connection(state)
        return state

    def run_dbapi(self, state):
        state.connection.cursor().executemany(state.statement, state.params)
        state.connection.commit()

    def setup_pony(self, state):
        state.db_session, state.objects = peer_pony.peer().open_session(self.n, load=True)
        return state

    def run_pony(self, state):
        for obj in state.objects:
            obj.delete()
        state.db_session.__exit__(None, None, None)

    def verify(self, state):
        count, _, _ = self.rows_of(state).item_totals()
        check(count == 0, f"{count} rows left after deleting all {self.n}")
        if state.implementation in impls.SESSIONS:
            check(
                all(inspect(o).was_deleted for o in state.objects),
                "objects not in the deleted state",
            )


class LoadObjects(Workload):
    """SELECT N rows as objects into a fresh session."""

    name = "load_objects"
    title = "load rows as objects"

    def setup_session(self, state):
        self.db.ensure_items(self.n)
        state.session = state.session_cls(self.db.engine)
        state.statement = select(Item)
        return state

    def run_session(self, state):
        state.rows = state.session.scalars(state.statement).all()

    def setup_core(self, state):
        self.db.ensure_items(self.n)
        state.connection = self.db.engine.connect()
        state.statement = select(ITEM)
        return state

    def run_core(self, state):
        state.rows = state.connection.execute(state.statement).all()

    def setup_dbapi(self, state):
        self.db.ensure_items(self.n)
        self.raw_connection(state)
        state.statement = "SELECT id, name, qty FROM tsbench_item"
        return state

    def run_dbapi(self, state):
        cursor = state.connection.cursor()
        cursor.execute(state.statement)
        state.rows = cursor.fetchall()

    def setup_pony(self, state):
        state.db_session, _ = peer_pony.peer().open_session(self.n, load=False)
        return state

    def run_pony(self, state):
        # a fresh db_session has an empty identity map, as the fresh Session has
        state.rows = peer_pony.pony.select(i for i in peer_pony.peer().Item)[:]

    def verify(self, state):
        rows = state.rows
        if state.implementation == impls.PONY:
            rows = [(o.id, o.name, o.qty) for o in rows]
            state.db_session.__exit__(None, None, None)
        check(len(rows) == self.n, f"{len(rows)} rows loaded, expected {self.n}")
        if state.implementation in impls.SESSIONS:
            check(all(type(o) is Item for o in rows), "rows are not Item objects")
            check(all(inspect(o).persistent for o in rows), "objects are not persistent")
            check(len(state.session.identity_map) == self.n, "identity map misses objects")
            values = [(o.id, o.name, o.qty) for o in rows]
        else:
            values = [tuple(row) for row in rows]
        check(
            sorted(values) == [tuple(item_row(i).values()) for i in range(self.n)],
            "loaded values differ from the table's",
        )


class GetIdentityHits(Workload):
    """Session.get() of objects already in the identity map (no SQL)."""

    name = "get_identity_hits"
    title = "Session.get() identity-map hits"
    unit = "get"

    def setup_session(self, state):
        self.db.ensure_items(self.n)
        state.session = state.session_cls(self.db.engine)
        state.objects = state.session.scalars(select(Item).order_by(Item.id)).all()
        state.ids = [i + 1 for i in range(self.n)]
        return state

    def run_session(self, state):
        get = state.session.get
        state.found = [get(Item, id_) for id_ in state.ids]

    def verify(self, state):
        check(len(state.found) == self.n, "wrong number of results")
        check(
            all(found is obj for found, obj in zip(state.found, state.objects)),
            "get() did not return the identity-mapped objects",
        )


class GetMisses(Workload):
    """Session.get() of objects not in the identity map: one SELECT per get."""

    name = "get_misses"
    title = "Session.get() misses (primary-key load)"
    unit = "get"

    def setup_session(self, state):
        self.db.ensure_items(self.n)
        state.session = state.session_cls(self.db.engine)
        state.ids = [i + 1 for i in range(self.n)]
        return state

    def run_session(self, state):
        get = state.session.get
        state.found = [get(Item, id_) for id_ in state.ids]

    def verify(self, state):
        found = state.found
        check(len(found) == self.n, "wrong number of results")
        check(all(type(o) is Item for o in found), "get() did not return Item objects")
        check([o.id for o in found] == state.ids, "get() returned the wrong rows")
        expected = [tuple(item_row(i).values()) for i in range(self.n)]
        check([(o.id, o.name, o.qty) for o in found] == expected, "loaded values differ")
        check(len(state.session.identity_map) == self.n, "identity map misses objects")


class RepeatedQueries(Workload):
    """The same statement shape run N / 100 times, 100 rows each (a web app's
    repeated query): per-query setup against per-row work."""

    name = "repeated_queries"
    title = "100-row queries of one shape"
    unit = "query"
    ROWS = 100

    @property
    def ops(self):
        return max(self.n // self.ROWS, 1)

    def setup_session(self, state):
        self.db.ensure_items(self.n)
        state.session = state.session_cls(self.db.engine)
        state.statement = (
            select(Item).where(Item.id > bindparam("low")).order_by(Item.id).limit(self.ROWS)
        )
        # distinct ranges: every query loads new objects
        state.lows = [(q * self.ROWS) % max(self.n - self.ROWS + 1, 1) for q in range(self.ops)]
        return state

    def run_session(self, state):
        scalars, statement = state.session.scalars, state.statement
        state.results = [scalars(statement, {"low": low}).all() for low in state.lows]

    def verify(self, state):
        check(len(state.results) == self.ops, "wrong number of queries")
        for low, rows in zip(state.lows, state.results):
            ids = [o.id for o in rows]
            want = list(range(low + 1, min(low + self.ROWS, self.n) + 1))
            check(ids == want, f"query from {low} loaded ids {ids[:3]}..., expected {want[:3]}...")
            check(all(type(o) is Item for o in rows), "rows are not Item objects")


class SmallQueries(Workload):
    """N queries of one row each, selected by a column (``select(Item).where(
    Item.id == :id)``, the statement built once): the per-query cost of an
    ORM select with little per-row work behind it."""

    name = "small_queries"
    title = "1-row queries of one shape"
    unit = "query"

    def setup_session(self, state):
        self.db.ensure_items(self.n)
        state.session = state.session_cls(self.db.engine)
        state.statement = select(Item).where(Item.id == bindparam("id"))
        state.ids = [i + 1 for i in range(self.n)]
        return state

    def run_session(self, state):
        scalars, statement = state.session.scalars, state.statement
        state.results = [scalars(statement, {"id": id_}).all() for id_ in state.ids]

    def verify(self, state):
        check(len(state.results) == self.n, "wrong number of queries")
        for id_, rows in zip(state.ids, state.results):
            check([o.id for o in rows] == [id_], f"query for {id_} loaded {rows!r}")
            check(type(rows[0]) is Item, "rows are not Item objects")


class TwentyRowQueries(RepeatedQueries):
    """``RepeatedQueries`` with 20 rows a query: per-query setup weighs more."""

    name = "twenty_row_queries"
    title = "20-row queries of one shape"
    ROWS = 20


def _seed_families(db, parents, children, per_parent):
    """Fresh tables with ``parents`` parents (ids from 1) and ``children``
    children (ids from 1), ``per_parent`` to a parent in id order."""
    db.reset()
    with db.engine.begin() as conn:
        conn.execute(insert(PARENT), [
            {"id": p + 1, "name": f"parent {p}"} for p in range(parents)
        ])
        conn.execute(insert(CHILD), [
            {"id": i + 1, "parent_id": i // per_parent + 1, "name": f"child {i % per_parent}"}
            for i in range(children)
        ])


class EagerLoadChildren(Workload):
    """N / 10 parents, each with its 10 children loaded eagerly into a fresh
    session: the parent rows and the eager loader's child rows."""

    unit = "parent"
    CHILDREN = 10

    @property
    def ops(self):
        return max(self.n // self.CHILDREN, 1)

    def option(self):
        raise NotImplementedError

    def setup_session(self, state):
        _seed_families(self.db, self.ops, self.ops * self.CHILDREN, self.CHILDREN)
        state.session = state.session_cls(self.db.engine)
        state.statement = select(Parent).options(self.option()).order_by(Parent.id)
        return state

    def run_session(self, state):
        state.rows = state.session.scalars(state.statement).unique().all()

    def verify(self, state):
        rows = state.rows
        check(len(rows) == self.ops, f"{len(rows)} parents loaded, expected {self.ops}")
        check(all("children" in inspect(p).dict for p in rows), "children not loaded eagerly")
        for p in rows:
            ids = sorted(c.id for c in p.children)
            first = (p.id - 1) * self.CHILDREN + 1
            check(ids == list(range(first, first + self.CHILDREN)), f"parent {p.id}: children {ids}")
            check(all(c.parent_id == p.id and type(c) is Child for c in p.children),
                  f"parent {p.id}: wrong children")
        check(len(state.session.identity_map) == self.ops * (self.CHILDREN + 1),
              "identity map misses objects")


class SelectinLoadChildren(EagerLoadChildren):
    name = "selectinload"
    title = "selectinload of a one-to-many (10 children)"

    def option(self):
        return orm.selectinload(Parent.children)


class JoinedLoadChildren(EagerLoadChildren):
    name = "joinedload"
    title = "joinedload of a one-to-many (10 children)"

    def option(self):
        return orm.joinedload(Parent.children)


class EagerLoadParents(Workload):
    """N children, ten to a parent (N / 10 parents), each child's parent (a
    many-to-one) loaded eagerly into a fresh session: the child rows and the
    eager loader's parent rows."""

    unit = "child"
    CHILDREN = 10

    @property
    def parents(self):
        return max(self.n // self.CHILDREN, 1)

    def option(self):
        raise NotImplementedError

    def setup_session(self, state):
        _seed_families(self.db, self.parents, self.ops, self.CHILDREN)
        state.session = state.session_cls(self.db.engine)
        state.statement = select(Child).options(self.option()).order_by(Child.id)
        return state

    def run_session(self, state):
        state.rows = state.session.scalars(state.statement).all()

    def verify(self, state):
        rows = state.rows
        check(len(rows) == self.ops, f"{len(rows)} children loaded, expected {self.ops}")
        check(all("parent" in inspect(c).dict for c in rows), "parents not loaded eagerly")
        for c in rows:
            parent = c.parent
            check(type(parent) is Parent and parent.id == (c.id - 1) // self.CHILDREN + 1,
                  f"child {c.id}: parent {parent!r}")
            check(parent.name == f"parent {parent.id - 1}", f"child {c.id}: parent's name")
        check(len(state.session.identity_map) == self.ops + self.parents,
              "identity map misses objects")


class SelectinLoadParents(EagerLoadParents):
    name = "selectinload_m2o"
    title = "selectinload of a many-to-one (10 children a parent)"

    def option(self):
        return orm.selectinload(Child.parent)


class JoinedLoadParents(EagerLoadParents):
    name = "joinedload_m2o"
    title = "joinedload of a many-to-one (10 children a parent)"

    def option(self):
        return orm.joinedload(Child.parent)


class ParentsWithChildren(Workload):
    """One-to-many with cascade: N / 5 parents, each with 4 children."""

    name = "parents_children"
    title = "parents + children (one-to-many)"

    @property
    def parents(self):
        return max(1, self.n // (CHILDREN_PER_PARENT + 1))

    @property
    def ops(self):
        return self.parents * (CHILDREN_PER_PARENT + 1)

    def setup_session(self, state):
        self.db.reset()
        state.objects = [
            Parent(
                name=f"p{i}",
                children=[Child(name=f"c{i}.{j}") for j in range(CHILDREN_PER_PARENT)],
            )
            for i in range(self.parents)
        ]
        state.session = state.session_cls(self.db.engine)
        return state

    def run_session(self, state):
        state.session.add_all(state.objects)
        state.session.commit()

    def child_names(self, i):
        return [f"c{i}.{j}" for j in range(CHILDREN_PER_PARENT)]

    def setup_orm_bulk(self, state):
        self.db.reset()
        state.parent_rows = [{"name": f"p{i}"} for i in range(self.parents)]
        state.child_names = [self.child_names(i) for i in range(self.parents)]
        state.session = state.session_cls(self.db.engine)
        return state

    def run_orm_bulk(self, state):
        # the ids the children need come back through RETURNING, in order
        ids = state.session.scalars(
            insert(Parent).returning(Parent.id, sort_by_parameter_order=True),
            state.parent_rows,
        ).all()
        state.session.execute(
            insert(Child),
            [
                {"parent_id": id_, "name": name}
                for id_, names in zip(ids, state.child_names)
                for name in names
            ],
        )
        state.session.commit()

    setup_core = setup_orm_bulk

    def run_core(self, state):
        with self.db.engine.begin() as conn:
            ids = conn.execute(
                insert(PARENT).returning(PARENT.c.id, sort_by_parameter_order=True),
                state.parent_rows,
            ).scalars().all()
            conn.execute(
                insert(CHILD),
                [
                    {"parent_id": id_, "name": name}
                    for id_, names in zip(ids, state.child_names)
                    for name in names
                ],
            )

    def setup_dbapi(self, state):
        # the driver cannot return executemany ids: the ids are assigned here
        self.db.reset()
        state.parent_params = [(i + 1, f"p{i}") for i in range(self.parents)]
        state.child_params = [
            (i + 1, name) for i in range(self.parents) for name in self.child_names(i)
        ]
        state.parent_sql = self.sql("INSERT INTO tsbench_parent (id, name) VALUES (?, ?)")
        state.child_sql = self.sql("INSERT INTO tsbench_child (parent_id, name) VALUES (?, ?)")
        self.raw_connection(state)
        return state

    def run_dbapi(self, state):
        cursor = state.connection.cursor()
        cursor.executemany(state.parent_sql, state.parent_params)
        cursor.executemany(state.child_sql, state.child_params)
        state.connection.commit()

    def verify(self, state):
        pairs = self.db.pairs(
            "SELECT c.name, p.name FROM tsbench_child c "
            "JOIN tsbench_parent p ON c.parent_id = p.id"
        )
        expected = {
            (name, f"p{i}") for i in range(self.parents) for name in self.child_names(i)
        }
        check(pairs == expected, "children are missing or under the wrong parent")
        parents = self.db.pairs("SELECT name FROM tsbench_parent")
        check(len(parents) == self.parents, f"{len(parents)} parents, expected {self.parents}")


class SelfReferentialTree(InsertReferences, Workload):
    """A tree of N nodes, fan-out 4: the cyclic case the flush sorts per state."""

    name = "tree"
    title = "self-referential tree (cyclic)"
    model = Node
    dbapi_columns = ("id", "parent_id", "name")

    def parent_index(self, i):
        return (i - 1) // TREE_FAN_OUT

    def setup_session(self, state):
        self.db.reset()
        nodes = [Node(name="n0")]
        for i in range(1, self.n):
            node = Node(name=f"n{i}")
            nodes[self.parent_index(i)].children.append(node)
            nodes.append(node)
        state.root = nodes[0]
        state.session = state.session_cls(self.db.engine)
        return state

    def run_session(self, state):
        state.session.add(state.root)
        state.session.commit()

    def rows(self):
        # breadth-first: every parent is inserted before its children
        return [
            {"id": i + 1, "parent_id": self.parent_index(i) + 1 if i else None, "name": f"n{i}"}
            for i in range(self.n)
        ]

    def verify(self, state):
        pairs = self.db.pairs(
            "SELECT c.name, p.name FROM tsbench_node c JOIN tsbench_node p ON c.parent_id = p.id"
        )
        expected = {(f"n{i}", f"n{self.parent_index(i)}") for i in range(1, self.n)}
        check(pairs == expected, "tree edges are missing or wrong")
        roots = self.db.pairs("SELECT name FROM tsbench_node WHERE parent_id IS NULL")
        check(roots == {("n0",)}, f"roots are {roots}, expected only n0")


class ShortTransactions(Workload):
    """A workload of whole transactions or flushes: N / 10 of them per run."""

    @property
    def ops(self):
        return max(1, self.n // REQUESTS_PER_OBJECT)


class WebRequests(ShortTransactions):
    """Many short transactions: get, change, insert, commit: a web request's shape."""

    name = "web_requests"
    title = "short transactions (web request)"
    unit = "request"

    def setup_session(self, state):
        self.db.fill_items(self.n)
        state.ids = [i % self.n + 1 for i in range(self.ops)]
        return state

    def run_session(self, state):
        session_cls = state.session_cls
        engine = self.db.engine
        for id_ in state.ids:
            with session_cls(engine) as session:
                item = session.get(Item, id_)
                item.qty += 1
                session.add(Item(name="new", qty=0))
                session.commit()

    setup_core = setup_session

    def run_core(self, state):
        engine = self.db.engine
        by_id = select(ITEM).where(ITEM.c.id == bindparam("b_id"))
        set_qty = update(ITEM).where(ITEM.c.id == bindparam("b_id"))
        add = insert(ITEM)
        for id_ in state.ids:
            with engine.begin() as conn:
                row = conn.execute(by_id, {"b_id": id_}).one()
                conn.execute(set_qty, {"b_id": id_, "qty": row.qty + 1})
                conn.execute(add, {"name": "new", "qty": 0})

    def setup_dbapi(self, state):
        self.setup_session(state)
        self.raw_connection(state)
        state.statements = (
            self.sql("SELECT id, name, qty FROM tsbench_item WHERE id = ?"),
            self.sql("UPDATE tsbench_item SET qty = ? WHERE id = ?"),
            self.sql("INSERT INTO tsbench_item (name, qty) VALUES (?, ?)"),
        )
        return state

    def run_dbapi(self, state):
        connection = state.connection
        by_id, set_qty, add = state.statements
        for id_ in state.ids:
            cursor = connection.cursor()
            cursor.execute(by_id, (id_,))
            row = cursor.fetchone()
            cursor.execute(set_qty, (row[2] + 1, id_))
            cursor.execute(add, ("new", 0))
            connection.commit()

    def verify(self, state):
        n, requests = self.n, self.ops
        count, qty_sum, _ = self.db.item_totals()
        check(count == n + requests, f"{count} rows, expected {n + requests}")
        check(qty_sum == n * (n - 1) // 2 + requests, f"sum(qty) is {qty_sum}")


def author_rows(n):
    """Authors 1..n, each with one book (ids 1..n too)."""
    authors = [{"id": i + 1, "name": f"author {i}", "email": f"a{i}@example.com", "score": i}
               for i in range(n)]
    books = [{"id": i + 1, "author_id": i + 1, "title": f"book {i}"} for i in range(n)]
    return authors, books


class ModelInsertAutoincrement(Workload):
    """add_all + commit of authors (the relationship-bearing model: Python
    and server defaults, a delete-orphan one-to-many and its many-to-one),
    each with one book: N objects, N / 2 of each class."""

    name = "model_insert_autoincrement"
    title = "model with relationships: insert, autoincrement"
    with_ids = False

    @property
    def authors(self):
        return max(1, self.n // 2)

    @property
    def ops(self):
        return self.authors * 2

    def setup_session(self, state):
        self.db.reset()
        authors, books = author_rows(self.authors)
        if not self.with_ids:
            for row in authors + books:
                del row["id"]
        for row in authors:
            del row["score"]  # the Python-side default
        for row in books:
            del row["author_id"]
        state.objects = [
            Author(**author, books=[Book(**book)]) for author, book in zip(authors, books)
        ]
        state.session = state.session_cls(self.db.engine)
        return state

    def run_session(self, state):
        state.session.add_all(state.objects)
        state.session.commit()

    def verify(self, state):
        n = self.authors
        pairs = self.db.pairs(
            "SELECT b.title, a.name, a.score, a.status FROM tsbench_book b "
            "JOIN tsbench_author a ON b.author_id = a.id"
        )
        expected = {(f"book {i}", f"author {i}", 0, "active") for i in range(n)}
        check(pairs == expected, "authors or books missing, or wrong defaults")
        states = [inspect(o) for o in state.objects]
        check(all(s.persistent or s.detached for s in states), "objects not persisted")


class ModelInsertPrimaryKeyGiven(ModelInsertAutoincrement):
    name = "model_insert_pk_given"
    title = "model with relationships: insert, PK given"
    with_ids = True


def fill_authors(db, n):
    """``n`` authors with one book each (untimed setup)."""
    db.reset()
    authors, books = author_rows(n)
    with db.engine.begin() as conn:
        conn.execute(insert(Author.__table__), authors)
        conn.execute(insert(Book.__table__), books)


class ModelUpdate(Workload):
    """Change one column of every loaded author, then commit."""

    name = "model_update"
    title = "model with relationships: update one column"

    def setup_session(self, state):
        fill_authors(self.db, self.n)
        state.session = state.session_cls(self.db.engine)
        state.objects = state.session.scalars(select(Author)).all()
        return state

    def run_session(self, state):
        for obj in state.objects:
            obj.score += 1
        state.session.commit()

    def verify(self, state):
        n = self.n
        total = self.db.scalar(select(func.sum(Author.score)))
        check(total == n * (n + 1) // 2, f"sum(score) is {total}: not every row was updated")


class ModelDelete(Workload):
    """session.delete() of every loaded author with its book loaded: the
    cascade deletes the books (N objects, N / 2 of each class)."""

    name = "model_delete"
    title = "model with relationships: delete, children loaded"

    @property
    def authors(self):
        return max(1, self.n // 2)

    @property
    def ops(self):
        return self.authors * 2

    def setup_session(self, state):
        fill_authors(self.db, self.authors)
        state.session = state.session_cls(self.db.engine)
        state.objects = state.session.scalars(
            select(Author).options(orm.selectinload(Author.books))
        ).all()
        return state

    def run_session(self, state):
        delete_ = state.session.delete
        for obj in state.objects:
            delete_(obj)
        state.session.commit()

    def verify(self, state):
        left = self.db.pairs("SELECT id FROM tsbench_author UNION ALL SELECT id FROM tsbench_book")
        check(not left, f"{len(left)} rows left")
        check(all(inspect(o).detached for o in state.objects), "authors not detached")


class JoinedInheritanceInsert(Workload):
    """add_all + commit of joined-inheritance objects with their ids: two
    tables per object, the discriminator, the key synchronised between them."""

    name = "joined_insert"
    title = "joined inheritance: insert, PK given"

    def setup_session(self, state):
        self.db.reset()
        state.objects = [
            Engineer(id=i + 1, name=f"e{i}", language="py" if i % 2 else "c")
            for i in range(self.n)
        ]
        state.session = state.session_cls(self.db.engine)
        return state

    def run_session(self, state):
        state.session.add_all(state.objects)
        state.session.commit()

    def verify(self, state):
        rows = self.db.pairs(
            "SELECT p.id, p.name, p.kind, e.language FROM tsbench_person p "
            "JOIN tsbench_engineer e ON e.id = p.id"
        )
        expected = {
            (i + 1, f"e{i}", "engineer", "py" if i % 2 else "c") for i in range(self.n)
        }
        check(rows == expected, "engineers missing or wrong")


TAGS_PER_POST = 10


class ManyToManyLinks(Workload):
    """New posts, each linked to 10 existing tags: N / 10 posts, N links."""

    name = "many_to_many"
    title = "many-to-many links"
    unit = "link"

    @property
    def posts(self):
        return max(1, self.n // TAGS_PER_POST)

    @property
    def ops(self):
        return self.posts * TAGS_PER_POST

    def setup_session(self, state):
        self.db.reset()
        with self.db.engine.begin() as conn:
            conn.execute(
                insert(Tag.__table__),
                [{"id": i + 1, "name": f"tag {i}"} for i in range(TAGS_PER_POST)],
            )
        state.session = state.session_cls(self.db.engine)
        tags = state.session.scalars(select(Tag).order_by(Tag.id)).all()
        state.objects = [
            Post(id=i + 1, title=f"post {i}", tags=list(tags)) for i in range(self.posts)
        ]
        return state

    def run_session(self, state):
        state.session.add_all(state.objects)
        state.session.commit()

    def verify(self, state):
        links = self.db.scalar(select(func.count()).select_from(post_tag))
        check(links == self.ops, f"{links} links, expected {self.ops}")
        posts = self.db.scalar(select(func.count()).select_from(Post.__table__))
        check(posts == self.posts, f"{posts} posts, expected {self.posts}")


class SmallFlushes(ShortTransactions):
    """Flushes of a few new objects each, in one transaction: a flush's fixed cost."""

    per_flush = 1
    unit = "flush"

    def setup_session(self, state):
        self.db.reset()
        state.session = state.session_cls(self.db.engine)
        state.session.connection()  # the transaction is open before the timing
        state.batches = [
            [Item(id=f * self.per_flush + i + 1, name=f"f{f}", qty=i) for i in range(self.per_flush)]
            for f in range(self.ops)
        ]
        return state

    def run_session(self, state):
        session = state.session
        for batch in state.batches:
            session.add_all(batch)
            session.flush()

    def verify(self, state):
        state.session.commit()
        count, qty_sum, _ = self.db.item_totals()
        expected = self.ops * self.per_flush
        check(count == expected, f"{count} rows, expected {expected}")
        check(qty_sum == self.ops * (self.per_flush * (self.per_flush - 1) // 2), "wrong qty")
        check(not state.session.new and not state.session.dirty, "objects left unflushed")


class FlushOne(SmallFlushes):
    name = "flush_1"
    title = "flush of 1 new object"


class FlushTwo(SmallFlushes):
    name = "flush_2"
    title = "flush of 2 new objects"
    per_flush = 2


class FlushTen(SmallFlushes):
    name = "flush_10"
    title = "flush of 10 new objects"
    per_flush = 10


class OneNewPerSession(ShortTransactions):
    """A session per new object: add, commit, close (examples/performance single_inserts)."""

    name = "one_new_per_session"
    title = "one new object per session"
    unit = "session"

    def setup_session(self, state):
        self.db.reset()
        return state

    def run_session(self, state):
        session_cls = state.session_cls
        engine = self.db.engine
        for i in range(self.ops):
            with session_cls(engine) as session:
                session.add(Item(name=f"one {i}", qty=i))
                session.commit()

    setup_core = setup_session

    def run_core(self, state):
        engine = self.db.engine
        add = insert(ITEM)
        for i in range(self.ops):
            with engine.begin() as conn:
                conn.execute(add, {"name": f"one {i}", "qty": i})

    def verify(self, state):
        count, qty_sum, _ = self.db.item_totals()
        check(count == self.ops, f"{count} rows, expected {self.ops}")
        check(qty_sum == self.ops * (self.ops - 1) // 2, f"sum(qty) is {qty_sum}")


READ_MOSTLY_ROWS = 20


class ReadMostlyRequests(ShortTransactions):
    """Three get()s, one 20-row query and a commit with nothing to flush, per session."""

    name = "read_mostly"
    title = "read-mostly request"
    unit = "request"

    def setup_session(self, state):
        self.db.ensure_items(self.n)
        count = self.n
        state.ids = [
            [(r * 3 + k) % count + 1 for k in range(3)] for r in range(self.ops)
        ]
        state.first = [r % max(1, count - READ_MOSTLY_ROWS) for r in range(self.ops)]
        return state

    def run_session(self, state):
        session_cls = state.session_cls
        engine = self.db.engine
        query = select(Item).where(Item.id > bindparam("first")).order_by(Item.id).limit(
            READ_MOSTLY_ROWS
        )
        seen = state.seen = []
        for ids, first in zip(state.ids, state.first):
            with session_cls(engine) as session:
                total = 0
                for id_ in ids:
                    total += session.get(Item, id_).qty
                for item in session.scalars(query, {"first": first}):
                    total += item.qty
                session.commit()
            seen.append(total)

    setup_core = setup_session

    def run_core(self, state):
        engine = self.db.engine
        by_id = select(ITEM.c.qty).where(ITEM.c.id == bindparam("b_id"))
        query = select(ITEM).where(ITEM.c.id > bindparam("first")).order_by(ITEM.c.id).limit(
            READ_MOSTLY_ROWS
        )
        seen = state.seen = []
        for ids, first in zip(state.ids, state.first):
            with engine.begin() as conn:
                total = sum(conn.execute(by_id, {"b_id": id_}).scalar_one() for id_ in ids)
                total += sum(row.qty for row in conn.execute(query, {"first": first}))
            seen.append(total)

    def verify(self, state):
        # item i + 1 has qty i
        expected = [
            sum(id_ - 1 for id_ in ids) + sum(range(first, first + READ_MOSTLY_ROWS))
            for ids, first in zip(state.ids, state.first)
        ]
        check(state.seen == expected, "read values differ from the table's")


WORKLOADS = (
    Construct,
    InsertAutoincrement,
    InsertPrimaryKeyGiven,
    UpdateOneColumn,
    DeleteLoaded,
    LoadObjects,
    GetIdentityHits,
    GetMisses,
    RepeatedQueries,
    SmallQueries,
    TwentyRowQueries,
    SelectinLoadChildren,
    JoinedLoadChildren,
    SelectinLoadParents,
    JoinedLoadParents,
    ParentsWithChildren,
    SelfReferentialTree,
    WebRequests,
    ModelInsertAutoincrement,
    ModelInsertPrimaryKeyGiven,
    ModelUpdate,
    ModelDelete,
    JoinedInheritanceInsert,
    ManyToManyLinks,
    FlushOne,
    FlushTwo,
    FlushTen,
    OneNewPerSession,
    ReadMostlyRequests,
)

BY_NAME = {workload.name: workload for workload in WORKLOADS}
