"""Device profiles: per-op latency regressions, power figures and radio models, as data.

A :class:`Profile` is what ``nscompile profile`` writes to ``cost_models/*.json`` and what
the compiler reads to predict each node's latency on a device or a server. Evaluation is
plain numpy (no scikit-learn, no pickle): every regression is a list of feature names,
a transform, coefficients and an intercept.

Regression forms (``transform``):

* ``"linear"``: ``ms = intercept + sum(coef_i * x_i)`` with non-negative coefficients,
  so costs add up over a fused group and extrapolate linearly in work.
* ``"loglog"``: ``ms = exp(intercept + sum(coef_i * log1p(x_i)))``, a power law, which
  captures e.g. efficiency rising with size.
* ``"constant"``: ``ms = intercept``.

Lookup order in :meth:`Profile.predict_ms`: the node's exact key; for ``folded:*`` keys
zero (constant-folded at session creation); for ``fused:*`` keys the profile's
``fused:*`` entry if any, else zero; otherwise the ``fallback`` regression (generic
bytes-moved model), so an op type the profile never saw still gets a prediction.

Only json and numpy are imported here.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from nscompile.errors import NscompileError

__all__ = [
    "SCHEMA",
    "Regression",
    "RadioModel",
    "Profile",
    "RADIO_PRESETS",
    "RADIO_SOURCE",
    "load_profile",
    "default_profile_path",
    "load_radio_overrides",
    "DEFAULT_FALLBACK",
]

SCHEMA = "nscompile.profile/1"

def _shipped_profiles_dir() -> Path:
    """``nscompile/cost_models`` in an installed wheel (package data), else the checkout's ``cost_models/``."""
    package = Path(__file__).resolve().parent
    inside = package / "cost_models"
    return inside if inside.is_dir() else package.parent / "cost_models"


#: Where the shipped profiles live.
COST_MODELS_DIR = _shipped_profiles_dir()

#: File names of the shipped default profiles per kind.
DEFAULT_PROFILES = {
    "device": "epyc-ort-cpu-1thread.json",
    "server": "epyc-ort-cpu-2threads.json",
}

RADIO_SOURCE = (
    "J. Huang, F. Qian, A. Gerber, Z. M. Mao, S. Sen, O. Spatscheck, 'A Close Examination "
    "of Performance and Power Characteristics of 4G LTE Networks', MobiSys 2012, Table 4: "
    "P = alpha_u * t_u + alpha_d * t_d + beta (mW, Mbps); beta is shared by up- and downlink."
)


@dataclass(frozen=True)
class RadioModel:
    """Linear radio power model P = alpha * throughput_Mbps + beta (watts).

    Attributes:
        up_alpha_w_per_mbps: Uplink power slope, W per Mbps.
        up_beta_w: Uplink base power while transmitting, W.
        down_alpha_w_per_mbps: Downlink power slope, W per Mbps.
        down_beta_w: Downlink base power while receiving, W.
        source: Where the numbers come from.
    """

    up_alpha_w_per_mbps: float
    up_beta_w: float
    down_alpha_w_per_mbps: float
    down_beta_w: float
    source: str = RADIO_SOURCE

    def up_power_w(self, mbps: float) -> float:
        """Radio power while sending at ``mbps`` (W)."""
        return self.up_alpha_w_per_mbps * mbps + self.up_beta_w

    def down_power_w(self, mbps: float) -> float:
        """Radio power while receiving at ``mbps`` (W)."""
        return self.down_alpha_w_per_mbps * mbps + self.down_beta_w

    def to_json(self) -> dict:
        """The model as a JSON-ready dict."""
        return {
            "up_alpha_w_per_mbps": self.up_alpha_w_per_mbps,
            "up_beta_w": self.up_beta_w,
            "down_alpha_w_per_mbps": self.down_alpha_w_per_mbps,
            "down_beta_w": self.down_beta_w,
            "source": self.source,
        }

    @classmethod
    def from_json(cls, d: dict) -> "RadioModel":
        """Build from :meth:`to_json` output.

        Raises:
            NscompileError: a coefficient is missing or not a non-negative number.
        """
        vals = {}
        for k in ("up_alpha_w_per_mbps", "up_beta_w", "down_alpha_w_per_mbps", "down_beta_w"):
            x = d.get(k) if isinstance(d, dict) else None
            if not isinstance(x, (int, float)) or isinstance(x, bool) or not math.isfinite(x) or x < 0:
                raise NscompileError(f"radio model needs a non-negative number for '{k}', got {x!r}")
            vals[k] = float(x)
        return cls(**vals, source=str(d.get("source", "user override")))


# Huang et al. 2012, Table 4, converted from mW to W. The 'cat1' preset (LTE Cat-1 IoT
# modem) has no figure there; it reuses LTE's, the closest radio measured.
RADIO_PRESETS: dict[str, RadioModel] = {
    "3g": RadioModel(0.86898, 0.81788, 0.12212, 0.81788),
    "lte": RadioModel(0.43839, 1.28804, 0.05197, 1.28804),
    "wifi": RadioModel(0.28317, 0.13286, 0.13701, 0.13286),
    "cat1": RadioModel(0.43839, 1.28804, 0.05197, 1.28804,
                       source=RADIO_SOURCE + " LTE figures reused for Cat-1 (not measured there)."),
}
_RADIO_ALIASES = {"wi-fi": "wifi", "4g": "lte", "3G": "3g"}


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


@dataclass(frozen=True)
class Regression:
    """One fitted latency regression (milliseconds from node features).

    Attributes:
        features: Feature names, in the order of ``coef``.
        transform: ``"linear"``, ``"loglog"`` or ``"constant"`` (see the module docstring).
        coef: One coefficient per feature.
        intercept: The intercept (ms for linear, log-ms for loglog).
        heldout_error: Mean absolute relative error on held-out microbenchmarks, or None.
        n_samples: Microbenchmarks the fit used.
    """

    features: tuple[str, ...]
    transform: str
    coef: tuple[float, ...]
    intercept: float
    heldout_error: float | None = None
    n_samples: int = 0

    def __post_init__(self):
        if self.transform not in ("linear", "loglog", "constant"):
            raise NscompileError(f"unknown regression transform '{self.transform}'; use linear, loglog or constant")
        if len(self.features) != len(self.coef):
            raise NscompileError(
                f"regression has {len(self.features)} features but {len(self.coef)} coefficients"
            )

    def predict(self, values: dict[str, float]) -> float:
        """Predicted milliseconds (>= 0) for a node's feature values; missing features are 0."""
        if self.transform == "constant" or not self.features:
            y = self.intercept
        else:
            x = np.array([float(values.get(f, 0.0)) for f in self.features], dtype=np.float64)
            c = np.asarray(self.coef, dtype=np.float64)
            if self.transform == "linear":
                y = self.intercept + float(c @ x)
            else:
                y = math.exp(min(self.intercept + float(c @ np.log1p(np.maximum(x, 0.0))), 700.0))
        return max(float(y), 0.0) if math.isfinite(y) else 0.0

    def to_json(self) -> dict:
        """The regression as a JSON-ready dict."""
        return {
            "features": list(self.features),
            "transform": self.transform,
            "coef": [float(c) for c in self.coef],
            "intercept": float(self.intercept),
            "heldout_error": None if self.heldout_error is None else float(self.heldout_error),
            "n_samples": int(self.n_samples),
        }

    @classmethod
    def from_json(cls, d: dict, where: str = "regression") -> "Regression":
        """Build from :meth:`to_json` output.

        Raises:
            NscompileError: a field is missing or has the wrong type (names ``where``).
        """
        if not isinstance(d, dict):
            raise NscompileError(f"{where} must be an object, got {type(d).__name__}")
        feats = d.get("features")
        coef = d.get("coef")
        if not isinstance(feats, list) or not all(isinstance(f, str) for f in feats):
            raise NscompileError(f"{where}: 'features' must be a list of names")
        if not isinstance(coef, list) or not all(_finite(c) for c in coef):
            raise NscompileError(f"{where}: 'coef' must be a list of finite numbers")
        if not _finite(d.get("intercept")):
            raise NscompileError(f"{where}: 'intercept' must be a finite number")
        err = d.get("heldout_error")
        try:
            return cls(
                features=tuple(feats),
                transform=str(d.get("transform")),
                coef=tuple(float(c) for c in coef),
                intercept=float(d["intercept"]),
                heldout_error=float(err) if _finite(err) else None,
                n_samples=int(d.get("n_samples", 0) or 0),
            )
        except NscompileError as exc:
            raise NscompileError(f"{where}: {exc}") from None


# Used when a profile has no fallback: ~1 GB/s memory traffic plus 5 us dispatch.
DEFAULT_FALLBACK = Regression(("bytes_in", "bytes_out"), "linear", (1e-6, 1e-6), 0.005)


@dataclass
class Profile:
    """A device or server profile: latency regressions per op key, power, radio.

    Attributes:
        name: Human name (e.g. ``"epyc-ort-cpu-1thread"``).
        kind: ``"device"`` or ``"server"``.
        provider: onnxruntime execution provider short name (``"cpu"``, ``"cuda"``).
        threads: intra-op threads the measurements used.
        compute_power_w: Device power while computing (W).
        idle_power_w: Device power while waiting for the server (W).
        models: Op key -> regression.
        fallback: Regression for op types the profile never saw.
        radio_models: Network preset name -> radio model.
        meta: Everything else stored in the JSON (versions, CPU, dates, sources, notes).
        nchwc_block: Channels per block of onnxruntime's NCHWc convolutions on this
            machine (MLAS: 8 with AVX2, 16 with AVX-512), measured by the profiler. Node
            features must be computed with it (``graph_features(..., nchwc_block=)``):
            it decides the padded MAC counts and the layout copies.
        reorder_ms_per_byte: Cost of onnxruntime's NCHWc layout copies, charged on a
            node's ``reorder_bytes`` feature on top of its regression (0 where the
            provider has no such layout); the median over the sizes of ``reorder_curve``.
        reorder_curve: ``(bytes per copy, ms per byte)`` measured at several tensor sizes,
            ascending: a copy that stays in the L2 cache costs half as much per byte as one
            of a 3 MB feature map. Where given, a node's copies are priced at their mean
            size on it (log-interpolated, flat beyond the ends); empty in older profiles.
        run_overhead_ms: Fixed cost of one session run (binding one input and one output,
            launch), paid once per model run, not per node: see :meth:`run_ms`.
        node_overhead_ms: Dispatch cost of one kernel (each node that runs as its own
            kernel, and each layout copy). The regressions are fitted net of both.
        input_overhead_ms: Cost of binding each graph input beyond the first, per run.
        output_overhead_ms: Cost of returning each graph output beyond the first, per run.
        time_scale: Factor from the regressions' unit to latency: 1 where they were fitted
            on latency; for a CPU under a bandwidth quota they are fitted on the thread's
            CPU time (steady, whatever the throttling) and this is the measured ratio of
            wall time to CPU time under the quota (about 1/quota, plus the cost of
            throttling).
        calibrations: Model SHA-256 -> per-node times measured on this device by
            ``nscompile profile --model`` (``{"model", "input_shapes", "nodes": {node
            name: ms}, ...}``); the compiler prefers them to the regressions.
    """

    name: str
    kind: str
    provider: str
    threads: int
    compute_power_w: float
    idle_power_w: float
    models: dict[str, Regression] = field(default_factory=dict)
    fallback: Regression = DEFAULT_FALLBACK
    radio_models: dict[str, RadioModel] = field(default_factory=lambda: dict(RADIO_PRESETS))
    meta: dict[str, Any] = field(default_factory=dict)
    reorder_ms_per_byte: float = 0.0
    reorder_curve: tuple[tuple[float, float], ...] = ()
    nchwc_block: int = 8
    run_overhead_ms: float = 0.0
    node_overhead_ms: float = 0.0
    input_overhead_ms: float = 0.0
    output_overhead_ms: float = 0.0
    time_scale: float = 1.0
    calibrations: dict[str, dict] = field(default_factory=dict)

    def fixed_ms(self, inputs: int = 1, outputs: int = 1) -> float:
        """Latency of one session run beyond its nodes' (see :meth:`run_ms`).

        Args:
            inputs: How many tensors the run is fed (graph inputs).
            outputs: How many tensors it returns (graph outputs).
        """
        binding = self.input_overhead_ms * max(inputs - 1, 0) + self.output_overhead_ms * max(outputs - 1, 0)
        return (self.run_overhead_ms + binding) * self.time_scale

    def calibration_for(self, sha256: str, input_shapes: dict[str, list[int]]) -> dict[str, float] | None:
        """Measured per-node milliseconds for the model with this hash and these input shapes, if calibrated."""
        entry = self.calibrations.get(sha256)
        if entry is None or entry.get("input_shapes") != input_shapes:
            return None
        return entry["nodes"]

    def with_calibrations(self, calibrations: dict[str, dict]) -> "Profile":
        """A copy with ``calibrations`` replaced."""
        return replace(self, calibrations=dict(calibrations))

    def predict_ms(self, f) -> float:
        """Predicted latency of one node in milliseconds (always finite and >= 0).

        Args:
            f: The node's :class:`~nscompile.features.NodeFeatures`.

        Returns:
            Milliseconds. Unknown op keys use the fallback regression; ``folded:*`` keys
            are free; ``fused:*`` keys cost what the profile measured, or 0. The per-run
            overhead is not included (see :meth:`run_ms`).
        """
        key = f.key
        if key.startswith("folded:"):
            return 0.0
        extra = self.reorder_ms(f.values.get("reorder_bytes", 0.0), f.values.get("reorder_copies", 0.0))
        # Dispatch: one per kernel (a fused node has none of its own) and one per layout copy.
        kernels = f.values.get("reorder_copies", 0.0) + (0.0 if ":" in key else 1.0)
        extra += self.node_overhead_ms * kernels
        model = self.models.get(key)
        if model is None and "." in key and ":" not in key:
            model = self.models.get(key.split(".", 1)[0])  # kernel family unseen: the op's model
        if model is not None:
            return (model.predict(f.values) + extra) * self.time_scale
        if key.startswith("fused:"):
            generic = self.models.get("fused:*")
            return ((generic.predict(f.values) if generic is not None else 0.0) + extra) * self.time_scale
        return (self.fallback.predict(f.values) + extra) * self.time_scale

    def reorder_ms(self, reorder_bytes: float, copies: float) -> float:
        """What ``copies`` NCHWc layout copies of ``reorder_bytes`` in all cost (ms, before :attr:`time_scale`)."""
        return copy_ms(reorder_bytes, copies, self.reorder_ms_per_byte, self.reorder_curve)

    def run_ms(self, node_ms: float, inputs: int = 1, outputs: int = 1) -> float:
        """Latency of one run of a (sub)model whose nodes are predicted to take ``node_ms`` in all.

        ``inputs`` and ``outputs`` count the tensors it binds (see :meth:`fixed_ms`). A run
        that has no node to execute (an empty prefix or suffix) costs nothing.
        """
        return node_ms + self.fixed_ms(inputs, outputs) if node_ms > 0 else 0.0

    def radio(self, network: str) -> RadioModel:
        """The radio power model of a network preset.

        Args:
            network: Preset name, e.g. ``"wifi"``, ``"lte"``, ``"3g"`` (case-insensitive).

        Raises:
            NscompileError: the profile has no such preset.
        """
        k = network.strip().lower()
        k = _RADIO_ALIASES.get(k, k)
        if k not in self.radio_models:
            raise NscompileError(
                f"profile '{self.name}' has no radio model for network '{network}'; "
                f"use one of {', '.join(sorted(self.radio_models))} or add it with --radio-json"
            )
        return self.radio_models[k]

    def with_overrides(
        self,
        compute_power_w: float | None = None,
        idle_power_w: float | None = None,
        radio: dict[str, RadioModel] | None = None,
    ) -> "Profile":
        """A copy with power figures and/or radio models replaced (e.g. from the CLI).

        Raises:
            NscompileError: a power figure is negative or not finite.
        """
        for label, x in (("compute_power_w", compute_power_w), ("idle_power_w", idle_power_w)):
            if x is not None and (not _finite(x) or x < 0):
                raise NscompileError(f"{label} must be a non-negative number of watts, got {x!r}")
        radios = dict(self.radio_models)
        radios.update(radio or {})
        meta = dict(self.meta)
        if compute_power_w is not None or idle_power_w is not None:
            meta["power_source"] = "user override"
        return replace(
            self,
            compute_power_w=self.compute_power_w if compute_power_w is None else float(compute_power_w),
            idle_power_w=self.idle_power_w if idle_power_w is None else float(idle_power_w),
            radio_models=radios,
            meta=meta,
        )

    # -- serialisation -------------------------------------------------------------------

    def to_json(self) -> dict:
        """The profile as a JSON-ready dict (schema ``nscompile.profile/1``)."""
        d = dict(self.meta)
        d.update(
            {
                "schema": SCHEMA,
                "name": self.name,
                "kind": self.kind,
                "provider": self.provider,
                "threads": int(self.threads),
                "power": {
                    "compute_power_w": float(self.compute_power_w),
                    "idle_power_w": float(self.idle_power_w),
                    "power_source": self.meta.get("power_source", "assumed"),
                },
                "radio": {k: v.to_json() for k, v in sorted(self.radio_models.items())},
                "models": {k: v.to_json() for k, v in sorted(self.models.items())},
                "fallback": self.fallback.to_json(),
                "reorder_ms_per_byte": float(self.reorder_ms_per_byte),
                "reorder_curve": [[float(b), float(c)] for b, c in self.reorder_curve],
                "nchwc_block": int(self.nchwc_block),
                "run_overhead_ms": float(self.run_overhead_ms),
                "node_overhead_ms": float(self.node_overhead_ms),
                "input_overhead_ms": float(self.input_overhead_ms),
                "output_overhead_ms": float(self.output_overhead_ms),
                "time_scale": float(self.time_scale),
                "calibrations": self.calibrations,
            }
        )
        d.pop("power_source", None)
        return d

    @classmethod
    def from_json(cls, d: dict) -> "Profile":
        """Build a profile from :meth:`to_json` output.

        Raises:
            NscompileError: wrong schema, or a missing or malformed field (named).
        """
        if not isinstance(d, dict):
            raise NscompileError("a profile must be a JSON object")
        if d.get("schema") != SCHEMA:
            raise NscompileError(f"schema is {d.get('schema')!r}, expected '{SCHEMA}'; re-run `nscompile profile`")
        for k in ("name", "kind", "provider"):
            if not isinstance(d.get(k), str):
                raise NscompileError(f"field '{k}' must be a string")
        if d["kind"] not in ("device", "server"):
            raise NscompileError(f"field 'kind' must be 'device' or 'server', got {d['kind']!r}")
        threads = d.get("threads")
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 0:
            raise NscompileError("field 'threads' must be a non-negative integer")
        power = d.get("power")
        if not isinstance(power, dict):
            raise NscompileError("field 'power' must be an object with compute_power_w and idle_power_w")
        for k in ("compute_power_w", "idle_power_w"):
            if not _finite(power.get(k)) or power[k] < 0:
                raise NscompileError(f"power.{k} must be a non-negative number")
        models_d = d.get("models")
        if not isinstance(models_d, dict):
            raise NscompileError("field 'models' must be an object of op key -> regression")
        models = {k: Regression.from_json(v, f"models['{k}']") for k, v in models_d.items()}
        fallback = Regression.from_json(d.get("fallback"), "fallback")
        radio_d = d.get("radio", {})
        if not isinstance(radio_d, dict):
            raise NscompileError("field 'radio' must be an object of network -> radio model")
        radio = _radio_models(radio_d, "radio['{}']")
        fixed = {}
        for k in ("reorder_ms_per_byte", "run_overhead_ms", "node_overhead_ms", "input_overhead_ms",
                  "output_overhead_ms", "time_scale"):  # optional in older profiles
            fixed[k] = d.get(k, 1.0 if k == "time_scale" else 0.0)
            if not _finite(fixed[k]) or fixed[k] < 0:
                raise NscompileError(f"field '{k}' must be a non-negative number")
        curve = d.get("reorder_curve", [])
        if not (isinstance(curve, list) and all(isinstance(pt, list) and len(pt) == 2 and all(_finite(v) and v >= 0 for v in pt)
                                                and pt[0] > 0 for pt in curve)):
            raise NscompileError("field 'reorder_curve' must be a list of [bytes per copy > 0, ms per byte >= 0] pairs")
        # Profiles made before the block was measured come from AVX2 machines: 8.
        block = d.get("nchwc_block", 8)
        if not isinstance(block, int) or isinstance(block, bool) or block < 1:
            raise NscompileError("field 'nchwc_block' must be a positive integer (channels per NCHWc block)")
        calibrations = _calibrations(d.get("calibrations", {}))
        known = {"schema", "name", "kind", "provider", "threads", "power", "radio", "models", "fallback",
                 "calibrations", "nchwc_block", "reorder_curve", *fixed}
        meta = {k: v for k, v in d.items() if k not in known}
        meta["power_source"] = power.get("power_source", "assumed")
        return cls(
            name=d["name"],
            kind=d["kind"],
            provider=d["provider"],
            threads=threads,
            compute_power_w=float(power["compute_power_w"]),
            idle_power_w=float(power["idle_power_w"]),
            models=models,
            fallback=fallback,
            radio_models=radio or dict(RADIO_PRESETS),
            meta=meta,
            **{k: float(v) for k, v in fixed.items()},
            nchwc_block=block,
            reorder_curve=tuple((float(b), float(c)) for b, c in sorted(curve)),
            calibrations=calibrations,
        )

    def canonical_json(self) -> str:
        """The canonical serialisation (sorted keys, no spaces) that :attr:`sha256` hashes."""
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"), allow_nan=False)

    @property
    def sha256(self) -> str:
        """SHA-256 of the canonical JSON, for plan.json's ``profiles`` entry."""
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()

    def save(self, path) -> Path:
        """Write the profile as indented JSON.

        Args:
            path: Destination file.

        Returns:
            The path written.
        """
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True, allow_nan=False) + "\n")
        tmp.replace(p)
        return p


def load_profile(path) -> Profile:
    """Read a profile JSON file.

    Args:
        path: The ``*.json`` file written by ``nscompile profile``.

    Returns:
        The profile.

    Raises:
        NscompileError: the file is missing, not JSON, or not a valid profile; the
            message names the file and the problem.
    """
    p = Path(path)
    try:
        text = p.read_text()
    except FileNotFoundError:
        raise NscompileError(f"profile {p} does not exist; create it with `nscompile profile -o {p}`") from None
    except OSError as exc:
        raise NscompileError(f"cannot read profile {p}: {exc.strerror}") from None
    try:
        d = json.loads(text)
    except json.JSONDecodeError as exc:
        raise NscompileError(f"profile {p} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    try:
        return Profile.from_json(d)
    except NscompileError as exc:
        raise NscompileError(f"profile {p}: {exc}") from None


def default_profile_path(kind: str) -> Path:
    """The shipped default profile the compiler uses for a side.

    Args:
        kind: ``"device"`` or ``"server"`` (``"cloud"`` is accepted for the server).

    Returns:
        Path inside ``cost_models/``.

    Raises:
        NscompileError: unknown kind.
    """
    k = "server" if kind == "cloud" else kind
    if k not in DEFAULT_PROFILES:
        raise NscompileError(f"unknown profile kind '{kind}'; use 'device' or 'server'")
    return COST_MODELS_DIR / DEFAULT_PROFILES[k]


def copy_ms(nbytes: float, copies: float, per_byte: float, curve=()) -> float:
    """Milliseconds of ``copies`` layout copies moving ``nbytes`` in all: at ``per_byte``, or
    where a ``curve`` of (bytes per copy, ms per byte) is given, at its log-interpolated
    cost for the copies' mean size (flat beyond its ends)."""
    if not nbytes or not math.isfinite(nbytes) or nbytes <= 0:
        return 0.0
    if curve:
        per_byte = float(np.interp(math.log(nbytes / max(copies, 1.0)), np.log([b for b, _ in curve]),
                                   [c for _, c in curve]))
    return nbytes * per_byte


def same_cpu(a: str, b: str) -> bool:
    """Whether two ``cpu_model`` strings name the same kind of CPU.

    VMs report their CPUs loosely ("AMD EPYC", "Intel(R) Xeon(R) Processor"), so the
    family word is what is compared, and the whole string where neither has one.
    """
    def family(text: str) -> str:
        words = text.lower().replace("(r)", " ").split()
        return next((w for w in words if w in _CPU_FAMILIES), " ".join(words))

    return family(a) == family(b)


_CPU_FAMILIES = frozenset({"epyc", "ryzen", "xeon", "core", "graviton", "neoverse", "apple"})


def shipped_for_this_cpu(kind: str) -> list[Path]:
    """The shipped profiles of ``kind`` ("device" or "server") measured on this machine's kind of CPU.

    What a measurement on this machine (the testbed, the accuracy bench) should predict
    with: a profile of another CPU mis-prices its kernels (a different NCHWc block, other
    cache sizes). The shipped default comes first where it qualifies, then profiles
    without a CPU quota; empty when no shipped profile was made on this kind of CPU.
    """
    from nscompile.profiler import cpu_model  # lazily: the profiler imports this module

    here = cpu_model()
    default = default_profile_path(kind)
    found = []
    for p in COST_MODELS_DIR.glob("*.json"):
        try:
            d = json.loads(p.read_text())
        except (OSError, ValueError):
            continue
        if d.get("kind") == kind and d.get("provider") == "cpu" and same_cpu(str(d.get("cpu_model", "")), here):
            found.append((p != default, bool(d.get("cpu_quota_cores")), p.name, p))
    return [p for *_, p in sorted(found)]


def load_radio_overrides(path) -> dict[str, RadioModel]:
    """Radio models from a small JSON file ``{"lte": {"up_alpha_w_per_mbps": ..., ...}}``.

    Args:
        path: The JSON file.

    Returns:
        Network name -> radio model.

    Raises:
        NscompileError: the file is missing, not JSON, or a model is malformed.
    """
    p = Path(path)
    try:
        d = json.loads(p.read_text())
    except FileNotFoundError:
        raise NscompileError(f"radio file {p} does not exist") from None
    except json.JSONDecodeError as exc:
        raise NscompileError(f"radio file {p} is not valid JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(d, dict) or not d:
        raise NscompileError(f"radio file {p} must map network names to radio models")
    return _radio_models(d, f"radio file {p}, network '{{}}'")


def _calibrations(raw) -> dict[str, dict]:
    """Validate a profile's ``calibrations`` (model SHA-256 -> entry with per-node times)."""
    if not isinstance(raw, dict):
        raise NscompileError("field 'calibrations' must be an object of model sha256 -> calibration")
    for sha, entry in raw.items():
        where = f"calibrations['{sha[:12]}']"
        if not isinstance(entry, dict) or not isinstance(entry.get("nodes"), dict):
            raise NscompileError(f"{where} must be an object with 'nodes' (node name -> ms)")
        if not all(isinstance(k, str) and _finite(v) and v >= 0 for k, v in entry["nodes"].items()):
            raise NscompileError(f"{where}.nodes must map node names to non-negative milliseconds")
        shapes = entry.get("input_shapes")
        if not isinstance(shapes, dict) or not all(
                isinstance(v, list) and all(isinstance(x, int) for x in v) for v in shapes.values()):
            raise NscompileError(f"{where}.input_shapes must map input names to lists of integers")
    return dict(raw)


def _radio_models(raw: dict, where: str) -> dict[str, RadioModel]:
    """Network name (lower-cased) -> radio model; ``where`` names an entry in errors ("{}" = its key)."""
    out = {}
    for k, v in raw.items():
        try:
            out[k.lower()] = RadioModel.from_json(v)
        except NscompileError as exc:
            raise NscompileError(f"{where.format(k)}: {exc}") from None
    return out
