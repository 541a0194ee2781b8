"""The onnx package's ``light`` test models as runnable, shape-complete models for latency work.

The seeded random weights come from :func:`nscompile.examples.light_model`; on top of
that, initializers leave the graph inputs (IR 3 lists them there), unused inputs (ZFNet's
label queue) go, and ONNX shape inference fills in every tensor's static shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx

from nscompile.examples import LIGHT_MODELS, light_model, light_model_path

__all__ = ["LIGHT_MODELS", "light_model_paths", "load_light_model", "random_feeds"]


def light_model_paths() -> dict[str, Path]:
    """Short name -> path of each light model present in the installed onnx package."""
    return {n: light_model_path(n) for n in LIGHT_MODELS if light_model_path(n).exists()}


def load_light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """One light model by short name (e.g. ``"resnet50"``) with real weights and inferred shapes."""
    model = light_model(name, seed)
    graph = model.graph
    used = {x for n in graph.node for x in n.input} | {o.name for o in graph.output}
    constants = {i.name for i in graph.initializer}
    inputs = [i for i in graph.input if i.name not in constants and i.name in used]
    del graph.input[:]
    graph.input.extend(inputs)
    model.ir_version = max(model.ir_version, 4)
    return onnx.shape_inference.infer_shapes(model)


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random inputs for every graph input of a static-shape model.

    Float inputs are standard normal; integer inputs (token or word indices) are zeros, a
    valid index for any table and as fast to look up as any other.
    """
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in model.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        dtype = onnx.helper.tensor_dtype_to_np_dtype(i.type.tensor_type.elem_type)
        feeds[i.name] = rng.standard_normal(shape).astype(dtype) if dtype.kind == "f" else np.zeros(shape, dtype)
    return feeds
