"""Many threads, one ``turbosession.scoped_session``, on PostgreSQL.

16 threads each run 200 short transactions through a scoped session (one
session per thread): update the thread's own account (``get``), insert an
entry, replace the thread's slot (a DELETE and an INSERT of the same mapper
in one flush), and take the shared counter row with ``SELECT ... FOR UPDATE``
to increment it; every tenth transaction is rolled back instead of
committed.  Afterwards the counts and sums in the database must be exactly
what the committed transactions add up to, no thread may have raised, and
no connection may be left idle in a transaction (``pg_stat_activity``).
Rows are touched in the same order by every thread (its own rows, then the
shared one), so no deadlock is expected; a lock wait is part of the test.
"""

import threading

import pytest
from sqlalchemy import String, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import backends
import turbosession
from turbosession import fastpath

THREADS = 16
TRANSACTIONS = 200


def rolled_back(i):
    return i % 10 == 7


class Base(DeclarativeBase):
    pass


class Shared(Base):
    __tablename__ = "cc_shared"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    total: Mapped[int]


class Account(Base):
    __tablename__ = "cc_account"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    balance: Mapped[int]
    version: Mapped[int] = mapped_column()
    __mapper_args__ = {"version_id_col": version}


class Entry(Base):
    __tablename__ = "cc_entry"
    id: Mapped[int] = mapped_column(primary_key=True)
    thread: Mapped[int]
    seq: Mapped[int]
    amount: Mapped[int]


class Slot(Base):
    __tablename__ = "cc_slot"
    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=False)
    thread: Mapped[int]
    label: Mapped[str] = mapped_column(String(20))


def slot_id(thread, i):
    return thread * 1000 + i


@pytest.fixture
def pg_engine():
    backends.require_postgresql(backends.PG_URL)
    with backends.scratch_engine(backends.PG_URL, pool_size=THREADS, max_overflow=0) as engine:
        yield engine


def test_threads_share_a_scoped_session(session_cls, pg_engine):
    Base.metadata.create_all(pg_engine)
    with session_cls(pg_engine) as session:
        session.add(Shared(id=1, total=0))
        session.add_all(Account(id=t, balance=0) for t in range(THREADS))
        session.add_all(Slot(id=slot_id(t, 0), thread=t, label="start") for t in range(THREADS))
        session.commit()

    Scoped = turbosession.scoped_session(turbosession.sessionmaker(pg_engine, class_=session_cls))
    errors = []
    sessions = set()
    start = threading.Barrier(THREADS)

    def work(thread):
        try:
            start.wait()
            current_slot = slot_id(thread, 0)
            for i in range(1, TRANSACTIONS + 1):
                session = Scoped()
                sessions.add((thread, type(session), id(session)))
                account = session.get(Account, thread)
                account.balance += i
                session.add(Entry(thread=thread, seq=i, amount=i))
                session.delete(session.get(Slot, current_slot))
                session.add(Slot(id=slot_id(thread, i), thread=thread, label=f"t{thread} #{i}"))
                # autoflush sends the thread's own rows, then the shared row is locked
                shared = session.scalars(
                    select(Shared).where(Shared.id == 1).with_for_update()
                    .execution_options(populate_existing=True)
                ).one()
                shared.total += 1
                if rolled_back(i):
                    session.rollback()
                else:
                    session.commit()
                    current_slot = slot_id(thread, i)
                assert not session.in_transaction()
                if i % 50 == 0:
                    Scoped.remove()
        except Exception as exc:  # every exception is unexpected: collected, reported
            errors.append((thread, repr(exc)))
        finally:
            Scoped.remove()

    fastpath.reset_stats()
    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not any(t.is_alive() for t in threads), "a thread did not finish"
    assert errors == []

    # one session per thread (and a new one after each remove()), all of
    # the implementation under test (sessionmaker makes a subclass of its class_)
    assert all(issubclass(cls, session_cls) for _, cls, _ in sessions)
    assert len({(t, s) for t, _, s in sessions}) >= THREADS
    assert fastpath.stats()["fast"] > 0

    committed = [i for i in range(1, TRANSACTIONS + 1) if not rolled_back(i)]
    with pg_engine.connect() as conn:
        assert conn.scalar(select(Shared.total)) == THREADS * len(committed)
        balances = dict(conn.execute(select(Account.id, Account.balance)).all())
        assert balances == {t: sum(committed) for t in range(THREADS)}
        versions = set(conn.scalars(select(Account.version)))
        assert versions == {1 + len(committed)}
        per_thread = conn.execute(
            select(Entry.thread, func.count(), func.sum(Entry.amount), func.count(Entry.seq.distinct()))
            .group_by(Entry.thread)
        ).all()
        assert sorted(per_thread) == [(t, len(committed), sum(committed), len(committed))
                                      for t in range(THREADS)]
        slots = conn.execute(select(Slot.thread, Slot.id).order_by(Slot.thread)).all()
        assert slots == [(t, slot_id(t, committed[-1])) for t in range(THREADS)]
        # the pool keeps its connections; none of them may sit in a transaction
        stuck = conn.execute(
            text("SELECT pid, state, query FROM pg_stat_activity "
                 "WHERE application_name = current_setting('application_name') "
                 "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'")
        ).all()
        assert stuck == []
        others = conn.scalar(
            text("SELECT count(*) FROM pg_stat_activity "
                 "WHERE application_name = current_setting('application_name') "
                 "AND pid <> pg_backend_pid()")
        )
        assert others >= 1  # the check above did see the pool's other connections
