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
"""

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from types import SimpleNamespace

HOT_PATHS = ("identity", "tracking", "topological", "persist", "unitofwork", "attach", "expire")

NO_EXTENSIONS = bool(os.environ.get("TURBOSESSION_NO_EXTENSIONS"))

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
