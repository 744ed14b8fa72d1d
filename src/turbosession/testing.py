"""pytest plugin: your own test suite, run on turbosession's Session.

    pytest -p turbosession.testing

Before your conftest.py files and test modules are imported, SQLAlchemy's
``Session`` and ``sessionmaker`` (and, when installed, the Session classes of
``sqlalchemy.ext.asyncio``, ``sqlalchemy.ext.horizontal_shard``, SQLModel and
Flask-SQLAlchemy) are replaced by turbosession's, so code that says
``from sqlalchemy.orm import Session`` gets turbosession's class without a
change.  At the end the terminal summary says how many sessions were
turbosession's and how many were not (a class bound before the plugin ran),
and how many flushes took turbosession's unit of work and which fell back to
stock's, by reason (``turbosession.stats()``).  Under pytest-xdist the
workers' figures are summed.

This is a way to try turbosession on an application before switching: it
replaces names inside SQLAlchemy for the test run, which the product itself
never does.
"""

import json
import weakref

import pytest

import turbosession
from turbosession import fastpath

# the names replaced, for the header
_SESSION_CLASSES = []

# sessions constructed in this process, by kind ("turbosession" or the class)
_session_counts = {}

# what the workers saw, summed by the xdist controller
_totals = {"sessions": {}, "flushes": {}}

_substituted = False


class _RecordingRegistry(weakref.WeakValueDictionary):
    """SQLAlchemy's registry of live sessions, also counting each new one by class.

    ``Session.__init__`` stores every session in
    ``sqlalchemy.orm.session._sessions``, whichever way it was made.
    """

    def __setitem__(self, key, session):
        kind = "turbosession" if isinstance(session, turbosession.TurboSessionMixin) else (
            f"{type(session).__module__}.{type(session).__qualname__}"
        )
        _session_counts[kind] = _session_counts.get(kind, 0) + 1
        super().__setitem__(key, session)



def _replace(module, name, replacement):
    setattr(module, name, replacement)
    _SESSION_CLASSES.append(f"{module.__name__}.{name}")


def _integrations():
    """The integrations whose packages are installed: (module, name, class) to replace.

    Imported before any SQLAlchemy name is replaced, so that their Session
    classes subclass stock's, as they do without the plugin.
    """
    replacements = []
    try:
        import sqlmodel
    except ImportError:
        pass
    else:
        from sqlmodel.orm import session as sqlmodel_session

        from .ext import sqlmodel as ts_sqlmodel

        replacements += [(sqlmodel, "Session", ts_sqlmodel.Session),
                         (sqlmodel_session, "Session", ts_sqlmodel.Session)]
    try:
        from flask_sqlalchemy import extension as fsa_extension
    except ImportError:
        pass
    else:
        from flask_sqlalchemy import session as fsa_session

        from .ext import flask_sqlalchemy as ts_flask_sqlalchemy

        # SQLAlchemy(...) makes its sessionmaker with extension.Session
        replacements += [(fsa_session, "Session", ts_flask_sqlalchemy.Session),
                         (fsa_extension, "Session", ts_flask_sqlalchemy.Session)]
    return replacements


def substitute():
    """Put turbosession's classes where SQLAlchemy and its integrations keep theirs."""
    global _substituted
    if _substituted:
        return
    _substituted = True
    from sqlalchemy import orm
    from sqlalchemy.ext import horizontal_shard
    from sqlalchemy.orm import _orm_constructors
    from sqlalchemy.orm import session as orm_session
    from sqlalchemy.orm import state as orm_state

    from .ext import horizontal_shard as ts_horizontal_shard

    integrations = _integrations()
    for module in (orm, orm_session, _orm_constructors):
        _replace(module, "Session", turbosession.Session)
    # sessionmaker()'s default class_ was bound when it was defined
    orm_session.sessionmaker.__init__.__kwdefaults__["class_"] = turbosession.Session
    _SESSION_CLASSES.append("sqlalchemy.orm.sessionmaker(class_=)")
    _replace(horizontal_shard, "ShardedSession", ts_horizontal_shard.ShardedSession)
    for module, name, replacement in integrations:
        _replace(module, name, replacement)
    try:  # SQLAlchemy's asyncio extension imports only with greenlet installed
        from sqlalchemy.ext import asyncio as sa_asyncio
    except ImportError:
        pass
    else:
        sa_asyncio.AsyncSession.sync_session_class = turbosession.Session
        _SESSION_CLASSES.append("sqlalchemy.ext.asyncio.AsyncSession.sync_session_class")
        if any(module.__name__ == "sqlmodel" for module, _, _ in integrations):
            from sqlmodel.ext.asyncio import session as sqlmodel_asyncio

            from .ext import sqlmodel as ts_sqlmodel

            sqlmodel_asyncio.AsyncSession.sync_session_class = ts_sqlmodel.Session
            _SESSION_CLASSES.append("sqlmodel AsyncSession.sync_session_class")

    # the registry object is shared (sqlalchemy.orm.state holds it too): it
    # keeps its identity and only gains the counting __setitem__
    assert orm_state._sessions is orm_session._sessions
    orm_session._sessions.__class__ = _RecordingRegistry


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config, parser, args):
    # ``-p turbosession.testing``: before the first conftest.py is imported
    substitute()


def pytest_configure(config):
    # loaded later (``pytest_plugins`` in a conftest.py): from here on at least
    substitute()


def pytest_report_header(config):
    return [
        f"turbosession {turbosession.__version__} ({turbosession.implementation}) "
        f"substituted for: {', '.join(_SESSION_CLASSES)}"
    ]


def _this_process():
    stats = fastpath.stats()
    flushes = {"turbosession": stats["fast"], **{f"fallback:{k}": v for k, v in stats["fallback"].items()}}
    return {"sessions": dict(_session_counts), "flushes": flushes}


def _add(totals, figures):
    for part in ("sessions", "flushes"):
        for key, count in figures[part].items():
            totals[part][key] = totals[part].get(key, 0) + count


def pytest_sessionfinish(session):
    config = session.config
    if hasattr(config, "workeroutput"):  # an xdist worker: hand the figures over
        config.workeroutput["turbosession"] = json.dumps(_this_process())


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    # xdist controller: a worker finished; its figures travel in workeroutput
    figures = getattr(node, "workeroutput", {}).get("turbosession")
    if figures:
        _add(_totals, json.loads(figures))


def summary_lines(figures, implementation):
    """The report, from summed figures (sessions by kind, flushes by outcome)."""
    sessions, flushes = figures["sessions"], figures["flushes"]
    ours = sessions.get("turbosession", 0)
    others = {k: v for k, v in sessions.items() if k != "turbosession"}
    lines = [f"sessions: {ours} turbosession ({implementation}), {sum(others.values())} other"]
    for name, count in sorted(others.items(), key=lambda kv: (-kv[1], kv[0])):
        lines.append(f"  other: {name}: {count} (its class was bound before the plugin ran)")
    fast = flushes.get("turbosession", 0)
    fallbacks = {k.split(":", 1)[1]: v for k, v in flushes.items() if k.startswith("fallback:")}
    total = fast + sum(fallbacks.values())
    share = f" ({100 * fast / total:.0f}%)" if total else ""
    lines.append(
        f"flushes: {total}, {fast} on turbosession's unit of work{share}, "
        f"{sum(fallbacks.values())} fell back to stock"
    )
    for reason, count in sorted(fallbacks.items(), key=lambda kv: (-kv[1], kv[0])):
        why = fastpath.FALLBACK_REASONS.get(reason, "")
        lines.append(f"  fallback: {reason}: {count} ({why})")
    return lines


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if hasattr(config, "workerinput"):
        return
    figures = {"sessions": dict(_totals["sessions"]), "flushes": dict(_totals["flushes"])}
    _add(figures, _this_process())
    terminalreporter.write_sep("=", "turbosession")
    for line in summary_lines(figures, turbosession.implementation):
        terminalreporter.write_line(line)
