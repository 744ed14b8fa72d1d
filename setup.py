"""Compiles the hot paths with Cython; falls back to the pure-Python package.

Each hot path is one module in Cython's pure-Python mode,
``src/turbosession/_<name>.py``, listed in ``turbosession._impl.HOT_PATHS``;
the same file is the pure implementation when it is not compiled.  ``ext/``
holds what only the compiler reads (``.pxd`` declarations shared between
hot paths).

``TURBOSESSION_NO_EXTENSIONS=1`` skips the build.  A build that fails (no
compiler, no Python headers) installs the pure-Python package with a warning,
unless ``TURBOSESSION_REQUIRE_EXTENSIONS=1`` asks for a hard failure (CI and
cibuildwheel use that so a broken build cannot pass unnoticed); with it, a
skipped build is an error too.  Both switches are read as the package reads
them at run time (``turbosession._env``: unset, empty or ``0`` is off).

The warning is a ``warnings.warn`` and a banner on stderr.  pip shows
neither by default when the build succeeds, except that pip 26.3 and later
show a build backend's warnings when installing from a local directory (a
checkout); from an sdist archive they show only with ``-v``.  So the outcome
is also recorded in the package as ``turbosession._build_info``, and an
install whose build failed warns when it is imported (``turbosession._impl``).
"""

import ast
import importlib.util
import sys
import warnings
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.errors import CompileError


def _load_env_module():
    """``src/turbosession/_env.py`` by path: setup.py cannot import the package."""
    spec = importlib.util.spec_from_file_location("_turbosession_env", "src/turbosession/_env.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _hot_paths():
    """``HOT_PATHS`` as ``src/turbosession/_impl.py`` assigns it (one list)."""
    tree = ast.parse(Path("src/turbosession/_impl.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and [t.id for t in node.targets] == ["HOT_PATHS"]:
            return ast.literal_eval(node.value)
    raise RuntimeError("src/turbosession/_impl.py assigns no HOT_PATHS")


HOT_PATHS = _hot_paths()

_env = _load_env_module()
NO_EXTENSIONS = _env.flag("TURBOSESSION_NO_EXTENSIONS")
REQUIRE_EXTENSIONS = _env.flag("TURBOSESSION_REQUIRE_EXTENSIONS")

# what became of the compiled modules: "compiled", "skipped" (chosen) or
# "failed", with the reason; written into the package as _build_info.py
outcome = {"extensions": "compiled", "reason": ""}


def _warn_pure(kind, reason):
    outcome.update(extensions=kind, reason=reason)
    message = (
        f"turbosession: compiled extensions not built ({reason}); "
        "installing the pure-Python implementation"
    )
    warnings.warn(message)
    print("*" * 75, message, "*" * 75, sep="\n", file=sys.stderr)


def _write_build_info(package_dir):
    path = Path(package_dir) / "_build_info.py"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '"""Written by setup.py: what the build did with the compiled modules."""\n\n'
        f"EXTENSIONS = {outcome['extensions']!r}\n"
        f"REASON = {outcome['reason']!r}\n"
    )


class RequiredBuildFailed(CompileError):
    pass


def _required(exc, what="the build"):
    return RequiredBuildFailed(
        f"turbosession: {what} failed and TURBOSESSION_REQUIRE_EXTENSIONS is set, "
        f"so no pure-Python fallback: {type(exc).__name__}: {exc}"
    )


class BuildPy(build_py):
    """Records the build's outcome; build_ext rewrites it once it has run."""

    def run(self):
        super().run()
        _write_build_info(Path(self.build_lib) / "turbosession")


class OptionalBuildExt(build_ext):
    """Turns a failed extension build into a pure-Python install."""

    def run(self):
        self._failures = []
        try:
            super().run()
        except RequiredBuildFailed:
            raise
        except Exception as exc:  # compiler missing, headers missing, ...
            if REQUIRE_EXTENSIONS:
                raise _required(exc) from exc
            self._failures.append(f"{type(exc).__name__}: {exc}")
        if self._failures:
            more = f" (and {len(self._failures) - 1} more)" if len(self._failures) > 1 else ""
            _warn_pure("failed", self._failures[0] + more)
        # beside the extension modules, wherever they go (build_lib, or src/ inplace)
        _write_build_info(Path(self.get_ext_fullpath("turbosession._build_info")).parent)

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            if REQUIRE_EXTENSIONS:
                raise _required(exc, ext.name) from exc
            self._failures.append(f"{ext.name}: {type(exc).__name__}: {str(exc)[:300]}")


def extensions():
    if NO_EXTENSIONS:
        if REQUIRE_EXTENSIONS:
            sys.exit(
                "turbosession: TURBOSESSION_REQUIRE_EXTENSIONS and "
                "TURBOSESSION_NO_EXTENSIONS are both set: a pure build is not allowed"
            )
        _warn_pure("skipped", "TURBOSESSION_NO_EXTENSIONS was set at build time")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        if REQUIRE_EXTENSIONS:
            raise
        _warn_pure("failed", "Cython is not installed")
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


setup(ext_modules=extensions(), cmdclass={"build_py": BuildPy, "build_ext": OptionalBuildExt})
