"""The build: compiled when it can be, pure with a warning when it can't.

Builds wheels from this checkout without build isolation (setuptools and
Cython from the test environment), so it needs no network.
"""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.packaging


def build_wheel(tmp_path, **env_overrides):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.so", "*.c", "*.egg-info", "__pycache__", ".hypothesis", "bench"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURBOSESSION_")}
    env.update(env_overrides)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v",
         "-w", str(tmp_path / "dist"), str(source)],
        env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheel, = (tmp_path / "dist").glob("turbosession-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    return names, result.stdout + result.stderr


def extensions_in(names):
    return sorted(n for n in names if n.endswith((".so", ".pyd")))


def test_default_build_is_compiled(tmp_path):
    names, _ = build_wheel(tmp_path)
    assert extensions_in(names), names
    assert "turbosession/_identity.py" in names


def test_no_extensions_switch_builds_pure(tmp_path):
    names, log = build_wheel(tmp_path, TURBOSESSION_NO_EXTENSIONS="1")
    assert extensions_in(names) == []
    assert "turbosession/_identity.py" in names
    assert "installing the pure-Python implementation" in log


def test_missing_compiler_builds_pure_with_warning(tmp_path):
    names, log = build_wheel(tmp_path, CC="/bin/false", LDSHARED="/bin/false")
    assert extensions_in(names) == []
    assert "compiled extensions not built" in log
