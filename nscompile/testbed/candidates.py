"""The oracle's candidates: device sets the testbed times without asking the cost model.

The oracle of a case is the fastest *measured* forced cut. Drawn from the planner's own
cuts, it could never show a better cut that the cost model mispredicted, so the sets come
from the graph alone (Neurosurgeon timed every layer boundary):

- a chain (every proper prefix of the topological order uploads at most one tensor):
  every layer boundary, i.e. every prefix whose upload is one tensor;
- a DAG: every prefix of the topological order across which at most
  :data:`MAX_CROSSING` tensors travel, thinned evenly to at most :data:`MAX_DAG_SETS`;
- all-device and all-cloud always.

Each set comes under every encoding the build allows that changes what it sends (an
encoding only re-encodes float32 tensors computed on the device), and the build's
emitted cuts, whatever sets they are, are candidates too. Every prefix of a topological
order is closed under producers, so each candidate can be emitted
(:class:`nscompile.backend.CutEmitter`).

The sets are nested (prefixes of one order), which the testbed's pruning uses: a set's
prefix runs at least the nodes of any smaller one (see :mod:`nscompile.testbed.device`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from nscompile.encoding import LOSSLESS, is_encodable
from nscompile.partition import CutGraph, upload_set

#: A DAG prefix is a candidate when at most this many tensors cross it.
MAX_CROSSING = 4
#: At most this many device sets of a DAG (all-device and all-cloud among them).
MAX_DAG_SETS = 24


@dataclass(frozen=True, eq=False)
class Candidate:
    """One forced cut to time: a device set under an encoding.

    Attributes:
        mask: bool per node, the device set.
        encoding: how its upload travels.
        source: "boundary" (a chain's layer boundary), "prefix" (a DAG's topological
            prefix) or "emitted" (a cut of the build that is neither).
        cut_id: the build's id for an emitted cut; None for the others (the emitter names them).
    """

    mask: np.ndarray
    encoding: str
    source: str
    cut_id: str | None = None

    @property
    def key(self) -> tuple[bytes, str]:
        """(device set, encoding): what identifies the pair."""
        return self.mask.tobytes(), self.encoding


def crossings(graph: CutGraph) -> np.ndarray:
    """How many tensors the prefix of the first ``k`` nodes uploads, for k = 0..n_nodes.

    A tensor crosses prefix k when it is made inside it (or is a graph input, which lives
    on the device) and some node from k on reads it: ``producer < k <= last consumer``.
    Graph outputs made on the device are not uploads.
    """
    n = graph.n_nodes
    diff = np.zeros(n + 2, dtype=np.int64)
    for t in range(graph.n_tensors):
        if not graph.consumers[t]:
            continue
        first, last = int(graph.producers[t]) + 1, max(graph.consumers[t])
        if first <= last:
            diff[first] += 1
            diff[last + 1] -= 1
    return np.cumsum(diff)[: n + 1]


def device_sets(graph: CutGraph) -> tuple[str, list[np.ndarray]]:
    """The candidate device sets of a graph whose node ids are in topological order.

    Returns:
        ("chain" or "dag", the sets as bool masks, from all-cloud to all-device).
    """
    n = graph.n_nodes
    cross = crossings(graph)
    inner = range(1, n)
    if all(cross[k] <= 1 for k in inner):
        kind, ks = "chain", [0] + [k for k in inner if cross[k] == 1] + [n]
    else:
        kind, ks = "dag", _thin([0] + [k for k in inner if cross[k] <= MAX_CROSSING] + [n], MAX_DAG_SETS)
    order = np.arange(n)
    return kind, [order < k for k in ks]


def _thin(ks: list[int], most: int) -> list[int]:
    """At most ``most`` of ``ks``, evenly spread over the list, the first and the last kept."""
    if len(ks) <= most:
        return ks
    picks = np.unique(np.round(np.linspace(0, len(ks) - 1, most)).astype(int))
    return [ks[i] for i in picks]


def changed_by(model, graph: CutGraph, names: list[str], mask: np.ndarray) -> bool:
    """Whether a lossy encoding changes what ``mask`` sends (a float32 tensor made on the device crosses)."""
    return any(is_encodable(model.tensors[names[t]]) for t in upload_set(graph, mask))


def oracle_candidates(model, graph: CutGraph, names: list[str], encodings: tuple[str, ...],
                      emitted: dict[str, tuple[np.ndarray, str]]) -> tuple[str, list[Candidate]]:
    """Every forced cut a case times: the graph's device sets under each encoding, and the build's cuts.

    Args:
        model: the loaded model (tensor dtypes, for what an encoding changes).
        graph, names: its cut graph (:func:`nscompile.planner.cut_graph`).
        encodings: the encodings the build allows (``fp32`` among them).
        emitted: the build's cuts, id -> (device set, encoding) (:func:`emitted_sets`).

    Returns:
        ("chain" or "dag", the candidates): a pair the build emitted keeps its id; each
        pair appears once.
    """
    kind, masks = device_sets(graph)
    by_key = {(mask.tobytes(), enc): cut_id for cut_id, (mask, enc) in emitted.items()}
    out, seen = [], set()

    def add(mask: np.ndarray, enc: str, source: str) -> None:
        key = (mask.tobytes(), enc)
        if key not in seen:
            seen.add(key)
            out.append(Candidate(mask, enc, source, by_key.get(key)))

    for mask in masks:
        lossy = changed_by(model, graph, names, mask)
        for enc in encodings:
            if enc == LOSSLESS or lossy:
                add(mask, enc, "boundary" if kind == "chain" else "prefix")
    for mask, enc in emitted.values():
        add(mask, enc, "emitted")
    return kind, out


def emitted_sets(model, build_dir: Path, plan: dict) -> dict[str, tuple[np.ndarray, str]]:
    """The device set and encoding of every cut of a build, read off its prefix files.

    A prefix holds the model's nodes of its device set (under their names) plus, for a
    lossy cut, the codec nodes, which are not the model's; all-cloud has no prefix.
    """
    index = {node.name: i for i, node in enumerate(model.nodes)}
    out = {}
    for cut in plan["cuts"]:
        mask = np.zeros(len(model.nodes), dtype=bool)
        if cut.get("prefix"):
            prefix = onnx.load(str(Path(build_dir) / cut["prefix"]), load_external_data=False)
            for node in prefix.graph.node:
                if node.name in index:
                    mask[index[node.name]] = True
        out[cut["id"]] = (mask, cut.get("encoding") or LOSSLESS)
    return out


#: plan.json key where the testbed lists a build's oracle candidates; bump ``version`` when
#: the choice of candidates changes, so that cached bench builds are made again.
ORACLE_KEY = "oracle"
ORACLE_VERSION = 1


def hex_mask(mask: np.ndarray) -> str:
    """A device set as a hex bit mask (bit i: node i), as the device worker's bounds read it."""
    return format(int.from_bytes(np.packbits(mask.astype(bool), bitorder="little").tobytes(), "little"), "x")


def weight_bytes(model, mask: np.ndarray) -> int:
    """Bytes of stored weights a cut's two sessions hold: the prefix's and the suffix's together."""
    arrays = model.weights.arrays
    total = 0
    for side in (mask, ~mask):
        used = {i for node, on in zip(model.nodes, side) if on for i in node.input}
        total += sum(arrays[n].nbytes for n in used if n in arrays)
    return int(total)


def add_oracle_candidates(model_path: Path, build_dir: Path, plan: dict, device_profile: Path, cloud_profile: Path,
                          encodings: tuple[str, ...]) -> dict:
    """Emit every oracle candidate a build lacks into it and list them all in its ``plan.json``.

    New cuts get ``"oracle_candidate": true`` (no table names them, so the runtime never
    picks one unforced); their suffixes' weights are hard links to the device's weights
    file. A lossy candidate beyond the build's accuracy tolerance is left out, as the
    build leaves out its own, and listed under ``rejected``.

    Returns:
        The updated plan document; its ``oracle`` key holds ``version``, ``kind`` ("chain"
        or "dag"), ``candidates`` (every candidate's cut id, the build's own cuts among
        them), ``sets`` (cut id -> :func:`hex_mask` of every cut of the plan), ``weights``
        (cut id -> :func:`weight_bytes`) and ``rejected``.
    """
    from nscompile.annotate import annotate
    from nscompile.backend import CutEmitter, CutRejected, write_plan
    from nscompile.cost_model import load_profile
    from nscompile.frontend import load_model
    from nscompile.planner import cut_graph, usable_encodings

    model = load_model(model_path)
    ann = annotate(model, load_profile(device_profile), load_profile(cloud_profile))
    graph, names = cut_graph(model)
    emitted = emitted_sets(model, build_dir, plan)
    usable, _ = usable_encodings(model, encodings)
    kind, candidates = oracle_candidates(model, graph, names, usable, emitted)
    sets = {cut_id: hex_mask(mask) for cut_id, (mask, _) in emitted.items()}
    weights = {cut_id: weight_bytes(model, mask) for cut_id, (mask, _) in emitted.items()}
    rejected, entries = [], []
    ids = [c.cut_id for c in candidates if c.cut_id is not None]
    new = [c for c in candidates if c.cut_id is None]
    with CutEmitter(model, ann, build_dir, link_weights=True) as emitter:
        for c, entry in zip(new, emitter.emit_all([(c.mask, c.encoding) for c in new])):
            if isinstance(entry, CutRejected):
                rejected.append({"cut": entry.cut_id, "violations": entry.accuracy["violations"]})
                continue
            if isinstance(entry, Exception):
                raise entry
            entry["oracle_candidate"] = True
            entries.append(entry)
            ids.append(entry["id"])
            sets[entry["id"]] = hex_mask(c.mask)
            weights[entry["id"]] = weight_bytes(model, c.mask)
    plan = {**plan, "cuts": plan["cuts"] + entries}
    plan[ORACLE_KEY] = {"version": ORACLE_VERSION, "kind": kind, "encodings": list(usable), "candidates": ids,
                        "sets": sets, "weights": weights, "rejected": rejected}
    write_plan(build_dir, plan)
    return plan
