"""The delete side of the one-to-many processor and the many-to-many
processor (``process_saves`` / ``process_deletes``, association rows) on
turbosession's loops (``turbosession._relationships``), against stock.

Each scenario runs on stock's Session and on turbosession's (pinned to one
implementation), with Core's execution events recorded and without any
engine listener (association rows then go straight to the DBAPI cursor,
which records what it receives): statements, parameters, executemany or
execute, attribute ``set`` events on foreign-key columns, warnings,
exceptions, object states and what is left in the tables.

Where a step handles several parents, stock takes them in set order (by
memory address), so the rows of those statements are compared sorted
(``rows_sorted``); scenarios whose steps have one parent each compare the
rows in order.
"""

import ast
import sys

import pytest
from sqlalchemy import (
    Column,
    ForeignKey,
    ForeignKeyConstraint,
    Integer,
    String,
    Table,
    delete,
    event,
    func,
    orm,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, dependency, mapped_column, relationship, sync

import turbosession
from support import object_state, run, set_order_sorted
from test_relationship_saves import guarded


class Base(DeclarativeBase):
    pass


post_tag = Table(
    "ts_rd_post_tag",
    Base.metadata,
    Column("post_id", ForeignKey("ts_rd_post.id"), primary_key=True),
    Column("tag_id", ForeignKey("ts_rd_tag.id"), primary_key=True),
)


class Post(Base):
    __tablename__ = "ts_rd_post"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(50))
    tags: Mapped[list["Tag"]] = relationship(
        secondary=post_tag, back_populates="posts", order_by="Tag.id"
    )

    def __repr__(self):
        return f"Post({self.__dict__.get('id')!r})"


class Tag(Base):
    __tablename__ = "ts_rd_tag"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    posts: Mapped[list[Post]] = relationship(
        secondary=post_tag, back_populates="tags", order_by="Post.id"
    )

    def __repr__(self):
        return f"Tag({self.__dict__.get('id')!r})"


article_keyword = Table(
    "ts_rd_article_keyword",
    Base.metadata,
    Column("article_id", ForeignKey("ts_rd_article.id"), primary_key=True),
    Column("keyword_id", ForeignKey("ts_rd_keyword.id"), primary_key=True),
)


class Article(Base):
    """A many-to-many without a backref; the keywords are not ordered."""

    __tablename__ = "ts_rd_article"
    id: Mapped[int] = mapped_column(primary_key=True)
    keywords: Mapped[list["Keyword"]] = relationship(secondary=article_keyword)


class Keyword(Base):
    __tablename__ = "ts_rd_keyword"
    id: Mapped[int] = mapped_column(primary_key=True)
    word: Mapped[str] = mapped_column(String(50))

    def __repr__(self):
        return f"Keyword({self.__dict__.get('id')!r})"


badge_holder = Table(
    "ts_rd_badge_holder",
    Base.metadata,
    Column("badge_id", ForeignKey("ts_rd_badge.id"), primary_key=True),
    Column("holder_id", ForeignKey("ts_rd_holder.id"), primary_key=True),
    # extra columns of the association table: a Python-side and a server
    # default, filled for each row the processor inserts
    Column("level", Integer, default=1),
    Column("note", String(20), server_default="given"),
)


class Badge(Base):
    """A many-to-many whose association table has extra columns."""

    __tablename__ = "ts_rd_badge"
    id: Mapped[int] = mapped_column(primary_key=True)
    holders: Mapped[list["Holder"]] = relationship(
        secondary=badge_holder, back_populates="badges", order_by="Holder.id"
    )


class Holder(Base):
    __tablename__ = "ts_rd_holder"
    id: Mapped[int] = mapped_column(primary_key=True)
    badges: Mapped[list[Badge]] = relationship(
        secondary=badge_holder, back_populates="holders", order_by="Badge.id"
    )


friendship = Table(
    "ts_rd_friendship",
    Base.metadata,
    Column("a_id", ForeignKey("ts_rd_person.id"), primary_key=True),
    Column("b_id", ForeignKey("ts_rd_person.id"), primary_key=True),
)


class Person(Base):
    """A self-referential many-to-many."""

    __tablename__ = "ts_rd_person"
    id: Mapped[int] = mapped_column(primary_key=True)
    friends: Mapped[list["Person"]] = relationship(
        secondary=friendship,
        primaryjoin=lambda: Person.id == friendship.c.a_id,
        secondaryjoin=lambda: Person.id == friendship.c.b_id,
        order_by=lambda: Person.id,
    )

    def __repr__(self):
        return f"Person({self.__dict__.get('id')!r})"


shelf_volume = Table(
    "ts_rd_shelf_volume",
    Base.metadata,
    Column("shelf_room", String(10), primary_key=True),
    Column("shelf_no", Integer, primary_key=True),
    Column("volume_isbn", String(20), primary_key=True),
    Column("volume_ed", Integer, primary_key=True),
    ForeignKeyConstraint(
        ["shelf_room", "shelf_no"], ["ts_rd_shelf.room", "ts_rd_shelf.no"]
    ),
    ForeignKeyConstraint(
        ["volume_isbn", "volume_ed"], ["ts_rd_volume.isbn", "ts_rd_volume.ed"]
    ),
)


class Shelf(Base):
    """Composite keys on both sides of a many-to-many."""

    __tablename__ = "ts_rd_shelf"
    room: Mapped[str] = mapped_column(String(10), primary_key=True)
    no: Mapped[int] = mapped_column(primary_key=True)
    volumes: Mapped[list["Volume"]] = relationship(
        secondary=shelf_volume, order_by="Volume.isbn"
    )

    def __repr__(self):
        return f"Shelf({self.__dict__.get('room')!r}, {self.__dict__.get('no')!r})"


class Volume(Base):
    __tablename__ = "ts_rd_volume"
    isbn: Mapped[str] = mapped_column(String(20), primary_key=True)
    ed: Mapped[int] = mapped_column(primary_key=True)

    def __repr__(self):
        return f"Volume({self.__dict__.get('isbn')!r})"


group_member = Table(
    "ts_rd_group_member",
    Base.metadata,
    Column("group_code", String(20), primary_key=True),
    Column("member_id", ForeignKey("ts_rd_member.id"), primary_key=True),
)


class Group(Base):
    """A natural key whose many-to-many updates the association rows itself
    (``passive_updates=False``; the association table has no foreign key
    to it, so the database does not cascade)."""

    __tablename__ = "ts_rd_group"
    code: Mapped[str] = mapped_column(String(20), primary_key=True)
    members: Mapped[list["Member"]] = relationship(
        secondary=group_member,
        primaryjoin=lambda: Group.code == group_member.c.group_code,
        secondaryjoin=lambda: Member.id == group_member.c.member_id,
        foreign_keys=lambda: [group_member.c.group_code, group_member.c.member_id],
        passive_updates=False,
        order_by=lambda: Member.id,
    )

    def __repr__(self):
        return f"Group({self.__dict__.get('code')!r})"


class Member(Base):
    __tablename__ = "ts_rd_member"
    id: Mapped[int] = mapped_column(primary_key=True)

    def __repr__(self):
        return f"Member({self.__dict__.get('id')!r})"


club_member = Table(
    "ts_rd_club_member",
    Base.metadata,
    Column("club_id", ForeignKey("ts_rd_club.id", ondelete="CASCADE"), primary_key=True),
    Column("member_id", ForeignKey("ts_rd_member.id"), primary_key=True),
)


class Club(Base):
    """A many-to-many with ``passive_deletes=True``: an unloaded collection
    is left to the database (ON DELETE CASCADE; SQLite's foreign keys are
    off here, so the rows stay, as they do for stock)."""

    __tablename__ = "ts_rd_club"
    id: Mapped[int] = mapped_column(primary_key=True)
    members: Mapped[list[Member]] = relationship(
        secondary=club_member, passive_deletes=True, order_by=lambda: Member.id
    )

    def __repr__(self):
        return f"Club({self.__dict__.get('id')!r})"


# one-to-many: no delete cascade (children's keys nulled), delete cascade
# with delete-orphan, passive_deletes True and "all"


class Folder(Base):
    __tablename__ = "ts_rd_folder"
    id: Mapped[int] = mapped_column(primary_key=True)
    files: Mapped[list["File"]] = relationship(back_populates="folder", order_by="File.id")

    def __repr__(self):
        return f"Folder({self.__dict__.get('id')!r})"


class File(Base):
    __tablename__ = "ts_rd_file"
    id: Mapped[int] = mapped_column(primary_key=True)
    folder_id: Mapped[int | None] = mapped_column(ForeignKey("ts_rd_folder.id"))
    folder: Mapped[Folder | None] = relationship(back_populates="files")

    def __repr__(self):
        return f"File({self.__dict__.get('id')!r})"


class Order(Base):
    __tablename__ = "ts_rd_order"
    id: Mapped[int] = mapped_column(primary_key=True)
    lines: Mapped[list["Line"]] = relationship(
        cascade="all, delete-orphan", back_populates="order", order_by="Line.id"
    )

    def __repr__(self):
        return f"Order({self.__dict__.get('id')!r})"


class Line(Base):
    __tablename__ = "ts_rd_line"
    id: Mapped[int] = mapped_column(primary_key=True)
    order_id: Mapped[int] = mapped_column(ForeignKey("ts_rd_order.id"))
    order: Mapped[Order] = relationship(back_populates="lines")

    def __repr__(self):
        return f"Line({self.__dict__.get('id')!r})"


class Album(Base):
    """``passive_deletes=True``: unloaded photos are not loaded to be nulled;
    the database would cascade (SQLite's foreign keys are off here, so the
    rows stay, as they do for stock)."""

    __tablename__ = "ts_rd_album"
    id: Mapped[int] = mapped_column(primary_key=True)
    photos: Mapped[list["Photo"]] = relationship(passive_deletes=True, order_by="Photo.id")

    def __repr__(self):
        return f"Album({self.__dict__.get('id')!r})"


class Photo(Base):
    __tablename__ = "ts_rd_photo"
    id: Mapped[int] = mapped_column(primary_key=True)
    album_id: Mapped[int | None] = mapped_column(ForeignKey("ts_rd_album.id", ondelete="SET NULL"))

    def __repr__(self):
        return f"Photo({self.__dict__.get('id')!r})"


class Shop(Base):
    """``passive_deletes="all"``: the children are left as they are."""

    __tablename__ = "ts_rd_shop"
    id: Mapped[int] = mapped_column(primary_key=True)
    items: Mapped[list["Stock"]] = relationship(passive_deletes="all", order_by="Stock.id")

    def __repr__(self):
        return f"Shop({self.__dict__.get('id')!r})"


class Stock(Base):
    __tablename__ = "ts_rd_stock"
    id: Mapped[int] = mapped_column(primary_key=True)
    # the database's to handle (SQLite's foreign keys are off here)
    shop_id: Mapped[int | None] = mapped_column(ForeignKey("ts_rd_shop.id", ondelete="SET NULL"))

    def __repr__(self):
        return f"Stock({self.__dict__.get('id')!r})"


FK_ATTRIBUTES = (File.folder_id, Line.order_id, Photo.album_id, Stock.shop_id)


def listen_fk_sets(log):
    def on_set(target, value, oldvalue, initiator):
        log.note("event", "set", repr(target), value)

    for attr in FK_ATTRIBUTES:
        event.listen(attr, "set", on_set)

    def undo():
        for attr in FK_ATTRIBUTES:
            event.remove(attr, "set", on_set)

    return undo


def table_rows(session, table, *order):
    return session.execute(select(table).order_by(*order)).all()


# -- many-to-many


def sc_m2m_one_post(session_cls, engine, log):
    """One parent per step: the rows compare in order."""
    session = session_cls(engine)
    tags = [Tag(id=i, name=f"t{i}") for i in range(1, 6)]
    post = Post(id=1, title="p", tags=tags[:3])
    session.add(post)
    guarded(log, session.flush)
    post.tags.remove(tags[1])
    post.tags.append(tags[3])
    post.tags.append(tags[4])
    guarded(log, session.flush)
    log.note("links", table_rows(session, post_tag, post_tag.c.post_id, post_tag.c.tag_id))
    post.tags.clear()
    guarded(log, session.flush)
    post.tags.extend([tags[4], tags[0]])
    session.commit()
    log.note("tag posts", [(t.id, [p.id for p in t.posts]) for t in tags])
    # the backref side: removing the post from a tag's collection
    tags[0].posts.remove(post)
    guarded(log, session.commit)
    log.note("links", table_rows(session, post_tag, post_tag.c.post_id, post_tag.c.tag_id))
    log.note("states", [object_state(o) for o in [post] + tags])
    session.close()


def sc_m2m_delete_either_side(session_cls, engine, log):
    session = session_cls(engine)
    session.add_all([Post(id=i, title=f"p{i}", tags=[Tag(id=10 + i, name="a")]) for i in (1, 2)])
    shared = Tag(id=20, name="shared")
    session.add(Post(id=3, title="p3", tags=[shared]))
    session.commit()
    # a post deleted with its tags loaded, another with them not loaded
    loaded = session.get(Post, 1)
    log.note("loaded", [t.id for t in loaded.tags])
    session.delete(loaded)
    guarded(log, session.flush)
    session.delete(session.get(Post, 2))
    guarded(log, session.flush)
    # a tag deleted: its links go from the tag's side
    session.delete(shared)
    guarded(log, session.commit)
    log.note("links", table_rows(session, post_tag, post_tag.c.post_id, post_tag.c.tag_id))
    log.note("counts", session.scalar(select(func.count()).select_from(Post)),
             session.scalar(select(func.count()).select_from(Tag)))
    session.close()


def sc_m2m_many_posts(session_cls, engine, log):
    """Several parents in one step (rows compared sorted)."""
    session = session_cls(engine)
    tags = [Tag(id=i, name=f"t{i}") for i in range(1, 5)]
    posts = [Post(id=i, title=f"p{i}", tags=list(tags)) for i in range(1, 6)]
    session.add_all(posts)
    guarded(log, session.flush)
    for post in posts[::2]:
        post.tags.pop(0)
    tags[3].posts.append(Post(id=9, title="new"))
    guarded(log, session.flush)
    for post in posts[1::2]:
        session.delete(post)
    guarded(log, session.commit)
    log.note("links", table_rows(session, post_tag, post_tag.c.post_id, post_tag.c.tag_id))
    session.close()


def sc_m2m_extra_columns(session_cls, engine, log):
    """Rows of an association table with defaults of its own: inserted
    from both sides, removed, deleted with a parent."""
    session = session_cls(engine)
    badges = [Badge(id=i) for i in (1, 2, 3)]
    session.add(Holder(id=1, badges=badges[:2]))
    guarded(log, session.flush)
    badges[2].holders.append(Holder(id=2))
    session.get(Holder, 1).badges.remove(badges[0])
    guarded(log, session.commit)
    log.note("links", session.execute(select(badge_holder).order_by(
        badge_holder.c.badge_id, badge_holder.c.holder_id)).all())
    session.delete(session.get(Holder, 1))
    guarded(log, session.commit)
    log.note("links", session.execute(select(badge_holder).order_by(
        badge_holder.c.badge_id, badge_holder.c.holder_id)).all())
    session.close()


def sc_m2m_link_removed_and_readded(session_cls, engine, log):
    """A link removed and added back before one flush, another replaced,
    and the same tag removed from one post and given to another."""
    session = session_cls(engine)
    tags = [Tag(id=i, name=f"t{i}") for i in range(1, 5)]
    first, second = Post(id=1, title="a", tags=tags[:2]), Post(id=2, title="b", tags=tags[2:3])
    session.add_all([first, second])
    session.commit()
    first.tags.remove(tags[0])
    first.tags.append(tags[0])
    first.tags[1] = tags[3]  # replaced: tags[1] out, tags[3] in
    second.tags.remove(tags[2])
    first.tags.append(tags[2])
    guarded(log, session.flush)
    log.note("links", table_rows(session, post_tag, post_tag.c.post_id, post_tag.c.tag_id))
    log.note("states", [object_state(o) for o in [first, second] + tags])
    session.commit()
    log.note("tag posts", [(t.id, [p.id for p in t.posts]) for t in tags])
    session.close()


def sc_m2m_links_to_held_objects(session_cls, engine, log):
    """New posts linked to tags the session holds, several add_all calls
    sharing them, one tag expunged and one deleted between the calls:
    the save-update walk asks again which objects the session holds."""
    session = session_cls(engine)
    session.add_all([Tag(id=i, name=f"t{i}") for i in range(1, 5)])
    session.commit()
    tags = session.scalars(select(Tag).order_by(Tag.id)).all()
    session.add_all([Post(id=i, title=f"p{i}", tags=tags[:3]) for i in (1, 2, 3)])
    session.expunge(tags[0])
    session.delete(tags[3])
    session.add_all([Post(id=i, title=f"p{i}", tags=[tags[0], tags[1], tags[3]]) for i in (4, 5)])
    log.note("states", [object_state(o) for o in tags])
    # the links to the deleted tag break PostgreSQL's foreign key (SQLite's
    # is not enforced): then the rows read are those before the commit
    guarded(log, session.commit)
    session.rollback()
    log.note("links", table_rows(session, post_tag, post_tag.c.post_id, post_tag.c.tag_id))
    session.close()


def sc_m2m_no_backref(session_cls, engine, log):
    session = session_cls(engine)
    words = [Keyword(id=i, word=f"w{i}") for i in range(1, 4)]
    article = Article(id=1, keywords=words[:2])
    session.add(article)
    session.commit()
    article.keywords.append(words[2])
    article.keywords.remove(words[0])
    guarded(log, session.flush)
    session.delete(article)
    guarded(log, session.commit)
    log.note("links", table_rows(session, article_keyword, article_keyword.c.keyword_id))
    session.close()


def sc_m2m_self_referential(session_cls, engine, log):
    session = session_cls(engine)
    a, b, c = Person(id=1), Person(id=2), Person(id=3)
    a.friends = [b, c]
    b.friends = [a]
    session.add_all([a, b, c])
    guarded(log, session.flush)
    c.friends.append(a)
    a.friends.remove(b)
    guarded(log, session.flush)
    b.friends.remove(a)  # the rows from b's and c's side refer to a too
    c.friends.remove(a)
    session.delete(a)
    guarded(log, session.commit)
    log.note("links", table_rows(session, friendship, friendship.c.a_id, friendship.c.b_id))
    session.close()


def sc_m2m_composite_keys(session_cls, engine, log):
    session = session_cls(engine)
    volumes = [Volume(isbn=f"isbn{i}", ed=i) for i in range(1, 4)]
    shelf = Shelf(room="r1", no=2, volumes=volumes[:2])
    session.add(shelf)
    guarded(log, session.flush)
    shelf.volumes.remove(volumes[0])
    shelf.volumes.append(volumes[2])
    guarded(log, session.flush)
    session.delete(shelf)
    guarded(log, session.commit)
    log.note("links", table_rows(session, shelf_volume, shelf_volume.c.volume_isbn))
    session.close()


def sc_m2m_natural_key_change(session_cls, engine, log):
    session = session_cls(engine)
    group = Group(code="a", members=[Member(id=1), Member(id=2)])
    session.add(group)
    session.commit()
    group.code = "b"
    group.members.append(Member(id=3))
    guarded(log, session.commit)
    log.note("links", table_rows(session, group_member, group_member.c.member_id))
    session.close()


def sc_m2m_passive_deletes(session_cls, engine, log):
    session = session_cls(engine)
    members = [Member(id=i) for i in (1, 2)]
    session.add_all([Club(id=1, members=list(members)), Club(id=2, members=list(members))])
    session.commit()
    loaded = session.get(Club, 1)
    log.note("members", [m.id for m in loaded.members])
    session.delete(loaded)  # loaded: its rows deleted by the ORM
    guarded(log, session.flush)
    session.delete(session.get(Club, 2))  # not loaded: left to the database
    guarded(log, session.commit)
    log.note("links", table_rows(session, club_member, club_member.c.club_id,
                                 club_member.c.member_id))
    session.close()


def sc_m2m_stale_update(session_cls, engine, log):
    """An association row gone when a natural key change updates them:
    stock's StaleDataError for the UPDATE."""
    session = session_cls(engine)
    group = Group(code="a", members=[Member(id=1), Member(id=2)])
    session.add(group)
    session.commit()
    log.note("members", [m.id for m in group.members])
    session.execute(delete(group_member).where(group_member.c.member_id == 1))
    group.code = "b"
    guarded(log, session.flush)
    log.note("after failure", object_state(group), session.is_active)
    session.rollback()
    log.note("after rollback", object_state(group), group.code)
    session.close()


def sc_m2m_stale_delete(session_cls, engine, log):
    """An association row deleted behind the ORM's back: stock's
    StaleDataError, and what the failed flush leaves."""
    session = session_cls(engine)
    tags = [Tag(id=1, name="a"), Tag(id=2, name="b")]
    post = Post(id=1, title="p", tags=list(tags))
    session.add(post)
    session.commit()
    log.note("tags", [t.id for t in post.tags])  # loaded before the row goes
    session.execute(delete(post_tag).where(post_tag.c.tag_id == 1))
    post.tags.remove(tags[0])
    post.title = "changed"
    guarded(log, session.flush)
    log.note("after failure", object_state(post), [object_state(t) for t in tags],
             post in session.dirty, session.is_active)
    session.rollback()
    log.note("after rollback", object_state(post), [t.id for t in post.tags], post.title)
    session.close()


def sc_m2m_bad_members(session_cls, engine, log):
    session = session_cls(engine)
    post = Post(id=1, title="p")
    session.add(post)
    session.flush()
    with session.no_autoflush:
        outside = Tag(id=5, name="outside")
        post.tags.append(outside)
        session.expunge(outside)
        guarded(log, session.flush)  # the tag is not in the session: stock warns
    log.note("links", table_rows(session, post_tag, post_tag.c.tag_id))
    post.tags.append(None)
    guarded(log, session.flush)  # None in a collection: stock raises
    session.rollback()
    session.close()


def sc_m2m_members_expired(session_cls, engine, log):
    """Members and a parent whose key columns are expired when their rows
    are made: each is loaded where stock loads it (at its first row), the
    later rows of the step read what that load put in its dict."""
    session = session_cls(engine)
    tags = [Tag(id=i, name=f"t{i}") for i in range(1, 5)]
    session.add_all(tags)
    session.commit()  # every tag expired
    posts = [Post(id=i, title=f"p{i}", tags=list(tags[:3])) for i in (1, 2, 3)]
    session.add_all(posts)
    guarded(log, session.flush)
    log.note("links", table_rows(session, post_tag, post_tag.c.post_id, post_tag.c.tag_id))
    # the parent's key expired after its collection was loaded: two rows
    post = posts[0]
    log.note("tags", [t.id for t in post.tags])
    session.expire(post, ["id", "title"])
    session.expire(tags[3])
    post.tags.append(tags[3])
    post.tags.remove(tags[0])
    guarded(log, session.commit)
    log.note("links", table_rows(session, post_tag, post_tag.c.post_id, post_tag.c.tag_id))
    log.note("states", [object_state(o) for o in posts + tags])
    session.close()


def sc_m2m_contains_state_patched(session_cls, engine, log):
    """An identity map whose ``contains_state`` is set on the map itself is
    asked, as stock asks it: by the cascade of ``add`` (one tag reported as
    not in the session, which is then saved again) and by the association
    rows (the map's own answer, through the method)."""
    session = session_cls(engine)
    tags = [Tag(id=i, name=f"t{i}") for i in range(1, 4)]
    session.add_all(tags)
    session.commit()
    log.note("names", [t.name for t in tags])
    hidden = tags[1]._sa_instance_state
    identity_map = session.identity_map
    contains_state = identity_map.contains_state
    identity_map.contains_state = lambda state: state is not hidden and contains_state(state)
    try:
        session.add_all([Post(id=i, title=f"p{i}", tags=list(tags)) for i in (1, 2)])
        log.note("states", [object_state(t) for t in tags])
        identity_map.contains_state = lambda state: contains_state(state)
        guarded(log, session.flush)
    finally:
        del identity_map.contains_state
    log.note("links", table_rows(session, post_tag, post_tag.c.post_id, post_tag.c.tag_id))
    session.rollback()
    session.close()


# -- one-to-many deletes


def sc_o2m_delete_nulls_children(session_cls, engine, log):
    undo = listen_fk_sets(log)
    try:
        session = session_cls(engine)
        session.add_all([Folder(id=i, files=[File(id=10 * i + j) for j in range(3)])
                         for i in (1, 2)])
        session.commit()
        # children loaded: their keys set to NULL; not loaded: loaded first
        loaded = session.get(Folder, 1)
        log.note("files", [f.id for f in loaded.files])
        session.delete(loaded)
        guarded(log, session.flush)
        session.delete(session.get(Folder, 2))
        guarded(log, session.flush)
        # a child moved away from a deleted parent keeps its new key
        session.add(Folder(id=3, files=[File(id=31), File(id=32)]))
        session.commit()
        folder = session.get(Folder, 3)
        moved = folder.files[0]
        other = Folder(id=4)
        other.files.append(moved)
        session.add(other)
        session.delete(folder)
        guarded(log, session.commit)
        log.note("files", session.execute(select(File.id, File.folder_id).order_by(File.id)).all())
        session.close()
    finally:
        undo()


def sc_o2m_delete_cascade_and_orphans(session_cls, engine, log):
    undo = listen_fk_sets(log)
    try:
        session = session_cls(engine)
        session.add_all([Order(id=i, lines=[Line(id=10 * i + j) for j in range(3)])
                         for i in (1, 2, 3)])
        session.commit()
        order = session.get(Order, 1)
        log.note("lines", [line.id for line in order.lines])
        session.delete(order)
        session.delete(session.get(Order, 2))  # lines not loaded
        guarded(log, session.flush)
        # an orphan removed from its collection
        third = session.get(Order, 3)
        orphan = third.lines.pop(1)
        guarded(log, session.flush)
        log.note("orphan", object_state(orphan))
        session.delete(third)
        guarded(log, session.commit)
        log.note("lines", session.execute(select(Line.id, Line.order_id).order_by(Line.id)).all())
        session.close()
    finally:
        undo()


def sc_o2m_passive_deletes(session_cls, engine, log):
    undo = listen_fk_sets(log)
    try:
        session = session_cls(engine)
        session.add_all([Album(id=i, photos=[Photo(id=10 * i + j) for j in range(2)])
                         for i in (1, 2)])
        session.add(Shop(id=1, items=[Stock(id=1), Stock(id=2)]))
        session.add(Shop(id=2, items=[Stock(id=3)]))
        session.commit()
        loaded = session.get(Album, 1)
        log.note("photos", [p.id for p in loaded.photos])
        session.delete(loaded)  # loaded photos: nulled by the ORM
        session.delete(session.get(Album, 2))  # not loaded: left to the database
        shop = session.get(Shop, 1)
        log.note("items", [s.id for s in shop.items])
        session.delete(shop)  # "all": loaded items left as they are
        session.delete(session.get(Shop, 2))
        guarded(log, session.commit)
        log.note("photos", session.execute(select(Photo.id, Photo.album_id).order_by(Photo.id)).all())
        log.note("items", session.execute(select(Stock.id, Stock.shop_id).order_by(Stock.id)).all())
        session.close()
    finally:
        undo()


SCENARIOS = {
    sc_m2m_one_post: False,
    sc_m2m_delete_either_side: True,
    sc_m2m_many_posts: True,
    sc_m2m_extra_columns: True,
    sc_m2m_link_removed_and_readded: True,
    sc_m2m_links_to_held_objects: True,
    sc_m2m_no_backref: False,
    sc_m2m_self_referential: True,
    sc_m2m_composite_keys: False,
    sc_m2m_natural_key_change: False,
    sc_m2m_passive_deletes: True,
    sc_m2m_stale_update: False,
    sc_m2m_stale_delete: False,
    sc_m2m_bad_members: False,
    sc_m2m_members_expired: True,
    sc_m2m_contains_state_patched: True,
    sc_o2m_delete_nulls_children: False,
    sc_o2m_delete_cascade_and_orphans: True,
    sc_o2m_passive_deletes: True,
}


def rows_sorted(entries):
    """``entries`` with the rows of each multi-row statement sorted (stock
    takes the parents of one step in set order)."""
    out = []
    for entry in entries:
        if entry[0] == "sql" and entry[3]:
            entry = (*entry[:2], sorted(ast.literal_eval(entry[2]), key=repr), entry[3])
        elif entry[0] == "cursor" and entry[1] == "executemany":
            entry = (*entry[:3], sorted(ast.literal_eval(entry[3]), key=repr))
        out.append(entry)
    return out


def compare(scenario, session_cls, engine, engine_events):
    groups = {"set": "set"}
    expected = run(scenario, orm.Session, engine, Base.metadata, engine_events)
    actual = run(scenario, session_cls, engine, Base.metadata, engine_events)
    expected = set_order_sorted(expected, groups)
    actual = set_order_sorted(actual, groups)
    if SCENARIOS[scenario]:
        expected, actual = rows_sorted(expected), rows_sorted(actual)
    assert actual == expected
    return actual


@pytest.mark.parametrize("engine_events", [True, False], ids=["events", "cursor"])
@pytest.mark.parametrize("scenario", list(SCENARIOS), ids=lambda f: f.__name__[3:])
def test_same_as_stock(scenario, engine_events, session_cls, engine):
    turbosession.reset_stats()
    entries = compare(scenario, session_cls, engine, engine_events)
    assert any(e[0] == "cursor" for e in entries)
    relationship_steps = turbosession.stats()["relationships"]
    assert relationship_steps["fast"] > 0
    assert relationship_steps["fallback"] == {}


def test_association_rows_go_to_the_cursor(session_cls, engine):
    """Without engine listeners the association rows are sent directly."""
    Base.metadata.create_all(engine)
    try:
        turbosession.reset_stats()
        with session_cls(engine) as session:
            tags = [Tag(id=i, name="t") for i in (1, 2)]
            session.add(Post(id=1, title="p", tags=tags))
            session.flush()
            direct = turbosession.stats()["emission"]["direct"]
            session.get(Post, 1).tags.remove(tags[0])
            session.flush()
            assert turbosession.stats()["emission"]["direct"] == direct + 1
            assert session.execute(select(post_tag.c.tag_id)).scalars().all() == [2]
    finally:
        Base.metadata.drop_all(engine)


def code_objects_called(action):
    """The code objects of the Python functions that ran."""
    called = set()

    def profile(frame, what, arg):
        if what == "call":
            called.add(frame.f_code)

    sys.setprofile(profile)
    try:
        action()
    finally:
        sys.setprofile(None)
    return called


STOCK_PROCESSING = {
    dependency._ManyToManyDP.process_saves.__code__,
    dependency._ManyToManyDP.process_deletes.__code__,
    dependency._ManyToManyDP._synchronize.__code__,
    dependency._ManyToManyDP._run_crud.__code__,
    dependency._OneToManyDP.process_deletes.__code__,
    dependency._OneToManyDP._synchronize.__code__,
    sync._populate_dict.__code__,
    sync._clear.__code__,
}


def test_processors_run_on_turbosessions_loops(session_cls, engine):
    Base.metadata.create_all(engine)
    try:
        with session_cls(engine) as session:
            tags = [Tag(id=1, name="t"), Tag(id=2, name="u")]
            session.add_all([Post(id=1, title="p", tags=tags), Folder(id=1, files=[File(id=1)])])
            assert not code_objects_called(session.flush) & STOCK_PROCESSING
            session.commit()
            post = session.get(Post, 1)
            post.tags.remove(tags[0])
            session.delete(session.get(Folder, 1))
            assert not code_objects_called(session.flush) & STOCK_PROCESSING
            session.delete(post)
            assert not code_objects_called(session.flush) & STOCK_PROCESSING
            assert session.scalars(select(File.folder_id)).all() == [None]
            assert session.execute(select(post_tag)).all() == []
        with orm.Session(engine) as stock:
            stock.add(Post(id=2, title="p", tags=[Tag(id=3, name="t")]))
            called = code_objects_called(stock.flush)
            assert dependency._ManyToManyDP._run_crud.__code__ in called
    finally:
        Base.metadata.drop_all(engine)


def test_post_update_falls_back(session_cls, engine):
    """post_update relationships keep stock's processor, counted by reason."""

    class PBase(DeclarativeBase):
        pass

    class Node(PBase):
        __tablename__ = "ts_rd_pu_node"
        id: Mapped[int] = mapped_column(primary_key=True)
        favorite_id: Mapped[int | None] = mapped_column(
            ForeignKey("ts_rd_pu_node.id", use_alter=True, name="ts_rd_pu_favorite")
        )
        favorite = relationship("Node", remote_side=[id], post_update=True)

    PBase.metadata.create_all(engine)
    try:
        turbosession.reset_stats()
        with session_cls(engine) as session:
            a = Node(id=1)
            a.favorite = a
            session.add(a)
            session.commit()
            session.delete(a)
            session.commit()
        assert turbosession.stats()["relationships"]["fallback"]["post_update"] >= 1
    finally:
        PBase.metadata.drop_all(engine)
