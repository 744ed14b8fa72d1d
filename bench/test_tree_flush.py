"""Self-referential tree, 10,000 nodes, fan-out 4, SQLite: stock against both implementations.

The cyclic case of the unit of work: the mapper depends on itself, so the
flush splits its actions per state and sorts them again.  Two groups:

- ``tree-add-commit``: ``session.add(root)`` and ``commit()`` of a tree built
  untimed (what the Session does);
- ``tree-build-add-commit``: the same with building the objects timed too
  (the whole workload a program runs).

Every round starts on empty tables and is verified afterwards (every row,
every parent link).  CPU time (``time.process_time``) is the timer: the
machines are shared, and SQLite in memory does not wait on I/O.
``TURBOSESSION_TREE_N`` changes the number of nodes.
"""

import os
import time

import pytest
from sqlalchemy import ForeignKey, String, create_engine, select
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from turbosession.benchmarks import implementations as impls

N = int(os.environ.get("TURBOSESSION_TREE_N", 10_000))
FAN_OUT = 4
ROUNDS = 5


class Base(DeclarativeBase):
    pass


class TreeNode(Base):
    __tablename__ = "bench_tree_node"
    id: Mapped[int] = mapped_column(primary_key=True)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("bench_tree_node.id"))
    name: Mapped[str] = mapped_column(String(20))
    children: Mapped[list["TreeNode"]] = relationship()


def build_tree():
    nodes = [TreeNode(name="n0")]
    for i in range(1, N):
        node = TreeNode(name=f"n{i}")
        nodes[(i - 1) // FAN_OUT].children.append(node)
        nodes.append(node)
    return nodes[0]


@pytest.fixture(scope="module")
def engine():
    eng = create_engine("sqlite://")
    yield eng
    eng.dispose()


def reset(engine):
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)


def verify(engine):
    with engine.connect() as conn:
        rows = conn.execute(
            select(TreeNode.name, TreeNode.parent_id, TreeNode.id)
        ).all()
    assert len(rows) == N
    name_of = {id_: name for name, _, id_ in rows}
    for name, parent_id, _ in rows:
        i = int(name[1:])
        if i == 0:
            assert parent_id is None
        else:
            assert name_of[parent_id] == f"n{(i - 1) // FAN_OUT}"


@pytest.mark.benchmark(timer=time.process_time)
@pytest.mark.parametrize("timed", ["add-commit", "build-add-commit"])
@pytest.mark.parametrize("implementation", list(impls.session_classes()))
def test_tree_flush(benchmark, engine, implementation, timed):
    session_cls = impls.session_classes()[implementation]

    def setup():
        reset(engine)
        root = None if timed == "build-add-commit" else build_tree()
        return (root,), {}

    def run(root):
        if root is None:
            root = build_tree()
        with session_cls(engine) as session:
            session.add(root)
            session.commit()

    benchmark.group = f"tree-{timed}-{N}"
    benchmark.extra_info.update(implementation=implementation, ops=N, unit="node")
    benchmark.pedantic(run, setup=setup, rounds=ROUNDS, warmup_rounds=1)
    verify(engine)
