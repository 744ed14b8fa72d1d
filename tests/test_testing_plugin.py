"""The pytest plugin (``pytest -p turbosession.testing``) on an application's own suite.

tests/example_project is a small application with tests written for stock
SQLAlchemy (``sqlalchemy.orm.Session``, ``sessionmaker``, ``scoped_session``
used directly).  It runs in a subprocess from a copy in a temporary folder, as
a user runs it; the plugin's summary must show that every session was
turbosession's and count the flushes: 9 in all, the joined-inheritance one
included, all on turbosession's unit of work.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import turbosession
from turbosession import testing

EXAMPLE = Path(__file__).resolve().parent / "example_project"


def run_example(tmp_path, *args):
    project = tmp_path / "example_project"
    shutil.copytree(EXAMPLE, project, ignore=shutil.ignore_patterns("__pycache__"))
    # a clean pytest (not one of this run's xdist workers); the implementation
    # switch is kept so the report names the implementation this run tests
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "TURBOSESSION_"))}
    if "TURBOSESSION_NO_EXTENSIONS" in os.environ:
        env["TURBOSESSION_NO_EXTENSIONS"] = os.environ["TURBOSESSION_NO_EXTENSIONS"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=project, env=env, capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


def summary(output):
    return output.split(" turbosession =", 1)[1].splitlines()[1:-1]


EXPECTED = [
    f"sessions: 7 turbosession ({turbosession.implementation}), 0 other",
    "flushes: 9, 9 on turbosession's unit of work (100%), 0 fell back to stock",
]


def test_example_project_runs_on_turbosession(tmp_path):
    output = run_example(tmp_path, "-p", "turbosession.testing")
    assert "6 passed" in output
    header = re.search(r"^turbosession .* substituted for: (.*)$", output, re.M)
    assert header and "sqlalchemy.orm.Session" in header.group(1)
    assert "sqlalchemy.orm.sessionmaker(class_=)" in header.group(1)
    assert summary(output) == EXPECTED


def test_xdist_workers_are_summed(tmp_path):
    output = run_example(tmp_path, "-p", "turbosession.testing", "-n", "2")
    assert "6 passed" in output
    assert summary(output) == EXPECTED


def test_without_the_plugin_nothing_changes(tmp_path):
    output = run_example(tmp_path)
    assert "6 passed" in output
    assert "turbosession" not in output


def test_summary_names_sessions_that_escaped_the_substitution():
    figures = {
        "sessions": {"turbosession": 3, "myapp.db.LegacySession": 2},
        "flushes": {"turbosession": 1, "fallback:not_tables": 2, "fallback:disabled": 1},
    }
    assert testing.summary_lines(figures, "pure") == [
        "sessions: 3 turbosession (pure), 2 other",
        "  other: myapp.db.LegacySession: 2 (its class was bound before the plugin ran)",
        "flushes: 4, 1 on turbosession's unit of work (25%), 3 fell back to stock",
        "  fallback: not_tables: 2 (the mapper hierarchy writes to something other than Tables)",
        "  fallback: disabled: 1 (the session class sets _fast_flush = False)",
    ]
