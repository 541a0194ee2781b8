"""The installed ``nscompile`` console script, run as a user's shell runs it: usage errors are
one line and exit code 2 on every typer (old ones raise click's classes, new ones their
vendored copy), and the help texts name real defaults."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest


def _console_script() -> str:
    """The ``nscompile`` script installed beside this interpreter (the venv's bin/)."""
    script = Path(sys.executable).with_name("nscompile")
    if script.is_file():
        return str(script)
    found = shutil.which("nscompile")
    if found is None:
        pytest.fail("the nscompile console script is not installed; run `pip install -e .`")
    return found


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_console_script(), *args], capture_output=True, text=True, timeout=120, cwd=cwd,
                          env={**os.environ, "COLUMNS": "200"})


@pytest.mark.parametrize("args, message", [
    (["build", "model.onnx", "--foo"], "No such option: --foo"),
    (["build"], "Missing argument 'model'"),
    (["nosuch"], "No such command 'nosuch'"),
    (["build", "model.onnx", "--objective"], "requires an argument"),
    (["serve"], "Missing argument"),
])
def test_usage_errors_are_one_line_with_exit_code_2(tmp_path, args, message):
    out = _run(*args, cwd=tmp_path)
    assert out.returncode == 2, out
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], out.stderr
    assert "--help" in lines[0]  # says where to look next
    assert "Traceback" not in out.stderr + out.stdout
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_bare_command_prints_help_without_an_error_line(tmp_path):
    out = _run(cwd=tmp_path)
    assert out.returncode == 2 and "Usage" in out.stdout + out.stderr
    assert "error:" not in out.stderr and "Traceback" not in out.stderr


def test_help_names_every_default_it_prints(tmp_path):
    """No option shows an empty default: rich takes "[default: X]" in a help text for markup and
    drops it, leaving `--output  Build directory .`."""
    for command in ("build", "serve", "run", "zoo", "profile", "bench", "inspect"):
        out = _run(command, "--help", cwd=tmp_path)
        assert out.returncode == 0, out
        assert not re.search(r"\w \.\s", out.stdout), (command, out.stdout)
        if command == "build":
            assert "(default: build/<model name>)" in out.stdout
