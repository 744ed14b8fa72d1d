"""Session.execute / scalars / scalar of repeated ORM selects against stock's.

An ORM ``select()`` executed again, without execution options, bind
arguments, session execution options or ``do_orm_execute`` listeners, skips
the per-call setup of stock's ``Session._execute_internal``
(``turbosession._loading.session_execute_internal``): what that setup decides
of the statement is kept with the statement.  Each scenario runs on stock
``sqlalchemy.orm.Session`` and on turbosession's Session (compiled and pure,
SQLite and PostgreSQL) and the records must be equal: results (which objects,
their states, loaded attributes, load path and options), rows, exceptions,
the SQL and its parameters as the engine's events and as the DBAPI cursor
receive them, the session's ``get_bind`` arguments and autoflushes, the
identity map.  The counters then say which calls took the direct path.
"""

import pytest
from sqlalchemy import bindparam, event, select, text
from sqlalchemy.orm import Session as StockSession
from sqlalchemy.orm import selectinload

import turbosession
from sqlalchemy.util import immutabledict

from support import assert_same_as_stock, optional_package
from test_get_miss import (
    Author, Book, attempt, identity_map_contents, recording_session, seed
)
from test_loading import Base


def rows_of(result):
    return [tuple(row) for row in result]


def repeated(session_cls, engine, log):
    """Statements executed several times, in the shapes applications use."""

    Binding = recording_session(session_cls, log)

    with session_cls(engine) as session:
        seed(session)
    by_id = select(Author).where(Author.id == bindparam("id"))
    by_name = select(Author).where(Author.name == bindparam("name")).order_by(Author.id)
    columns = select(Author.id, Author.name).where(Author.id > bindparam("low")).order_by(Author.id)
    pairs = select(Author, Book).join(Author.books).order_by(Book.id)
    eager = select(Author).options(selectinload(Author.books)).order_by(Author.id)
    existing = select(Author).execution_options(populate_existing=True).order_by(Author.id)
    streamed = select(Author).execution_options(yield_per=2).order_by(Author.id)
    no_autoflush = select(Author).execution_options(autoflush=False).order_by(Author.id)
    core = select(Author.__table__).where(Author.__table__.c.id > bindparam("low"))
    text_ = text("SELECT id, name FROM tgm_author WHERE id > :low ORDER BY id")
    with Binding(engine) as session:
        known = {}
        for round_ in range(3):
            attempt(log, f"scalars {round_}", known,
                    lambda: session.scalars(by_id, {"id": 1 + round_}).all())
            attempt(log, f"scalar {round_}", known,
                    lambda: session.scalar(by_id, {"id": 2 + round_}))
            attempt(log, f"scalar none {round_}", known,
                    lambda: session.scalar(by_id, {"id": 90 + round_}))
            log.note(f"execute rows {round_}",
                     [(type(row).__name__, row._fields, tuple(type(v).__name__ for v in row))
                      for row in session.execute(by_name, {"name": f"author {round_ + 1}"})])
            log.note(f"columns {round_}", rows_of(session.execute(columns, {"low": round_})))
            log.note(f"pairs {round_}", [
                (a.id, b.id, b.author is a) for a, b in session.execute(pairs)
            ])
            log.note(f"eager {round_}", [
                (a.id, [b.id for b in a.books]) for a in session.scalars(eager)
            ])
            log.note(f"unique {round_}", [
                a.id for a in session.scalars(pairs.with_only_columns(Author)).unique()
            ])
            log.note(f"partitions {round_}", [
                [a.id for a in part] for part in session.scalars(streamed).partitions()
            ])
            log.note(f"core {round_}", rows_of(session.execute(core, {"low": 3})))
            log.note(f"text {round_}", rows_of(session.execute(text_, {"low": 3})))
            first = session.execute(by_name, {"name": "author 3"}).first()
            log.note(f"first {round_}", first[0].id)
            session.get(Author, 1).name = f"changed {round_}"
            attempt(log, f"populate_existing {round_}", known,
                    lambda: session.scalars(existing).all())
            session.add(Author(id=50 + round_, name=f"pending {round_}", bio="b"))
            attempt(log, f"no autoflush option {round_}", known,
                    lambda: session.scalars(no_autoflush).all())
            attempt(log, f"autoflush {round_}", known,
                    lambda: session.scalars(by_id, {"id": 50 + round_}).all())
            with session.no_autoflush:
                session.add(Author(id=60 + round_, name="held", bio="b"))
                attempt(log, f"no_autoflush block {round_}", known,
                        lambda: session.scalars(by_id, {"id": 60 + round_}).all())
            attempt(log, f"missing parameter {round_}", known,
                    lambda: session.scalars(by_id).all())
            attempt(log, f"legacy query {round_}", known,
                    lambda: session.query(Author).filter(Author.id == 3).all())
            log.note("identity map", identity_map_contents(session))
            log.states(session, **{k: v for k, v in known.items() if v is not None
                                   and not isinstance(v, list)})
        session.rollback()
    with Binding(engine, autoflush=False) as session:
        for round_ in range(2):
            session.add(Author(id=80 + round_, name="unflushed", bio="b"))
            attempt(log, f"autoflush off {round_}", {},
                    lambda: session.scalars(by_id, {"id": 80 + round_}).all())


def test_repeated_selects_same_as_stock(session_cls, engine):
    turbosession.reset_stats()
    assert_same_as_stock(repeated, session_cls, engine, Base.metadata)
    stats = turbosession.stats()["loads"]["execute"]
    assert stats["direct"] >= 30, stats
    for reason in ("execute_first", "execute_statement"):
        assert stats["fallback"].get(reason), (reason, stats)


def fallbacks(session_cls, engine, log):
    """Calls stock's _execute_internal decides differently: options, bind
    arguments, session options, do_orm_execute listeners."""
    with session_cls(engine) as session:
        seed(session)
    by_id = select(Author).where(Author.id == bindparam("id"))
    with session_cls(engine) as session:
        for round_ in range(2):
            attempt(log, f"options {round_}", {}, lambda: session.scalars(
                by_id, {"id": 1}, execution_options={"populate_existing": True}).all())
            attempt(log, f"bind arguments {round_}", {}, lambda: session.scalars(
                by_id, {"id": 2}, bind_arguments={"bind": engine}).all())
    with session_cls(engine, execution_options={"populate_existing": True}) as session:
        for round_ in range(2):
            attempt(log, f"session options {round_}", {},
                    lambda: session.scalars(by_id, {"id": 3}).all())
    with session_cls(engine) as session:
        @event.listens_for(session, "do_orm_execute")
        def on_execute(state):
            log.note("do_orm_execute", str(state.statement), state.parameters,
                     sorted(state.execution_options), state.is_select)

        for round_ in range(2):
            attempt(log, f"do_orm_execute {round_}", {},
                    lambda: session.scalars(by_id, {"id": 4}).all())


def test_fallbacks_same_as_stock(session_cls, engine):
    turbosession.reset_stats()
    assert_same_as_stock(fallbacks, session_cls, engine, Base.metadata)
    stats = turbosession.stats()["loads"]["execute"]
    for reason in ("execute_options", "execute_session_options", "execute_orm_execute"):
        assert stats["fallback"].get(reason), (reason, stats)


def test_patched_execute_internal_runs_stock(session_cls, engine, monkeypatch):
    """A patch of stock's Session._execute_internal is called as stock calls it."""
    calls = []
    original = StockSession._execute_internal

    def patched(self, statement, *args, **kw):
        calls.append(str(statement))
        return original(self, statement, *args, **kw)

    def scenario(session_cls, engine, log):
        with session_cls(engine) as session:
            seed(session)
        statement = select(Author).where(Author.id == 2)
        with session_cls(engine) as session:
            for round_ in range(2):
                attempt(log, f"patched {round_}", {}, lambda: session.scalars(statement).all())

    monkeypatch.setattr(StockSession, "_execute_internal", patched)
    turbosession.reset_stats()
    assert_same_as_stock(scenario, session_cls, engine, Base.metadata)
    assert turbosession.stats()["loads"]["execute"]["direct"] == 0
    # stock's session and turbosession's each called it for every execution
    assert len([c for c in calls if "tgm_author.id = :id_1" in c]) == 4, calls


def test_overriding_subclass_is_called(session_cls, engine):
    """A subclass's own _execute_internal runs, and its super() call reaches
    turbosession's."""
    seen = []

    class Custom(session_cls):
        def _execute_internal(self, statement, *args, **kw):
            seen.append(str(statement))
            return super()._execute_internal(statement, *args, **kw)

    def scenario(session_cls, engine, log):
        with session_cls(engine) as session:
            seed(session)
        statement = select(Author).order_by(Author.id)
        with Custom(engine) as session:
            for round_ in range(3):
                log.note(round_, [a.id for a in session.scalars(statement)])

    turbosession.reset_stats()
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        from support import Recorder

        with Recorder(engine) as log:
            scenario(session_cls, engine, log)
    finally:
        Base.metadata.drop_all(engine)
    assert [entry for entry in log.entries if entry[0] in (0, 1, 2)] == [
        (0, [1, 2, 3, 4, 5]), (1, [1, 2, 3, 4, 5]), (2, [1, 2, 3, 4, 5])
    ]
    assert len([s for s in seen if "FROM tgm_author ORDER BY" in s]) == 3
    assert turbosession.stats()["loads"]["execute"]["direct"] == 2


def test_memo_is_not_inherited_by_generative_copies(session_cls, engine):
    """What is kept with a statement is dropped from the statements made from
    it (as its memoized cache key is), so a copy with options decides anew."""
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            seed(session)
        statement = select(Author).order_by(Author.id)
        with session_cls(engine) as session:
            turbosession.reset_stats()
            session.scalars(statement).all()
            session.scalars(statement).all()
            assert "_turbosession_execution" in statement.__dict__
            copy = statement.execution_options(populate_existing=True)
            assert "_turbosession_execution" not in copy.__dict__
            session.get(Author, 1).name = "changed"
            session.flush()
            session.get(Author, 1).name = "unflushed"
            with session.no_autoflush:
                session.scalars(copy).all()
                session.scalars(copy).all()
            # populate_existing overwrote the unflushed change, as stock does
            assert session.get(Author, 1).name == "changed"
            stats = turbosession.stats()["loads"]["execute"]
            assert stats["direct"] == 2 and stats["fallback"] == {"execute_first": 2}, stats
    finally:
        Base.metadata.drop_all(engine)


@pytest.mark.parametrize("engine_events", [True, False], ids=["engine-events", "cursor-only"])
def test_cursor_calls_same_as_stock(session_cls, engine, engine_events):
    """The DBAPI cursor receives what it receives from stock."""

    def scenario(session_cls, engine, log):
        with session_cls(engine) as session:
            seed(session)
        statement = select(Author).where(Author.id > bindparam("low")).order_by(Author.id)
        with session_cls(engine) as session:
            for low in range(4):
                log.note(low, [a.id for a in session.scalars(statement, {"low": low})])

    turbosession.reset_stats()
    entries = assert_same_as_stock(
        scenario, session_cls, engine, Base.metadata, engine_events=engine_events
    )
    assert [entry for entry in entries if entry[0] == "cursor"]
    assert turbosession.stats()["loads"]["execute"]["direct"] == 3


def constant_options(session_cls, engine, log):
    """The same immutable execution options object each time (what
    AsyncSession.execute passes), and several of them."""
    with session_cls(engine) as session:
        seed(session)
    statement = select(Author).order_by(Author.id)
    existing = immutabledict({"populate_existing": True})
    no_autoflush = immutabledict({"autoflush": False})
    options = [immutabledict({"prebuffer_rows": True}), existing, no_autoflush] + [
        immutabledict({"logging_token": f"t{i}"}) for i in range(3)
    ]
    with session_cls(engine) as session:
        for round_ in range(3):
            session.get(Author, 1).name = f"changed {round_}"
            session.add(Author(id=40 + round_, name="pending", bio="b"))
            for i, opts in enumerate(options):
                attempt(log, f"options {i} round {round_}", {},
                        lambda: session.scalars(statement, execution_options=opts).all())
                log.note("names", [a.name for a in session.scalars(
                    statement, execution_options=no_autoflush)])
        log.note("identity map", identity_map_contents(session))
        session.rollback()


def test_constant_execution_options_same_as_stock(session_cls, engine):
    turbosession.reset_stats()
    assert_same_as_stock(constant_options, session_cls, engine, Base.metadata)
    stats = turbosession.stats()["loads"]["execute"]
    # four options objects kept per statement: the others run stock's
    assert stats["direct"] >= 30 and stats["fallback"].get("execute_options"), stats


def test_async_session_same_as_stock(impl, tmp_path):
    optional_package("aiosqlite", "test-integrations")
    optional_package("greenlet", "asyncio")
    import asyncio

    from sqlalchemy.ext.asyncio import AsyncSession as StockAsyncSession
    from sqlalchemy.ext.asyncio import create_async_engine

    from turbosession.ext.asyncio import AsyncSession

    pinned = type("Pinned", (turbosession.Session,), {"_turbo": impl})

    async def scenario(make_session, name):
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/{name}.db")
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        seen = []
        statement = select(Author).where(Author.id > bindparam("low")).order_by(Author.id)
        async with make_session(engine) as session:
            session.add_all([Author(id=i, name=f"author {i}", bio="b") for i in range(1, 6)])
            await session.commit()
            for low in range(4):
                found = await session.scalars(statement, {"low": low})
                seen.append([(a.id, a.name) for a in found])
                seen.append([tuple(r) for r in await session.execute(
                    select(Author.id).where(Author.id > bindparam("low")), {"low": low})])
        await engine.dispose()
        return seen

    expected = asyncio.run(scenario(StockAsyncSession, "stock"))
    turbosession.reset_stats()
    actual = asyncio.run(scenario(
        lambda engine: AsyncSession(engine, sync_session_class=pinned), "turbo"))
    assert actual == expected
    assert turbosession.stats()["loads"]["execute"]["direct"] == 3


def autoflush_and_connection(session_cls, engine, log):
    """The autoflush and the connection of a repeated select: skipped for a
    clean session exactly where stock's flush returns without doing
    anything; flushes of new, modified and deleted objects; the session's
    own ``flush``, ``_autoflush``, ``_is_clean`` and ``_connection_for_bind``
    (on its class or on the instance) called as stock calls them."""

    with session_cls(engine) as session:
        seed(session)
    by_id = select(Author).where(Author.id == bindparam("id"))
    by_low = select(Author).where(Author.id > bindparam("low")).order_by(Author.id)

    def flush_events(session):
        for name in ("before_flush", "after_flush", "after_flush_postexec"):
            event.listen(session, name, lambda s, *a, _name=name: log.note("event", _name))

    with session_cls(engine) as session:
        flush_events(session)
        known = {}
        for round_ in range(3):
            attempt(log, f"clean {round_}", known,
                    lambda: session.scalars(by_id, {"id": 1 + round_}).all())
            session.add(Author(id=40 + round_, name=f"new {round_}", bio="b"))
            attempt(log, f"new {round_}", known,
                    lambda: session.scalars(by_id, {"id": 40 + round_}).all())
            session.get(Author, 2).name = f"modified {round_}"
            attempt(log, f"modified {round_}", known,
                    lambda: [a.name for a in session.scalars(by_low, {"low": 1})])
            session.delete(session.get(Author, 40 + round_))
            attempt(log, f"deleted {round_}", known,
                    lambda: [a.id for a in session.scalars(by_low, {"low": 30})])
            with session.no_autoflush:
                session.add(Author(id=50 + round_, name="held", bio="b"))
                attempt(log, f"no_autoflush {round_}", known,
                        lambda: session.scalars(by_id, {"id": 50 + round_}).all())
            attempt(log, f"after no_autoflush {round_}", known,
                    lambda: session.scalars(by_id, {"id": 50 + round_}).all())
            session.autoflush = False
            session.add(Author(id=60 + round_, name="off", bio="b"))
            attempt(log, f"autoflush off {round_}", known,
                    lambda: session.scalars(by_id, {"id": 60 + round_}).all())
            session.autoflush = True
            log.note("identity map", identity_map_contents(session))
        session.rollback()

    class Flushing(session_cls):
        def flush(self, objects=None):
            log.note("flush", sorted(type(o).__name__ for o in self.new))
            return super().flush(objects)

    class Cleaning(session_cls):
        def _is_clean(self):
            clean = super()._is_clean()
            log.note("_is_clean", clean)
            return clean

    class Connecting(session_cls):
        def _connection_for_bind(self, engine, execution_options=None, **kw):
            log.note("_connection_for_bind", execution_options, sorted(kw))
            return super()._connection_for_bind(engine, execution_options, **kw)

    for cls in (Flushing, Cleaning, Connecting):
        with cls(engine) as session:
            for round_ in range(2):
                attempt(log, f"{cls.__name__} clean {round_}", {},
                        lambda: session.scalars(by_id, {"id": 3}).all())
                session.add(Author(id=70 + round_, name="sub", bio="b"))
                attempt(log, f"{cls.__name__} new {round_}", {},
                        lambda: session.scalars(by_id, {"id": 70 + round_}).all())
            session.rollback()

    with session_cls(engine) as session:
        stock_flush = session.flush
        stock_is_clean = session._is_clean
        stock_connection = session._connection_for_bind

        def flush(objects=None):
            log.note("instance flush")
            return stock_flush(objects)

        def is_clean():
            log.note("instance _is_clean")
            return stock_is_clean()

        def connection_for_bind(engine, execution_options=None, **kw):
            log.note("instance _connection_for_bind")
            return stock_connection(engine, execution_options, **kw)

        for name, method in (("flush", flush), ("_is_clean", is_clean),
                             ("_connection_for_bind", connection_for_bind)):
            setattr(session, name, method)
            for round_ in range(2):
                attempt(log, f"instance {name} clean {round_}", {},
                        lambda: session.scalars(by_id, {"id": 4}).all())
                session.add(Author(id=80 + round_ + 2 * len(name), name="inst", bio="b"))
                attempt(log, f"instance {name} new {round_}", {},
                        lambda: [a.id for a in session.scalars(by_low, {"low": 75})])
            delattr(session, name)
        session.rollback()


def test_autoflush_and_connection_same_as_stock(session_cls, engine):
    turbosession.reset_stats()
    assert_same_as_stock(autoflush_and_connection, session_cls, engine, Base.metadata)
    stats = turbosession.stats()["loads"]["execute"]
    assert stats["direct"] >= 40, stats
