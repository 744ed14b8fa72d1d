"""The drop-in API: the classes, factories and switches a user touches."""

import asyncio
import os
import subprocess
import sys

import pytest
from sqlalchemy import create_engine, orm, select
from sqlalchemy.ext.horizontal_shard import ShardedSession

import turbosession
from turbosession import _impl
from turbosession._env import flag
from turbosession.ext import horizontal_shard

from models import Base, User
from support import optional_package


def test_session_is_a_sqlalchemy_session():
    assert issubclass(turbosession.Session, orm.Session)
    assert issubclass(turbosession.Session, turbosession.TurboSessionMixin)


def test_sessionmaker_defaults_to_turbosession(engine):
    factory = turbosession.sessionmaker(engine, expire_on_commit=False)
    session = factory()
    assert isinstance(session, turbosession.Session)  # sessionmaker subclasses class_
    assert session.bind is engine and session.expire_on_commit is False
    assert isinstance(factory, orm.sessionmaker)


def test_sessionmaker_keeps_an_explicit_class(engine):
    class Mine(turbosession.Session):
        pass

    assert isinstance(turbosession.sessionmaker(engine, class_=Mine)(), Mine)


def test_scoped_session(engine):
    Scoped = turbosession.scoped_session(turbosession.sessionmaker(engine))
    assert isinstance(Scoped(), turbosession.Session)
    assert Scoped() is Scoped()
    Scoped.remove()


def test_active_implementation_follows_the_switch():
    expected = "pure" if flag("TURBOSESSION_NO_EXTENSIONS") or _impl.compiled is None else "compiled"
    assert turbosession.implementation == expected
    assert turbosession.compiled is (expected == "compiled")
    assert turbosession.Session._turbo is _impl.active


@pytest.mark.parametrize("switch", [None, "", "0", "false", "1", "true"])
def test_info_command(switch):
    env = dict(os.environ)
    env.pop("TURBOSESSION_NO_EXTENSIONS", None)
    if switch:
        env["TURBOSESSION_NO_EXTENSIONS"] = switch
    out = subprocess.run(
        [sys.executable, "-m", "turbosession", "info"], env=env, capture_output=True, text=True, check=True
    ).stdout
    built = _impl.compiled is not None
    chose_pure = switch in ("1", "true")
    expected = "compiled" if built and not chose_pure else "pure"
    assert f"implementation {expected}" in out
    if chose_pure:
        assert "(pure because TURBOSESSION_NO_EXTENSIONS is set)" in out
    assert "sqlalchemy     2.1." in out
    assert ("cython " in out) is (expected == "compiled")


def test_sharded_session_accelerated(impl, tmp_path):
    """turbosession.ext.horizontal_shard: SQLAlchemy's ShardedSession with the mixin."""

    TurboSharded = type("TurboSharded", (horizontal_shard.ShardedSession,), {"_turbo": impl})
    assert issubclass(TurboSharded, ShardedSession)

    engines = {name: create_engine(f"sqlite:///{tmp_path}/{name}.db") for name in ("east", "west")}
    for eng in engines.values():
        Base.metadata.create_all(eng)
    session = TurboSharded(
        shards=engines,
        shard_chooser=lambda mapper, instance, clause=None: "east" if instance.name < "m" else "west",
        identity_chooser=lambda mapper, primary_key, *, lazy_loaded_from, execution_options, bind_arguments, **kw: ["east", "west"],
        execute_chooser=lambda context: ["east", "west"],
    )
    assert type(session.identity_map) is impl.identity.WeakIdentityMap
    session.add_all([User(id=1, name="anna"), User(id=2, name="zoe")])
    session.commit()
    with engines["east"].connect() as conn:
        assert conn.scalars(select(User.name)).all() == ["anna"]
    with engines["west"].connect() as conn:
        assert conn.scalars(select(User.name)).all() == ["zoe"]
    session.close()
    assert sorted(u.name for u in session.scalars(select(User))) == ["anna", "zoe"]
    assert session.get(User, 2, identity_token="west").name == "zoe"
    session.close()
    for eng in engines.values():
        eng.dispose()


def test_async_session(impl, tmp_path):
    optional_package("aiosqlite", "test-integrations")
    optional_package("greenlet", "asyncio")  # sqlalchemy.ext.asyncio needs it to import
    from sqlalchemy.ext.asyncio import AsyncSession as StockAsyncSession
    from sqlalchemy.ext.asyncio import create_async_engine

    from turbosession.ext.asyncio import AsyncSession, async_sessionmaker
    pinned = type("Pinned", (turbosession.Session,), {"_turbo": impl})

    async def main():
        engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/async.db")
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        async with StockAsyncSession(engine, sync_session_class=pinned) as session:
            assert type(session.sync_session) is pinned
            assert type(session.sync_session.identity_map) is impl.identity.WeakIdentityMap
            session.add(User(name="async"))
            await session.commit()
        factory = async_sessionmaker(engine)
        async with factory() as session:
            assert isinstance(session, AsyncSession)
            assert isinstance(session.sync_session, turbosession.Session)
            user = (await session.scalars(select(User))).one()
            assert user.name == "async"
            assert await session.get(User, user.id) is user
        await engine.dispose()

    asyncio.run(main())
