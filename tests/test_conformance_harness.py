"""The conformance harness itself (tests/conformance/): its substitution and its verdicts.

The harness decides whether SQLAlchemy's own suite vouches for turbosession, so
it must neither miss a substitution nor miscount a result.  The suite itself is
run by tests/conformance/run.py, not here (it takes minutes per mode).
"""

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path


CONFORMANCE = Path(__file__).resolve().parent / "conformance"


def _load(name):
    spec = importlib.util.spec_from_file_location(name, CONFORMANCE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


run = _load("run")


def test_substitution_reaches_every_way_the_suite_makes_sessions(impl):
    # in a child process: substitute() replaces names inside SQLAlchemy
    script = textwrap.dedent(
        """
        import json
        import sqlalchemy
        from sqlalchemy import orm
        from sqlalchemy.ext import horizontal_shard
        from sqlalchemy.orm import session as orm_session
        import turbosession
        from turbosession import _impl
        from turbosession.ext import horizontal_shard as ts_horizontal_shard
        import conformance_plugin

        stock = orm.Session
        stock_sharded = conformance_plugin.substitute()
        engine = sqlalchemy.create_engine("sqlite://")
        made = {
            "orm.Session": orm.Session(engine),
            "orm.session.Session": orm_session.Session(engine),
            "sessionmaker": orm.sessionmaker(engine)(),
            "scoped_session": orm.scoped_session(orm.sessionmaker(engine))(),
            "create_session": orm.create_session(engine),
            "ShardedSession": horizontal_shard.ShardedSession(
                shard_chooser=lambda *args, **kw: "only",
                identity_chooser=lambda *args, **kw: ["only"],
                execute_chooser=lambda *args, **kw: ["only"],
                shards={"only": engine},
            ),
        }
        # it needs greenlet, which the lean [test] extra leaves out (asked
        # first: once substitute()'s import has failed, SQLAlchemy's
        # concurrency shim lets a second import of the module succeed)
        import importlib.util
        if importlib.util.find_spec("greenlet") is None:
            async_sync_class = "no greenlet"
        else:
            from sqlalchemy.ext.asyncio import AsyncSession
            async_sync_class = (
                "turbosession.Session"
                if AsyncSession.sync_session_class is turbosession.Session
                else repr(AsyncSession.sync_session_class)
            )
        print(json.dumps({
            "sessions": {
                how: [
                    isinstance(s, turbosession.TurboSessionMixin),
                    isinstance(s, stock),
                    type(s.identity_map) is _impl.active.identity.WeakIdentityMap,
                    _impl.active.identity._is_compiled(),
                ]
                for how, s in made.items()
            },
            "shipped ShardedSession": [
                type(made["ShardedSession"]) is ts_horizontal_shard.ShardedSession,
                stock_sharded.__mro__[1] is stock,
            ],
            "AsyncSession.sync_session_class": async_sync_class,
        }))
        """
    )
    env = dict(os.environ, PYTHONPATH=str(CONFORMANCE))
    env.pop("TURBOSESSION_NO_EXTENSIONS", None)
    if impl.name == "pure":
        env["TURBOSESSION_NO_EXTENSIONS"] = "1"
    out = json.loads(subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True,
        check=True,
    ).stdout)
    for how, (is_turbo, is_stock_subclass, active_map, compiled) in out["sessions"].items():
        assert (how, is_turbo, is_stock_subclass, active_map) == (how, True, True, True)
        assert (how, compiled) == (how, impl.name == "compiled")
    # test/ext tests the class users get, over stock's ShardedSession
    assert out["shipped ShardedSession"] == [True, True]
    has_greenlet = importlib.util.find_spec("greenlet") is not None
    assert out["AsyncSession.sync_session_class"] == (
        "turbosession.Session" if has_greenlet else "no greenlet"
    )


def _results(tmp_path, records):
    path = tmp_path / "results.jsonl"
    path.write_text(
        "".join(
            json.dumps({"nodeid": n, "when": w, "outcome": o, "xfail": x}) + "\n"
            for n, w, o, x in records
        )
    )
    return path


def test_outcomes_are_counted_like_pytest(tmp_path):
    path = _results(
        tmp_path,
        [
            ("t::ok", "setup", "passed", False),
            ("t::ok", "call", "passed", False),
            ("t::ok", "teardown", "passed", False),
            ("t::fails", "setup", "passed", False),
            ("t::fails", "call", "failed", False),
            ("t::fails", "teardown", "failed", False),
            ("t::bad_setup", "setup", "failed", False),
            ("t::bad_setup", "teardown", "passed", False),
            ("t::bad_teardown", "setup", "passed", False),
            ("t::bad_teardown", "call", "passed", False),
            ("t::bad_teardown", "teardown", "failed", False),
            ("t::skip", "setup", "skipped", False),
            ("t::skip", "teardown", "passed", False),
            ("t::xfail", "call", "skipped", True),
            ("t::xpass", "call", "passed", True),
        ],
    )
    assert run.outcomes(path) == {
        "t::ok": "passed",
        "t::fails": "failed",
        "t::bad_setup": "error",
        "t::bad_teardown": "error",
        "t::skip": "skipped",
        "t::xfail": "xfailed",
        "t::xpass": "xpassed",
    }


def _verdict(outcomes, known, control=None, sessions_stock=0):
    from collections import Counter

    result = {
        "returncode": 1 if any(o in ("failed", "error") for o in outcomes.values()) else 0,
        "outcomes": outcomes,
        "log": "log",
        "counters": Counter(sessions_created=10, sessions_stock=sessions_stock,
                            sessions_turbosession=10 - sessions_stock),
        "processes": 2,
        "seconds": 1.0,
    }
    return run.verdict("compiled", result, known, control)


def test_only_listed_failures_are_forgiven():
    known = {"t.py::Cls::test_listed": "inspects the class"}
    assert _verdict({"t.py::Cls::test_listed": "failed", "t.py::b": "passed"}, known) == []
    problems = _verdict({"t.py::Cls::test_listed": "passed", "t.py::b": "error"}, known)
    assert problems == ["error: t.py::b"]


def test_a_run_that_made_stock_sessions_fails():
    assert _verdict({"t::a": "passed"}, {}, sessions_stock=1) == [
        "1 stock sessions were made"
    ]


def test_tests_missing_against_the_control_fail(capsys):
    control = {"outcomes": {"t::a": "passed", "t::b": "passed"}}
    problems = _verdict({"t::a": "passed"}, {}, control=control)
    assert problems == ["1 tests of the control did not run"]
    assert "not run: t::b" in capsys.readouterr().out


def test_known_differences_are_few_and_explained():
    known = run.load_known_differences()
    assert 0 < len(known) < 10
    assert all(reason for reason in known.values())


def test_modes_run_the_control_first():
    assert run.parse_args(["--mode", "pure,stock"]).mode == ("stock", "pure")
    assert run.parse_args([]).mode == ("stock", "compiled", "pure")
    args = run.parse_args(["--mode", "compiled", "--", "-k", "Session"])
    assert (args.mode, args.pytest_args) == (("compiled",), ["-k", "Session"])
