"""``python -m turbosession info|demo|bench``."""

import argparse
import platform
import sys


def info():
    import sqlalchemy

    import turbosession
    from turbosession import _impl

    print(f"turbosession   {turbosession.__version__}")
    print(f"implementation {turbosession.implementation}")
    if _impl.NO_EXTENSIONS:
        print("               (TURBOSESSION_NO_EXTENSIONS is set)")
    elif _impl.compiled is None:
        print(f"               (not built: {_impl.compiled_import_error})")
    print(f"sqlalchemy     {sqlalchemy.__version__}")
    print(f"python         {platform.python_version()} ({platform.python_implementation()})")
    if turbosession.compiled:
        try:
            import Cython

            print(f"cython         {Cython.__version__}")
        except ImportError:
            print("cython         (built; not installed at run time)")


def demo(n):
    """Flush and load ``n`` rows on SQLite with stock and turbosession sessions."""
    import time

    from sqlalchemy import Integer, String, create_engine, orm, select
    from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

    import turbosession

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __tablename__ = "item"
        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        name: Mapped[str] = mapped_column(String(50))
        qty: Mapped[int]

    print(f"turbosession {turbosession.__version__}, implementation: "
          f"{turbosession.implementation}; SQLite in memory, {n} objects")
    for label, session_cls in (("stock", orm.Session), ("turbosession", turbosession.Session)):
        engine = create_engine("sqlite://")
        Base.metadata.create_all(engine)
        with session_cls(engine) as session:
            session.add_all(Item(name=f"item {i}", qty=i) for i in range(n))
            start = time.perf_counter()
            session.commit()
            flushed = time.perf_counter() - start
        with session_cls(engine) as session:
            start = time.perf_counter()
            items = session.scalars(select(Item)).all()
            loaded = time.perf_counter() - start
            assert len(items) == n and sum(i.qty for i in items) == n * (n - 1) // 2
            print(f"  {label:13s} {type(session.identity_map).__module__:32s} "
                  f"flush {flushed * 1e6 / n:6.1f} us/object, load {loaded * 1e6 / n:6.1f} us/object")
        engine.dispose()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m turbosession")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="which implementation is active, and versions")
    demo_parser = commands.add_parser("demo", help="flush and load on SQLite, stock and turbosession")
    demo_parser.add_argument("-n", type=int, default=10_000)
    bench_parser = commands.add_parser(
        "bench", help="benchmark report: stock, turbosession and references side by side"
    )
    from turbosession.benchmarks import cli as bench_cli

    bench_cli.add_arguments(bench_parser)
    args = parser.parse_args(argv)
    if args.command == "info":
        info()
    elif args.command == "demo":
        demo(args.n)
    elif args.command == "bench":
        return bench_cli.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
