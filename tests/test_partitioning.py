"""Partitioning, as SQLAlchemy's Session documentation describes it.

A Session bound to two databases (``binds`` per mapper and per table),
``turbosession.ext.horizontal_shard.ShardedSession``, and two-phase commit
across two databases.  Each scenario runs on stock SQLAlchemy and on
turbosession (compiled and pure) over the same two databases and must leave
the same record: every statement with its parameters and the database it went
to, the objects' states and identity keys, the exceptions, and the rows each
database holds afterwards.  The rows are also checked against what the
scenario means to write, so "the same as stock" cannot hide "wrong in both".

Sharding and two-phase commit need two PostgreSQL databases (SQLite has no
two-phase commit); binds run on SQLite too.
"""

import contextlib
import re

import pytest
from sqlalchemy import ForeignKey, event, inspect, orm, select, text
from sqlalchemy.exc import IntegrityError, ProgrammingError
from sqlalchemy.ext.horizontal_shard import ShardedSession, set_shard_id
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import turbosession
import turbosession.ext.horizontal_shard
from turbosession import fastpath
from backends import BACKENDS, PG_URL, PG_URL_2, require_postgresql, scratch_engine, sqlite_engine
from support import object_state


@contextlib.contextmanager
def _two_databases(backend):
    if backend == "sqlite":
        with sqlite_engine() as first, sqlite_engine() as second:
            yield first, second
    else:
        require_postgresql(PG_URL, PG_URL_2)
        with scratch_engine(PG_URL) as first, scratch_engine(PG_URL_2) as second:
            yield first, second


@pytest.fixture(params=BACKENDS)
def two_databases(request):
    with _two_databases(request.param) as pair:
        yield pair


@pytest.fixture
def two_pg_databases():
    with _two_databases("postgresql") as pair:
        yield pair


class Recorder:
    """Statements, parameters and two-phase events, labelled by database."""

    def __init__(self, **engines):
        self.entries = []
        self.engines = engines

    def note(self, *what):
        self.entries.append(what)

    def __enter__(self):
        for label, engine in self.engines.items():
            for name, fn in self._listeners(label):
                event.listen(engine, name, fn)
        return self

    def __exit__(self, *exc):
        for label, engine in self.engines.items():
            for name, fn in self._listeners(label):
                event.remove(engine, name, fn)

    def _listeners(self, label):
        # one function object per (label, event), so remove() finds it again
        cache = self.__dict__.setdefault("_fns", {})
        if label not in cache:

            def sql(conn, cursor, statement, parameters, context, executemany):
                self.note("sql", label, _no_xid(statement), repr(parameters), executemany)

            def twophase(name):
                def fn(conn, xid, is_prepared=None):
                    self.note("twophase", label, name, is_prepared)

                return fn

            cache[label] = [("before_cursor_execute", sql)] + [
                (name, twophase(name))
                for name in ("begin_twophase", "prepare_twophase", "rollback_twophase", "commit_twophase")
            ]
        return cache[label]


def _no_xid(statement):
    # two-phase transaction ids are random per run
    return re.sub(r"'_sa_[0-9a-f]+'", "'<xid>'", statement)


def rows(engine, table):
    with engine.connect() as conn:
        return [tuple(r) for r in conn.execute(select(table).order_by(*table.primary_key))]


def assert_same_as_stock(scenario, stock_cls, turbo_cls, first, second, metadatas):
    """Runs ``scenario`` on fresh tables with each class; the records must match."""
    records = []
    for cls in (stock_cls, turbo_cls):
        for metadata, engine in metadatas:
            metadata.drop_all(engine)
            metadata.create_all(engine)
        try:
            with Recorder(first=first, second=second) as log:
                scenario(cls, first, second, log)
            records.append(log.entries)
        finally:
            orm.close_all_sessions()
            for metadata, engine in metadatas:
                metadata.drop_all(engine)
    expected, actual = records
    for i, (want, got) in enumerate(zip(expected, actual)):
        assert got == want, f"entry {i} differs from stock"
    assert len(actual) == len(expected)
    return actual


# --- binds per mapper and per table ------------------------------------------


class AccountsBase(DeclarativeBase):
    pass


class Account(AccountsBase):
    __tablename__ = "account"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]
    balance: Mapped[int]


class LedgerBase(DeclarativeBase):
    pass


class Entry(LedgerBase):
    __tablename__ = "ledger_entry"
    id: Mapped[int] = mapped_column(primary_key=True)
    # no foreign key: the account lives in the other database
    account_id: Mapped[int]
    amount: Mapped[int]


def binds_scenario(session_cls, first, second, log):
    # Account bound through its mapper, the ledger through its Table
    session = session_cls(binds={Account: first, Entry.__table__: second})
    log.note("binds", session.get_bind(Account) is first, session.get_bind(Entry) is second)

    ann = Account(name="ann", balance=100)
    session.add(ann)
    session.flush()
    session.add_all([Entry(account_id=ann.id, amount=-30), Entry(account_id=ann.id, amount=-20)])
    ann.balance -= 50
    session.commit()
    log.note("committed", object_state(ann), inspect(ann).identity_key)

    # a failure in the second database rolls back the first one too
    ann.balance -= 999
    session.add(Entry(id=1, account_id=ann.id, amount=-999))  # duplicate key
    try:
        session.flush()
    except IntegrityError as exc:
        log.note("flush failed", type(exc.orig).__name__)
        session.rollback()
    log.note("after rollback", object_state(ann), ann.balance)

    log.note("accounts", [(a.name, a.balance) for a in session.scalars(select(Account))])
    log.note("entries", [(e.id, e.amount) for e in session.scalars(select(Entry).order_by(Entry.id))])
    log.note("get", session.get(Entry, 2).amount, session.get(Account, ann.id) is ann)
    session.close()
    log.note("rows", rows(first, Account.__table__), rows(second, Entry.__table__))
    log.note("tables", inspect(first).has_table("ledger_entry"), inspect(second).has_table("account"))


def test_binds_per_mapper_and_table(session_cls, two_databases):
    first, second = two_databases
    record = assert_same_as_stock(
        binds_scenario,
        orm.Session,
        session_cls,
        first,
        second,
        [(AccountsBase.metadata, first), (LedgerBase.metadata, second)],
    )
    notes = [entry for entry in record if entry[0] != "sql"]
    assert notes[0] == ("binds", True, True)
    assert notes[1] == ("committed", "persistent", (Account, (1,), None))
    assert notes[2][0] == "flush failed"
    assert notes[3] == ("after rollback", "persistent", 50)
    assert notes[4:7] == [
        ("accounts", [("ann", 50)]),
        ("entries", [(1, -30), (2, -20)]),
        ("get", -20, True),
    ]
    assert notes[7] == ("rows", [(1, "ann", 50)], [(1, 1, -30), (2, 1, -20)])
    assert notes[8] == ("tables", False, False)
    # every statement of the session went to the database its mapper or
    # table is bound to
    statements = [
        e
        for e in record
        if e[0] == "sql" and e[2].startswith(("INSERT", "UPDATE", "SELECT")) and "pg_catalog" not in e[2]
    ]
    assert {e[1] for e in statements} == {"first", "second"}
    for _, label, statement, *_ in statements:
        assert label == ("second" if "ledger_entry" in statement else "first"), statement


# --- horizontal sharding ------------------------------------------------------


class ShardBase(DeclarativeBase):
    pass


class Reading(ShardBase):
    __tablename__ = "reading"
    # each shard numbers its own rows: the same id exists in both shards
    id: Mapped[int] = mapped_column(primary_key=True)
    region: Mapped[str]
    value: Mapped[int]


def choose_shard(mapper, instance, clause=None):
    return "eu" if instance.region.startswith("eu") else "us"


def choose_identity(mapper, primary_key, *, lazy_loaded_from, execution_options, bind_arguments, **kw):
    if lazy_loaded_from is not None:
        return [lazy_loaded_from.identity_token]
    return ["eu", "us"]


def choose_execute(context):
    return ["eu", "us"]


def sharded(session_cls, first, second):
    return session_cls(
        shards={"eu": first, "us": second},
        shard_chooser=choose_shard,
        identity_chooser=choose_identity,
        execute_chooser=choose_execute,
    )


def sharding_scenario(session_cls, first, second, log):
    session = sharded(session_cls, first, second)
    berlin, oslo, ohio = (
        Reading(region="eu-berlin", value=10),
        Reading(region="eu-oslo", value=20),
        Reading(region="us-ohio", value=30),
    )
    session.add_all([berlin, oslo, ohio])
    session.commit()
    log.note("keys", [inspect(o).identity_key for o in (berlin, oslo, ohio)])
    log.note("rows", rows(first, Reading.__table__), rows(second, Reading.__table__))
    session.close()

    # a query spans both shards; each object carries its shard as identity token
    loaded = session.scalars(select(Reading).order_by(Reading.id)).all()
    log.note("loaded", [(inspect(o).identity_token, o.id, o.region) for o in loaded])
    log.note("identity map", sorted(session.identity_map.keys(), key=repr))
    ohio = session.get(Reading, 1, identity_token="us")
    log.note("get us", ohio.region, ohio in loaded)
    log.note("get eu", session.get(Reading, 2, identity_token="eu").region)
    log.note("get any", session.get(Reading, 2).region)

    only_us = session.scalars(select(Reading).options(set_shard_id("us"))).all()
    log.note("only us", [o.region for o in only_us])

    ohio.value += 1
    session.delete(session.get(Reading, 2, identity_token="eu"))
    session.commit()
    log.note("rows", rows(first, Reading.__table__), rows(second, Reading.__table__))
    session.close()


def test_sharded_session_over_two_databases(impl, two_pg_databases):
    class TurboSharded(turbosession.ext.horizontal_shard.ShardedSession):
        _turbo = impl

    first, second = two_pg_databases
    session = sharded(TurboSharded, first, second)
    assert type(session.identity_map) is impl.identity.WeakIdentityMap
    session.close()

    fastpath.reset_stats()
    record = assert_same_as_stock(
        sharding_scenario,
        ShardedSession,
        TurboSharded,
        first,
        second,
        [(ShardBase.metadata, first), (ShardBase.metadata, second)],
    )
    notes = [entry for entry in record if entry[0] != "sql"]
    # writes landed in their shard, each numbering from 1: the same primary
    # key in two shards is two objects, told apart by the identity token
    assert notes[0] == ("keys", [(Reading, (1,), "eu"), (Reading, (2,), "eu"), (Reading, (1,), "us")])
    assert notes[1] == ("rows", [(1, "eu-berlin", 10), (2, "eu-oslo", 20)], [(1, "us-ohio", 30)])
    assert notes[2] == ("loaded", [("eu", 1, "eu-berlin"), ("eu", 2, "eu-oslo"), ("us", 1, "us-ohio")])
    assert len(notes[3][1]) == 3
    assert notes[4:8] == [
        ("get us", "us-ohio", True),
        ("get eu", "eu-oslo"),
        ("get any", "eu-oslo"),
        ("only us", ["us-ohio"]),
    ]
    assert notes[8] == ("rows", [(1, "eu-berlin", 10)], [(1, "us-ohio", 31)])
    # the sharded queries went to both databases; the writes each to one
    selects = {e[1] for e in record if e[0] == "sql" and e[2].startswith("SELECT")}
    assert selects == {"first", "second"}
    writes = sorted((e[1], e[2].split()[0]) for e in record if e[0] == "sql" and e[2].startswith(("UPDATE", "DELETE")))
    assert writes == [("first", "DELETE"), ("second", "UPDATE")]
    # every flush of the sharded session took turbosession's unit of work
    stats = fastpath.stats()
    assert stats["fast"] > 0 and not stats["fallback"], stats


# --- two-phase commit ---------------------------------------------------------


class TwoPhaseBase(DeclarativeBase):
    pass


class Customer(TwoPhaseBase):
    __tablename__ = "customer"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Ledger(TwoPhaseBase):
    __tablename__ = "ledger"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str]


class Posting(TwoPhaseBase):
    __tablename__ = "posting"
    id: Mapped[int] = mapped_column(primary_key=True)
    # checked at PREPARE TRANSACTION, not at INSERT: a violation makes the
    # prepare phase fail
    ledger_id: Mapped[int] = mapped_column(ForeignKey("ledger.id", deferrable=True, initially="DEFERRED"))
    amount: Mapped[int]


def twophase_session(session_cls, first, second):
    return session_cls(binds={Customer: first, Ledger: second, Posting: second}, twophase=True)


def prepared_transactions(engine):
    with engine.connect() as conn:
        return conn.scalar(text("SELECT count(*) FROM pg_prepared_xacts WHERE database = current_database()"))


def twophase_scenario(session_cls, first, second, log):
    session = twophase_session(session_cls, first, second)
    session.add_all([Customer(name="ann"), Ledger(id=1, name="main"), Posting(ledger_id=1, amount=5)])
    session.commit()
    log.note("committed", rows(first, Customer.__table__), rows(second, Posting.__table__))

    bob = Customer(name="bob")
    stray = Posting(ledger_id=999, amount=7)
    session.add_all([bob, stray])
    session.flush()  # the INSERTs succeed; the deferred foreign key fails at prepare
    try:
        session.commit()
    except Exception as exc:
        # psycopg counts a transaction as prepared once PREPARE TRANSACTION is
        # sent, so rolling back the one that failed to prepare sends ROLLBACK
        # PREPARED, which raises in turn; stock raises that error, chained to
        # the prepare's IntegrityError
        log.note("commit failed", type(exc), type(exc.orig).__name__, type(exc.__context__), type(exc.__context__.orig).__name__)
    log.note("states", object_state(bob), object_state(stray), session.in_transaction())
    log.note("rows", rows(first, Customer.__table__), rows(second, Posting.__table__))
    log.note("prepared left", prepared_transactions(first), prepared_transactions(second))
    # the session is usable again
    session.add(Customer(name="cid"))
    session.commit()
    log.note("after", rows(first, Customer.__table__))
    session.close()


def test_two_phase_commit(session_cls, two_pg_databases):
    first, second = two_pg_databases
    metadatas = [(TwoPhaseBase.metadata, first), (TwoPhaseBase.metadata, second)]
    records = []
    for cls in (orm.Session, session_cls):
        for metadata, engine in metadatas:
            metadata.drop_all(engine)
            metadata.create_all(engine)
        try:
            with Recorder(first=first, second=second) as log:
                twophase_scenario(cls, first, second, log)
        finally:
            orm.close_all_sessions()
            for metadata, engine in metadatas:
                metadata.drop_all(engine)
        records.append(log.entries)

    stock, turbo = records
    # SQLAlchemy prepares and rolls back the connections in set order, so which
    # database is prepared first varies from run to run: the statements are
    # compared per database, the two-phase events checked for either order
    for label in ("first", "second"):
        assert [e for e in turbo if e[:2] == ("sql", label)] == [e for e in stock if e[:2] == ("sql", label)]
    notes = [e for e in turbo if e[0] not in ("sql", "twophase")]
    assert notes == [e for e in stock if e[0] not in ("sql", "twophase")]

    assert notes[0] == ("committed", [(1, "ann")], [(1, 1, 5)])
    assert notes[1] == ("commit failed", ProgrammingError, "UndefinedObject", IntegrityError, "ForeignKeyViolation")
    assert notes[2] == ("states", "transient", "transient", False)
    assert notes[3] == ("rows", [(1, "ann")], [(1, 1, 5)])  # bob rolled back with the posting
    assert notes[4] == ("prepared left", 0, 0)
    assert notes[5] == ("after", [(1, "ann"), (3, "cid")])

    twophase = [e[1:] for e in turbo if e[0] == "twophase"]
    first_commit, failed, after = twophase[:6], twophase[6:-3], twophase[-3:]
    # both databases prepared, then both committed
    for label in ("first", "second"):
        assert [e[1:] for e in first_commit if e[0] == label] == [
            ("begin_twophase", None),
            ("prepare_twophase", None),
            ("commit_twophase", True),
        ]
    # the posting's database failed to prepare; the other one, prepared
    # before it or not (set order), was rolled back as well
    assert [e[1:] for e in failed if e[0] == "second"] == [
        ("begin_twophase", None),
        ("prepare_twophase", None),
        ("rollback_twophase", False),
    ]
    first_events = [e[1:] for e in failed if e[0] == "first"]
    assert first_events in (
        [("begin_twophase", None), ("prepare_twophase", None), ("rollback_twophase", True)],
        [("begin_twophase", None), ("rollback_twophase", False)],
    )
    assert [e[0] for e in after] == ["first"] * 3
