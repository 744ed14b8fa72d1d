"""The mapped classes the benchmark workloads use.

They live in their own declarative base so that the benchmark never touches a
user's metadata, and their tables carry a ``tsbench_`` prefix so that a run
against a shared PostgreSQL database cannot collide with real tables.
``Item`` is the three-column model of DESIGN.md's baseline figures.
"""

from typing import List, Optional

from sqlalchemy import Column, ForeignKey, Integer, String, Table, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = "tsbench_item"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    qty: Mapped[int] = mapped_column(Integer)


class Parent(Base):
    __tablename__ = "tsbench_parent"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    children: Mapped[List["Child"]] = relationship(
        back_populates="parent", cascade="all, delete-orphan"
    )


class Child(Base):
    __tablename__ = "tsbench_child"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[int] = mapped_column(ForeignKey("tsbench_parent.id"))
    name: Mapped[str] = mapped_column(String(50))
    parent: Mapped[Parent] = relationship(back_populates="children")


class Node(Base):
    """A self-referential tree: the unit of work sorts it per state (cycles)."""

    __tablename__ = "tsbench_node"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_id: Mapped[Optional[int]] = mapped_column(ForeignKey("tsbench_node.id"))
    name: Mapped[str] = mapped_column(String(50))
    children: Mapped[List["Node"]] = relationship(cascade="all, delete-orphan")


class Author(Base):
    """A model as applications have it: five columns, a Python-side and a
    server default, a one-to-many with ``all, delete-orphan`` and its
    many-to-one back."""

    __tablename__ = "tsbench_author"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    email: Mapped[Optional[str]] = mapped_column(String(80))
    score: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(20), server_default=text("'active'"))
    books: Mapped[List["Book"]] = relationship(
        back_populates="author", cascade="all, delete-orphan"
    )


class Book(Base):
    __tablename__ = "tsbench_book"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    author_id: Mapped[int] = mapped_column(ForeignKey("tsbench_author.id"))
    title: Mapped[str] = mapped_column(String(50))
    author: Mapped[Author] = relationship(back_populates="books")


class Person(Base):
    """Joined-table inheritance with a discriminator."""

    __tablename__ = "tsbench_person"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    kind: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "person"}


class Engineer(Person):
    __tablename__ = "tsbench_engineer"

    id: Mapped[int] = mapped_column(ForeignKey("tsbench_person.id"), primary_key=True)
    language: Mapped[str] = mapped_column(String(20))
    __mapper_args__ = {"polymorphic_identity": "engineer"}


post_tag = Table(
    "tsbench_post_tag",
    Base.metadata,
    Column("post_id", ForeignKey("tsbench_post.id"), primary_key=True),
    Column("tag_id", ForeignKey("tsbench_tag.id"), primary_key=True),
)


class Post(Base):
    __tablename__ = "tsbench_post"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    title: Mapped[str] = mapped_column(String(50))
    tags: Mapped[List["Tag"]] = relationship(secondary=post_tag)


class Tag(Base):
    __tablename__ = "tsbench_tag"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(50))


# dependents first: the order rows must be removed in
TABLES_DELETE_ORDER = (
    "tsbench_child", "tsbench_parent", "tsbench_node", "tsbench_item",
    "tsbench_book", "tsbench_author", "tsbench_engineer", "tsbench_person",
    "tsbench_post_tag", "tsbench_post", "tsbench_tag",
)
