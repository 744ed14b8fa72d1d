"""Chooses between the compiled hot paths and their pure-Python twins.

Every hot path ``X`` exists as ``turbosession._X_c`` (built from ``ext/``) and
``turbosession._X_py``, with the same names.  ``pure`` and ``compiled`` bundle
one module per hot path; ``active`` is what turbosession's Session uses:
``compiled`` unless it is not built or ``TURBOSESSION_NO_EXTENSIONS`` is set.
"""

import importlib
import os
from types import SimpleNamespace

HOT_PATHS = ("identity", "tracking", "topological", "persist", "unitofwork", "attach", "expire")

NO_EXTENSIONS = bool(os.environ.get("TURBOSESSION_NO_EXTENSIONS"))


def _bundle(suffix):
    modules = {
        name: importlib.import_module(f"turbosession._{name}_{suffix}")
        for name in HOT_PATHS
    }
    return SimpleNamespace(name="compiled" if suffix == "c" else "pure", **modules)


pure = _bundle("py")

try:
    compiled = _bundle("c")
except ImportError as exc:
    compiled = None
    compiled_import_error = exc
else:
    compiled_import_error = None

active = pure if NO_EXTENSIONS or compiled is None else compiled
