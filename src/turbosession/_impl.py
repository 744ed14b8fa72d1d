"""Chooses between the compiled hot paths and the same modules uncompiled.

Each hot path ``X`` is one module, ``turbosession._X``, written in Cython's
pure-Python mode: the build compiles it (setup.py reads ``HOT_PATHS`` from
here), and the same source imports as plain Python when it is not compiled.
``compiled`` and ``pure`` bundle one module per hot path: ``compiled`` the
built extension modules (None when any is missing), ``pure`` the sources
loaded uncompiled even where the extensions are installed, as SQLAlchemy's
``testing.util.load_uncompiled_module`` does, so that tests can run both in
one process.  ``active`` is what turbosession's Session uses: ``compiled``
unless it is not built or ``TURBOSESSION_NO_EXTENSIONS`` is set (which only
changes ``active``: tests can still pin either bundle).

``pure_reason`` says why pure is active.  When the compiled modules are
missing although nobody chose pure (the build failed, or they cannot be
imported), the ``turbosession`` logger warns once, here at import: pip's
default output shows nothing of a build that succeeded (pip 26.3 and later
show the build's warnings for a local directory, never for an sdist), so this
is where a failed build becomes visible.  The build records what it did in
``turbosession._build_info`` (written by setup.py, absent from a source tree).
"""

import importlib
import importlib.util
import logging
import sys
from pathlib import Path
from types import SimpleNamespace

from ._env import flag

HOT_PATHS = (
    "identity",
    "tracking",
    "topological",
    "persist",
    "unitofwork",
    "attach",
    "expire",
    "loading",
    "emit",
    "relationships",
    "instances",
)

NO_EXTENSIONS = flag("TURBOSESSION_NO_EXTENSIONS")

_PACKAGE_DIR = Path(__file__).resolve().parent


def load_uncompiled(name):
    """``turbosession._<name>`` executed from its source, whatever is built."""
    full_name = f"turbosession._{name}"
    module = sys.modules.get(full_name)
    if module is not None and not module._is_compiled():
        return module
    spec = importlib.util.spec_from_file_location(full_name, _PACKAGE_DIR / f"_{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load_compiled(name):
    module = importlib.import_module(f"turbosession._{name}")
    if not module._is_compiled():
        raise ImportError(f"turbosession._{name} is not compiled")
    return module


pure = SimpleNamespace(name="pure", **{name: load_uncompiled(name) for name in HOT_PATHS})

try:
    compiled = SimpleNamespace(
        name="compiled", **{name: _load_compiled(name) for name in HOT_PATHS}
    )
except ImportError as exc:
    compiled = None
    compiled_import_error = exc
else:
    compiled_import_error = None

active = pure if NO_EXTENSIONS or compiled is None else compiled


def _build_record():
    """(outcome, reason) the build recorded, or None (a source tree, an unknown build)."""
    try:
        from . import _build_info
    except ImportError:
        return None
    return _build_info.EXTENSIONS, _build_info.REASON


def _why_pure():
    """Why pure is active (None when compiled is), and whether that deserves a warning."""
    if active is compiled:
        return None, False
    if NO_EXTENSIONS:
        return "TURBOSESSION_NO_EXTENSIONS is set", False
    record = _build_record()
    if record is not None and record[0] == "skipped":
        return f"installed without compiled modules: {record[1]}", False
    if record is not None and record[0] == "failed":
        return f"the build of the compiled modules failed: {record[1]}", True
    return f"the compiled modules cannot be imported: {compiled_import_error}", True


pure_reason, _unexpected = _why_pure()
if _unexpected:
    logging.getLogger("turbosession").warning(
        "turbosession is running its pure-Python implementation (slower): %s. "
        "Reinstall with a C compiler and the Python headers (pip install "
        "--no-cache-dir --force-reinstall turbosession), or set "
        "TURBOSESSION_NO_EXTENSIONS=1 to choose pure and silence this.",
        pure_reason,
    )
