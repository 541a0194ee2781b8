"""Planning: the optimal device set for every bandwidth x load bucket, and the cuts to emit.

This stage turns the annotated model into the numbers of :mod:`nscompile.partition`
(node costs, tensor sizes, edges) and solves the grid. For a fixed load level the cost of
a device set S is linear in x = 1/uplink: ``cost(S, x) = A(S) + x * D(S)``, for latency
and for device energy alike (Huang et al.'s radio power ``alpha * Mbps + beta`` times the
transfer time ``bits / Mbps`` is also affine in x). So the best cut over the whole
bandwidth axis is a lower envelope of lines whose exact breakpoints a handful of min-cuts
find; the bucket table is read off those breakpoints.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from nscompile.annotate import Annotation
from nscompile.errors import NscompileError
from nscompile.frontend import LoadedModel
from nscompile.partition import CutGraph, Weights, lower_envelope, upload_set
from nscompile.runtime.plan import MS_PER_BYTE_AT_1MBPS

OBJECTIVES = ("latency", "energy")

# Uplink Mbps from OpenSignal 2017 (as used by DADS); downlink and RTT are typical medians.
NETWORK_PRESETS = {
    "CAT1": {"uplink_mbps": 0.13, "downlink_mbps": 0.32, "rtt_ms": 120.0, "radio": "cat1"},
    "3G": {"uplink_mbps": 1.1, "downlink_mbps": 2.0, "rtt_ms": 100.0, "radio": "3g"},
    "LTE": {"uplink_mbps": 5.85, "downlink_mbps": 12.0, "rtt_ms": 50.0, "radio": "lte"},
    "WIFI": {"uplink_mbps": 18.88, "downlink_mbps": 54.0, "rtt_ms": 10.0, "radio": "wifi"},
}


@dataclass(frozen=True)
class GridSpec:
    """The lookup table's axes and the conditions that are not on an axis."""

    bandwidth_mbps: tuple[float, ...]  # bucket starts, ascending (uplink)
    load: tuple[float, ...]  # server slowdown factors K >= 1
    rtt_ms: float = 0.0
    downlink_mbps: float | None = None  # None: symmetric, the downlink equals the uplink
    radio: str = "wifi"  # radio power model for the energy objective
    input_bytes: int | None = None  # upload size of the raw model input (e.g. a JPEG)

    @staticmethod
    def parse(bandwidth: str = "0.1:1000:32", load: str = "1,2,4,8", **kwargs) -> GridSpec:
        """Build a grid from the CLI's ``--bandwidth MIN:MAX:N`` (or a preset list) and ``--load L1,L2``.

        ``bandwidth`` may also be a comma list of preset names or numbers ("3G,LTE,WIFI").

        Raises:
            NscompileError: malformed or non-positive values.
        """
        return GridSpec(bandwidth_mbps=_parse_bandwidth(bandwidth), load=_parse_load(load), **kwargs)


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
    try:
        values = tuple(sorted(float(v) for v in text.split(",")))
        if not values or values[0] < 1:
            raise ValueError
        return values
    except ValueError:
        raise NscompileError(f"bad --load '{text}': write server slowdown factors >= 1, e.g. 1,2,4,8") from None


@dataclass
class CutChoice:
    """One distinct device set that some bucket selects."""

    id: str
    device: np.ndarray  # bool mask over nodes
    upload: list[str]  # tensor names sent to the server (graph inputs included)
    device_outputs: list[str]  # graph outputs computed on the device
    download: list[str]  # graph outputs computed on the server
    device_ms: float
    cloud_ms: float
    device_compute_mj: float
    upload_bytes: int
    download_bytes: int

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
    tables: dict[str, list[list[str]]]  # objective -> [load][bucket] -> cut id
    mixed: dict[str, list[list[bool]]]  # objective -> [load][bucket]: optimum changes inside
    breakpoints: dict[str, list[list[tuple[float, str]]]]  # objective -> [load] -> (from_mbps, cut id)
    fallback: str
    stats: dict = field(default_factory=dict)


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
                      load: float, grid: GridSpec) -> tuple[Weights, Weights]:
    """The objective at load ``load`` as ``base + x * slope`` with x = 1/uplink Mbps.

    Latency is in ms (DESIGN.md's Latency(S)); energy in mJ on the device (Energy(S)):
    compute at the profile's power, idle while the server works and during the RTT, the
    radio at Huang et al.'s ``alpha * Mbps + beta`` while sending and receiving. This is
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
        base = Weights(device=ann.device_ms, cloud=load * ann.cloud_ms, upload=zeros_t,
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
    base = Weights(device=ann.device_ms * ann.device_power_w, cloud=load * ann.cloud_ms * idle_w,
                   upload=up_ms_slope * radio.up_alpha_w_per_mbps, download=down_base, remote=grid.rtt_ms * idle_w)
    slope = Weights(device=zeros_n, cloud=zeros_n, upload=up_ms_slope * radio.up_beta_w, download=down_slope, remote=0.0)
    return base, slope


def plan(model: LoadedModel, ann: Annotation, grid: GridSpec, objective: str = "latency",
         include_all_cloud: bool = False) -> Plan:
    """Solve every load row of the grid for both objectives and name the chosen cuts.

    Args:
        model: the loaded model.
        ann: its annotation.
        grid: bandwidth buckets, load levels and fixed conditions.
        objective: the objective whose table goes into ``plan.json``'s ``table``.
        include_all_cloud: emit the all-cloud cut even where no bucket selects it (a
            benchmark measuring "everything on the server" needs it; no table refers to it).

    Returns:
        The plan: distinct cuts (all-device always among them), tables and breakpoints.
    """
    if objective not in OBJECTIVES:
        raise NscompileError(f"unknown objective '{objective}'; use one of {', '.join(OBJECTIVES)}")
    graph, names = cut_graph(model)
    wire = tensor_wire_bytes(model, names, grid.input_bytes)
    bandwidth = np.asarray(grid.bandwidth_mbps)
    # A bucket's representative point: its geometric centre; the open last bucket, its start.
    centres = np.append(np.sqrt(bandwidth[:-1] * bandwidth[1:]), bandwidth[-1])
    x_lo, x_hi = 1.0 / bandwidth[-1], 1.0 / bandwidth[0]

    sets: dict[bytes, np.ndarray] = {}
    full = np.ones(graph.n_nodes, dtype=bool)
    sets[full.tobytes()] = full
    if include_all_cloud:
        sets[(~full).tobytes()] = ~full
    raw_tables, raw_mixed, raw_breaks, solves = {}, {}, {}, 0
    for obj in OBJECTIVES:
        raw_tables[obj], raw_mixed[obj], raw_breaks[obj] = [], [], []
        for load in grid.load:
            base, slope = objective_weights(obj, ann, graph, wire, load, grid)
            segments = lower_envelope(graph, base, slope, x_lo, x_hi)
            solves += segments.n_solves
            keys = []
            for seg in segments:
                key = seg.cut.device.tobytes()
                sets.setdefault(key, seg.cut.device.copy())
                keys.append(key)
            # Segments run in x = 1/B ascending, i.e. bandwidth descending.
            starts_x = np.array([seg.x_from for seg in segments])
            row, mixed = [], []
            for b, centre in enumerate(centres):
                row.append(keys[_segment_at(starts_x, 1.0 / centre)])
                top = 1.0 / bandwidth[b + 1] if b + 1 < len(bandwidth) else x_lo
                inner = (starts_x > top) & (starts_x < 1.0 / bandwidth[b])
                mixed.append(bool(inner.any()))
            raw_tables[obj].append(row)
            raw_mixed[obj].append(mixed)
            breaks = [(0.0 if i == len(segments) - 1 else 1.0 / segments[i + 1].x_from, keys[i]) for i in range(len(segments))]
            raw_breaks[obj].append(sorted(breaks))

    cuts = _describe_cuts(model, ann, graph, names, wire, list(sets.values()))
    by_key = {c.device.tobytes(): c.id for c in cuts}
    tables = {o: [[by_key[k] for k in row] for row in rows] for o, rows in raw_tables.items()}
    breakpoints = {o: [[(round(b, 6), by_key[k]) for b, k in row] for row in rows] for o, rows in raw_breaks.items()}
    return Plan(grid=grid, objective=objective, cuts=cuts, tables=tables, mixed=raw_mixed, breakpoints=breakpoints,
                fallback=by_key[full.tobytes()], stats={"min_cuts": solves, "nodes": graph.n_nodes, "tensors": len(names)})


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


def _describe_cuts(model: LoadedModel, ann: Annotation, graph: CutGraph, names: list[str], wire: np.ndarray,
                   masks: list[np.ndarray]) -> list[CutChoice]:
    """Name each device set after the layer it cuts behind, as the paper names split points."""
    cuts, taken = [], set()
    nodes = model.nodes
    for mask in sorted(masks, key=lambda m: (int(m.sum()), m.tobytes())):
        up = list(upload_set(graph, mask))
        up_names = [names[t] for t in up]
        producers = sorted({int(graph.producers[t]) for t in up if graph.producers[t] >= 0})
        if not mask.any():
            ident = "input"
        elif mask.all():
            ident = _safe(nodes[max(model.tensors[o].producer for o in model.outputs)].name)
        elif producers:
            ident = _safe(nodes[_layer_of(model, producers[-1])].name) + (f"_and{len(producers) - 1}" if len(producers) > 1 else "")
        else:
            ident = "input_and_device"
        base, k = ident, 2
        while ident in taken:
            ident, k = f"{base}_{k}", k + 1
        taken.add(ident)
        device_outputs = [o for o in model.outputs if model.tensors[o].producer >= 0 and mask[model.tensors[o].producer]]
        download = [o for o in model.outputs if o not in device_outputs]
        # Each side that runs anything pays its session's fixed per-run cost once, and a
        # little per tensor it binds. The solver leaves these microseconds out (a constant
        # per non-empty side is not a cut cost); the predictions reported here include them.
        nodes_ms = float(ann.device_ms[mask].sum())
        prefix_in, prefix_out = prefix_io(model, mask, up_names, device_outputs)
        device_ms = ann.device.run_ms(nodes_ms, len(prefix_in), len(prefix_out))
        run_mj = (device_ms - nodes_ms) * ann.device.compute_power_w
        cloud_ms = ann.cloud.run_ms(float(ann.cloud_ms[~mask].sum()), len(up_names), len(download))
        cuts.append(CutChoice(
            id=ident, device=mask, upload=up_names, device_outputs=device_outputs, download=download,
            device_ms=device_ms, cloud_ms=cloud_ms,
            device_compute_mj=float((ann.device_ms * ann.device_power_w)[mask].sum()) + run_mj,
            upload_bytes=int(wire[up].sum()) if up else 0,
            download_bytes=int(sum(model.tensors[o].nbytes for o in download)),
        ))
    return cuts
