"""Read ``plan.json`` on a device and look the cut up for the measured conditions.

Needs only the standard library. The look-up is the hot path of every request, so the
plan's exact breakpoints are turned into sorted lists once and searched with bisect; the
latency-energy front of a condition is a bisect to its bucket, then a handful of cuts
evaluated at the measured conditions (:meth:`Plan.pareto_front`).
"""

from __future__ import annotations

import json
import math
from bisect import bisect_right
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath

from nscompile.errors import NscompileError
from nscompile.runtime.contract import PLAN_SCHEMA

#: Transfer milliseconds per byte at 1 Mbit/s (8 bits / 1e6 bit/s = 8e-6 s).
MS_PER_BYTE_AT_1MBPS = 8e-3


@dataclass(frozen=True)
class TensorSpec:
    """A tensor crossing the cut (or a model input/output)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    bytes: int = 0


@dataclass(frozen=True)
class EnergyModel:
    """The device's power figures and its radio model (``plan.json``'s ``energy_model``).

    Radio power is Huang et al.'s ``alpha * Mbps + beta`` (MobiSys 2012) while sending and
    receiving; the device idles at ``idle_power_w`` while the server works and during the RTT.
    """

    compute_power_w: float
    idle_power_w: float
    radio: str
    up_alpha_w_per_mbps: float
    up_beta_w: float
    down_alpha_w_per_mbps: float
    down_beta_w: float

    @classmethod
    def from_doc(cls, doc: dict, where: str = "plan.json") -> EnergyModel:
        """The model from ``plan.json``'s ``energy_model``.

        Raises:
            NscompileError: a figure is missing, negative or not a number.
        """
        try:
            radio = doc["radio"]
            values = {k: float(doc[k]) for k in ("compute_power_w", "idle_power_w")}
            values.update({k: float(radio[k]) for k in ("up_alpha_w_per_mbps", "up_beta_w",
                                                        "down_alpha_w_per_mbps", "down_beta_w")})
        except (KeyError, TypeError, ValueError):
            raise NscompileError(f"{where}: energy_model lacks power or radio figures; rebuild the plan") from None
        bad = [k for k, v in values.items() if not (math.isfinite(v) and v >= 0)]
        if bad:
            raise NscompileError(f"{where}: energy_model.{bad[0]} must be a non-negative number; rebuild the plan")
        return cls(radio=str(radio.get("name", "")), **values)


@dataclass(frozen=True)
class ParetoPoint:
    """One cut of a latency-energy front, with its predicted latency and device energy."""

    cut: str
    latency_ms: float
    energy_mj: float


@dataclass(frozen=True)
class Cut:
    """One emitted cut: what the device runs, what it uploads, which server model finishes it."""

    id: str
    tensors: tuple[TensorSpec, ...]
    device_outputs: tuple[str, ...]
    prefix: Path | None  # resolved inside the device directory
    cloud_model: str | None
    predicted: dict = field(default_factory=dict)
    encoding: str = "fp32"  # how the tensors travel: fp32, fp16 or int8 (the prefix encodes them itself)
    energy: EnergyModel | None = None  # the plan's energy model; None: the plan has none

    @property
    def all_device(self) -> bool:
        """True for the cut that needs no server."""
        return self.cloud_model is None

    @classmethod
    def from_doc(cls, doc: dict, device_dir: Path = Path("."), where: str = "plan.json",
                 energy: EnergyModel | None = None) -> Cut:
        """A cut from its entry in ``plan.json``'s ``cuts``.

        Args:
            doc: the entry.
            device_dir: the directory the prefix file is looked for in.
            where: the plan's path, for error messages.
            energy: the plan's energy model (for :meth:`energy_mj`).

        Raises:
            NscompileError: a tensor entry lacks name, shape or dtype.
        """
        prefix = None
        if doc.get("prefix"):
            # Paths are relative to the build directory; on a device only the file
            # name inside device_dir is meaningful.
            prefix = device_dir / PurePosixPath(doc["prefix"]).name
        cloud = doc.get("cloud_model")
        if cloud is None and doc.get("suffix"):
            cloud = PurePosixPath(doc["suffix"]).parts[1]  # cloud/<name>/1/model.onnx
        return cls(
            id=str(doc["id"]),
            tensors=tuple(_spec(t, where) for t in doc.get("tensors", [])),
            device_outputs=tuple(doc.get("device_outputs", [])),
            prefix=prefix,
            cloud_model=cloud,
            predicted=dict(doc.get("predicted") or {}),
            encoding=str(doc.get("encoding") or "fp32"),
            energy=energy,
        )

    def latency_ms(self, uplink_mbps: float, load: float = 1.0, rtt_ms: float = 0.0,
                   downlink_mbps: float | None = None, device_load: float = 1.0) -> float:
        """The plan's predicted latency of one request through this cut (DESIGN.md's Latency(S)).

        Kd x device + K x cloud + upload / uplink + download / downlink + RTT, from the
        ``predicted`` figures the build wrote; the all-device cut costs its device time
        alone. The planner's solver minimises the same sum over every device set at once.

        Args:
            uplink_mbps: uplink bandwidth in Mbit/s.
            load: server slowdown factor K >= 1.
            rtt_ms: round-trip time in ms.
            downlink_mbps: downlink bandwidth in Mbit/s; None: equal to the uplink (the
                planner's symmetric link); ``math.inf``: downloads cost nothing.
            device_load: device slowdown factor Kd against its profile (1 = as profiled).

        Returns:
            Milliseconds.

        Raises:
            KeyError: the plan predicts no ``device_ms`` (all-device) or ``cloud_ms`` (a split).
        """
        p = self.predicted
        if self.all_device:
            return device_load * p["device_ms"]
        ms = (device_load * p.get("device_ms", 0.0) + load * p["cloud_ms"]
              + p.get("upload_bytes", 0) * MS_PER_BYTE_AT_1MBPS / uplink_mbps)
        ms += p.get("download_bytes", 0) * MS_PER_BYTE_AT_1MBPS / (downlink_mbps or uplink_mbps)
        return ms + rtt_ms

    def energy_mj(self, uplink_mbps: float, load: float = 1.0, rtt_ms: float = 0.0,
                  downlink_mbps: float | None = None, device_load: float = 1.0) -> float:
        """The plan's predicted device energy of one request through this cut (DESIGN.md's Energy(S)).

        Kd x the prefix's compute energy (``predicted.device_compute_mj``: the nodes and the
        encoding at the profile's compute power), idle power while the server works (K x
        cloud ms) and during the RTT, and the radio's ``alpha * Mbps + beta`` while sending
        ``upload_bytes`` and receiving ``download_bytes``; the all-device cut costs its
        compute alone. The planner's solver minimises the same sum (less the few
        microseconds of fixed per-run cost that no cut changes) over every device set.

        Args:
            uplink_mbps: uplink bandwidth in Mbit/s.
            load: server slowdown factor K >= 1.
            rtt_ms: round-trip time in ms.
            downlink_mbps: downlink bandwidth in Mbit/s; None: equal to the uplink;
                ``math.inf``: receiving takes no time (the radio's per-bit energy remains).
            device_load: device slowdown factor Kd against its profile.

        Returns:
            Millijoules.

        Raises:
            NscompileError: the plan carries no energy model (built before it had one).
            KeyError: the plan predicts no ``device_compute_mj`` or (a split) ``cloud_ms``.
        """
        e = self.energy
        if e is None:
            raise NscompileError("this plan has no energy_model to predict energy with; rebuild it with this nscompile")
        p = self.predicted
        mj = device_load * p["device_compute_mj"]
        if self.all_device:
            return mj
        mj += e.idle_power_w * (load * p["cloud_ms"] + rtt_ms)
        # Transfer time (bytes * 8e-3 / Mbps ms) times alpha * Mbps + beta watts: written so
        # that an infinite rate leaves the per-bit term and drops the time-based one.
        mj += p.get("upload_bytes", 0) * MS_PER_BYTE_AT_1MBPS * (e.up_alpha_w_per_mbps + e.up_beta_w / uplink_mbps)
        down = downlink_mbps or uplink_mbps
        mj += p.get("download_bytes", 0) * MS_PER_BYTE_AT_1MBPS * (e.down_alpha_w_per_mbps + e.down_beta_w / down)
        return mj


def _spec(raw: dict, where: str) -> TensorSpec:
    try:
        return TensorSpec(
            name=str(raw["name"]),
            shape=tuple(int(d) for d in raw["shape"]),
            dtype=str(raw["dtype"]),
            bytes=int(raw.get("bytes", 0)),
        )
    except (KeyError, TypeError, ValueError):
        raise NscompileError(f"{where}: a tensor entry lacks name/shape/dtype; rebuild the plan") from None


class Plan:
    """A device's view of ``plan.json``: cuts, fallback and the look-up structures.

    Attributes:
        raw: the parsed JSON.
        model_name, model_sha256: the model the plan was built from.
        inputs, outputs: the model's graph inputs and outputs.
        cuts: cut id -> :class:`Cut`.
        fallback: the all-device cut's id.
        loads: the server load levels of the grid rows, ascending.
        device_loads: the device slowdown levels the plan was solved for (``[1.0]`` for a
            plan without that axis).
        rtt_ms: the round-trip time the plan assumed.
    """

    def __init__(self, raw: dict, device_dir: Path):
        self.raw = raw
        where = str(device_dir / "plan.json")
        if raw.get("schema") != PLAN_SCHEMA:
            raise NscompileError(
                f"{where} has schema {raw.get('schema')!r}, expected {PLAN_SCHEMA!r}; "
                "rebuild with this nscompile version"
            )
        try:
            model = raw["model"]
            self.model_name = str(model["name"])
            self.model_sha256 = str(model["sha256"])
            self.inputs = tuple(_spec(t, where) for t in model["inputs"])
            self.outputs = tuple(_spec(t, where) for t in model["outputs"])
            grid = raw["grid"]
            cuts_raw = raw["cuts"]
        except (KeyError, TypeError):
            raise NscompileError(f"{where} lacks model/cuts/grid; rebuild the plan") from None
        self.rtt_ms = float(grid.get("rtt_ms") or 0.0)
        self.downlink_mbps = grid.get("downlink_mbps")
        self.energy_model = EnergyModel.from_doc(raw["energy_model"], where) if raw.get("energy_model") else None
        self.cuts: dict[str, Cut] = {}
        for c in cuts_raw:
            cut = Cut.from_doc(c, device_dir, where, self.energy_model)
            self.cuts[cut.id] = cut
        self.fallback = str(raw.get("fallback") or "")
        if self.fallback not in self.cuts:
            devices = [c.id for c in self.cuts.values() if c.all_device]
            if not devices:
                raise NscompileError(f"{where} has no all-device cut to fall back on; rebuild the plan")
            self.fallback = devices[0]
        fb = self.cuts[self.fallback]
        if not fb.all_device or fb.prefix is None:
            raise NscompileError(f"{where}: fallback cut {self.fallback!r} is not an all-device cut")
        for cut in self.cuts.values():
            if cut.prefix is not None and not cut.prefix.is_file():
                raise NscompileError(
                    f"prefix model {cut.prefix} of cut {cut.id!r} is missing; copy the whole "
                    "device/ directory of the build"
                )
        self.loads = [float(x) for x in grid.get("load", [1])]
        self.device_loads = [float(x) for x in grid.get("device_load", [1])]
        # objective -> [device level] -> [server level] -> (bandwidth starts, cut ids)
        self._tables: dict[str, list[list[tuple[list[float], list[str]]]]] = {}
        self._build_lookup(grid, where)
        self._bandwidths = [float(b) for b in grid.get("bandwidth_mbps", [])]
        self._fronts, self._front_index = self._read_pareto(raw.get("pareto"), where)

    def _build_lookup(self, grid: dict, where: str) -> None:
        # Every source as [device level][server level]. `breakpoints` / `tables` (and
        # `table`) are the slice at device load 1, all a plan without the device axis has;
        # `device_breakpoints` / `device_tables` hold every level. Later sources win: a
        # source with every device level beats a slice, exact breakpoints beat buckets.
        tables = dict(self.raw.get("tables") or {})
        if "table" in self.raw:
            tables.setdefault(grid.get("objective", "latency"), self.raw["table"])
        sources: dict[str, tuple[str, list]] = {}
        for kind, key, sliced in (("table", None, True), ("points", "breakpoints", True),
                                  ("table", "device_tables", False), ("points", "device_breakpoints", False)):
            for obj, value in (tables if key is None else self.raw.get(key) or {}).items():
                sources[obj] = (kind, [value] if sliced else value)
        bandwidths = [float(b) for b in grid.get("bandwidth_mbps", [])]
        for obj, (kind, levels) in sources.items():
            if len(levels) != len(self.device_loads):
                raise NscompileError(
                    f"{where}: objective {obj!r} has {len(levels)} device-load levels but grid.device_load "
                    f"has {len(self.device_loads)}; rebuild the plan"
                )
            self._tables[obj] = [self._rows(kind, rows, bandwidths, obj, where) for rows in levels]
        if not self._tables:
            raise NscompileError(f"{where} has neither breakpoints nor a table; rebuild the plan")
        self._log_loads = [math.log(max(x, 1e-9)) for x in self.loads]
        self._log_device_loads = [math.log(max(x, 1e-9)) for x in self.device_loads]

    def _rows(self, kind: str, rows: list, bandwidths: list[float], obj: str, where: str) -> list[tuple[list[float], list[str]]]:
        """One device level's server-load rows as (bandwidth starts, cut ids), checked."""
        out = []
        for row in rows:
            if kind == "points":
                pts = sorted(row, key=lambda p: float(p["from_mbps"]))
                out.append(([float(p["from_mbps"]) for p in pts], [str(p["cut"]) for p in pts]))
            else:  # only buckets: the cell starting at bandwidth_mbps[b] holds table[l][b]
                out.append((list(bandwidths), [str(c) for c in row]))
        if len(out) != len(self.loads):
            raise NscompileError(
                f"{where}: objective {obj!r} has {len(out)} load rows but the grid has "
                f"{len(self.loads)} load levels; rebuild the plan"
            )
        for _, ids in out:
            for cid in ids:
                if cid not in self.cuts:
                    raise NscompileError(f"{where}: the table names cut {cid!r} which is not emitted")
        return out

    def _read_pareto(self, doc, where: str) -> tuple[list[tuple[str, ...]], list[list[list[int]]]]:
        """``pareto``'s fronts and index, checked against the grid and the cuts; empty when absent."""
        if not doc:
            return [], []
        try:
            fronts = [tuple(str(c) for c in front) for front in doc["fronts"]]
            index = [[[int(i) for i in row] for row in rows] for rows in doc["index"]]
        except (KeyError, TypeError, ValueError):
            raise NscompileError(f"{where}: pareto lacks fronts or index; rebuild the plan") from None
        shape_ok = (len(index) == len(self.device_loads) and all(len(rows) == len(self.loads) for rows in index)
                    and all(len(row) == len(self._bandwidths) for rows in index for row in rows))
        if not shape_ok:
            raise NscompileError(f"{where}: pareto.index is not [device level][load][bucket] of the grid; rebuild the plan")
        if any(not 0 <= i < len(fronts) for rows in index for row in rows for i in row):
            raise NscompileError(f"{where}: pareto.index names a front that pareto.fronts does not have; rebuild the plan")
        for front in fronts:
            for cid in front:
                if cid not in self.cuts:
                    raise NscompileError(f"{where}: a pareto front names cut {cid!r} which is not emitted")
            if not front:
                raise NscompileError(f"{where}: pareto.fronts holds an empty front; rebuild the plan")
        return fronts, index

    @property
    def has_pareto(self) -> bool:
        """Whether the plan stores latency-energy fronts (``pareto``) and an energy model to read them with."""
        return bool(self._fronts) and self.energy_model is not None

    def front_cuts(self, bandwidth_mbps: float, load: float = 1.0, device_load: float = 1.0) -> tuple[str, ...]:
        """The stored front of the condition's bucket: cut ids, fastest first at the bucket's centre.

        Returns:
            The ids; empty for a plan without ``pareto``.
        """
        if not self._fronts:
            return ()
        rows = self._front_index[self.device_load_row(device_load)]
        row = rows[self.load_row(load)]
        i = bisect_right(self._bandwidths, bandwidth_mbps) - 1
        return self._fronts[row[i if i >= 0 else 0]]

    def pareto_front(self, bandwidth_mbps: float, load: float = 1.0, rtt_ms: float | None = None,
                     downlink_mbps: float | None = None, device_load: float = 1.0,
                     energy: EnergyModel | None = None) -> list[ParetoPoint]:
        """The latency-energy front at the given conditions, fastest first.

        The candidates are the stored front of the condition's bucket (:meth:`front_cuts`),
        the exact latency and energy optima at this bandwidth (:meth:`lookup`) and the
        all-device cut (a long RTT can make it best); each is evaluated with
        :meth:`Cut.latency_ms` and :meth:`Cut.energy_mj` at these conditions, and the
        points another beats (or equals) in both are dropped. So the list is fastest first
        with energy falling, its ends are the fastest and the least-energy candidate.

        Args:
            bandwidth_mbps: uplink Mbit/s.
            load: server slowdown factor K.
            rtt_ms: round-trip time; None: the RTT the plan assumed.
            downlink_mbps: downlink Mbit/s; None: the plan's (None there: the uplink's).
            device_load: device slowdown Kd (the front is that of the nearest level).
            energy: evaluate the energy with this model instead of the plan's (e.g. the
                radio of another network; the stored fronts were solved with the plan's).

        Returns:
            The points.

        Raises:
            NscompileError: the plan has no energy model (built before it had one).
        """
        if self.energy_model is None and energy is None:
            raise NscompileError("this plan has no energy_model, so no latency-energy front; rebuild it with this nscompile")
        cuts = self.cuts if energy is None else {c: replace(cut, energy=energy) for c, cut in self.cuts.items()}
        ids = dict.fromkeys(self.front_cuts(bandwidth_mbps, load, device_load))
        for objective in ("latency", "energy"):
            if objective in self._tables:
                ids[self.lookup(bandwidth_mbps, load, objective, device_load)] = None
        ids[self.fallback] = None
        rtt = self.rtt_ms if rtt_ms is None else rtt_ms
        down = downlink_mbps if downlink_mbps is not None else (float(self.downlink_mbps) if self.downlink_mbps else None)
        conditions = (bandwidth_mbps, load, rtt, down, device_load)
        points = sorted((ParetoPoint(c, cuts[c].latency_ms(*conditions), cuts[c].energy_mj(*conditions))
                         for c in ids), key=lambda p: (p.latency_ms, p.energy_mj))
        front: list[ParetoPoint] = []
        for p in points:
            if not front or p.energy_mj < front[-1].energy_mj:
                front.append(p)
        return front

    @property
    def objectives(self) -> list[str]:
        """The objectives this plan has tables for."""
        return sorted(self._tables)

    def only_cut(self, objective: str = "latency") -> str | None:
        """The cut every condition of ``objective``'s tables selects, if there is one such cut.

        ``objective`` "pareto": the cut every table and every front of the plan names.
        """
        if objective == "pareto":
            ids = {cid for levels in self._tables.values() for level in levels for _, row in level for cid in row}
            ids.update(cid for front in self._fronts for cid in front)
        else:
            ids = {cid for level in self._tables.get(objective, []) for _, row in level for cid in row}
        return ids.pop() if len(ids) == 1 else None

    def load_row(self, load: float) -> int:
        """Index of the grid row nearest `load` (nearest on a log scale: loads are geometric)."""
        return _nearest_log(self._log_loads, load)

    def device_load_row(self, device_load: float) -> int:
        """Index of the device-load level nearest `device_load` (on a log scale)."""
        return _nearest_log(self._log_device_loads, device_load)

    def lookup(self, bandwidth_mbps: float, load: float = 1.0, objective: str = "latency",
               device_load: float = 1.0) -> str:
        """Return the cut id for the given uplink bandwidth, server load and device load.

        Args:
            bandwidth_mbps: measured uplink bandwidth in Mbit/s.
            load: server slowdown factor (1 = idle).
            objective: "latency" or "energy" (what the plan has tables for).
            device_load: device slowdown factor against its profile (1 = as profiled);
                ignored by a plan without that axis.

        Returns:
            The cut id.

        Raises:
            NscompileError: the plan has no table for `objective`.
        """
        try:
            levels = self._tables[objective]
        except KeyError:
            raise NscompileError(
                f"the plan has no table for objective {objective!r}; use one of {self.objectives}"
            ) from None
        rows = levels[self.device_load_row(device_load)] if len(levels) > 1 else levels[0]
        starts, ids = rows[self.load_row(load)]
        i = bisect_right(starts, bandwidth_mbps) - 1
        return ids[i if i >= 0 else 0]


def _nearest_log(log_levels: list[float], value: float) -> int:
    """Index of the level nearest `value` on a log scale (levels are geometric); a short linear scan."""
    x = math.log(max(value, 1e-9))
    best, dist = 0, abs(log_levels[0] - x)
    for i in range(1, len(log_levels)):
        d = abs(log_levels[i] - x)
        if d < dist:
            best, dist = i, d
    return best


def load_plan(device_dir: str | Path) -> Plan:
    """Read and check ``device_dir/plan.json``.

    Args:
        device_dir: the ``device/`` directory of a build (or a copy of it).

    Returns:
        The :class:`Plan`.

    Raises:
        NscompileError: missing or inconsistent plan, missing prefix files.
    """
    device_dir = Path(device_dir)
    path = device_dir / "plan.json"
    if not path.is_file():
        raise NscompileError(f"{path} not found; pass the device/ directory of a build")
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NscompileError(f"{path} is not valid JSON ({exc}); rebuild the plan") from None
    return Plan(raw, device_dir)
