"""``python -m turbosession info|bench|soak``."""

import argparse
import platform
import sys


def info():
    import sqlalchemy

    import turbosession
    from turbosession import _impl

    print(f"turbosession   {turbosession.__version__}")
    print(f"implementation {turbosession.implementation}")
    if _impl.pure_reason:
        print(f"               (pure because {_impl.pure_reason})")
    print(f"sqlalchemy     {sqlalchemy.__version__}")
    print(f"python         {platform.python_version()} ({platform.python_implementation()})")
    if turbosession.compiled:
        try:
            import Cython

            print(f"cython         {Cython.__version__}")
        except ImportError:
            print("cython         (built; not installed at run time)")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m turbosession")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("info", help="which implementation is active, and versions")
    bench_parser = commands.add_parser(
        "bench", help="benchmark report: stock, turbosession and references side by side"
    )
    from turbosession.benchmarks import cli as bench_cli
    from turbosession.benchmarks import soak

    bench_cli.add_arguments(bench_parser)
    soak_parser = commands.add_parser(
        "soak", help="memory soak: a million objects through one session, stock and turbosession"
    )
    soak.add_arguments(soak_parser)
    args = parser.parse_args(argv)
    if args.command == "info":
        info()
    elif args.command == "bench":
        return bench_cli.run(args)
    elif args.command == "soak":
        return soak.run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
