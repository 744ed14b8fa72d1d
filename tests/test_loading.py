"""Session.get(): turbosession's identity-map hit path against stock's get().

Each scenario runs on stock ``sqlalchemy.orm.Session`` and on turbosession's
Session (compiled and pure, SQLite and PostgreSQL); the records (what get()
returned, which object it is, exceptions and warnings, the SQL sent, the
objects' states and loaded attributes, load/refresh events) must be equal.
The load counters then say which calls took turbosession's path.
"""

import gc
import warnings

import pytest
from sqlalchemy import ForeignKey, String, event, inspect, select
from sqlalchemy.orm import DeclarativeBase, Mapped, aliased, mapped_column

import turbosession
from support import assert_same_as_stock, normalize_error


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "tl_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


class Tag(Base):
    __tablename__ = "tl_tag"
    code: Mapped[str] = mapped_column(String(20), primary_key=True)
    label: Mapped[str] = mapped_column(String(50))


class Pair(Base):
    __tablename__ = "tl_pair"
    a: Mapped[int] = mapped_column(primary_key=True)
    b: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[str] = mapped_column(String(50))


class Employee(Base):
    __tablename__ = "tl_employee"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(50))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "employee"}


class Manager(Employee):
    __tablename__ = "tl_manager"
    id: Mapped[int] = mapped_column(ForeignKey("tl_employee.id"), primary_key=True)
    budget: Mapped[int] = mapped_column()
    __mapper_args__ = {"polymorphic_identity": "manager"}


class Engineer(Employee):
    __tablename__ = "tl_engineer"
    id: Mapped[int] = mapped_column(ForeignKey("tl_employee.id"), primary_key=True)
    language: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_identity": "engineer"}


class Sticky(Base):
    """A mapper with always_refresh: stock's get() never answers from the map."""

    __tablename__ = "tl_sticky"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    __mapper_args__ = {"always_refresh": True}


class Unmapped:
    pass


def seed(session):
    session.add_all(
        [Account(id=i, name=f"account {i}") for i in range(1, 4)]
        + [Tag(code="py", label="Python"), Tag(code="sql", label="SQL")]
        + [Pair(a=1, b=2, value="one-two"), Pair(a=2, b=1, value="two-one")]
        + [
            Manager(id=10, name="mary", budget=5),
            Engineer(id=11, name="ed", language="python"),
            Sticky(id=1, name="sticky"),
        ]
    )
    session.commit()


def describe(obj, known):
    """What a program sees of a get() result: which object, its state, what is loaded."""
    if obj is None:
        return None
    insp = inspect(obj)
    same = [name for name, candidate in known.items() if candidate is obj]
    return (
        type(obj).__name__,
        insp.identity,
        same,
        insp.persistent,
        insp.deleted,
        insp.expired,
        sorted(insp.unloaded),
        sorted(insp.committed_state),
        sorted(k for k in insp.dict if not k.startswith("_")),
    )


def attempt(log, label, known, call):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            log.note(label, describe(call(), known))
        except Exception as exc:
            log.note(label, "raises", normalize_error(exc))
    log.note(label, "warnings", [(w.category, str(w.message)) for w in caught])


def listen_loads(log):
    def on_load(target, context):
        log.note("load event", type(target).__name__, inspect(target).identity)

    def on_refresh(target, context, attrs):
        log.note("refresh event", type(target).__name__, inspect(target).identity, attrs)

    for cls in (Account, Employee):
        event.listen(cls, "load", on_load, propagate=True)
        event.listen(cls, "refresh", on_refresh, propagate=True)
    def unlisten():
        for cls in (Account, Employee):
            event.remove(cls, "load", on_load)
            event.remove(cls, "refresh", on_refresh)

    return unlisten


def hits_and_misses(session_cls, engine, log):
    with session_cls(engine) as session:
        seed(session)
    unlisten = listen_loads(log)
    try:
        with session_cls(engine) as session:
            known = {
                "a1": session.get(Account, 1),
                "tag": session.get(Tag, "py"),
                "pair": session.get(Pair, (1, 2)),
                "mary": session.get(Employee, 10),
                "ed": session.get(Engineer, 11),
            }
            get = session.get
            cases = [
                ("int", lambda: get(Account, 1)),
                ("tuple", lambda: get(Account, (1,))),
                ("list", lambda: get(Account, [1])),
                ("dict", lambda: get(Account, {"id": 1})),
                ("dict wrong name", lambda: get(Account, {"nope": 1})),
                ("str", lambda: get(Tag, "py")),
                ("composite", lambda: get(Pair, (1, 2))),
                ("composite reversed", lambda: get(Pair, (2, 1))),
                ("composite arity", lambda: get(Pair, 1)),
                ("arity", lambda: get(Account, (1, 2))),
                ("empty tuple", lambda: get(Account, ())),
                ("none", lambda: get(Account, None)),
                ("bool", lambda: get(Account, True)),
                ("miss", lambda: get(Account, 2)),
                ("miss absent", lambda: get(Account, 99)),
                ("mapper", lambda: get(inspect(Account), 1)),
                ("aliased", lambda: get(aliased(Account), 1)),
                ("unmapped", lambda: get(Unmapped, 1)),
                ("not a class", lambda: get("Account", 1)),
                ("base of subclass", lambda: get(Employee, 10)),
                ("subclass", lambda: get(Manager, 10)),
                ("other subclass", lambda: get(Engineer, 10)),
                ("subclass of base key", lambda: get(Employee, 11)),
                ("identity token", lambda: get(Account, 1, identity_token="x")),
                ("populate_existing", lambda: get(Account, 1, populate_existing=True)),
                ("populate_existing false", lambda: get(Account, 1, populate_existing=False)),
                ("with_for_update", lambda: get(Account, 1, with_for_update=True)),
                ("execution_options", lambda: get(Account, 1, execution_options={"x": 1})),
                ("always_refresh", lambda: get(Sticky, 1)),
                ("always_refresh again", lambda: get(Sticky, 1)),
                ("get_one hit", lambda: session.get_one(Account, 1)),
                ("get_one miss", lambda: session.get_one(Account, 99)),
            ]
            for label, call in cases:
                attempt(log, label, known, call)
            log.states(session, **known)

            # partly expired: not "expired", so returned as it is, unloaded
            session.expire(known["a1"], ["name"])
            attempt(log, "partly expired", known, lambda: get(Account, 1))
            # expired: stock reloads it (a SELECT, a refresh event)
            session.expire(known["a1"])
            attempt(log, "expired", known, lambda: get(Account, 1))
            attempt(log, "reloaded", known, lambda: get(Account, 1))
            # deleted but not flushed: still in the map, returned
            session.delete(known["tag"])
            attempt(log, "deleted pending", known, lambda: get(Tag, "py"))
            session.flush()
            attempt(log, "deleted flushed", known, lambda: get(Tag, "py"))
            # pending objects are not in the identity map
            session.add(Account(id=50, name="new"))
            attempt(log, "pending (autoflush)", known, lambda: get(Account, 50))
            session.commit()
            # after commit every object is expired: stock reloads
            attempt(log, "after commit", known, lambda: get(Account, 1))
            attempt(log, "after commit hit", known, lambda: get(Account, 1))
            # an object collected by the garbage collector is no longer a hit
            key_holder = [get(Account, 3)]
            del key_holder
            gc.collect()
            attempt(log, "collected", known, lambda: get(Account, 3))
            session.expunge_all()
            attempt(log, "after expunge_all", {}, lambda: get(Account, 1))
            attempt(log, "after expunge_all hit", {}, lambda: get(Account, 1))
    finally:
        unlisten()


@pytest.mark.parametrize("scenario", [hits_and_misses])
def test_get_same_as_stock(scenario, session_cls, engine):
    turbosession.reset_stats()
    assert_same_as_stock(scenario, session_cls, engine, Base.metadata)
    stats = turbosession.stats()["loads"]["get"]
    assert stats["fast"] > 10 and stats["loaded"] > 3, stats
    for reason in (
        "get_ident", "get_identity_token", "get_entity", "get_expired", "get_class", "get_options",
    ):
        assert stats["fallback"].get(reason), (reason, stats)


def plain_hit(session_cls, engine, log):
    with session_cls(engine) as session:
        seed(session)
        obj = session.get(Account, 1)
        log.note(session.get(Account, 1) is obj)


def test_hit_takes_turbosession_path(session_cls, engine):
    turbosession.reset_stats()
    assert_same_as_stock(plain_hit, session_cls, engine, Base.metadata)
    # the first get() misses (seed's objects were collected) and loads the
    # row with turbosession's statement, the second hits
    assert turbosession.stats()["loads"]["get"] == {
        "fast": 1, "loaded": 1, "direct": 1, "cursor": 0, "fallback": {},
        "cursor_fallback": {"cursor_first": 1},
    }


def test_pinned_bundle_gets_its_own_get(impl, session_cls):
    assert session_cls.get is impl.loading.session_get
    # a subclass of a pinned class keeps it; one that overrides get keeps its own
    assert type("Sub", (session_cls,), {}).get is impl.loading.session_get

    def get(self, *args, **kw):
        return super(Own, self).get(*args, **kw)

    Own = type("Own", (session_cls,), {"get": get})
    assert Own.get is get


def overridden_lookup(session_cls, engine, log):
    class Custom(session_cls):
        def _identity_lookup(self, mapper, primary_key_identity, **kw):
            log.note("lookup", mapper.class_.__name__, primary_key_identity, sorted(kw))
            return super()._identity_lookup(mapper, primary_key_identity, **kw)

    with session_cls(engine) as session:
        seed(session)
    with Custom(engine) as session:
        obj = session.get(Account, 1)
        log.note(session.get(Account, 1) is obj)
        session._get_impl = lambda *a, **kw: "instance override"
        log.note(session.get(Account, 1))


def test_session_overriding_lookup_runs_stock_get(session_cls, engine):
    turbosession.reset_stats()
    assert_same_as_stock(overridden_lookup, session_cls, engine, Base.metadata)
    stats = turbosession.stats()["loads"]["get"]
    assert stats["fast"] == 0 and stats["fallback"]["get_overridden"] == 3, stats


def lookup_patched_between_gets(session_cls, engine, log):
    """A session class patched after get() answered from the map: the next
    get() must see the patch (compiled, the verdict on the class is kept by
    the class's version tag, which the patch changes)."""

    class Patched(session_cls):
        pass

    with session_cls(engine) as session:
        seed(session)
    with Patched(engine) as session:
        obj = session.get(Account, 1)
        log.note(session.get(Account, 1) is obj)

        def _identity_lookup(self, mapper, primary_key_identity, **kw):
            log.note("patched lookup", mapper.class_.__name__, primary_key_identity)
            return super(Patched, self)._identity_lookup(mapper, primary_key_identity, **kw)

        Patched._identity_lookup = _identity_lookup
        log.note(session.get(Account, 1) is obj)
        del Patched._identity_lookup
        log.note(session.get(Account, 1) is obj)


def test_class_patched_between_gets(session_cls, engine):
    turbosession.reset_stats()
    assert_same_as_stock(lookup_patched_between_gets, session_cls, engine, Base.metadata)
    stats = turbosession.stats()["loads"]["get"]
    # the first get() loads, the second and the last hit; the patched one is stock's
    assert stats["fast"] == 2 and stats["fallback"] == {"get_overridden": 1}, stats


def class_unmapped_between_gets(session_cls, engine, log):
    """A class mapped, got from the map, then disposed of and mapped again
    with another primary key: get() must answer as stock does for each (the
    compiled last-class cache must not answer for a changed class)."""
    from sqlalchemy import Column, Integer, MetaData, Table
    from sqlalchemy.orm import registry

    metadata = MetaData()
    table = Table("tl_remapped", metadata, Column("id", Integer, primary_key=True),
                  Column("n", Integer, primary_key=True))
    metadata.create_all(engine)
    try:
        class Remapped:
            pass

        mapped = registry()
        mapped.map_imperatively(Remapped, table, primary_key=[table.c.id])
        with session_cls(engine) as session:
            obj = Remapped()
            obj.id, obj.n = 1, 2
            session.add(obj)
            session.flush()
            known = {"obj": obj}
            attempt(log, "mapped", known, lambda: session.get(Remapped, 1))
            attempt(log, "mapped again", known, lambda: session.get(Remapped, 1))
            mapped.dispose()
            attempt(log, "disposed", known, lambda: session.get(Remapped, 1))
            remapped = registry()
            remapped.map_imperatively(Remapped, table)
            attempt(log, "remapped, one key", known, lambda: session.get(Remapped, 1))
            attempt(log, "remapped, two keys", known, lambda: session.get(Remapped, (1, 2)))
            session.rollback()
            remapped.dispose()
    finally:
        metadata.drop_all(engine)


def test_class_unmapped_between_gets(session_cls, engine):
    assert_same_as_stock(class_unmapped_between_gets, session_cls, engine, Base.metadata)


def identity_map_read_as_stock(session_cls, engine, log):
    """get() hits read the session's identity map as stock's get reads it
    (compiled, straight from the session's and the map's dicts when nothing
    else would answer): through a session class's property, a map's own
    ``get``, its class's ``get`` patched, and with unhashable keys."""

    class Mapped(session_cls):
        @property
        def identity_map(self):
            log.note("identity_map read")
            return self.__dict__["_wrapped_map"]

        @identity_map.setter
        def identity_map(self, value):
            self.__dict__["_wrapped_map"] = value

    with session_cls(engine) as session:
        seed(session)
    with Mapped(engine) as session:
        known = {"obj": session.get(Account, 1)}
        attempt(log, "through a property", known, lambda: session.get(Account, 1))
        # stock's get reads the map once it has checked the arguments: a
        # get it refuses or hands on reads it as often as stock's does
        attempt(log, "property, dict ident", known, lambda: session.get(Account, {"id": 1}))
        attempt(log, "property, unmapped", known, lambda: session.get(Unmapped, 1))
        attempt(log, "property, wrong arity", known, lambda: session.get(Account, (1, 2)))
        attempt(log, "property, miss", known, lambda: session.get(Account, 2))
    with session_cls(engine) as session:
        known = {"obj": session.get(Account, 1)}
        attempt(log, "plain", known, lambda: session.get(Account, 1))
        identity_map = session.identity_map
        class_get = type(identity_map).get

        def own_get(key, default=None):
            log.note("map's own get", key[1], key[2])
            return class_get(identity_map, key, default)

        identity_map.get = own_get
        attempt(log, "map's own get", known, lambda: session.get(Account, 1))
        del identity_map.get
        attempt(log, "own get removed", known, lambda: session.get(Account, 1))
        map_class = type(identity_map)
        original = map_class.__dict__.get("get")

        def patched_get(self, key, default=None):
            log.note("class get", key[1], key[2])
            return class_get(self, key, default)

        map_class.get = patched_get
        try:
            attempt(log, "class get patched", known, lambda: session.get(Account, 1))
        finally:
            if original is None:
                del map_class.get
            else:
                map_class.get = original
        attempt(log, "class get restored", known, lambda: session.get(Account, 1))
        attempt(log, "unhashable token", known,
                lambda: session.get(Account, 1, identity_token=[1]))
        attempt(log, "unhashable key", known, lambda: session.get(Account, ([1],)))


def test_identity_map_read_as_stock(session_cls, engine):
    turbosession.reset_stats()
    assert_same_as_stock(identity_map_read_as_stock, session_cls, engine, Base.metadata)
    stats = turbosession.stats()["loads"]["get"]
    # the six hits are all answered here (the first get()s and the
    # property's miss load), those with a patched get through that get; the
    # unhashable keys raise there; the property's refused gets are stock's
    assert stats["fast"] == 6 and stats["loaded"] == 3, stats
    assert stats["fallback"] == {"get_ident": 2, "get_entity": 1}, stats


def test_scoped_session_and_subclass_with_mixin(impl, engine):
    from sqlalchemy import orm

    Base.metadata.create_all(engine)
    try:
        Mixed = type("Mixed", (turbosession.TurboSessionMixin, orm.Session), {"_turbo": impl})
        scoped = turbosession.scoped_session(turbosession.sessionmaker(engine, class_=Mixed))
        seed(scoped())
        turbosession.reset_stats()
        obj = scoped.get(Account, 2)
        assert scoped.get(Account, 2) is obj
        assert scoped.execute(select(Account).where(Account.id == 2)).scalar_one() is obj
        assert turbosession.stats()["loads"]["get"]["fast"] == 1
        scoped.remove()
    finally:
        Base.metadata.drop_all(engine)


def test_fallbacks_are_logged(session_cls, engine, caplog):
    Base.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            seed(session)
            with caplog.at_level("DEBUG", logger="turbosession"):
                session.get(Account, {"id": 1})
                session.get(Account, 1, populate_existing=True)
        messages = [r.getMessage() for r in caplog.records if r.name == "turbosession"]
        assert any("get_ident" in m for m in messages), messages
        assert any("get_options" in m for m in messages), messages
    finally:
        Base.metadata.drop_all(engine)
