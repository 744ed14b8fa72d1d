"""Why pure is active, said at run time: the switch, a skipped build, a failed one.

An installed package without its compiled modules is reproduced by copying
the installed ``turbosession`` without its extension modules into a temporary
folder, with the ``_build_info`` module the build would have written (or none,
as in a source tree), and importing it from there in a child process.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import turbosession
from turbosession._env import flag

INSTALLED = Path(turbosession.__file__).resolve().parent
EXTENSION_SUFFIXES = (".so", ".pyd")


@pytest.mark.parametrize(
    "value, on",
    [(None, False), ("", False), ("0", False), ("false", False), ("OFF", False), ("no", False),
     ("1", True), ("true", True), ("on", True), ("yes", True), (" 1 ", True)],
)
def test_switch_values(value, on):
    environ = {} if value is None else {"TURBOSESSION_NO_EXTENSIONS": value}
    assert flag("TURBOSESSION_NO_EXTENSIONS", environ) is on


def uncompiled_install(tmp_path, build_info):
    target = tmp_path / "site" / "turbosession"
    shutil.copytree(INSTALLED, target, ignore=lambda d, names: [
        n for n in names if n.endswith(EXTENSION_SUFFIXES) or n in ("__pycache__", "_build_info.py")
    ])
    if build_info is not None:
        extensions, reason = build_info
        (target / "_build_info.py").write_text(f"EXTENSIONS = {extensions!r}\nREASON = {reason!r}\n")
    return target.parent


def run(site, *args, **env_overrides):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TURBOSESSION_")}
    env.update(env_overrides, PYTHONPATH=str(site))
    return subprocess.run(
        [sys.executable, *args], env=env, capture_output=True, text=True, timeout=120, check=True
    )


WARNING = "turbosession is running its pure-Python implementation (slower)"


def test_failed_build_warns_once_at_import(tmp_path):
    site = uncompiled_install(tmp_path, ("failed", "turbosession._identity: CompileError: no compiler"))
    done = run(site, "-c", "import turbosession, turbosession.session; print(turbosession.implementation, turbosession.__file__)")
    assert done.stdout.split()[0] == "pure"
    assert done.stdout.split()[1].startswith(str(site))
    assert done.stderr.count(WARNING) == 1
    assert "the build of the compiled modules failed: turbosession._identity: CompileError: no compiler" in done.stderr
    assert "TURBOSESSION_NO_EXTENSIONS=1" in done.stderr

    info = run(site, "-m", "turbosession", "info").stdout
    assert "implementation pure" in info
    assert "(pure because the build of the compiled modules failed: " in info

    # choosing pure at run time silences it
    quiet = run(site, "-c", "import turbosession", TURBOSESSION_NO_EXTENSIONS="1")
    assert WARNING not in quiet.stderr


def test_compiled_modules_missing_without_a_record_warn(tmp_path):
    site = uncompiled_install(tmp_path, None)
    done = run(site, "-m", "turbosession", "info")
    assert WARNING in done.stderr
    assert "(pure because the compiled modules cannot be imported: " in done.stdout


def test_build_that_chose_pure_is_silent(tmp_path):
    site = uncompiled_install(tmp_path, ("skipped", "TURBOSESSION_NO_EXTENSIONS was set at build time"))
    done = run(site, "-m", "turbosession", "info")
    assert done.stderr == ""
    assert (
        "(pure because installed without compiled modules: "
        "TURBOSESSION_NO_EXTENSIONS was set at build time)" in done.stdout
    )


def test_no_extensions_zero_keeps_compiled():
    from turbosession import _impl

    if _impl.compiled is None:
        pytest.skip("compiled extensions not built")
    done = run(INSTALLED.parent, "-c", "import turbosession; print(turbosession.implementation)",
               TURBOSESSION_NO_EXTENSIONS="0")
    assert done.stdout.strip() == "compiled"
