"""The mapped classes the benchmark workloads use.

They live in their own declarative base so that the benchmark never touches a
user's metadata, and their tables carry a ``tsbench_`` prefix so that a run
against a shared PostgreSQL database cannot collide with real tables.
``Item`` is the three-column model of DESIGN.md's baseline figures.
"""

from typing import List, Optional

from sqlalchemy import ForeignKey, Integer, String
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


# children before parents: the order rows must be removed in
TABLES_DELETE_ORDER = ("tsbench_child", "tsbench_parent", "tsbench_node", "tsbench_item")
