"""The fixed cost of a flush: its subtransaction and connection, against stock.

Every flush runs in a subtransaction of the session's transaction; where no
listener or patched method could see it, turbosession begins and commits it
without stock's state-machine wrappers and finds the save and delete steps'
connection directly (``turbosession.transaction``).  Each scenario runs on
stock's Session and on turbosession's, and what an application could
observe is compared: SQL down to the cursor, session, transaction,
connection and pool events with their arguments, the transactions a
listener sees, exceptions, object states.  The counters of
``stats()["transactions"]`` say which path each flush's subtransaction took.
"""

import pytest
from sqlalchemy import event, exc, orm, select

import turbosession
from models import Address, Base, User
from support import assert_same_as_stock, normalize_error, object_state
from turbosession import transaction

SESSION_EVENTS = (
    "after_transaction_create",
    "after_transaction_end",
    "after_begin",
    "before_commit",
    "after_commit",
    "after_rollback",
    "after_soft_rollback",
    "before_flush",
    "after_flush",
    "after_flush_postexec",
)
ENGINE_EVENTS = ("begin", "commit", "rollback", "savepoint", "rollback_savepoint", "release_savepoint")
POOL_EVENTS = ("checkout", "checkin", "reset")


def _describe(session, trans):
    """What a listener can see of a session transaction, by public API."""
    if trans is None:
        return None
    root = session.get_transaction()
    return (
        trans.origin.name,
        trans.nested,
        trans.is_active,
        trans.parent is None,
        trans is root,
        trans.parent is root if trans.parent is not None else None,
        session.in_transaction(),
        session.in_nested_transaction(),
    )


class Watch:
    """Listeners on a session (or its class), its engine and pool, noting
    each event with what can be seen of the transactions at that moment."""

    def __init__(self, log, session_events=SESSION_EVENTS):
        self.log = log
        self.session_events = session_events
        self.listeners = []

    def session_listener(self, name):
        def listener(session, *args):
            seen = []
            for arg in args:
                if isinstance(arg, orm.SessionTransaction):
                    seen.append(_describe(session, arg))
                elif isinstance(arg, orm.UOWTransaction):
                    seen.append(("uow", _describe(session, getattr(arg, "transaction", None))))
                else:
                    seen.append(type(arg).__name__)
            self.log.note("session event", name, seen, _describe(session, session._transaction))

        return listener

    def engine_listener(self, name):
        def listener(*args):
            self.log.note("engine event", name, len(args))

        return listener

    def attach(self, session, engine):
        for name in self.session_events:
            fn = self.session_listener(name)
            event.listen(session, name, fn)
            self.listeners.append((session, name, fn))
        for name in ENGINE_EVENTS:
            fn = self.engine_listener(name)
            event.listen(engine, name, fn)
            self.listeners.append((engine, name, fn))
        for name in POOL_EVENTS:
            fn = self.engine_listener(name)
            event.listen(engine.pool, name, fn)
            self.listeners.append((engine.pool, name, fn))

    def detach(self):
        for target, name, fn in self.listeners:
            event.remove(target, name, fn)
        self.listeners.clear()


def _engine_of_its_own(engine):
    # engine and pool events stay on an engine once listened to; the other
    # run of the scenario must not see them, so each run listens on a copy
    # sharing nothing (a new pool for the same database)
    return engine.execution_options()


def users(session):
    return [(u.id, u.name) for u in session.scalars(select(User).order_by(User.id))]


def watched_transactions(session_cls, engine, log, session_events=SESSION_EVENTS):
    """Flushes and commits with listeners on every transaction event."""
    engine = _engine_of_its_own(engine)
    watch = Watch(log, session_events)
    session = session_cls(engine)
    watch.attach(session, engine)
    try:
        session.add(User(name="ed"))
        session.flush()
        session.add(User(name="wendy", addresses=[Address(email="w@a")]))
        session.commit()
        log.note("users", users(session))
        ed = session.scalars(select(User).filter_by(name="ed")).one()
        ed.name = "edward"
        session.commit()
        session.add(User(name="jack"))
        session.rollback()
        log.note("users", users(session))
        session.close()
    finally:
        watch.detach()


def only_outer_events(session_cls, engine, log):
    """Listeners on every event but the two a subtransaction dispatches:
    the flushes take turbosession's direct path, and the listeners of the
    flush see the same transactions."""
    watched_transactions(
        session_cls,
        engine,
        log,
        [n for n in SESSION_EVENTS if n not in ("after_transaction_create", "after_transaction_end")],
    )


def savepoints(session_cls, engine, log):
    engine = _engine_of_its_own(engine)
    watch = Watch(log, ("after_flush", "after_begin", "after_rollback", "after_soft_rollback"))
    with session_cls(engine) as session:
        watch.attach(session, engine)
        try:
            session.add(User(name="ed"))
            nested = session.begin_nested()
            session.add(User(name="wendy"))
            session.flush()
            log.note("nested", _describe(session, session.get_nested_transaction()))
            nested.rollback()
            log.note("users", users(session))
            with session.begin_nested():
                session.add(User(name="jack"))
            session.add(User(name="fred"))
            with session.begin_nested():
                session.flush()
            session.commit()
            log.note("users", users(session))
        finally:
            watch.detach()


def failed_flush(session_cls, engine, log):
    engine = _engine_of_its_own(engine)
    watch = Watch(log, ("after_flush", "after_rollback", "after_soft_rollback", "after_begin"))
    with session_cls(engine) as session:
        watch.attach(session, engine)
        try:
            session.add(User(id=100, name="ed"))
            session.commit()
            dup = User(id=100, name="again")
            other = User(name="other")
            session.add_all([dup, other])
            try:
                session.flush()
            except exc.IntegrityError as err:
                log.note("flush failed", type(err).__name__)
            log.note("states", object_state(dup), object_state(other), dup in session)
            log.note("transaction", _describe(session, session._transaction))
            try:
                session.add(User(name="third"))
                session.flush()
            except exc.PendingRollbackError as err:
                log.note("pending rollback", normalize_error(err))
            session.rollback()
            log.note("states", object_state(dup), object_state(other))
            session.expunge_all()
            session.add(User(name="after"))
            session.commit()
            log.note("users", users(session))
        finally:
            watch.detach()


def listeners_added_after_first_use(session_cls, engine, log):
    """A flush on the direct path, then listeners added to the session and
    to the Session class, then removed again."""
    engine = _engine_of_its_own(engine)
    with session_cls(engine) as session:
        session.add(User(name="ed"))
        session.flush()
        watch = Watch(log)
        watch.attach(session, engine)
        try:
            session.add(User(name="wendy"))
            session.flush()
        finally:
            watch.detach()
        session.add(User(name="jack"))
        session.flush()

        def on_class(session, trans):
            log.note("class listener", _describe(session, trans))

        event.listen(orm.Session, "after_transaction_end", on_class)
        try:
            session.add(User(name="fred"))
            session.flush()
        finally:
            event.remove(orm.Session, "after_transaction_end", on_class)
        session.commit()
        log.note("users", users(session))


def listener_asks_for_connection(session_cls, engine, log):
    """A mapper listener asks the session for its connection inside the
    flush: the flush's own."""
    engine = _engine_of_its_own(engine)

    def before_insert(mapper, connection, target):
        session = orm.object_session(target)
        log.note("same connection", session.connection() is connection)
        log.note("transaction", _describe(session, session._transaction))

    event.listen(User, "before_insert", before_insert)
    try:
        with session_cls(engine) as session:
            session.add(User(name="ed"))
            session.commit()
            session.add(User(name="wendy"))
            session.flush()
            session.commit()
            log.note("users", users(session))
    finally:
        event.remove(User, "before_insert", before_insert)


def rollback_inside_flush(session_cls, engine, log):
    """A listener that calls session.rollback() inside the flush: stock's
    state machine refuses it; so does turbosession's."""
    engine = _engine_of_its_own(engine)

    def before_insert(mapper, connection, target):
        session = orm.object_session(target)
        try:
            session.rollback()
        except exc.InvalidRequestError as err:
            log.note("rollback refused", normalize_error(err))
            raise

    event.listen(User, "before_insert", before_insert)
    try:
        with session_cls(engine) as session:
            session.add(User(name="ed"))
            try:
                session.commit()
            except exc.InvalidRequestError as err:
                log.note("commit failed", normalize_error(err))
            log.note("transaction", _describe(session, session._transaction))
            session.rollback()
            log.note("users", users(session))
    finally:
        event.remove(User, "before_insert", before_insert)


def get_bind_overridden(session_cls, engine, log):
    """A session class with its own get_bind (as Flask-SQLAlchemy's):
    stock's connection() is asked, and get_bind sees every call."""

    class Bound(session_cls):
        def get_bind(self, mapper=None, **kw):
            log.note("get_bind", getattr(mapper, "class_", mapper).__name__ if mapper else None)
            return super().get_bind(mapper, **kw)

    with Bound(_engine_of_its_own(engine)) as session:
        session.add(User(name="ed"))
        session.flush()
        session.add(User(name="wendy"))
        session.commit()
        log.note("users", users(session))


def refused_during_commit(session_cls, engine, log):
    """Code of the application running while commit() runs (a mapper
    listener in its flush, the engine's commit event, the pool's checkin)
    asks the session for what the state machine refuses there."""
    engine = _engine_of_its_own(engine)
    sessions = []

    def attempt(where, call):
        try:
            call()
        except Exception as err:
            log.note(where, "refused", normalize_error(err))
        else:
            log.note(where, "allowed")

    def before_insert(mapper, connection, target):
        session = orm.object_session(target)
        attempt("insert: commit", session.commit)
        attempt("insert: rollback", session.rollback)
        log.note("insert", _describe(session, session._transaction))

    def on_commit(conn):
        session = sessions[-1]
        attempt("engine commit: rollback", session.rollback)
        attempt("engine commit: close", session.close)
        log.note("engine commit", _describe(session, session._transaction))

    def on_checkin(dbapi_connection, record):
        if sessions:
            session = sessions[-1]
            attempt("checkin: close", session.close)
            log.note("checkin", _describe(session, session._transaction))

    event.listen(User, "before_insert", before_insert)
    event.listen(engine, "commit", on_commit)
    event.listen(engine.pool, "checkin", on_checkin)
    try:
        with session_cls(engine) as session:
            sessions.append(session)
            for name in ("ed", "wendy"):
                session.add(User(name=name))
                try:
                    session.commit()
                except Exception as err:
                    log.note("commit failed", normalize_error(err))
                log.note("after commit", _describe(session, session._transaction))
                session.rollback()
            event.remove(User, "before_insert", before_insert)
            session.add(User(name="jack"))
            session.commit()
            log.note("users", users(session))
            session.commit()
        sessions.clear()
    finally:
        if event.contains(User, "before_insert", before_insert):
            event.remove(User, "before_insert", before_insert)
        event.remove(engine, "commit", on_commit)
        event.remove(engine.pool, "checkin", on_checkin)


def commits(session_cls, engine, log):
    """Commits with and without anything to flush, after begin(), without
    expire_on_commit, in and after a begin() block, and one whose flushes
    never end (an after_flush hook adding objects)."""
    engine = _engine_of_its_own(engine)
    with session_cls(engine) as session:
        session.commit()
        session.add(User(name="ed"))
        session.commit()
        ed = session.scalars(select(User)).one()
        session.commit()
        log.states(session, ed=ed)
        session.begin()
        ed.name = "edward"
        session.commit()
        log.note("name", ed.name)
        try:
            with session.begin():
                session.add(User(name="inside"))
                session.commit()
        except exc.InvalidRequestError as err:
            log.note("commit in begin()", normalize_error(err))
        log.note("users", users(session))
    with session_cls(engine, expire_on_commit=False) as session:
        wendy = User(name="wendy")
        session.add(wendy)
        session.commit()
        log.states(session, wendy=wendy)
        log.note("loaded", "name" in orm.attributes.instance_dict(wendy))

    def after_flush(session, flush_context):
        session.add(User(name="more"))

    with session_cls(engine) as session:
        event.listen(session, "after_flush", after_flush)
        session.add(User(name="first"))
        try:
            session.commit()
        except orm.exc.FlushError as err:
            log.note("endless", normalize_error(err))
        session.rollback()
        event.remove(session, "after_flush", after_flush)
        log.note("users", len(users(session)))


def listeners_added_during_commit(session_cls, engine, log):
    """A mapper listener inside the commit's flush adds after_commit and
    after_transaction_end listeners to the session: they run, as in stock."""
    engine = _engine_of_its_own(engine)

    def after_commit(session):
        log.note("after_commit", _describe(session, session._transaction))

    def after_transaction_end(session, trans):
        log.note("after_transaction_end", _describe(session, trans))

    def before_insert(mapper, connection, target):
        session = orm.object_session(target)
        if not event.contains(session, "after_commit", after_commit):
            event.listen(session, "after_commit", after_commit)
            event.listen(session, "after_transaction_end", after_transaction_end)

    event.listen(User, "before_insert", before_insert)
    try:
        with session_cls(engine) as session:
            session.add(User(name="ed"))
            session.commit()
            log.note("users", users(session))
    finally:
        event.remove(User, "before_insert", before_insert)


def _seen_while_connecting(log, where, session):
    """What a listener running while the transaction's first connection is
    acquired sees of the session, and what it is refused."""
    trans = session._transaction
    log.note(
        where,
        _describe(session, trans),
        _describe(session, trans.parent) if trans is not None and trans.parent else None,
    )
    for name in ("connection", "commit"):
        try:
            getattr(session, name)()
        except Exception as err:
            log.note(where, name, "refused", normalize_error(err))
        else:
            log.note(where, name, "allowed")


def first_connection_seen_by_listeners(session_cls, engine, log):
    """Engine, pool and session listeners that run while the transaction's
    first connection is acquired, by a flush, a get() that misses, an
    execute() and connection(), in a commit and outside one."""
    engine = _engine_of_its_own(engine)
    sessions = []

    def on_connect(conn):
        if sessions:
            _seen_while_connecting(log, "engine_connect", sessions[-1])

    def on_checkout(dbapi_connection, record, proxy):
        if sessions:
            _seen_while_connecting(log, "checkout", sessions[-1])

    def on_begin(conn):
        if sessions:
            _seen_while_connecting(log, "begin", sessions[-1])

    def after_begin(session, trans, conn):
        _seen_while_connecting(log, "after_begin", session)
        log.note("after_begin transaction", trans is session.get_transaction())

    event.listen(engine, "engine_connect", on_connect)
    event.listen(engine.pool, "checkout", on_checkout)
    event.listen(engine, "begin", on_begin)
    try:
        for first_use in ("commit", "flush", "get", "execute", "connection"):
            with session_cls(engine) as session:
                event.listen(session, "after_begin", after_begin)
                sessions.append(session)
                log.note("first use", first_use)
                if first_use == "commit":
                    session.add(User(name="ed"))
                    session.commit()
                elif first_use == "flush":
                    session.add(User(name="wendy"))
                    session.flush()
                    session.commit()
                elif first_use == "get":
                    log.note("got", session.get(User, 1).name)
                elif first_use == "execute":
                    log.note("users", users(session))
                else:
                    log.note("connection", session.connection() is session.connection())
                session.commit()
                sessions.pop()
    finally:
        sessions.clear()
        event.remove(engine, "engine_connect", on_connect)
        event.remove(engine.pool, "checkout", on_checkout)
        event.remove(engine, "begin", on_begin)


def first_connection_options(session_cls, engine, log):
    """The first connection with the session's and the call's execution
    options, and a connection a listener of the engine began already."""
    engine = _engine_of_its_own(engine)

    def options(conn):
        return sorted(
            (k, v) for k, v in conn.get_execution_options().items() if k.startswith("ts_")
        )

    with session_cls(engine, execution_options={"ts_session": 1}) as session:
        conn = session.connection(execution_options={"ts_call": 2})
        log.note("options", options(conn))
        session.add(User(name="ed"))
        session.commit()
        session.add(User(name="wendy"))
        session.commit()
        log.note("options", options(session.connection()))
        with pytest.warns(Warning) as warned:
            session.connection(execution_options={"ts_late": 3})
        log.note("warned", [str(w.message) for w in warned])
        log.note("users", users(session))

    def begin_on_connect(conn):
        conn.begin()

    event.listen(engine, "engine_connect", begin_on_connect)
    try:
        with session_cls(engine) as session:
            session.add(User(name="jack"))
            session.commit()
            log.note("users", users(session))
            session.commit()
    finally:
        event.remove(engine, "engine_connect", begin_on_connect)


def first_connection_fails(session_cls, engine, log):
    """The engine's begin fails once (a listener raises): the connection
    goes back to the pool, the objects stay pending, the session is usable."""
    engine = _engine_of_its_own(engine)
    failing = [True]

    def on_begin(conn):
        if failing:
            failing.clear()
            raise RuntimeError("no begin")

    def on_checkin(dbapi_connection, record):
        log.note("checkin")

    event.listen(engine, "begin", on_begin)
    event.listen(engine.pool, "checkin", on_checkin)
    try:
        with session_cls(engine) as session:
            ed = User(name="ed")
            session.add(ed)
            try:
                session.commit()
            except RuntimeError as err:
                log.note("commit failed", normalize_error(err))
            log.note("state", object_state(ed), _describe(session, session._transaction))
            session.rollback()
            log.note("state", object_state(ed))
            session.add(ed)
            session.commit()
            log.note("users", users(session))
            failing.append(True)
            try:
                session.get(User, 99)
            except RuntimeError as err:
                log.note("get failed", normalize_error(err))
            log.note("transaction", _describe(session, session._transaction))
            log.note("users", users(session))
    finally:
        event.remove(engine, "begin", on_begin)
        event.remove(engine.pool, "checkin", on_checkin)


def listeners_on_the_session_any_time(session_cls, engine, log):
    """Session listeners added to a sessionmaker, to a session before and
    after its events have run, to the Session class while a session
    exists, and by a base class's __init__ (the mixin in front of it)."""
    engine = _engine_of_its_own(engine)

    def noting(name):
        def listener(session, *args):
            log.note("event", name, [type(arg).__name__ for arg in args])

        return listener

    maker = orm.sessionmaker(engine, class_=session_cls)
    on_maker = noting("maker after_commit")
    event.listen(maker, "after_commit", on_maker)
    with maker() as session:
        session.add(User(name="ed"))
        session.commit()
        on_session = noting("session after_begin")
        event.listen(session, "after_begin", on_session)
        log.note("contains", event.contains(session, "after_begin", on_session))
        session.add(User(name="wendy"))
        session.commit()
        event.remove(session, "after_begin", on_session)
        log.note("contains", event.contains(session, "after_begin", on_session))
        on_class = noting("class after_attach")
        event.listen(orm.Session, "after_attach", on_class)
        try:
            session.add(User(name="jack"))
            session.commit()
        finally:
            event.remove(orm.Session, "after_attach", on_class)
        session.add(User(name="fred"))
        session.commit()
    event.remove(maker, "after_commit", on_maker)

    class Listening(orm.Session):
        def __init__(self, *args, **kw):
            super().__init__(*args, **kw)
            event.listen(self, "after_transaction_end", noting("own after_transaction_end"))

    if session_cls is orm.Session:
        cls = Listening
    else:
        cls = type("TurboListening", (turbosession.TurboSessionMixin, Listening),
                   {"_turbo": session_cls._turbo})
    with cls(engine) as session:
        session.add(User(name="mary"))
        session.commit()
        log.note("users", users(session))


def snapshots_restored(session_cls, engine, log):
    """What a transaction's snapshot (new, deleted, dirty objects, primary
    key switches) restores on rollback, in the root transaction and in
    savepoints, flushed and not, and what a commit leaves."""
    engine = _engine_of_its_own(engine)

    def note(label, **objects):
        log.states(session, **objects)
        log.note(label, [inspect_key(o) for o in objects.values()])

    def inspect_key(obj):
        key = orm.attributes.instance_state(obj).key
        return key[1] if key else None

    with session_cls(engine) as session:
        ed, fred = User(id=1, name="ed"), User(id=2, name="fred")
        session.add_all([ed, fred])
        session.commit()
        session.rollback()
        wendy = User(id=3, name="wendy")
        session.add(wendy)
        ed.name = "edward"
        session.delete(fred)
        session.flush()
        note("flushed", ed=ed, fred=fred, wendy=wendy)
        session.rollback()
        note("rolled back", ed=ed, fred=fred, wendy=wendy)
        log.note("name", ed.name)
        nested = session.begin_nested()
        jack = User(id=4, name="jack")
        session.add(jack)
        ed.id = 10
        session.flush()
        note("in savepoint", ed=ed, jack=jack)
        nested.rollback()
        note("savepoint rolled back", ed=ed, jack=jack)
        with session.begin_nested():
            ed.id = 11
            session.delete(fred)
        note("savepoint committed", ed=ed, fred=fred)
        session.rollback()
        note("root rolled back", ed=ed, fred=fred)
        session.delete(ed)
        session.commit()
        note("committed", ed=ed, fred=fred)
        log.note("users", users(session))


def snapshot_collections(session_cls, engine, log):
    """The root transaction's and a savepoint's snapshot collections after
    flushes mark objects in them (new, changed, deleted): their class,
    attributes, entries, removal callback, and their entries leaving with
    their objects."""
    import gc

    engine = _engine_of_its_own(engine)
    names = ("_new", "_dirty", "_deleted")

    def note(label, trans):
        for name in names:
            coll = getattr(trans, name)
            log.note(
                label,
                name,
                type(coll).__name__,
                list(vars(coll)),
                sorted(state.key[1] for state in coll),
                coll._remove.__qualname__,
                coll._remove.__module__,
                coll._remove.__defaults__[0]() is coll,
            )

    with session_cls(engine) as session:
        session.add_all([User(id=1, name="ed"), User(id=2, name="fred")])
        session.commit()
        ed = session.get(User, 1)
        fred = session.get(User, 2)
        ed.name = "edward"
        session.delete(fred)
        wendy = User(id=3, name="wendy")
        session.add(wendy)
        session.flush()
        root = session.get_transaction()
        note("flushed", root)
        nested = session.begin_nested()
        jack = User(id=4, name="jack")
        session.add(jack)
        session.flush()
        note("savepoint", nested)
        del wendy, fred, jack
        gc.collect()
        log.note("collected", [len(getattr(t, n)) for t in (root, nested) for n in names])
        nested.rollback()
        session.rollback()
        log.note("users", users(session))


def root_transactions(session_cls, engine, log):
    """Root transactions begun every way a session begins one (autobegun by
    add(), a query, a flush, commit(); begun by begin() and its context
    manager), refused (begin() twice, autobegin disabled, a permanently
    closed session), with a listener on after_transaction_create added to
    the session and to its class after first use, and what each listener
    and the session's public API see of them."""
    engine = _engine_of_its_own(engine)

    def seen(session, label):
        trans = session.get_transaction()
        log.note(label, _describe(session, trans), session.in_transaction())

    with session_cls(engine) as session:
        seen(session, "new")
        session.add(User(name="ed"))
        seen(session, "after add")
        session.commit()
        seen(session, "after commit")
        log.note("users", users(session))
        seen(session, "after query")
        session.rollback()
        session.flush()
        seen(session, "after empty flush")
        session.commit()
        trans = session.begin()
        log.note("begin() returns the root", trans is session.get_transaction())
        seen(session, "after begin()")
        try:
            session.begin()
        except exc.InvalidRequestError as err:
            log.note("begin() twice", normalize_error(err))
        session.add(User(name="wendy"))
        trans.commit()
        seen(session, "after trans.commit()")
        with session.begin():
            session.add(User(name="jack"))
            seen(session, "in begin() block")
        seen(session, "after begin() block")
        created = []

        def on_create(session_, trans_):
            created.append(_describe(session_, trans_))

        event.listen(session, "after_transaction_create", on_create)
        session.add(User(name="fred"))
        session.commit()
        event.remove(session, "after_transaction_create", on_create)
        log.note("created (session listener)", created)
        del created[:]
        event.listen(orm.Session, "after_transaction_create", on_create)
        try:
            session.add(User(name="mary"))
            session.commit()
        finally:
            event.remove(orm.Session, "after_transaction_create", on_create)
        log.note("created (class listener)", created)
        log.note("users", users(session))
    with session_cls(engine, autobegin=False) as session:
        seen(session, "autobegin=False")
        try:
            session.add(User(name="refused"))
        except exc.InvalidRequestError as err:
            log.note("autobegin disabled", normalize_error(err))
        session.begin()
        seen(session, "autobegin=False, begin()")
        session.rollback()
    session = session_cls(engine, close_resets_only=False)
    session.add(User(name="closed"))
    session.close()
    seen(session, "closed for good")
    for step in (lambda: session.add(User(name="after close")), session.begin):
        try:
            step()
        except exc.InvalidRequestError as err:
            log.note("closed session", normalize_error(err))


def flush_entry_points(session_cls, engine, log):
    """Session.flush() (turbosession's skips the deprecation wrapper of
    ``_flush`` when no objects are given): with objects (stock's warning,
    where it points), inside a flush, with ``_flush`` overridden by a
    subclass or replaced on the instance, and a flush with nothing to do."""
    import warnings

    with session_cls(engine) as session:
        session.flush()
        ed = User(name="ed")
        session.add(ed)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            session.flush([ed])
        log.note("flush(objects) warns", [
            (w.category.__name__, str(w.message), w.filename == __file__) for w in caught
        ])

        def reflush(session_, *args):
            try:
                session_.flush()
            except exc.InvalidRequestError as err:
                log.note("flush inside a flush", normalize_error(err))

        event.listen(session, "before_flush", reflush)
        ed.name = "ed2"
        session.flush()
        event.remove(session, "before_flush", reflush)
        calls = []
        session._flush = lambda objects=None: calls.append(objects)
        ed.name = "ed3"
        session.flush()
        log.note("instance _flush called", calls, session._flushing)
        del session._flush
        session.commit()

    class Overriding(session_cls):
        def _flush(self, objects=None):
            log.note("subclass _flush", objects, self._flushing)
            super()._flush(objects)

    with Overriding(engine) as session:
        session.add(User(name="wendy"))
        session.flush()
        session.commit()
        log.note("users", sorted(session.scalars(select(User.name))))


def commit_hooks_overridden(session_cls, engine, log):
    """What commit's flush loop and the flush's subtransaction ask through
    the session: a subclass's own ``flush``, ``_is_clean`` and
    ``_autobegin_t`` see every call stock makes (the loop then calls them as
    stock does), and so do the same methods replaced on one session."""

    class Overriding(session_cls):
        def flush(self, objects=None):
            log.note("flush", objects, self._flushing)
            super().flush(objects)

        def _is_clean(self):
            clean = super()._is_clean()
            log.note("_is_clean", clean)
            return clean

        def _autobegin_t(self, begin=False):
            log.note("_autobegin_t", begin, self._transaction is None)
            return super()._autobegin_t(begin)

    with Overriding(engine) as session:
        session.add(User(name="ed"))
        session.commit()
        session.add(User(name="wendy"))
        session.flush()
        session.commit()
        log.note("users", users(session))

    for name in ("flush", "_is_clean", "_autobegin_t"):
        with session_cls(engine) as session:
            stock = getattr(session, name)

            def replaced(*args, _name=name, _stock=stock):
                log.note("replaced", _name, args)
                return _stock(*args)

            setattr(session, name, replaced)
            session.add(User(name="jack-" + name))
            session.commit()
            log.note("users", users(session))


def transaction_context_manager(session_cls, engine, log):
    """Flushes and commits inside ``with session.begin():`` (the context
    manager's check of its transaction, asked as stock asks it), and a
    session used after that transaction was rolled back inside the block."""
    with session_cls(engine) as session:
        with session.begin():
            session.add(User(name="ed"))
            session.flush()
            session.add(User(name="wendy"))
        log.note("users", users(session))
        session.commit()
        try:
            with session.begin():
                session.add(User(name="jack"))
                session.flush()
                session.rollback()
                session.add(User(name="mary"))
                session.flush()
        except exc.InvalidRequestError as err:
            log.note("after rollback in block", normalize_error(err))
        log.note("states", session.in_transaction(), users(session))


def sessions_one_after_another(session_cls, engine, log):
    """Many short sessions, as an application makes them: each session's
    dispatcher is made from what was found for its class before, and each
    registers itself.  Listeners are added to the session class, to a
    sessionmaker (seen by one of its sessions made before) and to one
    session after sessions of each exist, with engine and pool events all
    along; expire_on_commit on and off, a session bound to a connection,
    rollback, and close() with objects held."""
    engine = _engine_of_its_own(engine)
    watch = Watch(log)
    late = type("Late", (session_cls,), {})
    maker = orm.sessionmaker(engine, class_=session_cls)
    kept = orm.sessionmaker(engine, class_=session_cls, expire_on_commit=False)
    fresh = [late, maker, late, kept, maker]

    def one_new(make, name):
        with make() if make is not late else late(engine) as session:
            user = User(name=name)
            session.add(user)
            session.commit()
            log.note(name, object_state(user), "name" in user.__dict__, session.hash_key in
                     orm.session._sessions)
        log.note(name, object_state(user))

    for i, make in enumerate(fresh):
        one_new(make, f"before {i}")
    for name in ENGINE_EVENTS:
        fn = watch.engine_listener(name)
        event.listen(engine, name, fn)
        watch.listeners.append((engine, name, fn))
    for name in POOL_EVENTS:
        fn = watch.engine_listener(name)
        event.listen(engine.pool, name, fn)
        watch.listeners.append((engine.pool, name, fn))
    made_before = maker()
    made_before.add(User(name="made before"))
    try:
        class_events = ("after_transaction_create", "after_begin", "transient_to_pending",
                        "after_commit", "after_transaction_end", "after_soft_rollback")
        for name in class_events:
            fn = watch.session_listener(f"class {name}")
            event.listen(late, name, fn)
            watch.listeners.append((late, name, fn))
        for i, make in enumerate(fresh):
            one_new(make, f"class listened {i}")
        for name in ("after_commit", "after_transaction_end", "transient_to_pending",
                     "persistent_to_detached", "pending_to_transient"):
            fn = watch.session_listener(f"maker {name}")
            event.listen(maker, name, fn)
            watch.listeners.append((maker, name, fn))
        for i, make in enumerate(fresh):
            one_new(make, f"maker listened {i}")
        made_before.commit()
        made_before.close()
        session = late(engine)
        for name in ("after_begin", "after_soft_rollback", "after_transaction_create"):
            fn = watch.session_listener(f"session {name}")
            event.listen(session, name, fn)
            watch.listeners.append((session, name, fn))
        session.add(User(name="one listened"))
        session.flush()
        session.rollback()
        session.close()
        for i, make in enumerate(fresh):
            one_new(make, f"after one listened {i}")
        with engine.connect() as connection:
            bound = late(bind=connection)
            bound.add(User(name="bound"))
            bound.commit()
            log.note("bound", connection.in_transaction(), users(bound))
            bound.close()
            connection.commit()
        held = maker()
        objects = held.scalars(select(User).order_by(User.id).limit(3)).all()
        added = User(name="held, pending")
        held.add(added)
        held.close()
        log.note("held", [object_state(o) for o in objects], object_state(added),
                 [o.name for o in objects])
    finally:
        watch.detach()
    with maker() as session:
        log.note("users", users(session))


SCENARIOS = [
    sessions_one_after_another,
    commit_hooks_overridden,
    transaction_context_manager,
    flush_entry_points,
    root_transactions,
    snapshots_restored,
    listeners_on_the_session_any_time,
    first_connection_seen_by_listeners,
    first_connection_options,
    first_connection_fails,
    snapshot_collections,
    listeners_added_during_commit,
    refused_during_commit,
    commits,
    watched_transactions,
    only_outer_events,
    savepoints,
    failed_flush,
    listeners_added_after_first_use,
    listener_asks_for_connection,
    rollback_inside_flush,
    get_bind_overridden,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.__name__ for s in SCENARIOS])
def test_same_as_stock(scenario, session_cls, engine):
    entries = assert_same_as_stock(scenario, session_cls, engine, Base.metadata)
    assert any(entry[0] == "sql" for entry in entries)


def _counts(scenario, session_cls, engine):
    transaction.reset_stats()
    assert_same_as_stock(scenario, session_cls, engine, Base.metadata)
    return turbosession.stats()["transactions"]["subtransactions"]


def test_direct_when_nothing_listens(session_cls, engine):
    stats = _counts(only_outer_events, session_cls, engine)
    assert stats["fast"] >= 3
    assert stats["fallback"] == {}


def test_listeners_send_the_subtransaction_to_stock(session_cls, engine):
    stats = _counts(watched_transactions, session_cls, engine)
    assert stats["fast"] == 0
    assert stats["fallback"]["listeners"] >= 6  # begun and committed, 3 flushes


def test_listeners_added_after_first_use_are_seen(session_cls, engine):
    stats = _counts(listeners_added_after_first_use, session_cls, engine)
    # ed and jack direct; wendy (session listeners) and fred (a listener on
    # the Session class) stock's
    assert stats["fast"] == 2
    assert stats["fallback"]["listeners"] >= 2


def test_failed_flush_and_rollback_inside_flush(session_cls, engine):
    stats = _counts(failed_flush, session_cls, engine)
    assert stats["fast"] >= 1
    stats = _counts(rollback_inside_flush, session_cls, engine)
    assert stats["fast"] == 0


def test_commits_direct_unless_listened(session_cls, engine):
    transaction.reset_stats()
    assert_same_as_stock(commits, session_cls, engine, Base.metadata)
    stats = turbosession.stats()["transactions"]["commits"]
    assert stats["fast"] >= 5
    assert stats["fallback"] == {}
    transaction.reset_stats()
    assert_same_as_stock(watched_transactions, session_cls, engine, Base.metadata)
    stats = turbosession.stats()["transactions"]["commits"]
    assert stats["fast"] == 0
    assert stats["fallback"] == {"listeners": 2}


def test_root_transactions_direct_unless_listened(session_cls, engine):
    """Root transactions are built directly where no after_transaction_create
    listener is there; each one a listener sees is stock's constructor's."""
    transaction.reset_stats()
    assert_same_as_stock(commits, session_cls, engine, Base.metadata)
    stats = turbosession.stats()["transactions"]["roots"]
    assert stats["fast"] >= 6
    assert stats["fallback"] == {}
    transaction.reset_stats()
    assert_same_as_stock(watched_transactions, session_cls, engine, Base.metadata)
    stats = turbosession.stats()["transactions"]["roots"]
    assert stats["fast"] == 0
    assert stats["fallback"] == {"listeners": 4}
    transaction.reset_stats()
    assert_same_as_stock(root_transactions, session_cls, engine, Base.metadata)
    stats = turbosession.stats()["transactions"]["roots"]
    # the two begun while a listener was on the session and on its class
    assert stats["fallback"] == {"listeners": 2}
    assert stats["fast"] >= 8


def test_first_connection_acquired_directly(session_cls, engine):
    """Each first use of the scenario (a commit's flush, a flush, get(),
    execute(), connection()) acquires the root transaction's connection
    on turbosession's path (persist.provision, counted), the same as stock's."""
    transaction.reset_stats()
    assert_same_as_stock(first_connection_seen_by_listeners, session_cls, engine, Base.metadata)
    assert turbosession.stats()["transactions"]["first_connections"] == 5


@pytest.mark.parametrize(
    "owner", [transaction.SessionTransaction, orm.SessionTransaction], ids=["ours", "stock"]
)
def test_patched_method_seen_after_fast_steps(session_cls, engine, owner, monkeypatch):
    """A method of the transaction class patched after fast steps (whose
    check the compiled build keeps while the class is unchanged) is called,
    as stock calls it; once the patch is undone the steps are fast again."""
    Base.metadata.create_all(engine)

    def one_commit(name):
        transaction.reset_stats()
        with session_cls(engine) as session:
            session.add(User(name=name))
            session.commit()
        return turbosession.stats()["transactions"]

    fast = one_commit("before")
    assert fast["subtransactions"] == {"fast": 1, "fallback": {}}
    assert fast["commits"] == {"fast": 1, "fallback": {}}
    assert fast["roots"] == {"fast": 1, "fallback": {}}
    called = []
    stock_commit = orm.SessionTransaction.commit

    def commit(self, _to_root=False):
        called.append(self.origin.name)
        return stock_commit(self, _to_root=_to_root)

    monkeypatch.setattr(owner, "commit", commit)
    patched = one_commit("patched")
    # the root commit flushes, committing the flush's subtransaction inside
    assert called == ["AUTOBEGIN", "SUBTRANSACTION"]
    assert patched["subtransactions"] == {"fast": 0, "fallback": {"patched": 2}}
    assert patched["commits"] == {"fast": 0, "fallback": {"patched": 1}}
    assert patched["roots"] == {"fast": 0, "fallback": {"patched": 1}}
    monkeypatch.undo()
    assert one_commit("after") == fast
    with session_cls(engine) as session:
        names = session.scalars(select(User.name).order_by(User.id)).all()
    assert names == ["before", "patched", "after"]
