"""turbosession's classes for SQLModel and Flask-SQLAlchemy, with the real packages.

Each integration is that package's own Session class with turbosession's mixin
in front; these tests check that the package's API still works on it (SQLModel's
``exec()``, Flask-SQLAlchemy's per-model bind selection) and that its flushes
take turbosession's fast path (``turbosession.stats()``).
"""

from typing import Optional

import pytest

import turbosession
from support import optional_package

sqlmodel = optional_package("sqlmodel", "test-integrations")
flask = optional_package("flask", "test-integrations")
flask_sqlalchemy = optional_package("flask_sqlalchemy", "test-integrations")

from sqlmodel import Field, SQLModel, select  # noqa: E402

from turbosession import fastpath  # noqa: E402
from turbosession.ext import flask_sqlalchemy as ts_flask  # noqa: E402
from turbosession.ext import sqlmodel as ts_sqlmodel  # noqa: E402


@pytest.fixture
def fast_path_counted():
    turbosession.reset_stats()
    yield fastpath.stats  # the flushes (stats() also has a loads section)
    turbosession.reset_stats()


# --- SQLModel --------------------------------------------------------------


class Hero(SQLModel, table=True):
    __tablename__ = "ts_sqlmodel_hero"
    id: Optional[int] = Field(default=None, primary_key=True)
    name: str
    age: Optional[int] = None


def test_sqlmodel_session(impl, fast_path_counted):
    pinned = type("Pinned", (ts_sqlmodel.Session,), {"_turbo": impl})
    assert issubclass(pinned, sqlmodel.Session)
    engine = sqlmodel.create_engine("sqlite://")
    SQLModel.metadata.create_all(engine)
    with pinned(engine) as session:
        assert type(session.identity_map) is impl.identity.WeakIdentityMap
        session.add_all([Hero(name="Deadpond", age=48), Hero(name="Rusty-Man", age=48), Hero(name="Spider-Boy")])
        session.commit()
        assert fast_path_counted() == {"fast": 1, "fallback": {}}

        adults = session.exec(select(Hero).where(Hero.age == 48).order_by(Hero.name)).all()
        assert [h.name for h in adults] == ["Deadpond", "Rusty-Man"]
        spider = session.exec(select(Hero).where(Hero.name == "Spider-Boy")).one()
        spider.age = 16
        assert list(session.dirty) == [spider]
        session.delete(adults[1])
        session.commit()
        assert fast_path_counted()["fast"] == 2 and fast_path_counted()["fallback"] == {}

        assert session.get(Hero, spider.id).age == 16
        assert session.exec(select(Hero.name).order_by(Hero.id)).all() == ["Deadpond", "Spider-Boy"]
    engine.dispose()


def test_sqlmodel_async_session(impl, tmp_path):
    optional_package("aiosqlite", "test-integrations")
    optional_package("greenlet", "asyncio")
    import asyncio

    from sqlalchemy.ext.asyncio import create_async_engine

    pinned = type("Pinned", (ts_sqlmodel.Session,), {"_turbo": impl})

    async def main():
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/heroes.db")
        async with engine.begin() as conn:
            await conn.run_sync(SQLModel.metadata.create_all)
        async with ts_sqlmodel.AsyncSession(engine, sync_session_class=pinned) as session:
            assert type(session.sync_session) is pinned
            session.add(Hero(name="Async-Man"))
            await session.commit()
            heroes = (await session.exec(select(Hero))).all()
            assert [h.name for h in heroes] == ["Async-Man"]
        async with ts_sqlmodel.AsyncSession(engine) as session:
            assert isinstance(session.sync_session, ts_sqlmodel.Session)
        await engine.dispose()

    asyncio.run(main())


# --- Flask-SQLAlchemy -------------------------------------------------------


def make_app(session_class):
    """A Flask app with a default database and a second one under the bind key "audit"."""
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    class Base(DeclarativeBase):
        pass

    db = flask_sqlalchemy.SQLAlchemy(model_class=Base, session_options={"class_": session_class})

    class Account(db.Model):
        __tablename__ = "account"
        id: Mapped[int] = mapped_column(primary_key=True)
        owner: Mapped[str]

    class AuditEntry(db.Model):
        __bind_key__ = "audit"
        __tablename__ = "audit_entry"
        id: Mapped[int] = mapped_column(primary_key=True)
        what: Mapped[str]

    app = flask.Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite://"
    app.config["SQLALCHEMY_BINDS"] = {"audit": "sqlite://"}
    db.init_app(app)
    return app, db, Account, AuditEntry


def test_flask_sqlalchemy_session(impl, fast_path_counted):
    pinned = type("Pinned", (ts_flask.Session,), {"_turbo": impl})
    app, db, Account, AuditEntry = make_app(pinned)
    with app.app_context():
        db.create_all()
        session = db.session()
        # sessionmaker makes a subclass of the class it is given
        assert isinstance(session, pinned)
        assert isinstance(session, flask_sqlalchemy.session.Session)
        assert type(session.identity_map) is impl.identity.WeakIdentityMap

        db.session.add_all([Account(id=1, owner="ann"), AuditEntry(id=1, what="opened")])
        db.session.commit()
        assert fast_path_counted() == {"fast": 1, "fallback": {}}

        # each model's rows went to the engine of its bind key
        with db.engines[None].connect() as conn:
            assert conn.exec_driver_sql("SELECT owner FROM account").all() == [("ann",)]
            assert conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE name = 'audit_entry'").all() == []
        with db.engines["audit"].connect() as conn:
            assert conn.exec_driver_sql("SELECT what FROM audit_entry").all() == [("opened",)]

        account = db.session.get(Account, 1)
        account.owner = "bob"
        db.session.commit()
        assert db.session.execute(db.select(Account.owner)).scalar_one() == "bob"
        assert db.get_or_404(AuditEntry, 1).what == "opened"
        assert fast_path_counted() == {"fast": 2, "fallback": {}}
    # the app context's end removed the scoped session
    with app.app_context():
        assert db.session() is not session
