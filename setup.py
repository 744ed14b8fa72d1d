"""Compiles the hot paths with Cython; falls back to the pure-Python package.

Each hot path is one module in Cython's pure-Python mode,
``src/turbosession/_<name>.py``, listed in ``turbosession._impl.HOT_PATHS``;
the same file is the pure implementation when it is not compiled.  ``ext/``
holds what only the compiler reads (``.pxd`` declarations shared between
hot paths).

``TURBOSESSION_NO_EXTENSIONS=1`` skips the build.  A build that fails (no
compiler, no Python headers) installs the pure-Python package with a warning,
unless ``TURBOSESSION_REQUIRE_EXTENSIONS=1`` asks for a hard failure (CI and
cibuildwheel use that so a broken build cannot pass unnoticed).
"""

import ast
import os
import sys
import warnings
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext



def _hot_paths():
    """``HOT_PATHS`` as ``src/turbosession/_impl.py`` assigns it (one list)."""
    tree = ast.parse(Path("src/turbosession/_impl.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["HOT_PATHS"]:
            return ast.literal_eval(node.value)
    raise RuntimeError("src/turbosession/_impl.py assigns no HOT_PATHS")


HOT_PATHS = _hot_paths()

NO_EXTENSIONS = bool(os.environ.get("TURBOSESSION_NO_EXTENSIONS"))
REQUIRE_EXTENSIONS = bool(os.environ.get("TURBOSESSION_REQUIRE_EXTENSIONS"))


def _warn_pure(reason):
    message = (
        f"turbosession: compiled extensions not built ({reason}); "
        "installing the pure-Python implementation"
    )
    warnings.warn(message)
    print("*" * 75, message, "*" * 75, sep="\n", file=sys.stderr)


class OptionalBuildExt(build_ext):
    """Turns a failed extension build into a pure-Python install."""

    def run(self):
        try:
            super().run()
        except Exception as exc:  # compiler missing, headers missing, ...
            if REQUIRE_EXTENSIONS:
                raise
            _warn_pure(f"{type(exc).__name__}: {exc}")

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            if REQUIRE_EXTENSIONS:
                raise
            _warn_pure(f"{ext.name}: {type(exc).__name__}: {exc}")


def extensions():
    if NO_EXTENSIONS:
        _warn_pure("TURBOSESSION_NO_EXTENSIONS is set")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE_EXTENSIONS:
            raise
        _warn_pure("Cython is not installed")
        return []
    modules = [
        Extension(f"turbosession._{name}", [f"src/turbosession/_{name}.py"])
        for name in HOT_PATHS
    ]
    return cythonize(
        modules,
        include_path=["ext"],
        build_dir="build/cython",  # generated C stays out of the package
        compiler_directives={"language_level": "3", "embedsignature": True},
    )


setup(ext_modules=extensions(), cmdclass={"build_ext": OptionalBuildExt})
