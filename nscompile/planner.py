"""Planning: the optimal device set for every bandwidth x load bucket, and the cuts to emit.

This stage turns the annotated model into the numbers of :mod:`nscompile.partition`
(node costs, tensor sizes, edges) and solves the grid. For a fixed load level the cost of
a device set S is linear in x = 1/uplink: ``cost(S, x) = A(S) + x * D(S)``, for latency
and for device energy alike (Huang et al.'s radio power ``alpha * Mbps + beta`` times the
transfer time ``bits / Mbps`` is also affine in x). So the best cut over the whole
bandwidth axis is a lower envelope of lines whose exact breakpoints a handful of min-cuts
find; the bucket table is read off those breakpoints.

Cut-tensor encodings (:mod:`nscompile.encoding`) make the candidates pairs (device set,
encoding). An encoding only changes the upload terms (bytes, plus the codec's time on
each side), so its cost stays linear in x: each encoding gets its own weights and its
own exact envelope, and the table is read off the lower envelope of all their lines.

The latency-energy trade-off: at a fixed condition (bucket, server load, device load)
``latency(S) + lam * energy(S)`` is linear in lam, so the pairs best for some lam >= 0 (the
supported Pareto front) are again a lower envelope, in lam, whose exact breakpoints a few
min-cuts find (:func:`nscompile.partition.pareto_front`). Its ends are the latency and
energy optima the tables already hold, and the neighbouring bucket's front is the start,
so a condition whose two optima agree costs no min-cut at all.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace

import numpy as np

from nscompile.annotate import Annotation
from nscompile.encoding import ENCODINGS, INT8_MIN_OPSET, LOSSLESS, Codec, WireTensor, codec_costs, parse_encodings, wire_layout
from nscompile.errors import NscompileError
from nscompile.frontend import LoadedModel
from nscompile.partition import CutGraph, Weights, evaluate, lines_envelope, lines_front, lower_envelope, pareto_front, upload_set
from nscompile.runtime.plan import MS_PER_BYTE_AT_1MBPS

OBJECTIVES = ("latency", "energy")

# Uplink Mbps from OpenSignal 2017 (as used by DADS); downlink and RTT are typical medians.
NETWORK_PRESETS = {
    "CAT1": {"uplink_mbps": 0.13, "downlink_mbps": 0.32, "rtt_ms": 120.0, "radio": "cat1"},
    "3G": {"uplink_mbps": 1.1, "downlink_mbps": 2.0, "rtt_ms": 100.0, "radio": "3g"},
    "LTE": {"uplink_mbps": 5.85, "downlink_mbps": 12.0, "rtt_ms": 50.0, "radio": "lte"},
    "WIFI": {"uplink_mbps": 18.88, "downlink_mbps": 54.0, "rtt_ms": 10.0, "radio": "wifi"},
    # 5G: Ookla Speedtest Intelligence, 5G on the iPhone 12 in Seoul, Q4 2020 (the fastest of the 15
    # cities of its January 2021 report): median upload 49.09 Mbps, download 472.28 Mbps. RTT: Ookla's
    # median 5G multi-server latency of the lowest-latency US operator, H1 2024: 47 ms. Huang et al.
    # measured no 5G radio: NR non-standalone rides on an LTE anchor, so the LTE power model.
    "5G": {"uplink_mbps": 49.09, "downlink_mbps": 472.28, "rtt_ms": 47.0, "radio": "lte"},
}


@dataclass(frozen=True)
class GridSpec:
    """The lookup table's axes and the conditions that are not on an axis."""

    bandwidth_mbps: tuple[float, ...]  # bucket starts, ascending (uplink)
    load: tuple[float, ...]  # server slowdown factors K >= 1
    rtt_ms: float = 0.0
    device_load: tuple[float, ...] = (1.0,)  # device slowdown factors Kd against its profile; 1.0 among them
    downlink_mbps: float | None = None  # None: symmetric, the downlink equals the uplink
    radio: str = "wifi"  # radio power model for the energy objective
    input_bytes: int | None = None  # upload size of the raw model input (e.g. a JPEG)

    @staticmethod
    def parse(bandwidth: str = "0.1:1000:32", load: str = "1,2,4,8", device_load: str = "1,1.5,2,4", **kwargs) -> GridSpec:
        """Build a grid from the CLI's ``--bandwidth MIN:MAX:N`` (or a preset list), ``--load L1,L2``
        and ``--device-load D1,D2``.

        ``bandwidth`` may also be a comma list of preset names or numbers ("3G,LTE,WIFI").
        The device levels always include 1 (the device as profiled), whose slice is what
        readers of plans without the device axis see.

        Raises:
            NscompileError: malformed or non-positive values.
        """
        return GridSpec(bandwidth_mbps=_parse_bandwidth(bandwidth), load=_parse_load(load),
                        device_load=_parse_device_load(device_load), **kwargs)

    @property
    def profiled_level(self) -> int:
        """Index of device load 1 (the device as profiled) in :attr:`device_load`."""
        return self.device_load.index(1.0)


def _parse_bandwidth(text: str) -> tuple[float, ...]:
    def value(item: str) -> float:
        preset = NETWORK_PRESETS.get(item.strip().upper().replace("-", ""))
        return preset["uplink_mbps"] if preset else float(item)

    try:
        parts = text.split(":")
        if len(parts) == 3:
            low, high, count = float(parts[0]), float(parts[1]), int(parts[2])
            if not (0 < low < high) or count < 2:
                raise ValueError
            return tuple(float(v) for v in np.geomspace(low, high, count))
        values = tuple(sorted(value(item) for item in text.split(",")))
        if values[0] <= 0:
            raise ValueError
        return values
    except ValueError:
        raise NscompileError(f"bad --bandwidth '{text}': write MIN:MAX:N in Mbps (e.g. 0.1:1000:32), or a list like 3G,LTE,WIFI or 1.1,5.85") from None


def _parse_load(text: str) -> tuple[float, ...]:
    return _parse_levels(text, "--load", "server slowdown factors >= 1, e.g. 1,2,4,8", lambda v: v >= 1)


def _parse_device_load(text: str) -> tuple[float, ...]:
    # 1 (the device as profiled) is always a level: its slice is what plans without the axis hold.
    return tuple(sorted({1.0, *_parse_levels(text, "--device-load", "device slowdown factors > 0, e.g. 1,1.5,2,4",
                                             lambda v: v > 0)}))


def _parse_levels(text: str, flag: str, what: str, valid) -> tuple[float, ...]:
    """A comma list of finite factors, ascending; NscompileError naming ``flag`` otherwise."""
    try:
        values = tuple(sorted(float(v) for v in text.split(",")))
        if not values or not all(np.isfinite(v) and valid(v) for v in values):
            raise ValueError
        return values
    except ValueError:
        raise NscompileError(f"bad {flag} '{text}': write {what}") from None


@dataclass
class CutChoice:
    """One distinct (device set, encoding) pair that some bucket selects."""

    id: str
    device: np.ndarray  # bool mask over nodes
    upload: list[str]  # tensor names sent to the server (graph inputs included)
    device_outputs: list[str]  # graph outputs computed on the device
    download: list[str]  # graph outputs computed on the server
    device_ms: float
    cloud_ms: float
    device_compute_mj: float
    upload_bytes: int  # on the wire, encoded
    download_bytes: int
    encoding: str = LOSSLESS
    wire: list[WireTensor] = field(default_factory=list)  # what travels: the upload, encoded

    @property
    def is_lossy(self) -> bool:
        return self.encoding != LOSSLESS

    @property
    def is_all_device(self) -> bool:
        return bool(self.device.all())

    @property
    def is_all_cloud(self) -> bool:
        return not self.device.any()


@dataclass
class Plan:
    """The solved grid: which cut each bucket uses, for each objective."""

    grid: GridSpec
    objective: str
    cuts: list[CutChoice]
    # Each table is kept per device level (outermost); ``tables``, ``mixed`` and
    # ``breakpoints`` are the slice at device load 1 (the device as profiled).
    device_tables: dict[str, list[list[list[str]]]]  # objective -> [device level][load][bucket] -> cut id
    device_mixed: dict[str, list[list[list[bool]]]]  # ... -> [bucket]: the optimum changes inside it
    device_breakpoints: dict[str, list[list[list[tuple[float, str]]]]]  # ... -> [load] -> (from_mbps, cut id)
    fallback: str
    # The latency-energy fronts, deduplicated: ``pareto_fronts[i]`` lists cut ids fastest
    # first, ``pareto_index[device level][load][bucket]`` is the front of that condition.
    pareto_fronts: list[list[str]] = field(default_factory=list)
    pareto_index: list[list[list[int]]] = field(default_factory=list)
    energy_model: dict | None = None  # plan.json's energy_model (:func:`energy_model`)
    stats: dict = field(default_factory=dict)
    encodings: tuple[str, ...] = (LOSSLESS,)
    dropped: list[str] = field(default_factory=list)  # lossy cuts removed by the accuracy gate
    candidates: _Candidates | None = field(default=None, repr=False)

    @property
    def tables(self) -> dict[str, list[list[str]]]:
        """objective -> [load][bucket] -> cut id, at device load 1."""
        return {o: levels[self.grid.profiled_level] for o, levels in self.device_tables.items()}

    @property
    def mixed(self) -> dict[str, list[list[bool]]]:
        """objective -> [load][bucket]: the optimum changes inside the bucket, at device load 1."""
        return {o: levels[self.grid.profiled_level] for o, levels in self.device_mixed.items()}

    @property
    def breakpoints(self) -> dict[str, list[list[tuple[float, str]]]]:
        """objective -> [load] -> (from_mbps, cut id), at device load 1."""
        return {o: levels[self.grid.profiled_level] for o, levels in self.device_breakpoints.items()}


@dataclass(frozen=True)
class _Line:
    """A candidate (device set, encoding) of one load row: cost = intercept + x * slope, x = 1/uplink."""

    intercept: float
    slope: float
    mask: bytes
    encoding: str


@dataclass
class _Candidates:
    """Every pair on some encoding's envelope, per objective, device level and load row: what
    re-solving starts from."""

    graph: CutGraph
    names: list[str]
    wire: np.ndarray
    codecs: dict[str, Codec]
    masks: dict[bytes, np.ndarray]
    lines: dict[str, list[list[list[_Line]]]]  # objective -> [device level][load] -> lines
    always: list[tuple[bytes, str]]  # emitted whatever the tables say
    # [device level][load][bucket] -> the pairs on that condition's latency-energy front
    fronts: list[list[list[list[tuple[bytes, str]]]]] = field(default_factory=list)
    # [device level][load] -> pair -> (latency intercept, slope, energy intercept, slope) in x = 1/uplink
    coefficients: list[list[dict[tuple[bytes, str], tuple[float, float, float, float]]]] = field(default_factory=list)
    excluded: frozenset = frozenset()


def cut_graph(model: LoadedModel) -> tuple[CutGraph, list[str]]:
    """The model's compute graph as numbers: one entry per non-constant tensor."""
    names = [n for n, t in model.tensors.items() if not t.is_constant and (t.consumers or t.is_output)]
    graph = CutGraph(
        n_nodes=len(model.nodes),
        producers=np.array([model.tensors[n].producer for n in names], dtype=np.int64),
        consumers=tuple(model.tensors[n].consumers for n in names),
        is_output=np.array([model.tensors[n].is_output for n in names], dtype=bool),
    )
    return graph, names


def tensor_wire_bytes(model: LoadedModel, names: list[str], input_bytes: int | None) -> np.ndarray:
    """Bytes on the wire per tensor; ``input_bytes`` overrides the raw graph input's size."""
    sizes = np.array([model.tensors[n].nbytes for n in names], dtype=np.float64)
    if input_bytes is not None:
        for i, n in enumerate(names):
            if model.tensors[n].is_input:
                sizes[i] = input_bytes
    return sizes


def objective_weights(objective: str, ann: Annotation, graph: CutGraph, wire_bytes: np.ndarray,
                      load: float, grid: GridSpec, device_load: float = 1.0) -> tuple[Weights, Weights]:
    """The objective at server load ``load`` and device load ``device_load`` as
    ``base + x * slope`` with x = 1/uplink Mbps.

    Latency is in ms (DESIGN.md's Latency(S), the device's time times Kd); energy in mJ on
    the device (Energy(S)): compute at the profile's power for Kd times the profiled time,
    idle while the server works and during the RTT, the radio at Huang et al.'s
    ``alpha * Mbps + beta`` while sending and receiving. This is
    the solver's form over every device set at once; one emitted cut's predicted latency
    is :meth:`nscompile.runtime.plan.Cut.latency_ms`, which reports and the testbed use.
    """
    n_tensors = len(wire_bytes)
    zeros_t, zeros_n = np.zeros(n_tensors), np.zeros(graph.n_nodes)
    up_ms_slope = wire_bytes * MS_PER_BYTE_AT_1MBPS  # transfer ms = slope * x
    down_bytes = np.where(graph.is_output, wire_bytes, 0.0)
    down_ms = down_bytes * MS_PER_BYTE_AT_1MBPS
    symmetric = grid.downlink_mbps is None
    if objective == "latency":
        base = Weights(device=device_load * ann.device_ms, cloud=load * ann.cloud_ms, upload=zeros_t,
                       download=zeros_t if symmetric else down_ms / grid.downlink_mbps, remote=grid.rtt_ms)
        slope = Weights(device=zeros_n, cloud=zeros_n, upload=up_ms_slope,
                        download=down_ms if symmetric else zeros_t, remote=0.0)
        return base, slope
    if objective != "energy":
        raise NscompileError(f"unknown objective '{objective}'; use one of {', '.join(OBJECTIVES)}")
    radio = ann.device.radio(grid.radio)
    idle_w = ann.device.idle_power_w
    # tx energy = (ms at 1 Mbps * x) * (alpha * B + beta) = ms1 * alpha + x * ms1 * beta
    if symmetric:
        down_base, down_slope = down_ms * radio.down_alpha_w_per_mbps, down_ms * radio.down_beta_w
    else:
        rx_ms = down_ms / grid.downlink_mbps
        down_base, down_slope = rx_ms * (radio.down_alpha_w_per_mbps * grid.downlink_mbps + radio.down_beta_w), zeros_t
    base = Weights(device=device_load * ann.device_ms * ann.device_power_w, cloud=load * ann.cloud_ms * idle_w,
                   upload=up_ms_slope * radio.up_alpha_w_per_mbps, download=down_base, remote=grid.rtt_ms * idle_w)
    slope = Weights(device=zeros_n, cloud=zeros_n, upload=up_ms_slope * radio.up_beta_w, download=down_slope, remote=0.0)
    return base, slope


def encoded_weights(objective: str, ann: Annotation, base: Weights, slope: Weights, wire: np.ndarray,
                    codec: Codec, load: float, device_load: float = 1.0) -> tuple[Weights, Weights]:
    """The objective at server load ``load`` and device load ``device_load`` when the cut
    tensors travel under ``codec``'s encoding.

    Every upload term of :func:`objective_weights` is proportional to the tensor's bytes,
    so it scales with the encoded size; each encoded tensor adds its codec's time: encoding
    on the device (at compute power, for energy) and decoding on the server (times the
    load, the device idle meanwhile).
    """
    ratio = np.divide(codec.wire_bytes, wire, out=np.ones_like(wire), where=wire > 0)
    if objective == "latency":
        codec_cost = device_load * codec.device_ms + load * codec.cloud_ms
    else:
        codec_cost = (device_load * codec.device_ms * ann.device.compute_power_w
                      + load * codec.cloud_ms * ann.device.idle_power_w)
    return replace(base, upload=base.upload * ratio + codec_cost), replace(slope, upload=slope.upload * ratio)


def usable_encodings(model: LoadedModel, encodings: str | Iterable[str]) -> tuple[tuple[str, ...], list[str]]:
    """The requested encodings (names, or a comma list) this model can use, and a note for each it cannot."""
    opset = max((o.version for o in model.model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    usable, notes = [], []
    for enc in parse_encodings(encodings):
        if enc == "int8" and opset < INT8_MIN_OPSET:
            notes.append(f"int8 left out: it needs ONNX opset >= {INT8_MIN_OPSET} (DynamicQuantizeLinear), the model imports {opset}")
        else:
            usable.append(enc)
    return tuple(usable), notes


def plan(model: LoadedModel, ann: Annotation, grid: GridSpec, objective: str = "latency",
         include_all_cloud: bool = False, encodings: str | Iterable[str] = (LOSSLESS,)) -> Plan:
    """Solve every load row of the grid for both objectives and name the chosen cuts.

    Args:
        model: the loaded model.
        ann: its annotation.
        grid: bandwidth buckets, load levels and fixed conditions.
        objective: the objective whose table goes into ``plan.json``'s ``table``.
        include_all_cloud: emit the all-cloud cut even where no bucket selects it (a
            benchmark measuring "everything on the server" needs it; no table refers to it).
        encodings: cut-tensor encodings to consider (:mod:`nscompile.encoding`; ``fp32``
            must be among them). The default is the plain problem, fp32 only.

    Returns:
        The plan: distinct cuts (all-device always among them), tables and breakpoints.

    Raises:
        NscompileError: an unknown objective or encoding.
    """
    if objective not in OBJECTIVES:
        raise NscompileError(f"unknown objective '{objective}'; use one of {', '.join(OBJECTIVES)}")
    usable, notes = usable_encodings(model, encodings)
    graph, names = cut_graph(model)
    wire = tensor_wire_bytes(model, names, grid.input_bytes)
    codecs = {enc: codec_costs(model, ann, names, wire, enc) for enc in usable if enc != LOSSLESS}
    bandwidth = np.asarray(grid.bandwidth_mbps)
    x_lo, x_hi = 1.0 / bandwidth[-1], 1.0 / bandwidth[0]

    full = np.ones(graph.n_nodes, dtype=bool)
    masks = {full.tobytes(): full}
    always = [(full.tobytes(), LOSSLESS)]
    if include_all_cloud:
        masks[(~full).tobytes()] = ~full
        always.append(((~full).tobytes(), LOSSLESS))
    lines: dict[str, list[list[list[_Line]]]] = {}
    weights_of: dict[tuple[str, int, int, str], tuple[Weights, Weights]] = {}  # (objective, level, load, encoding)
    solves = 0
    for obj in OBJECTIVES:
        lines[obj] = []
        for di, device_load in enumerate(grid.device_load):
            level = []
            for li, load in enumerate(grid.load):
                base, slope = objective_weights(obj, ann, graph, wire, load, grid, device_load)
                row: dict[tuple[bytes, str], _Line] = {}  # fp32 first: the lossless pair wins exact ties
                for enc in usable:
                    weights = ((base, slope) if enc == LOSSLESS
                               else encoded_weights(obj, ann, base, slope, wire, codecs[enc], load, device_load))
                    weights_of[obj, di, li, enc] = weights
                    segments = lower_envelope(graph, *weights, x_lo, x_hi)
                    solves += segments.n_solves
                    for seg in segments:
                        key = seg.cut.device.tobytes()
                        masks.setdefault(key, seg.cut.device.copy())
                        # A set that uploads nothing encodable costs the same under every encoding: it is the fp32 pair.
                        changes = enc != LOSSLESS and codecs[enc].encodable[upload_set(graph, seg.cut.device)].any()
                        actual = enc if changes else LOSSLESS
                        row.setdefault((key, actual), _Line(seg.intercept, seg.slope, key, actual))
                level.append(list(row.values()))
            lines[obj].append(level)
    fronts, coefficients, front_solves = _solve_fronts(graph, grid, usable, codecs, weights_of, lines, masks)
    candidates = _Candidates(graph, names, wire, codecs, masks, lines, always, fronts, coefficients)
    stats = {"min_cuts": solves, "pareto_min_cuts": front_solves, "nodes": graph.n_nodes, "tensors": len(names),
             "notes": notes}
    return _tabulate(model, ann, grid, objective, candidates, usable, stats, dropped=[])


def energy_model(ann: Annotation, grid: GridSpec) -> dict:
    """What the runtime needs to predict a cut's device energy (``plan.json``'s ``energy_model``).

    The device profile's compute and idle power, and the radio model of the grid's network
    (Huang et al.'s ``P = alpha * Mbps + beta``): with a cut's ``predicted`` figures that is
    :func:`objective_weights`' energy objective (``nscompile.runtime.plan.Cut.energy_mj``).

    Raises:
        NscompileError: the device profile has no radio model for ``grid.radio``.
    """
    radio = ann.device.radio(grid.radio)
    return {"compute_power_w": float(ann.device.compute_power_w), "idle_power_w": float(ann.device.idle_power_w),
            "radio": {"name": grid.radio, "up_alpha_w_per_mbps": radio.up_alpha_w_per_mbps, "up_beta_w": radio.up_beta_w,
                      "down_alpha_w_per_mbps": radio.down_alpha_w_per_mbps, "down_beta_w": radio.down_beta_w}}


def bucket_centres(bandwidth_mbps) -> np.ndarray:
    """Each bucket's representative uplink: its geometric centre; the open last bucket, its start."""
    bandwidth = np.asarray(bandwidth_mbps, dtype=np.float64)
    return np.append(np.sqrt(bandwidth[:-1] * bandwidth[1:]), bandwidth[-1])


def _solve_fronts(graph: CutGraph, grid: GridSpec, usable: tuple[str, ...], codecs: dict[str, Codec],
                  weights_of: dict, lines: dict[str, list[list[list[_Line]]]], masks: dict[bytes, np.ndarray]):
    """The exact latency-energy front of every condition, at each bucket's representative uplink.

    A front belongs to a point, not to a bandwidth range: the pairs best for some lam change
    with the bandwidth, and not at the tables' breakpoints. Each bucket's front is solved at
    the point its table cell stands for (:func:`bucket_centres`), so that the front's ends are
    that cell's latency and energy optima; the runtime evaluates the front's cuts at the
    conditions it measures (``nscompile.runtime.plan.Plan.pareto_front``).

    Returns:
        (fronts, coefficients, min-cut solves): ``fronts[level][load][bucket]`` the front's
        pairs fastest first; ``coefficients[level][load][pair]`` every listed pair's latency
        and energy as intercept and slope in x = 1/uplink.
    """
    fronts, coefficients, solves = [], [], 0
    centres = bucket_centres(grid.bandwidth_mbps)
    for di in range(len(grid.device_load)):
        level_fronts, level_coefficients = [], []
        for li in range(len(grid.load)):
            coeffs: dict[tuple[bytes, str], tuple[float, float, float, float]] = {}

            def line_of(key: tuple[bytes, str]) -> tuple[float, float, float, float]:
                if key not in coeffs:
                    mask = masks[key[0]]
                    (lat_base, lat_slope), (en_base, en_slope) = (weights_of["latency", di, li, key[1]],
                                                                  weights_of["energy", di, li, key[1]])
                    coeffs[key] = (evaluate(graph, lat_base, mask), evaluate(graph, lat_slope, mask),
                                   evaluate(graph, en_base, mask), evaluate(graph, en_slope, mask))
                return coeffs[key]

            row_fronts, previous = [], []
            for centre in centres:
                x = 1.0 / centre
                # The ends are exact already: the least latency and the least energy at x over
                # every encoding's envelope. The previous bucket's front is a good start.
                ends = [min(lines[obj][di][li], key=lambda ln: ln.intercept + x * ln.slope) for obj in OBJECTIVES]
                hints = [(masks[k], usable.index(e)) for k, e in dict.fromkeys([*((ln.mask, ln.encoding) for ln in ends),
                                                                                 *previous])]
                options = [(weights_of["latency", di, li, e][0].combine(weights_of["latency", di, li, e][1], x),
                            weights_of["energy", di, li, e][0].combine(weights_of["energy", di, li, e][1], x))
                           for e in usable]
                front = pareto_front(graph, options, hints, hints_hold_ends=True)
                solves += front.n_solves
                keys = []
                for point in front:
                    key = point.cut.device.tobytes()
                    masks.setdefault(key, point.cut.device.copy())
                    enc = usable[point.option]
                    # As for the tables: a set that uploads nothing encodable is the fp32 pair.
                    changes = enc != LOSSLESS and codecs[enc].encodable[upload_set(graph, point.cut.device)].any()
                    keys.append((key, enc if changes else LOSSLESS))
                for key in keys:
                    line_of(key)
                row_fronts.append(keys)
                previous = keys
            for obj in OBJECTIVES:  # the table cuts too: a front re-read without dropped pairs falls back on them
                for ln in lines[obj][di][li]:
                    line_of((ln.mask, ln.encoding))
            level_fronts.append(row_fronts)
            level_coefficients.append(coeffs)
        fronts.append(level_fronts)
        coefficients.append(level_coefficients)
    return fronts, coefficients, solves


def replan(model: LoadedModel, ann: Annotation, previous: Plan, drop: Iterable[str]) -> Plan:
    """The plan solved again without some of its lossy cuts (the accuracy gate's rejects).

    The tables are re-read off the lower envelope of the remaining candidates: every pair
    that lay on some encoding's envelope, less every pair dropped so far. No min-cut is
    solved again.

    Args:
        model, ann: as for :func:`plan`.
        previous: a plan made by :func:`plan` (or this function).
        drop: ids of lossy cuts of ``previous``.

    Returns:
        The new plan; its ``dropped`` lists every cut dropped so far.

    Raises:
        ValueError: an id that is not a lossy cut of ``previous``, or a plan without candidates.
    """
    by_id = {c.id: c for c in previous.cuts}
    drop = list(drop)
    bad = [d for d in drop if d not in by_id or not by_id[d].is_lossy]
    if bad:
        raise ValueError(f"cannot drop '{bad[0]}': it is not a lossy cut of the plan")
    if previous.candidates is None:
        raise ValueError("this plan keeps no candidates to solve again; make it with planner.plan")
    keys = {(by_id[d].device.tobytes(), by_id[d].encoding) for d in drop}
    candidates = replace(previous.candidates, excluded=previous.candidates.excluded | keys)
    return _tabulate(model, ann, previous.grid, previous.objective, candidates, previous.encodings, dict(previous.stats),
                     dropped=previous.dropped + drop)


def _tabulate(model: LoadedModel, ann: Annotation, grid: GridSpec, objective: str, cands: _Candidates,
              encodings: tuple[str, ...], stats: dict, dropped: list[str]) -> Plan:
    """Tables, breakpoints and cuts from the candidates' combined lower envelope per device level and load row."""
    bandwidth = np.asarray(grid.bandwidth_mbps)
    centres = bucket_centres(bandwidth)
    x_lo, x_hi = 1.0 / bandwidth[-1], 1.0 / bandwidth[0]
    pairs = dict.fromkeys(cands.always)
    raw_tables, raw_mixed, raw_breaks = {}, {}, {}
    for obj, levels in cands.lines.items():
        raw_tables[obj], raw_mixed[obj], raw_breaks[obj] = [], [], []
        for rows in levels:
            tables, mixes, breaks = [], [], []
            for row_lines in rows:
                live = [ln for ln in row_lines if (ln.mask, ln.encoding) not in cands.excluded]
                pieces = lines_envelope([ln.intercept for ln in live], [ln.slope for ln in live], x_lo, x_hi)
                keys = [(live[i].mask, live[i].encoding) for _, _, i in pieces]
                pairs.update(dict.fromkeys(keys))
                # Pieces run in x = 1/B ascending, i.e. bandwidth descending.
                starts_x = np.array([x_from for x_from, _, _ in pieces])
                row, mixed = [], []
                for b, centre in enumerate(centres):
                    row.append(keys[_segment_at(starts_x, 1.0 / centre)])
                    top = 1.0 / bandwidth[b + 1] if b + 1 < len(bandwidth) else x_lo
                    inner = (starts_x > top) & (starts_x < 1.0 / bandwidth[b])
                    mixed.append(bool(inner.any()))
                tables.append(row)
                mixes.append(mixed)
                row_breaks = [(0.0 if i == len(pieces) - 1 else 1.0 / pieces[i + 1][0], keys[i]) for i in range(len(pieces))]
                breaks.append(sorted(row_breaks, key=lambda b: b[0]))
            raw_tables[obj].append(tables)
            raw_mixed[obj].append(mixes)
            raw_breaks[obj].append(breaks)

    raw_fronts = _read_fronts(cands, raw_tables, centres)
    for rows in raw_fronts:
        for row in rows:
            for front in row:
                pairs.update(dict.fromkeys(front))

    chosen = list(pairs)
    cuts = _describe_cuts(model, ann, cands.graph, cands.names, cands.wire, [cands.masks[m] for m, _ in chosen],
                          [e for _, e in chosen], cands.codecs)
    by_key = {(c.device.tobytes(), c.encoding): c.id for c in cuts}
    tables = {o: [[[by_key[k] for k in row] for row in rows] for rows in levels] for o, levels in raw_tables.items()}
    breakpoints = {o: [[[(round(b, 6), by_key[k]) for b, k in row] for row in rows] for rows in levels]
                   for o, levels in raw_breaks.items()}
    distinct: dict[tuple[str, ...], int] = {}  # many conditions share a front: store each once
    index = [[[distinct.setdefault(tuple(by_key[k] for k in front), len(distinct)) for front in row] for row in rows]
             for rows in raw_fronts]
    return Plan(grid=grid, objective=objective, cuts=cuts, device_tables=tables, device_mixed=raw_mixed,
                device_breakpoints=breakpoints, fallback=by_key[cands.always[0]],
                pareto_fronts=[list(f) for f in distinct], pareto_index=index, energy_model=energy_model(ann, grid),
                stats=stats, encodings=encodings,
                dropped=dropped, candidates=cands)


def _read_fronts(cands: _Candidates, raw_tables: dict, centres: np.ndarray) -> list[list[list[list[tuple[bytes, str]]]]]:
    """Each condition's front over its solved pairs less the dropped ones, fastest first.

    The condition's latency and energy table cells join the candidates: they are the
    front's ends while nothing is dropped, and what stands in for a dropped end after.
    (As for the tables, nothing is solved again: a pair that no solve found is not found now.)
    """
    fronts = []
    for di, level in enumerate(cands.fronts):
        level_fronts = []
        for li, row in enumerate(level):
            coeffs = cands.coefficients[di][li]
            row_fronts = []
            for b, solved in enumerate(row):
                ends = [raw_tables[obj][di][li][b] for obj in OBJECTIVES]
                live = [k for k in dict.fromkeys([*solved, *ends]) if k not in cands.excluded]
                x = 1.0 / centres[b]
                latency = [coeffs[k][0] + x * coeffs[k][1] for k in live]
                energy = [coeffs[k][2] + x * coeffs[k][3] for k in live]
                row_fronts.append([live[i] for _, _, i in lines_front(latency, energy)])
            level_fronts.append(row_fronts)
        fronts.append(level_fronts)
    return fronts


def _segment_at(starts_x: np.ndarray, x: float) -> int:
    return max(0, int(np.searchsorted(starts_x, x, side="right")) - 1)


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.") or "node"


# Ops that only relabel or pass data on: a cut behind one is named after the layer before it,
# as the paper calls the cut behind AlexNet's flatten "pool5".
_PASS_THROUGH = {"Flatten", "Reshape", "Squeeze", "Unsqueeze", "Identity", "Dropout"}


def _layer_of(model: LoadedModel, index: int) -> int:
    """The node a cut behind node ``index`` is named after: skip pass-through ops upwards."""
    node = model.nodes[index]
    while node.op_type in _PASS_THROUGH:
        data = model.tensors.get(node.input[0]) if node.input else None
        if data is None or data.producer < 0:
            break
        index, node = data.producer, model.nodes[data.producer]
    return index


def prefix_io(model: LoadedModel, mask: np.ndarray, upload: list[str], device_outputs: list[str]) -> tuple[list[str], list[str]]:
    """The graph inputs and outputs of the prefix running the masked nodes.

    It is fed the model inputs its nodes read and returns what it sends (less the model
    inputs forwarded as they are) and the graph outputs it computes.
    """
    inputs = [i for i in model.inputs if any(mask[c] for c in model.tensors[i].consumers)]
    sent = [t for t in upload if not model.tensors[t].is_input]
    return inputs, list(dict.fromkeys(sent + device_outputs))


def _set_name(model: LoadedModel, mask: np.ndarray, producers: list[int]) -> str:
    """A device set's name: the layer it cuts behind (``producers``: the nodes making its upload)."""
    nodes = model.nodes
    if not mask.any():
        return "input"
    if mask.all():
        return _safe(nodes[max(model.tensors[o].producer for o in model.outputs)].name)
    if producers:
        return _safe(nodes[_layer_of(model, producers[-1])].name) + (f"_and{len(producers) - 1}" if len(producers) > 1 else "")
    return "input_and_device"


def _describe_cuts(model: LoadedModel, ann: Annotation, graph: CutGraph, names: list[str], wire: np.ndarray,
                   masks: list[np.ndarray], encodings: list[str] | None = None,
                   codecs: dict[str, Codec] | None = None) -> list[CutChoice]:
    """Name each device set after the layer it cuts behind, as the paper names split points.

    ``encodings[i]`` is the encoding of ``masks[i]`` (default: all fp32; a set may come
    with several); a lossy pair's id is its set's name plus ``@<encoding>``.
    """
    encodings = encodings or [LOSSLESS] * len(masks)
    cuts, taken, named = [], set(), {}
    order = sorted(range(len(masks)), key=lambda i: (int(masks[i].sum()), masks[i].tobytes(), ENCODINGS.index(encodings[i])))
    for i in order:
        mask, encoding = masks[i], encodings[i]
        up = list(upload_set(graph, mask))
        up_names = [names[t] for t in up]
        producers = sorted({int(graph.producers[t]) for t in up if graph.producers[t] >= 0})
        ident = named.get(mask.tobytes())
        if ident is None:
            base = ident = _set_name(model, mask, producers)
            k = 2
            while ident in taken:
                ident, k = f"{base}_{k}", k + 1
            taken.add(ident)
            named[mask.tobytes()] = ident
        codec = (codecs or {}).get(encoding)
        wire_bytes = wire if codec is None else codec.wire_bytes
        encode_ms = float(codec.device_ms[up].sum()) if codec is not None else 0.0
        decode_ms = float(codec.cloud_ms[up].sum()) if codec is not None else 0.0
        device_outputs = [o for o in model.outputs if model.tensors[o].producer >= 0 and mask[model.tensors[o].producer]]
        download = [o for o in model.outputs if o not in device_outputs]
        # Each side that runs anything pays its session's fixed per-run cost once, and a
        # little per tensor it binds. The solver leaves these microseconds out (a constant
        # per non-empty side is not a cut cost); the predictions reported here include them.
        # The codec times include binding the extra tensors an encoding sends.
        nodes_ms = float(ann.device_ms[mask].sum()) + encode_ms
        prefix_in, prefix_out = prefix_io(model, mask, up_names, device_outputs)
        device_ms = ann.device.run_ms(nodes_ms, len(prefix_in), len(prefix_out))
        run_mj = (device_ms - nodes_ms) * ann.device.compute_power_w
        cloud_ms = ann.cloud.run_ms(float(ann.cloud_ms[~mask].sum()) + decode_ms, len(up_names), len(download))
        cuts.append(CutChoice(
            id=ident if encoding == LOSSLESS else f"{ident}@{encoding}", device=mask, upload=up_names,
            device_outputs=device_outputs, download=download, device_ms=device_ms, cloud_ms=cloud_ms,
            device_compute_mj=float((ann.device_ms * ann.device_power_w)[mask].sum()) + (encode_ms * ann.device.compute_power_w) + run_mj,
            upload_bytes=int(wire_bytes[up].sum()) if up else 0,
            download_bytes=int(sum(model.tensors[o].nbytes for o in download)),
            encoding=encoding, wire=wire_layout(model, up_names, encoding),
        ))
    return cuts
