"""Real architectures shipped inside the onnx package, for tests, benchmarks and demos.

``onnx/backend/test/data/light/`` holds nine ImageNet networks (AlexNet, VGG-19,
ResNet-50, Inception v1/v2, DenseNet-121, SqueezeNet, ShuffleNet, ZFNet) as IR 3,
opset 9 graphs whose weights are made at run time by ConstantOfShape nodes filling every
weight with 0.02. That keeps the files small, but every activation is then degenerate.
:func:`light_model` swaps those nodes for seeded random initializers scaled like a real
initialisation, so split and whole models can be compared on meaningful numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

LIGHT_MODELS = ("bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50",
                "shufflenet", "squeezenet", "vgg19", "zfnet512")


def light_model_path(name: str) -> Path:
    """Path of a light model as shipped by the onnx package (``name`` from LIGHT_MODELS)."""
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"light_{name}.onnx"


def light_model(name: str, seed: int = 0) -> onnx.ModelProto:
    """A light model with its ConstantOfShape weights replaced by seeded random ones.

    Weights of Conv/Gemm get He-style ``N(0, 2/fan_in)``; BatchNormalization scale and
    variance get ``U(0.5, 1.5)``; biases, shifts and means ``N(0, 0.01)``.
    """
    model = onnx.load(light_model_path(name))
    rng = np.random.default_rng(seed)
    shapes = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    role = {}
    for node in model.graph.node:
        for position, name_ in enumerate(node.input):
            role.setdefault(name_, (node.op_type, position))
    kept = []
    for node in model.graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in shapes:
            kept.append(node)
            continue
        shape = tuple(int(d) for d in shapes[node.input[0]])
        op, position = role.get(node.output[0], ("", 0))
        if op == "BatchNormalization" and position in (1, 4):
            value = rng.uniform(0.5, 1.5, shape)
        elif len(shape) >= 2:
            value = rng.standard_normal(shape) * np.sqrt(2.0 / max(1, int(np.prod(shape[1:]))))
        else:
            value = rng.standard_normal(shape) * 0.1
        model.graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), node.output[0]))
        # IR 3 wants every initializer listed among the graph inputs too.
        model.graph.input.append(onnx.helper.make_tensor_value_info(node.output[0], onnx.TensorProto.FLOAT, shape))
    del model.graph.node[:]
    model.graph.node.extend(kept)
    used = {i for n in model.graph.node for i in n.input}
    shape_inits = [t for t in model.graph.initializer if t.name not in used]
    for t in shape_inits:  # the __SHAPE tensors that fed ConstantOfShape are now dead
        model.graph.initializer.remove(t)
    dead = {t.name for t in shape_inits}
    inputs = [i for i in model.graph.input if i.name not in dead]
    del model.graph.input[:]
    model.graph.input.extend(inputs)
    return model
