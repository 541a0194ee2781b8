"""The accuracy gate: every emitted lossy pair (fp16, int8 cut tensors) against the whole model.

Each lossy cut's prefix then suffix runs on a set of inputs, real ones from
``--calibration`` (a directory or an ``.npz``) or, without it, the verification's seeded
random inputs, and every graph output is compared with the whole model's:

* relative L2 error ``||got - want|| / ||want||`` over all inputs, and the largest
  absolute error, for float outputs;
* top-1 agreement (the share of rows whose argmax is unchanged) for classifier-like
  float outputs, of rank 2 or 3: (batch, classes) or (batch, steps, classes);
* agreement (the share of equal elements) for integer and bool outputs, such as an
  ``ArgMax``.

A pair passes when every output is within the :class:`Tolerance`: relative L2 at most
``rel_l2`` and every agreement at least ``top1``.

Unlike the lossless verification, sessions run at full graph optimisation, as the device
and the server run them (onnxruntime's optimiser may rewrite nodes next to the codec ops);
what kernel choices add is float rounding (0 on the zoo's AlexNet and LeNet).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nscompile.errors import InternalError, NscompileError
from nscompile.frontend import LoadedModel

#: How many of the verification's random inputs the gate uses without --calibration.
RANDOM_INPUTS = 4


@dataclass(frozen=True)
class Tolerance:
    """What a lossy pair may change: relative L2 error per output, and top-1 / label agreement."""

    rel_l2: float = 1e-2
    top1: float = 0.99

    @staticmethod
    def parse(text: str | None) -> Tolerance:
        """Read ``--tolerance``: ``REL_L2`` alone, or ``rel_l2=0.01,top1=0.99`` (either key may be left out).

        Raises:
            NscompileError: malformed, or out of range (0 < rel_l2 <= 1, 0 <= top1 <= 1).
        """
        if text is None or not str(text).strip():
            return Tolerance()
        values = {}
        try:
            for item in str(text).split(","):
                key, _, value = item.rpartition("=")
                key = key.strip().lower().replace("-", "_") or "rel_l2"
                if key not in ("rel_l2", "top1") or key in values:
                    raise ValueError
                values[key] = float(value)
        except ValueError:
            raise NscompileError(f"bad --tolerance '{text}': write a relative L2 error such as 0.01, "
                                 "or rel_l2=0.01,top1=0.99") from None
        tolerance = Tolerance(**values)
        if not (0 < tolerance.rel_l2 <= 1) or not (0 <= tolerance.top1 <= 1):
            raise NscompileError(f"--tolerance '{text}' is out of range: need 0 < rel_l2 <= 1 and 0 <= top1 <= 1")
        return tolerance

    def to_json(self) -> dict:
        return {"rel_l2": self.rel_l2, "top1": self.top1}


@dataclass(frozen=True)
class GateInputs:
    """The inputs the gate runs: one feed dict per sample, and where they came from."""

    feeds: list[dict[str, np.ndarray]]
    source: str  # the calibration path, or a description of the random inputs
    real_data: bool


def random_gate_inputs(model: LoadedModel, count: int = RANDOM_INPUTS) -> GateInputs:
    """The verification's seeded random inputs (seeds 0, 1, ...), for a build without --calibration."""
    from nscompile.verify import random_inputs

    try:
        feeds = [random_inputs(model, seed) for seed in range(count)]
    except NscompileError as exc:
        raise NscompileError(f"{exc} -- or, for lossy --encodings, pass --calibration with real inputs") from None
    return GateInputs(feeds, f"{count} random inputs (seeds 0-{count - 1})", real_data=False)


def load_calibration(model: LoadedModel, path: str | Path) -> GateInputs:
    """Read real inputs for the gate from an ``.npz``, or a directory of ``.npz`` / ``.npy`` files.

    An ``.npz`` holds one array per graph input, named after it, either one sample (the
    input's shape) or a stack of samples along a new first axis (all arrays the same
    count). A ``.npy`` file (single-input models only) holds one sample or a stack. Files
    are read without pickle.

    Raises:
        NscompileError: a missing or unreadable file, names or shapes that do not match
            the model's inputs, or no samples at all.
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix in (".npz", ".npy"))
        if not files:
            raise NscompileError(f"calibration directory '{path}' has no .npz or .npy files; put real inputs there")
    elif path.is_file():
        files = [path]
    else:
        raise NscompileError(f"calibration '{path}' does not exist; pass a directory or an .npz of real inputs")
    feeds: list[dict[str, np.ndarray]] = []
    for file in files:
        feeds += _samples(model, file, _read_arrays(model, file))
    return GateInputs(feeds, str(path), real_data=True)


def _read_arrays(model: LoadedModel, file: Path) -> dict[str, np.ndarray]:
    if file.suffix == ".npy" and len(model.inputs) != 1:
        raise NscompileError(f"calibration '{file}' is a .npy but the model has inputs {model.inputs}; "
                             "use .npz files with one array per input")
    try:
        if file.suffix == ".npy":
            return {model.inputs[0]: np.load(file, allow_pickle=False)}
        with np.load(file, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as exc:
        raise NscompileError(f"cannot read calibration '{file}' ({exc}); write it with numpy.savez") from None


def _samples(model: LoadedModel, file: Path, arrays: dict[str, np.ndarray]) -> list[dict[str, np.ndarray]]:
    if sorted(arrays) != sorted(model.inputs):
        raise NscompileError(f"calibration '{file}' has arrays {sorted(arrays)} but the model's inputs are "
                             f"{sorted(model.inputs)}; name the arrays after the inputs")
    counts = {}
    for name, array in arrays.items():
        info = model.tensors[name]
        shape = tuple(info.shape)
        if array.shape == shape:
            counts[name] = None
        elif array.shape[1:] == shape and array.shape[0] > 0:
            counts[name] = array.shape[0]
        else:
            raise NscompileError(f"calibration '{file}' array '{name}' has shape {list(array.shape)}, but the model "
                                 f"takes {list(shape)}; pass {list(shape)} or a stack [N, {', '.join(map(str, shape))}]")
        if array.dtype.kind != info.dtype.kind and not (array.dtype.kind in "iu" and info.dtype.kind in "iu"):
            raise NscompileError(f"calibration '{file}' array '{name}' is {array.dtype}, the model takes {info.dtype}; convert it")
    stacked = {c for c in counts.values() if c is not None}
    if len(stacked) > 1 or (stacked and None in counts.values()):
        raise NscompileError(f"calibration '{file}' stacks different numbers of samples per input ({counts}); "
                             "give every input the same count")
    n = stacked.pop() if stacked else None
    cast = {k: a.astype(model.tensors[k].dtype, copy=False) for k, a in arrays.items()}
    if n is None:
        return [cast]
    return [{k: a[i] for k, a in cast.items()} for i in range(n)]


def compare(reference: Sequence[dict[str, np.ndarray]], got: Sequence[dict[str, np.ndarray]]) -> dict[str, dict]:
    """Error figures per output of ``got`` against ``reference`` (one dict of outputs per input).

    Returns:
        Output name -> ``{"rel_l2", "max_abs"[, "top1_agreement"]}`` for float outputs,
        ``{"agreement"}`` for integer and bool ones.
    """
    figures = {}
    for name in reference[0]:
        want = np.stack([r[name] for r in reference])
        have = np.stack([g[name] for g in got])
        if want.shape != have.shape:
            raise InternalError(f"output '{name}' has shape {list(have.shape[1:])}, the whole model's is "
                                f"{list(want.shape[1:])}; this is a compiler bug, please report it")
        if want.dtype.kind != "f":
            figures[name] = {"agreement": float(np.mean(want == have)) if want.size else 1.0}
            continue
        want64, have64 = want.astype(np.float64), have.astype(np.float64)
        norm = float(np.linalg.norm(want64))
        diff = float(np.linalg.norm(have64 - want64))
        # An all-zero reference makes any difference as wrong as it gets: 1, like answering zero.
        entry = {"rel_l2": diff / norm if norm > 0 else (0.0 if diff == 0 else 1.0),
                 "max_abs": float(np.abs(have64 - want64).max()) if want.size else 0.0}
        if want.ndim - 1 in (2, 3) and want.shape[-1] >= 2:  # classifier-like: (batch[, steps], classes)
            entry["top1_agreement"] = float(np.mean(want.argmax(-1) == have.argmax(-1)))
        figures[name] = entry
    return figures


def violations(figures: dict[str, dict], tolerance: Tolerance) -> list[str]:
    """What exceeds the tolerance, one phrase per output and figure ("prob: rel L2 0.034 > 0.01")."""
    out = []
    for name, f in figures.items():
        if f.get("rel_l2", 0.0) > tolerance.rel_l2:
            out.append(f"{name}: rel L2 {f['rel_l2']:.3g} > {tolerance.rel_l2:g}")
        for key in ("top1_agreement", "agreement"):
            if key in f and f[key] < tolerance.top1:
                out.append(f"{name}: {key.replace('_', ' ')} {f[key]:.3g} < {tolerance.top1:g}")
    return out


class AccuracyGate:
    """Measures lossy pairs of a build directory against the whole model on fixed inputs.

    Args:
        model: the loaded model.
        tolerance: what a pair may change.
        inputs: real inputs (:func:`load_calibration`); None: the verification's random
            inputs, made when the first pair is measured.

    The whole model runs once per input, on the first measurement.
    """

    def __init__(self, model: LoadedModel, tolerance: Tolerance, inputs: GateInputs | None = None):
        self.model, self.tolerance, self._inputs = model, tolerance, inputs
        self._reference: list[dict[str, np.ndarray]] | None = None

    @property
    def inputs(self) -> GateInputs:
        """The inputs every pair runs on."""
        if self._inputs is None:
            self._inputs = random_gate_inputs(self.model)
        return self._inputs

    @property
    def prepared_inputs(self) -> GateInputs | None:
        """The inputs if they exist already (given, or made by a measurement), else None."""
        return self._inputs

    def reference(self) -> list[dict[str, np.ndarray]]:
        """The whole model's outputs per input."""
        if self._reference is None:
            whole = _session(self.model.path)
            names = [o.name for o in whole.get_outputs()]
            self._reference = [dict(zip(names, whole.run(None, feeds))) for feeds in self.inputs.feeds]
        return self._reference

    def measure(self, build_dir: Path, cut: dict) -> dict:
        """Run one lossy cut of a plan document (prefix then suffix) on every input.

        Returns:
            ``cuts[].accuracy``: ``{"inputs", "real_data", "source", "outputs": {name:
            figures}, "passed", "violations"}``.
        """
        prefix = _session(build_dir / cut["prefix"]) if cut["prefix"] else None
        suffix = _session(build_dir / cut["suffix"]) if cut["suffix"] else None
        got = []
        for feeds in self.inputs.feeds:
            values = dict(feeds)
            for sess in (prefix, suffix):
                if sess is not None:
                    out = sess.run(None, {i.name: values[i.name] for i in sess.get_inputs()})
                    values.update(zip([o.name for o in sess.get_outputs()], out))
            got.append(values)
        reference = self.reference()
        missing = sorted({name for name in reference[0] for g in got if name not in g})
        if missing:
            raise InternalError(f"cut '{cut['id']}' does not produce outputs {missing}; this is a compiler bug, please report it")
        figures = compare(reference, got)
        bad = violations(figures, self.tolerance)
        return {"inputs": len(self.inputs.feeds), "real_data": self.inputs.real_data, "source": self.inputs.source,
                "outputs": {k: {m: round(v, 8) for m, v in f.items()} for k, f in figures.items()},
                "passed": not bad, "violations": bad}


def _session(path: Path):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
