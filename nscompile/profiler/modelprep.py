"""Turning the onnx package's ``light`` test models into runnable, shape-complete models.

The nine ``onnx/backend/test/data/light/*.onnx`` models (AlexNet ... ZFNet) are IR 3 /
opset 9 graphs whose weights are made at run time by ``ConstantOfShape`` nodes from
shape initializers, and whose initializers are also listed as graph inputs. For latency
work we want real weights: each ``ConstantOfShape`` of a constant shape becomes a seeded
random initializer (He-scaled so activations neither explode nor turn denormal, positive
for vectors so BatchNormalization variances stay valid), initializers are dropped from
the graph inputs, and ONNX shape inference fills in every tensor's static shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

__all__ = ["LIGHT_MODELS", "light_model_dir", "light_model_paths", "materialize_weights", "load_light_model",
           "random_feeds"]

LIGHT_MODELS = (
    "bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
    "shufflenet", "squeezenet", "vgg19", "zfnet512",
)


def light_model_dir() -> Path:
    """Directory of the onnx package's light test models."""
    return Path(onnx.__file__).resolve().parent / "backend" / "test" / "data" / "light"


def light_model_paths() -> dict[str, Path]:
    """Short name -> path of each light model present in the installed onnx package."""
    d = light_model_dir()
    return {n: d / f"light_{n}.onnx" for n in LIGHT_MODELS if (d / f"light_{n}.onnx").exists()}


def materialize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """Replace ConstantOfShape-made weights by seeded random initializers; infer shapes.

    Args:
        model: The model (not modified).
        seed: Seed of the weight generator.

    Returns:
        A new model with initializers for every weight, initializers removed from the
        graph inputs, IR >= 4, and inferred value_info for every tensor.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    rng = np.random.default_rng(seed)
    kept, new_inits = [], []
    for n in g.node:
        if n.op_type == "ConstantOfShape" and n.input and n.input[0] in inits:
            shape = tuple(int(x) for x in numpy_helper.to_array(inits[n.input[0]]).reshape(-1))
            if len(shape) >= 2:
                fan = int(np.prod(shape[1:]))
                arr = rng.normal(0.0, np.sqrt(2.0 / max(fan, 1)), shape)
            else:
                arr = rng.uniform(0.5, 1.5, shape)
            new_inits.append(numpy_helper.from_array(arr.astype(np.float32), n.output[0]))
        else:
            kept.append(n)
    del g.node[:]
    g.node.extend(kept)
    g.initializer.extend(new_inits)
    used = {x for n in g.node for x in n.input} | {o.name for o in g.output}
    names = {i.name for i in g.initializer}
    # IR 3 lists initializers as inputs too; unused inputs (ZFNet's label queue) go.
    inputs = [i for i in g.input if i.name not in names and i.name in used]
    keep_inits = [i for i in g.initializer if i.name in used]
    del g.initializer[:]
    g.initializer.extend(keep_inits)
    del g.input[:]
    g.input.extend(inputs)
    m.ir_version = max(m.ir_version, 4)
    return onnx.shape_inference.infer_shapes(m)


def load_light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """Load one light model by short name (e.g. ``"resnet50"``) with real weights."""
    return materialize_weights(onnx.load(str(light_model_paths()[name])), seed)


def random_feeds(model: onnx.ModelProto, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded random float inputs for every graph input of a static-shape model."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in model.graph.input:
        shape = [d.dim_value for d in i.type.tensor_type.shape.dim]
        feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
    return feeds
