"""The statement side of updates and deletes against stock: the UPDATE and
DELETE rows (``_persist.collect_update_commands`` / ``collect_delete_commands``,
``_tracking.column_changes``), their order (``_persist.sort_states``), the
flush's registration (``register_saves`` / ``register_deletes``) and
``session.delete()`` with its cascade (``_attach``).

Each scenario runs on stock's Session and on turbosession's (pinned to one
implementation), once with Core's execution events recorded and once with
no engine listener (rows then go straight to the DBAPI cursor, which records
what it receives): statements, parameters, executemany or execute, the
mapper and session events, warnings, exceptions, object states,
``session.dirty`` / ``session.deleted`` and the tables.  Rows are loaded in
an order that is not their keys' (the flush sorts them), keys are ints,
strings and composites, and a listener changes values in ``before_update``.
"""

import warnings

import pytest
from sqlalchemy import ForeignKey, ForeignKeyConstraint, String, event, func, orm, select, update
from sqlalchemy.orm import DeclarativeBase, Mapped, Relationship, mapped_column, relationship

from support import normalize_error, object_state, run, set_order_sorted


class Base(DeclarativeBase):
    pass


class Account(Base):
    __tablename__ = "ts_udr_account"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    score: Mapped[int] = mapped_column(default=0)
    note: Mapped[str | None] = mapped_column(String(50))

    def __repr__(self):
        return f"Account({self.__dict__.get('id')!r})"


class Code(Base):
    """A string primary key (not sorted as one int)."""

    __tablename__ = "ts_udr_code"
    code: Mapped[str] = mapped_column(String(20), primary_key=True)
    label: Mapped[str] = mapped_column(String(50))

    def __repr__(self):
        return f"Code({self.__dict__.get('code')!r})"


class Pair(Base):
    """A composite primary key."""

    __tablename__ = "ts_udr_pair"
    left: Mapped[int] = mapped_column(primary_key=True)
    right: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[str] = mapped_column(String(50))

    def __repr__(self):
        return f"Pair({self.__dict__.get('left')!r}, {self.__dict__.get('right')!r})"


class Versioned(Base):
    __tablename__ = "ts_udr_versioned"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    version: Mapped[int] = mapped_column()
    __mapper_args__ = {"version_id_col": version}

    def __repr__(self):
        return f"Versioned({self.__dict__.get('id')!r})"


class Owner(Base):
    __tablename__ = "ts_udr_owner"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    pets: Mapped[list["Pet"]] = relationship(
        back_populates="owner", cascade="all, delete-orphan", order_by="Pet.id"
    )

    def __repr__(self):
        return f"Owner({self.__dict__.get('id')!r})"


class Pet(Base):
    __tablename__ = "ts_udr_pet"
    id: Mapped[int] = mapped_column(primary_key=True)
    owner_id: Mapped[int | None] = mapped_column(ForeignKey("ts_udr_owner.id"))
    name: Mapped[str] = mapped_column(String(50))
    owner: Mapped[Owner | None] = relationship(back_populates="pets")

    def __repr__(self):
        return f"Pet({self.__dict__.get('id')!r})"


class Bin(Base):
    """``passive_deletes``: the database deletes the bin's parts."""

    __tablename__ = "ts_udr_bin"
    id: Mapped[int] = mapped_column(primary_key=True)
    parts: Mapped[list["Part"]] = relationship(
        cascade="all, delete-orphan", passive_deletes=True, order_by="Part.id"
    )

    def __repr__(self):
        return f"Bin({self.__dict__.get('id')!r})"


class Part(Base):
    __tablename__ = "ts_udr_part"
    id: Mapped[int] = mapped_column(primary_key=True)
    bin_id: Mapped[int | None] = mapped_column(ForeignKey("ts_udr_bin.id", ondelete="CASCADE"))

    def __repr__(self):
        return f"Part({self.__dict__.get('id')!r})"


# what a relationship class overriding _value_as_iterable was asked (the
# delete cascade's reading of a loaded collection), per scenario run
ITERABLE_CALLS = []


class IterableNotingRelationship(Relationship):
    """A relationship class of the application's whose ``_value_as_iterable``
    is its own: the delete cascade must call it, as stock's does."""

    inherit_cache = True

    def _value_as_iterable(self, state, dict_, key, passive=orm.PassiveFlag.PASSIVE_OFF):
        ITERABLE_CALLS.append((key, repr(state.obj())))
        return super()._value_as_iterable(state, dict_, key, passive=passive)


class Crate(Base):
    __tablename__ = "ts_udr_crate"
    id: Mapped[int] = mapped_column(primary_key=True)
    items: Mapped[list["CrateItem"]] = IterableNotingRelationship(
        "CrateItem", cascade="all, delete-orphan", order_by="CrateItem.id"
    )

    def __repr__(self):
        return f"Crate({self.__dict__.get('id')!r})"


class CrateItem(Base):
    __tablename__ = "ts_udr_crate_item"
    id: Mapped[int] = mapped_column(primary_key=True)
    crate_id: Mapped[int | None] = mapped_column(ForeignKey("ts_udr_crate.id"))

    def __repr__(self):
        return f"CrateItem({self.__dict__.get('id')!r})"


class Folder(Base):
    """Its key is part of its entries' keys: changing it cascades (the
    database's ON UPDATE CASCADE, ``passive_updates``), and an entry whose
    only change is that key gets no UPDATE of its own."""

    __tablename__ = "ts_udr_folder"
    id: Mapped[int] = mapped_column(primary_key=True)
    entries: Mapped[list["Entry"]] = relationship(order_by="Entry.n")

    def __repr__(self):
        return f"Folder({self.__dict__.get('id')!r})"


class Entry(Base):
    __tablename__ = "ts_udr_entry"
    folder_id: Mapped[int] = mapped_column(primary_key=True)
    n: Mapped[int] = mapped_column(primary_key=True)
    text: Mapped[str] = mapped_column(String(50))
    __table_args__ = (
        ForeignKeyConstraint(["folder_id"], ["ts_udr_folder.id"], onupdate="CASCADE"),
    )

    def __repr__(self):
        return f"Entry({self.__dict__.get('folder_id')!r}, {self.__dict__.get('n')!r})"


MAPPED = (
    Account, Code, Pair, Versioned, Owner, Pet, Bin, Part, Crate, CrateItem, Folder, Entry,
)


def guarded(log, action):
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            action()
        log.note("warnings", [str(w.message) for w in caught])
    except Exception as exc:
        log.note("raised", *normalize_error(exc))


def rows(session, *columns):
    """The table's rows, read after the scenario's last commit (rolled back
    first where that commit failed)."""
    session.rollback()
    return session.execute(select(*columns).order_by(*columns)).all()


def states(log, session, objects):
    """Each object's state and membership, its ``committed_state``, and
    ``session.dirty`` / ``session.deleted``."""
    log.note("states", [
        (repr(o), object_state(o), o in session,
         sorted((k, repr(v)) for k, v in orm.attributes.instance_state(o).committed_state.items()))
        for o in objects
    ])
    log.note("dirty", sorted(repr(o) for o in session.dirty))
    log.note("deleted", sorted(repr(o) for o in session.deleted))


class Events:
    """The mapper events of the persistence and the session's
    ``persistent_to_deleted``, noted in order; ``before_update`` may change
    the object (``touch``)."""

    def __init__(self, log, touch=None):
        self.log = log
        self.touch = touch
        self.undo = []

    def __enter__(self):
        for cls in MAPPED:
            for name in ("before_update", "after_update", "before_delete", "after_delete"):
                self._listen(cls, name, self._mapper_event(name))
        self._listen(orm.Session, "persistent_to_deleted", self._deleted)
        return self

    def __exit__(self, *exc):
        for target, name, fn in self.undo:
            event.remove(target, name, fn)

    def _listen(self, target, name, fn):
        event.listen(target, name, fn)
        self.undo.append((target, name, fn))

    def _mapper_event(self, name):
        def note(mapper, connection, target):
            self.log.note("event", name, mapper.class_.__name__, repr(target))
            if name == "before_update" and self.touch is not None:
                self.touch(target)

        return note

    def _deleted(self, session, instance):
        self.log.note("event", "persistent_to_deleted", repr(instance), object_state(instance))


def seed(engine):
    with orm.Session(engine) as session:
        session.add_all([Account(id=i, name=f"a{i}", score=i) for i in (5, 3, 9, 1, 7, 2)])
        session.add_all([Code(code=c, label=c.upper()) for c in ("m", "b", "x", "a")])
        session.add_all([Pair(left=l, right=r, value=f"{l}.{r}") for l, r in ((2, 1), (1, 2), (1, 1))])
        session.add_all([Versioned(id=i, name=f"v{i}") for i in (2, 1)])
        session.add_all([
            Owner(id=i, name=f"o{i}", pets=[Pet(id=10 * i + j, name=f"p{i}.{j}") for j in (1, 2)])
            for i in (3, 1, 2)
        ])
        session.add_all([Bin(id=i, parts=[Part(id=10 * i + j) for j in (1, 2)]) for i in (2, 1)])
        session.add_all([
            Folder(id=i, entries=[Entry(n=j, text=f"e{i}.{j}") for j in (1, 2)]) for i in (1, 2)
        ])
        session.add_all([Crate(id=i, items=[CrateItem(id=10 * i + j) for j in (1, 2)]) for i in (2, 1)])
        session.commit()


def sc_update_columns(session_cls, engine, log, listen=True):
    """One column of every row, another of some, and a third set by a
    ``before_update`` listener on some: batches of different keys, rows
    loaded in an order that is not their keys'."""
    seed(engine)

    def touch(target):
        if isinstance(target, Account) and target.id % 3 == 0:
            target.note = f"touched {target.id}"

    session = session_cls(engine)
    accounts = session.scalars(select(Account).order_by(Account.name.desc())).all()
    with Events(log, touch) if listen else _nothing():
        for account in accounts:
            account.score += 1
        for account in accounts[::2]:
            account.name = account.name.upper()
        accounts[1].score -= 1  # back to its committed value: no change
        states(log, session, accounts)
        guarded(log, session.flush)
        states(log, session, accounts)
        guarded(log, session.commit)
    log.note("rows", rows(session, Account.id, Account.name, Account.score, Account.note))
    session.close()


def sc_update_other_keys(session_cls, engine, log, listen=True):
    """String and composite keys, a SQL expression as a value, a value set
    to what it was, and a plain key change (the row found by its old key)."""
    seed(engine)
    session = session_cls(engine)
    codes = session.scalars(select(Code)).all()
    pairs = session.scalars(select(Pair)).all()
    account = session.get(Account, 9)
    with Events(log) if listen else _nothing():
        for code in codes:
            code.label = code.label + "!"
        codes[0].label = func.lower("SQL")
        for pair in pairs:
            pair.value = pair.value + "?"
        pairs[0].value = pairs[0].value[:-1]
        account.id = 90
        # several columns of one object, two of them SQL expressions (one
        # a ClauseElement, one an object with __clause_element__)
        other = session.get(Account, 5)
        other.name = func.upper(Account.name)
        other.note = Account.name
        other.score = 55
        guarded(log, session.flush)
        states(log, session, codes + pairs + [account])
        log.note("expression row", session.get(Account, 5).name, other.note, other.score)
        pairs[1].right = 20
        guarded(log, session.commit)
    log.note("codes", rows(session, Code.code, Code.label))
    log.note("pairs", rows(session, Pair.left, Pair.right, Pair.value))
    log.note("accounts", rows(session, Account.id, Account.name))
    session.close()


def sc_cascaded_key(session_cls, engine, log, listen=True):
    """A folder's key changed: its entries' keys follow (``passive_updates``,
    the database cascades them), so an entry whose only change is that key
    has no UPDATE and one with another change has one, located by the new
    key."""
    seed(engine)
    session = session_cls(engine)
    folders = session.scalars(
        select(Folder).order_by(Folder.id).options(orm.selectinload(Folder.entries))
    ).all()
    entries = list(folders[0].entries)
    with Events(log) if listen else _nothing():
        folders[0].id = 100
        entries[1].text = "changed"
        # (SQLite enforces no foreign key here: the changed entry's row
        # keeps its old key, and its UPDATE finds no row, as with stock)
        guarded(log, session.flush)
        states(log, session, folders + entries)
        guarded(log, session.commit)
    log.note("folders", rows(session, Folder.id))
    session.close()


def sc_version_counter(session_cls, engine, log, listen=True):
    """Rows with a version counter: updated, then stale (changed behind the
    session's back) for an UPDATE and for a DELETE."""
    seed(engine)
    session = session_cls(engine)
    items = session.scalars(select(Versioned).order_by(Versioned.id.desc())).all()
    with Events(log) if listen else _nothing():
        for item in items:
            item.name += "!"
        guarded(log, session.commit)
        log.note("versions", rows(session, Versioned.id, Versioned.version))
        with engine.begin() as conn:
            conn.execute(update(Versioned).where(Versioned.id == 1).values(version=50))
        for item in items:
            item.name += "?"
        guarded(log, session.flush)
        states(log, session, items)
        session.rollback()
        states(log, session, items)
        for item in items:
            session.delete(item)
        guarded(log, session.flush)
        states(log, session, items)
        session.rollback()
        session.delete(session.get(Versioned, 2))
        guarded(log, session.commit)
    log.note("versions", rows(session, Versioned.id, Versioned.version))
    session.close()


def sc_delete_cascade(session_cls, engine, log, listen=True):
    """Owners deleted with their pets loaded, one without its pets loaded
    (the cascade loads them), a pet deleted on its own as well; ``passive_deletes``
    bins whose parts are not loaded (left to the database)."""
    seed(engine)
    session = session_cls(engine)
    owners = session.scalars(
        select(Owner).where(Owner.id != 2).options(orm.selectinload(Owner.pets))
    ).all()
    unloaded = session.get(Owner, 2)
    bins = session.scalars(select(Bin)).all()
    with Events(log) if listen else _nothing():
        session.delete(owners[0].pets[0])
        for owner in owners + [unloaded]:
            session.delete(owner)
        session.delete(owners[0])  # twice: nothing more
        for bin_ in bins:
            session.delete(bin_)
        states(log, session, owners + [unloaded] + bins)
        guarded(log, session.flush)
        states(log, session, owners + [unloaded] + bins)
        guarded(log, session.commit)
        states(log, session, owners + [unloaded] + bins)
    log.note("pets", rows(session, Pet.id, Pet.owner_id))
    log.note("owners", rows(session, Owner.id))
    log.note("bins", rows(session, Bin.id))
    session.close()


def sc_delete_rollback_and_readd(session_cls, engine, log, listen=True):
    """A delete taken back by ``add()`` before the flush; deletes flushed
    then rolled back; a flushed delete whose object is added again (stock
    refuses), then made transient and added as new."""
    seed(engine)
    session = session_cls(engine)
    accounts = session.scalars(select(Account).order_by(Account.score.desc())).all()
    with Events(log) if listen else _nothing():
        session.delete(accounts[0])
        session.add(accounts[0])
        for account in accounts[1:4]:
            session.delete(account)
        states(log, session, accounts)
        guarded(log, session.flush)
        states(log, session, accounts)
        session.rollback()
        states(log, session, accounts)
        session.delete(accounts[1])
        guarded(log, session.flush)
        guarded(log, lambda: session.add(accounts[1]))
        orm.make_transient(accounts[1])
        session.add(accounts[1])
        states(log, session, accounts)
        guarded(log, session.commit)
        states(log, session, accounts)
    log.note("rows", rows(session, Account.id, Account.name))
    session.close()


def sc_failed_flush(session_cls, engine, log, listen=True):
    """Updates and deletes flushed with a row that fails (a duplicate key):
    the flush raises, the rollback puts the objects back as they were, and
    they are flushed again."""
    seed(engine)
    session = session_cls(engine)
    accounts = session.scalars(select(Account).order_by(Account.name)).all()
    owners = session.scalars(select(Owner).options(orm.selectinload(Owner.pets))).all()
    with Events(log) if listen else _nothing():
        for account in accounts:
            account.score *= 10
        session.delete(owners[0])
        session.add(Account(id=1, name="duplicate"))
        guarded(log, session.flush)
        states(log, session, accounts + owners)
        session.rollback()
        states(log, session, accounts + owners)
        for account in accounts:
            account.score *= 10
        session.delete(owners[0])
        guarded(log, session.commit)
        states(log, session, accounts + owners)
    log.note("rows", rows(session, Account.id, Account.score), rows(session, Owner.id))
    session.close()


def sc_delete_changed_key_and_mixed(session_cls, engine, log, listen=True):
    """Deletes located by the committed key of an object whose key was
    changed first, of several mappers in one flush (each mapper's rows one
    batch), of a composite key, and, through a relationship class with its
    own ``_value_as_iterable``, of a loaded collection the cascade reads
    through that method."""
    seed(engine)
    ITERABLE_CALLS.clear()
    session = session_cls(engine)
    accounts = session.scalars(select(Account).order_by(Account.name.desc())).all()
    pairs = session.scalars(select(Pair)).all()
    crates = session.scalars(select(Crate).options(orm.selectinload(Crate.items))).all()
    with Events(log) if listen else _nothing():
        accounts[0].id = 70
        accounts[1].name = "renamed"
        for account in accounts[:3]:
            session.delete(account)
        session.delete(pairs[1])
        for crate in crates:
            session.delete(crate)
        states(log, session, accounts + pairs + crates)
        guarded(log, session.flush)
        states(log, session, accounts + pairs + crates)
        guarded(log, session.commit)
    assert ITERABLE_CALLS, "the cascade read no collection through the override"
    log.note("value_as_iterable", sorted(ITERABLE_CALLS))
    log.note("accounts", rows(session, Account.id, Account.name))
    log.note("pairs", rows(session, Pair.left, Pair.right))
    log.note("crates", rows(session, Crate.id), rows(session, CrateItem.id, CrateItem.crate_id))
    session.close()


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass


SCENARIOS = [
    sc_update_columns,
    sc_update_other_keys,
    sc_cascaded_key,
    sc_version_counter,
    sc_delete_cascade,
    sc_delete_rollback_and_readd,
    sc_failed_flush,
    sc_delete_changed_key_and_mixed,
]


@pytest.mark.parametrize("listen", [True, False], ids=["events", "no_events"])
@pytest.mark.parametrize("engine_events", [True, False], ids=["engine_events", "cursor_only"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__[3:])
def test_same_as_stock(scenario, engine_events, listen, session_cls, engine):
    def scenario_(session_cls_, engine_, log):
        scenario(session_cls_, engine_, log, listen=listen)

    # persistent_to_deleted comes for a set of states: in the order of
    # their memory addresses
    groups = {"persistent_to_deleted": "deleted"}
    expected = set_order_sorted(
        run(scenario_, orm.Session, engine, Base.metadata, engine_events), groups
    )
    entries = set_order_sorted(
        run(scenario_, session_cls, engine, Base.metadata, engine_events), groups
    )
    assert entries == expected
    assert any(entry[0] in ("sql", "cursor") for entry in entries)
    if listen:
        assert any(entry[0] == "event" for entry in entries)
