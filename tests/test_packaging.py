"""The build: compiled when it can be, pure with a warning when it can't.

The wheel tests build from a copy of this checkout without build isolation
(setuptools and Cython from the test environment), so they need no network.

The sdist tests do what a user does with the source distribution: build it,
install it with pip into a fresh virtualenv (build isolation on, so setuptools
and Cython come from the package index; ``--no-cache-dir``, so that no wheel
pip built and cached before is reused) and run the tests shipped in it, from
the unpacked sdist, against the installed package.  Three installs: with the C
compiler (compiled), with ``CC=/bin/false`` (pure, with the warnings), and with
``TURBOSESSION_REQUIRE_EXTENSIONS=1`` where the build fails or is skipped (an
error).  Each runs ``SDIST_QUICK_TESTS``, a quick subset; .ci/run runs the
whole shipped suite against the compiled sdist install.
"""

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.packaging


def build_wheel(tmp_path, *, verbose=True, **env_overrides):
    source = tmp_path / "src"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.so", "*.c", "*.egg-info", "__pycache__", ".hypothesis", "bench"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURBOSESSION_")}
    env.update(env_overrides)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         *(["-v"] if verbose else []), "-w", str(tmp_path / "dist"), str(source)],
        env=env, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    wheel, = (tmp_path / "dist").glob("turbosession-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    return names, result.stdout + result.stderr


def pip_version_string():
    from importlib.metadata import version

    return version("pip")


def extensions_in(names):
    return sorted(n for n in names if n.endswith((".so", ".pyd")))


def build_info(tmp_path):
    wheel, = (tmp_path / "dist").glob("turbosession-*.whl")
    text = zipfile.ZipFile(wheel).read("turbosession/_build_info.py").decode()
    values = {}
    exec(text, values)
    return values["EXTENSIONS"], values["REASON"]


def test_default_build_is_compiled(tmp_path):
    names, _ = build_wheel(tmp_path)
    assert extensions_in(names), names
    assert build_info(tmp_path) == ("compiled", "")
    assert "turbosession/_identity.py" in names


def test_no_extensions_switch_builds_pure(tmp_path):
    names, log = build_wheel(tmp_path, TURBOSESSION_NO_EXTENSIONS="1")
    assert extensions_in(names) == []
    assert "turbosession/_identity.py" in names
    assert "installing the pure-Python implementation" in log
    assert build_info(tmp_path) == ("skipped", "TURBOSESSION_NO_EXTENSIONS was set at build time")
    # the wheel for every interpreter and platform (the workflow's pure wheel)
    wheel, = (tmp_path / "dist").glob("turbosession-*.whl")
    assert wheel.name == "turbosession-0.1.0-py3-none-any.whl"


def test_no_extensions_zero_builds_compiled(tmp_path):
    names, _ = build_wheel(tmp_path, TURBOSESSION_NO_EXTENSIONS="0")
    assert extensions_in(names), names


def test_missing_compiler_builds_pure_with_warning(tmp_path):
    names, log = build_wheel(tmp_path, verbose=False, CC="/bin/false", LDSHARED="/bin/false")
    assert extensions_in(names) == []
    pip_version = tuple(int(part) for part in pip_version_string().split(".")[:2])
    if pip_version >= (26, 3):
        # pip's default output shows a build's warnings for a local directory
        assert "BuildBackendWarning: turbosession: compiled extensions not built" in log, log
    outcome, reason = build_info(tmp_path)
    assert outcome == "failed" and "CompileError" in reason, reason


# --- the source distribution --------------------------------------------------

SDIST_QUICK_TESTS = [
    "tests/test_api.py",
    "tests/test_identity.py",
    "tests/test_fastpath.py",
    "tests/test_runtime_honesty.py",
]

# what the shipped tests need to run at all (tests/conftest.py and what the
# test modules import), and the Cython sources
SDIST_MUST_HOLD = [
    "LICENSE", "setup.py", "pyproject.toml", "src/turbosession/_impl.py",
    "src/turbosession/_env.py", "src/turbosession/_identity.py", "tests/conftest.py",
    "tests/support.py", "tests/models.py", "tests/backends.py",
    "tests/conformance/conformance_plugin.py", "tests/conformance/run.py",
    "tests/conformance/known_differences.txt",
    "tests/example_project/tests/test_inventory.py", "tests/example_project/pytest.ini",
]

FAILED_BUILD_WARNING = "turbosession: compiled extensions not built"
IMPORT_WARNING = "turbosession is running its pure-Python implementation (slower)"


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """The sdist built from a copy of this checkout, and where it is unpacked."""
    tmp = tmp_path_factory.mktemp("sdist")
    source = tmp / "checkout"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(
        ".git", ".venv", "build", "dist", "*.so", "*.c", "*.egg-info", "__pycache__",
        ".hypothesis", "_build_info.py"))
    done = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(tmp / "dist"),
         str(source)],
        capture_output=True, text=True, env=clean_env(),
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    archive, = (tmp / "dist").glob("turbosession-*.tar.gz")
    with tarfile.open(archive) as tar:
        tar.extractall(tmp / "unpacked", filter="data")
    unpacked, = (tmp / "unpacked").iterdir()
    return archive, unpacked


def clean_env(**overrides):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("TURBOSESSION_", "PYTEST_", "PIP_"))}
    env.update(overrides)
    return env


def fresh_venv(path):
    """A virtualenv with the pip it comes with, and the test extra's packages."""
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True)
    python = path / "bin" / "python"
    pip = [str(python), "-m", "pip", "--disable-pip-version-check"]
    # the test extra's packages first, from the cache: only the sdist's own
    # build below must not be cached
    subprocess.run([*pip, "install", "--quiet", "sqlalchemy>=2.1.9,<2.2", "pytest>=8",
                    "pytest-xdist>=3", "hypothesis>=6"], check=True, env=clean_env())
    return python


def pip_install_sdist(python, archive, **env):
    """pip's default output (no -v) installing the sdist; (returncode, output)."""
    done = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "install", "--no-cache-dir",
         "--no-deps", str(archive)],
        capture_output=True, text=True, env=clean_env(**env),
    )
    return done.returncode, done.stdout + done.stderr


def installed(python, unpacked):
    done = subprocess.run(
        [str(python), "-c", "import turbosession; print(turbosession.__file__); print(turbosession.compiled)"],
        cwd=unpacked, capture_output=True, text=True, env=clean_env(), check=True,
    )
    path, compiled = done.stdout.split()
    # the installed package, not the sdist's src/
    assert Path(path).is_relative_to(python.parent.parent), path
    return compiled == "True", done.stderr


def run_shipped_tests(python, unpacked, **env):
    done = subprocess.run(
        [str(python), "-m", "pytest", *SDIST_QUICK_TESTS, "-q", "-p", "no:cacheprovider",
         "-m", "not packaging"],
        cwd=unpacked, capture_output=True, text=True, env=clean_env(**env),
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    return done.stdout


def test_sdist_holds_the_sources_and_the_tests(sdist):
    archive, _ = sdist
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    missing = [n for n in SDIST_MUST_HOLD if n not in names]
    assert not missing, missing
    assert not [n for n in names if n.endswith((".c", ".so", ".pyc", "_build_info.py"))]
    # every hot path's Cython source: the converted module, or its .pyx twin
    from turbosession import _impl
    for name in _impl.HOT_PATHS:
        assert f"src/turbosession/_{name}.py" in names or f"ext/_{name}_c.pyx" in names, name


def test_sdist_with_a_compiler_installs_compiled(sdist, tmp_path):
    archive, unpacked = sdist
    python = fresh_venv(tmp_path / "venv")
    code, output = pip_install_sdist(python, archive)
    assert code == 0, output[-3000:]
    assert FAILED_BUILD_WARNING not in output
    compiled, stderr = installed(python, unpacked)
    assert compiled and stderr == ""
    out = run_shipped_tests(python, unpacked, TURBOSESSION_REQUIRE_EXTENSIONS="1")
    assert " passed" in out and "failed" not in out


def test_sdist_without_a_compiler_installs_pure_with_warnings(sdist, tmp_path):
    archive, unpacked = sdist
    python = fresh_venv(tmp_path / "venv")
    no_compiler = {"CC": "/bin/false", "LDSHARED": "/bin/false"}

    # TURBOSESSION_REQUIRE_EXTENSIONS=1: a failed build, or a skipped one, is an error
    code, output = pip_install_sdist(python, archive, TURBOSESSION_REQUIRE_EXTENSIONS="1", **no_compiler)
    assert code != 0, output[-3000:]
    assert "failed and TURBOSESSION_REQUIRE_EXTENSIONS is set, so no pure-Python fallback" in output
    code, output = pip_install_sdist(python, archive, TURBOSESSION_REQUIRE_EXTENSIONS="1",
                                     TURBOSESSION_NO_EXTENSIONS="1")
    assert code != 0 and "a pure build is not allowed" in output, output[-3000:]

    code, output = pip_install_sdist(python, archive, **no_compiler)
    assert code == 0, output[-3000:]
    # pip's default output says nothing of it when installing an sdist (even
    # pip 26.3, which shows a build's warnings for a local directory only):
    # importing the package says it
    compiled, stderr = installed(python, unpacked)
    assert not compiled
    assert stderr.count(IMPORT_WARNING) == 1 and "CompileError" in stderr, stderr
    out = run_shipped_tests(python, unpacked)
    assert " passed" in out and "failed" not in out
