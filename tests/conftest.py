"""Shared fixtures: real models on disk. Plain helper functions and classes are in helpers.py."""

from __future__ import annotations

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
