"""The wheel's contents: every subpackage is listed in pyproject.toml (they are listed, not
found, because the shipped profiles are mapped in from the top-level cost_models/), and the
shipped profiles are package data. `.ci/run` installs a real wheel into a fresh venv."""

from __future__ import annotations

from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent


def _setuptools() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]


def test_every_subpackage_is_in_the_wheel():
    on_disk = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "nscompile").rglob("__init__.py")}
    listed = set(_setuptools()["packages"])
    assert on_disk <= listed, f"add {sorted(on_disk - listed)} to [tool.setuptools] packages"
    assert listed - on_disk == {"nscompile.cost_models"}


def test_shipped_profiles_are_package_data():
    tool = _setuptools()
    assert tool["package-dir"]["nscompile.cost_models"] == "cost_models"
    assert tool["package-data"]["nscompile.cost_models"] == ["*.json"]
    assert list((ROOT / "cost_models").glob("*.json")), "no shipped profile in cost_models/"


def test_javascript_runtime_is_package_data():
    """Every file of nscompile/runtime/js but node_modules travels in the wheel."""
    import fnmatch

    globs = _setuptools()["package-data"]["nscompile.runtime"]
    js = ROOT / "nscompile" / "runtime" / "js"
    files = [p.relative_to(js.parent).as_posix() for p in js.rglob("*")
             if p.is_file() and "node_modules" not in p.relative_to(js).parts]
    assert "js/split_runner.js" in files and "js/package-lock.json" in files
    # setuptools globs do not cross "/": a file matches only a pattern of its own folder.
    unlisted = [f for f in files if not any(fnmatch.fnmatch(f, g) and f.count("/") == g.count("/") for g in globs)]
    assert not unlisted, f"add {unlisted} to [tool.setuptools.package-data] nscompile.runtime"
    assert not any("node_modules" in g for g in globs)
