"""The many-to-one saves answered from the state (``_relationships``:
``_reference_added``), against stock.

Where a child's reference is in its dict and no earlier step of the flush
cached its history, ``many_to_one_saves`` reads the value from the state
instead of making the ``History`` and its cache entry (unless flush
listeners, which are handed the unit of work, may ask for those
histories).  Each scenario runs on stock's Session and on turbosession's
(pinned to one implementation) and records the SQL with its parameters,
the foreign keys' ``set`` events, the references' ``set`` events,
warnings, exceptions, object states and the tables: new children with a
parent set (through the many-to-one and through the backref), a parent
replaced, a parent set to None, a reference never loaded, an expired
reference, a child moved between parents in one flush, a reference to an
object not in the session, a many-to-one without backref, and flush
listeners reading the histories in ``after_flush``.
"""

import warnings

import pytest
from sqlalchemy import ForeignKey, String, event, orm, select
from sqlalchemy.orm import DeclarativeBase, Mapped, attributes, mapped_column, relationship

from support import normalize_error, object_state, run, set_order_sorted


class Base(DeclarativeBase):
    pass


class Team(Base):
    __tablename__ = "ts_ra_team"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    players: Mapped[list["Player"]] = relationship(back_populates="team", order_by="Player.id")

    def __repr__(self):
        return f"Team({self.__dict__.get('name')!r})"


class Player(Base):
    __tablename__ = "ts_ra_player"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    team_id: Mapped[int | None] = mapped_column(ForeignKey("ts_ra_team.id"))
    team: Mapped[Team | None] = relationship(back_populates="players")

    def __repr__(self):
        return f"Player({self.__dict__.get('name')!r})"


class Badge(Base):
    """A many-to-one without a backref."""

    __tablename__ = "ts_ra_badge"
    id: Mapped[int] = mapped_column(primary_key=True)
    team_id: Mapped[int | None] = mapped_column(ForeignKey("ts_ra_team.id"))
    team: Mapped[Team | None] = relationship()

    def __repr__(self):
        return f"Badge({self.__dict__.get('id')!r})"


FK_ATTRIBUTES = (Player.team_id, Badge.team_id)
REFERENCES = (Player.team, Badge.team)


def _name(value):
    return None if value is None else repr(value)


def listen_attribute_events(log):
    """Note the foreign keys' and the references' ``set`` events."""

    def on_key_set(target, value, oldvalue, initiator):
        log.note("event", "set", repr(target), value)

    def on_reference_set(target, value, oldvalue, initiator):
        log.note("event", "reference", repr(target), _name(value))

    targets = [(attr, on_key_set) for attr in FK_ATTRIBUTES]
    targets += [(attr, on_reference_set) for attr in REFERENCES]
    for attr, fn in targets:
        event.listen(attr, "set", fn)

    def undo():
        for attr, fn in targets:
            event.remove(attr, "set", fn)

    return undo


def watched(scenario):
    def run_(session_cls, engine, log):
        undo = listen_attribute_events(log)
        try:
            scenario(session_cls, engine, log)
        finally:
            undo()

    run_.__name__ = scenario.__name__
    return run_


def guarded(log, action):
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            action()
        log.note("warnings", [str(w.message) for w in caught])
    except Exception as exc:
        log.note("raised", *normalize_error(exc))


def rows(session, *columns):
    return session.execute(select(*columns).order_by(*columns)).all()


def seeded(session_cls, engine):
    """Two teams with two players each and a badge each, committed."""
    session = session_cls(engine)
    for i in (1, 2):
        session.add(Team(id=i, name=f"t{i}", players=[
            Player(id=10 * i + j, name=f"p{i}.{j}") for j in range(2)
        ]))
        session.add(Badge(id=i, team_id=i))
    session.commit()
    return session


@watched
def sc_new_children_with_a_parent_set(session_cls, engine, log):
    session = session_cls(engine)
    through_backref = Team(id=1, name="new", players=[Player(id=1, name="a"), Player(id=2, name="b")])
    through_reference = Player(id=3, name="c", team=Team(id=2, name="other"))
    late = Player(id=4, name="d")
    late.team = through_backref
    session.add_all([through_backref, through_reference, late, Badge(id=1, team=through_backref)])
    guarded(log, session.flush)
    log.note("keys", [(p.name, p.team_id) for p in (through_reference, late)])
    # a persistent team given new players, one set twice before the flush
    again = Player(id=5, name="e", team=through_backref)
    again.team = through_reference.team
    session.add(Player(id=6, name="f", team=through_backref))
    session.add(again)
    guarded(log, session.commit)
    log.note("rows", rows(session, Player.id, Player.team_id), rows(session, Badge.id, Badge.team_id))
    log.note("states", [object_state(o) for o in (through_backref, through_reference, late, again)])
    session.close()


@watched
def sc_parent_replaced_and_set_to_none(session_cls, engine, log):
    session = seeded(session_cls, engine)
    players = session.scalars(select(Player).order_by(Player.id)).all()
    teams = session.scalars(select(Team).order_by(Team.id)).all()
    log.note("teams", [_name(p.team) for p in players])  # references loaded
    players[0].team = teams[1]  # replaced
    players[1].team = None  # set to None
    players[2].team = players[2].team  # the same object again: unchanged
    fresh = Player(id=30, name="fresh", team=None)  # a new one set to None
    session.add(fresh)
    badge = session.get(Badge, 1)
    badge.team = teams[1]  # replaced, the reference never loaded before
    guarded(log, session.commit)
    log.note("rows", rows(session, Player.id, Player.team_id), rows(session, Badge.id, Badge.team_id))
    log.note("states", [object_state(o) for o in players + [fresh, badge]])
    session.close()


@watched
def sc_unloaded_and_expired_references(session_cls, engine, log):
    session = seeded(session_cls, engine)
    players = session.scalars(select(Player).order_by(Player.id)).all()
    players[0].name = "renamed"  # reference never loaded: nothing to do
    players[1].team_id = 2  # the key changed directly, reference not loaded
    session.expire(players[2], ["team"])
    players[2].name = "expired reference"
    session.expire(players[3], ["team"])
    players[3].team = session.get(Team, 1)  # expired, then set
    guarded(log, session.flush)
    log.note("loaded", [("team" in p.__dict__) for p in players])
    guarded(log, session.commit)
    log.note("rows", rows(session, Player.id, Player.team_id))
    session.close()


@watched
def sc_child_moved_between_parents(session_cls, engine, log):
    session = seeded(session_cls, engine)
    one, two = session.get(Team, 1), session.get(Team, 2)
    moved = one.players[0]
    two.players.append(moved)  # through the collection (backref sets it)
    other = one.players[0]
    other.team = two  # through the reference
    other.team = one  # and back, in the same flush
    newcomer = Player(id=40, name="newcomer", team=one)
    newcomer.team = two  # moved before its first flush
    session.add(newcomer)
    guarded(log, session.commit)
    log.note("rows", rows(session, Player.id, Player.team_id))
    log.note("players", [p.name for p in one.players], [p.name for p in two.players])
    session.close()


@watched
def sc_reference_not_in_session(session_cls, engine, log):
    session = seeded(session_cls, engine)
    player = session.get(Player, 10)
    outsider = Team(id=9, name="outsider")
    player.team = outsider
    session.expunge(outsider)  # stock warns and leaves the key as it is
    badge = Badge(id=5, team=session.get(Team, 2))
    session.add(badge)
    guarded(log, session.commit)
    log.note("rows", rows(session, Player.id, Player.team_id), rows(session, Badge.id, Badge.team_id))
    session.close()


@watched
def sc_flush_listeners_read_histories(session_cls, engine, log):
    """With an ``after_flush`` listener, which is handed the unit of work,
    the saves look histories up as stock's do: the listener reads them."""
    session = seeded(session_cls, engine)
    teams = session.scalars(select(Team).order_by(Team.id)).all()
    players = [Player(id=50 + i, name=f"n{i}", team=teams[i % 2]) for i in range(3)]
    session.add_all(players)
    moved = session.get(Player, 10)
    moved.team = teams[1]

    @event.listens_for(session, "after_flush")
    def after_flush(session_, flush_context):
        for obj in players + [moved]:
            state = attributes.instance_state(obj)
            history = flush_context.get_attribute_history(
                state, "team", attributes.PASSIVE_NO_INITIALIZE
            )
            log.note("history", repr(obj),
                     [[_name(member.obj()) for member in part] for part in history])
            log.note("cached", ("history", state, "team") in flush_context.attributes)

    guarded(log, session.commit)
    log.note("rows", rows(session, Player.id, Player.team_id))
    session.close()


SCENARIOS = [
    sc_new_children_with_a_parent_set,
    sc_parent_replaced_and_set_to_none,
    sc_unloaded_and_expired_references,
    sc_child_moved_between_parents,
    sc_reference_not_in_session,
    sc_flush_listeners_read_histories,
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__[3:])
def test_same_as_stock(scenario, session_cls, engine):
    # a step's states come from a set: the order of their events among
    # themselves follows memory addresses
    groups = {"set": "set", "reference": "reference"}
    expected = set_order_sorted(run(scenario, orm.Session, engine, Base.metadata), groups)
    entries = set_order_sorted(run(scenario, session_cls, engine, Base.metadata), groups)
    assert entries == expected
    assert any(e[0] == "sql" for e in entries)
    assert any(e[:2] == ("event", "set") for e in entries)


def test_saves_answer_from_the_state(session_cls, engine, monkeypatch):
    """Without flush listeners, the new players' references are not looked
    up as histories by the saves (only the presort's first one, which
    ``prop_has_changes`` caches as stock's does); a reference not loaded is;
    with an ``after_flush`` listener every one is, and cached."""
    looked_up = []
    module = session_cls._turbo.unitofwork
    lookup = module.attribute_history

    def spy(uow, state, key, passive):
        if key == "team":
            looked_up.append(state.obj())
        return lookup(uow, state, key, passive)

    Base.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            team = Team(id=1, name="t")
            players = [Player(id=i, name=f"p{i}", team=team) for i in range(1, 6)]
            session.add_all(players)
            monkeypatch.setattr(module, "attribute_history", spy)
            session.flush()
            assert len(set(looked_up)) == 1  # (the saves find it cached)
            assert [p.team_id for p in players] == [1] * 5
            session.commit()
            del looked_up[:]
            for player in session.scalars(select(Player)).all():
                player.name += "!"  # references not loaded
            session.commit()
            assert {p.id for p in looked_up} == {1, 2, 3, 4, 5}
            del looked_up[:]
            kept = []
            event.listen(session, "after_flush", lambda s, uow: kept.append(uow))
            later = [Player(id=i, name=f"p{i}", team=session.get(Team, 1)) for i in (6, 7, 8)]
            session.add_all(later)
            session.flush()
            assert set(later) <= set(looked_up)
            assert all(
                ("history", attributes.instance_state(p), "team") in kept[0].attributes
                for p in later
            )
            assert [p.team_id for p in later] == [1, 1, 1]
    finally:
        Base.metadata.drop_all(engine)


def test_replaced_elements_generator_is_used(session_cls, engine, monkeypatch):
    """A ``_ProcessAll._elements`` replaced on stock's class gives the
    relationship steps their states, as it would stock's; with stock's,
    the states are gathered by turbosession's loop, the same ones."""
    from sqlalchemy.orm import unitofwork

    stock_elements = unitofwork._ProcessAll._elements
    asked = []

    def elements(self, uow):
        found = list(stock_elements(self, uow))
        asked.append((self.dependency_processor.key, self.isdelete, len(found)))
        return iter(found)

    def scenario(session_cls_, engine_, log):
        session = session_cls_(engine_)
        team = Team(id=1, name="t", players=[Player(id=i, name=f"p{i}") for i in (1, 2)])
        session.add_all([team, Badge(id=1, team=team)])
        guarded(log, session.commit)
        log.note("rows", rows(session, Player.id, Player.team_id),
                 rows(session, Badge.id, Badge.team_id))
        session.close()

    expected = run(scenario, orm.Session, engine, Base.metadata)
    assert run(scenario, session_cls, engine, Base.metadata) == expected
    monkeypatch.setattr(unitofwork._ProcessAll, "_elements", elements)
    assert run(scenario, orm.Session, engine, Base.metadata) == expected
    stock_asked = sorted(asked)
    del asked[:]
    assert run(scenario, session_cls, engine, Base.metadata) == expected
    assert sorted(asked) == stock_asked
    assert ("team", False, 2) in stock_asked
