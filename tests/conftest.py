"""Shared fixtures: real models on disk and a way to run the CLI as a user would."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import onnx
import pytest

from nscompile.examples import light_model


@pytest.fixture(scope="session")
def light_models_dir(tmp_path_factory) -> Path:
    """A directory where light models with seeded random weights are written on demand."""
    return tmp_path_factory.mktemp("light")


@pytest.fixture(scope="session")
def random_light(light_models_dir):
    """``random_light(name) -> path`` of the onnx package's light model with random weights."""

    def make(name: str) -> Path:
        path = light_models_dir / f"{name}.onnx"
        if not path.exists():
            onnx.save(light_model(name, seed=0), path)
        return path

    return make


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run ``python -m nscompile ARGS`` in a fresh process, as a user's shell would."""
    return subprocess.run([sys.executable, "-m", "nscompile", *map(str, args)], capture_output=True, text=True, timeout=timeout)


class SlowSession:
    """Wraps an onnxruntime session so every run takes ``delay`` seconds longer (a slow server)."""

    def __init__(self, inner, delay: float):
        self.inner, self.delay = inner, delay

    def run(self, *a, **kw):
        time.sleep(self.delay)
        return self.inner.run(*a, **kw)
