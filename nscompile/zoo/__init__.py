"""The benchmark zoo: Neurosurgeon's eight networks and today's DAGs, built in code.

Nothing is downloaded: every model is assembled layer by layer with seeded random
weights, static shapes (batch 1), opset 20 and a name on every node, so the same seed
always writes the same bytes.

    >>> from nscompile import zoo
    >>> [m.name for m in zoo.list_models()][:3]
    ['alexnet', 'vgg19', 'deepface']
    >>> model = zoo.build_model("lenet", size="small", seed=0)

Sizes: ``full`` is the real network; ``small`` keeps every layer and connection but
narrows the widths (and shrinks the input where noted) so that tests run in seconds.
Files are written as ``<name>.onnx`` (full) or ``<name>_small.onnx`` (small).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from nscompile.errors import NscompileError
from nscompile.zoo import modern, paper
from nscompile.zoo._builder import OPSET, Net
from nscompile.zoo.stats import count_layers, count_macs, count_params

__all__ = [
    "OPSET",
    "SIZES",
    "ModelInfo",
    "ModelStats",
    "build_model",
    "count_layers",
    "count_macs",
    "count_params",
    "get_info",
    "list_models",
    "model_path",
    "model_stats",
    "write_models",
]

SIZES = ("small", "full")

# Protobuf refuses messages of 2 GiB; above this the weights go to an external file.
_EXTERNAL_DATA_BYTES = 1_800_000_000


@dataclass(frozen=True)
class ModelInfo:
    """What the zoo knows about one network before building it.

    Attributes:
        name: short lowercase name, also the file stem.
        tag: the Neurosurgeon paper's abbreviation (IMC, VGG, ...) or "" for a network
            the paper did not evaluate.
        task: what the network does.
        description: the architecture and its source.
        paper_layers: the layer count in Neurosurgeon's Table 3 (None if not there).
        app_layers: layers the paper's suite ran outside the network (SENNA's lookup),
            left out when comparing with ``paper_layers``.
    """

    name: str
    tag: str
    task: str
    description: str
    builder: Callable[[Net, bool], list[str]] = field(repr=False, compare=False)
    paper_layers: int | None = None
    app_layers: tuple[str, ...] = ()


_MODELS: tuple[ModelInfo, ...] = (
    ModelInfo("alexnet", "IMC", "image classification", "AlexNet (Caffe reference)", paper.alexnet, 24),
    ModelInfo("vgg19", "VGG", "image classification", "VGG-19, the paper's VGG", paper.vgg19, 46),
    ModelInfo("deepface", "FACE", "face recognition", "DeepFace, locally connected layers", paper.deepface, 10),
    ModelInfo("lenet", "DIG", "digit recognition", "LeNet-5 on 28x28 MNIST digits", paper.lenet, 9),
    ModelInfo("kaldi_asr", "ASR", "speech recognition", "Kaldi DNN over 11 spliced fbank frames",
              paper.kaldi_asr, 13),
    ModelInfo("senna_pos", "POS", "part-of-speech tagging", "SENNA window tagger", paper.senna_pos, 3,
              ("lookup",)),
    ModelInfo("senna_ner", "NER", "named entity recognition", "SENNA window tagger", paper.senna_ner, 3,
              ("lookup",)),
    ModelInfo("senna_chk", "CHK", "word chunking", "SENNA window tagger", paper.senna_chk, 3, ("lookup",)),
    ModelInfo("vgg16", "", "image classification", "VGG-16", paper.vgg16),
    ModelInfo("resnet18", "", "image classification", "ResNet-18, residual DAG", modern.resnet18),
    ModelInfo("resnet50", "", "image classification", "ResNet-50, bottleneck residual DAG", modern.resnet50),
    ModelInfo("mobilenetv2", "", "image classification", "MobileNetV2, inverted residuals",
              modern.mobilenetv2),
    ModelInfo("inception", "", "image classification", "GoogLeNet (Inception v1), 4-branch modules",
              modern.inception),
    ModelInfo("bert_mini", "", "sentence classification", "BERT-mini encoder (L4 H256 A4), 128 tokens",
              modern.bert_mini),
    ModelInfo("speech_lstm", "", "speech recognition", "3-layer LSTM acoustic model, CTC characters",
              modern.speech_lstm),
)
_BY_NAME = {m.name: m for m in _MODELS}


def list_models() -> list[ModelInfo]:
    """All zoo models: the paper's eight first (in Table 3 order), then today's networks."""
    return list(_MODELS)


def get_info(name: str) -> ModelInfo:
    """Look a model up by name.

    Raises:
        NscompileError: no zoo model has that name.
    """
    try:
        return _BY_NAME[name]
    except KeyError:
        raise NscompileError(
            f"unknown zoo model {name!r}; choose from {', '.join(_BY_NAME)} (see `nscompile zoo --list`)"
        ) from None


def _check_size(size: str) -> bool:
    if size not in SIZES:
        raise NscompileError(f"unknown zoo size {size!r}; pass --size small or --size full")
    return size == "small"


def _build(name: str, size: str, seed: int, materialize: bool) -> onnx.ModelProto:
    info = get_info(name)
    small = _check_size(size)
    net = Net(name, seed=seed, materialize=materialize)
    outputs = info.builder(net, small)
    doc = (info.builder.__doc__ or "").strip()
    return net.model(outputs, doc=f"nscompile zoo: {name} ({size}, seed {seed}). {doc}")


def build_model(name: str, size: str = "small", seed: int = 0) -> onnx.ModelProto:
    """Build one zoo model in memory.

    Args:
        name: a name from :func:`list_models`.
        size: ``"small"`` (narrow widths, for tests) or ``"full"`` (the real network).
        seed: weight seed; the same seed gives byte-identical models.

    Returns:
        The ONNX model (opset 20, static shapes, every node named).

    Raises:
        NscompileError: unknown name or size.
    """
    return _build(name, size, seed, materialize=True)


@dataclass(frozen=True)
class ModelStats:
    """Size of one built model: layers (paper rule), parameters, MACs per inference."""

    layers: int
    params: int
    macs: int


def model_stats(name: str, size: str = "full") -> ModelStats:
    """Layers, parameters and MACs of a zoo model, counted from its graph.

    Layers follow :func:`count_layers` without the model's ``app_layers``, so the paper's
    eight match Neurosurgeon's Table 3.

    The graph is built without drawing weight values, so this is fast even for the
    full-size networks.

    Raises:
        NscompileError: unknown name or size.
    """
    skeleton = _build(name, size, 0, materialize=False)
    layers = count_layers(skeleton, exclude=get_info(name).app_layers)
    return ModelStats(layers, count_params(skeleton), count_macs(skeleton))


def model_path(out_dir: str | os.PathLike, name: str, size: str) -> Path:
    """Where :func:`write_models` puts a model: ``<name>.onnx`` or ``<name>_small.onnx``."""
    return Path(out_dir) / (f"{name}_small.onnx" if _check_size(size) else f"{name}.onnx")


def _save(model: onnx.ModelProto, path: Path) -> None:
    """Write atomically: into a hidden sibling directory, then rename into place.

    No half-written model is ever left at ``path``. Above 1.8 GB the weights go to
    ``<file>.data`` next to it (protobuf cannot hold 2 GiB); the data file is written
    fresh, since onnx appends to an existing one.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    data_name = f"{path.name}.data"
    # mkdtemp gives a private, unique directory on the same filesystem (so os.replace
    # is a rename); files created inside it by open() still get the user's umask.
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        if model.ByteSize() > _EXTERNAL_DATA_BYTES:
            onnx.save_model(model, staging / path.name, save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=1024)
            os.replace(staging / data_name, path.parent / data_name)
        else:
            (staging / path.name).write_bytes(model.SerializeToString())
            # A stale weights file from an earlier external-data write would mislead.
            (path.parent / data_name).unlink(missing_ok=True)
        os.replace(staging / path.name, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def write_models(
    names: Iterable[str] | None,
    out_dir: str | os.PathLike = "models",
    size: str = "full",
    seed: int = 0,
    on_written: Callable[[str, Path], None] | None = None,
) -> list[Path]:
    """Build zoo models and write them as ONNX files.

    Args:
        names: model names; None or empty for all of them.
        out_dir: destination directory (created if missing).
        size: ``"small"`` or ``"full"``.
        seed: weight seed; the same seed writes the same bytes.
        on_written: called with (name, path) after each file, for progress display.

    Returns:
        The written paths, in the order of ``names``.

    Raises:
        NscompileError: an unknown name or size (checked before anything is written),
            or the directory cannot be written.
    """
    chosen: Sequence[str] = list(names) if names else [m.name for m in _MODELS]
    for name in chosen:
        get_info(name)
    _check_size(size)
    paths = []
    for name in dict.fromkeys(chosen):  # keep order, drop repeats
        path = model_path(out_dir, name, size)
        try:
            _save(build_model(name, size, seed), path)
        except OSError as exc:
            raise NscompileError(f"cannot write {path}: {exc.strerror}; pass -o with a writable directory") from None
        paths.append(path)
        if on_written is not None:
            on_written(name, path)
    return paths
