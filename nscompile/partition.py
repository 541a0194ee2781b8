"""The partition solver: the best device set S of a DAG, as a pure function of numbers.

Nothing here knows about ONNX. The compiler maps a graph and an objective (latency or
device energy at some bandwidth, load and RTT) onto a :class:`CutGraph` and one or two
:class:`Weights`, then calls :func:`solve` (one operating point),
:func:`lower_envelope` (every bandwidth of a load level at once) or :func:`pareto_front`
(every trade-off ``latency + lambda * energy`` of one condition at once).

Method (DADS, INFOCOM 2019, extended to multi-consumer tensors, graph inputs, downloads
and a fixed remote cost). The source side of an s-t cut is the device:

* node n: edge s->n with capacity ``cloud[n]`` (cut, i.e. paid, when n is on the cloud
  side) plus the download of the graph outputs n produces, and edge n->t with capacity
  ``device[n]``;
* closure: an infinite edge consumer->producer for every tensor edge, so no finite cut
  puts a consumer on the device and its producer on the cloud;
* a tensor with one consumer c: edge p->c with capacity ``upload[t]``; with several, an
  auxiliary vertex v_t, edge p->v_t with capacity ``upload[t]`` and infinite edges
  v_t->c, so the tensor is paid once however many consumers sit on the cloud. A graph
  input has p = s: it lives on the device.

``remote`` (e.g. the RTT) is paid by every set except the full one, which no cut edge
can express; :func:`solve` finds the best cut without it and then compares with the
full set, which is exact (see :func:`solve`).

``scipy.sparse.csgraph.maximum_flow`` is compiled but wants int32 capacities (int64
input silently overflows), so capacities are scaled and rounded; the returned set's
cost is always re-evaluated exactly, and :attr:`Cut.gap` bounds how far above the true
optimum it can be: 0 for small integer costs, a few 1e-6 relative on 2,000-node graphs
(a worst-case bound; the actual error is usually far smaller).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.sparse import csr_array
from scipy.sparse.csgraph import breadth_first_order, maximum_flow

from nscompile.errors import InternalError


class SolverInputError(InternalError, ValueError):
    """The solver was handed inconsistent numbers (a graph, weights or mask that do not fit).

    The planner builds these from a checked model, so inside nscompile this is a bug and
    keeps its traceback; a direct caller of this module can catch it as a ValueError.
    """

__all__ = [
    "SolverInputError",
    "CutGraph",
    "Weights",
    "Cut",
    "Segment",
    "Envelope",
    "is_closed",
    "upload_set",
    "download_set",
    "evaluate",
    "solve",
    "lower_envelope",
    "lines_envelope",
    "FrontPoint",
    "Front",
    "lines_front",
    "pareto_front",
]

# Capacities are int32 in scipy's max-flow. The optimum's cut value is scaled to at most
# _UNIT, finite capacities are clipped at _CLIP (an edge above twice the optimum can never
# be in a minimum cut, see _Network.solve) and infinite edges get _INF. scipy computes
# residuals as capacity - flow in int32, and the closure edge c->p shares its slot with
# the reverse of the upload edge p->c, whose flow makes it capacity + flow: _INF must
# leave room for the whole max flow (at most _UNIT + rounding slack), or the residual
# wraps negative and augmenting paths through closure edges are lost. 2**31 - 1 did.
_UNIT = float(2**29)
_CLIP = 2**30
_INF = 2**30
# A cut is re-solved with a tighter scale when its exact value is below this fraction of
# the bound it was scaled with: precision is relative to the bound, not to the optimum.
_REFINE_BELOW = 0.25
_MAX_REFINE = 2


# --------------------------------------------------------------------------- data


@dataclass(frozen=True, eq=False)
class CutGraph:
    """A DAG of compute nodes and the tensors between them, numbers only.

    Nodes are 0..n_nodes-1. Tensor t is produced by node ``producers[t]``, or by nobody
    (``producers[t] == -1``) when it is a graph input, which lives on the device.
    Acyclicity is not checked: a cycle would only force its nodes onto the same side.

    Attributes:
        n_nodes: number of compute nodes.
        producers: int64[T], producing node of each tensor, -1 for a graph input.
        consumers: per tensor, the consuming nodes (may be empty; duplicates are merged).
        is_output: bool[T], the tensor is a graph output.

    Raises:
        SolverInputError: if an id is out of range, lengths disagree, or a node consumes
            its own output.
    """

    n_nodes: int
    producers: np.ndarray
    consumers: tuple[tuple[int, ...], ...]
    is_output: np.ndarray
    _net: object = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        n = self.n_nodes
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise SolverInputError(f"CutGraph: n_nodes must be a non-negative int, got {n!r}")
        prod = np.asarray(self.producers)
        if prod.ndim != 1 or (prod.size and not np.issubdtype(prod.dtype, np.integer)):
            raise SolverInputError("CutGraph: producers must be a 1-D integer array, one entry per tensor")
        prod = prod.astype(np.int64)
        n_t = prod.size
        if n_t and (prod.min() < -1 or prod.max() >= n):
            bad = int(np.flatnonzero((prod < -1) | (prod >= n))[0])
            raise SolverInputError(
                f"CutGraph: tensor {bad} has producer {int(prod[bad])}, outside -1..{n - 1}; "
                "use -1 for graph inputs"
            )
        if len(self.consumers) != n_t:
            raise SolverInputError(
                f"CutGraph: consumers has {len(self.consumers)} entries but there are {n_t} tensors"
            )
        cons = []
        for t, cs in enumerate(self.consumers):
            cs = tuple(sorted({int(c) for c in cs}))
            if cs and (cs[0] < 0 or cs[-1] >= n):
                raise SolverInputError(f"CutGraph: tensor {t} has a consumer outside 0..{n - 1}: {cs}")
            if prod[t] >= 0 and prod[t] in cs:
                raise SolverInputError(f"CutGraph: node {int(prod[t])} consumes its own output tensor {t}")
            cons.append(cs)
        out = np.asarray(self.is_output, dtype=bool)
        if out.shape != (n_t,):
            raise SolverInputError(f"CutGraph: is_output must be bool[{n_t}], got shape {out.shape}")
        prod.setflags(write=False)
        out = out.copy()
        out.setflags(write=False)
        object.__setattr__(self, "n_nodes", int(n))
        object.__setattr__(self, "producers", prod)
        object.__setattr__(self, "consumers", tuple(cons))
        object.__setattr__(self, "is_output", out)

    @property
    def n_tensors(self) -> int:
        """Number of tensors T."""
        return int(self.producers.size)

    def _network(self) -> "_Network":
        # Built once per graph and reused by every solve: only capacities change.
        if self._net is None:
            object.__setattr__(self, "_net", _Network(self))
        return self._net


def _as_costs(name: str, values, length: int | None = None) -> np.ndarray:
    if np.ndim(values) != 1:
        raise SolverInputError(f"Weights: {name} must be a 1-D array of costs, got {np.ndim(values)} dimensions")
    arr = np.array(values, dtype=np.float64, copy=True)
    if length is not None and arr.size != length:
        raise SolverInputError(f"Weights: {name} has {arr.size} entries, expected {length}")
    if not np.all(np.isfinite(arr)) or (arr.size and arr.min() < 0):
        bad = int(np.flatnonzero(~np.isfinite(arr) | (arr < 0))[0])
        raise SolverInputError(
            f"Weights: {name}[{bad}] = {arr[bad]!r}; costs must be finite and >= 0"
        )
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class Weights:
    """One linear objective over device sets S (closed under producers).

    ``cost(S) = sum_{n in S} device[n] + sum_{n not in S} cloud[n]
    + sum_{t in Upload(S)} upload[t] + sum_{t in Download(S)} download[t]
    + (remote if S is not the full node set else 0)``.
    All entries are finite and >= 0.

    Attributes:
        device: float[N], cost of running node n on the device.
        cloud: float[N], cost of running node n on the server.
        upload: float[T], cost of sending tensor t from device to server.
        download: float[T], cost of sending graph output t back to the device.
        remote: fixed cost of using the server at all (e.g. the round-trip time).

    Raises:
        SolverInputError: on a negative, NaN or infinite entry, or mismatched lengths.
    """

    device: np.ndarray
    cloud: np.ndarray
    upload: np.ndarray
    download: np.ndarray
    remote: float = 0.0

    def __post_init__(self):
        device = _as_costs("device", self.device)
        cloud = _as_costs("cloud", self.cloud, device.size)
        upload = _as_costs("upload", self.upload)
        download = _as_costs("download", self.download, upload.size)
        remote = float(self.remote)
        if not np.isfinite(remote) or remote < 0:
            raise SolverInputError(f"Weights: remote = {self.remote!r}; it must be finite and >= 0")
        object.__setattr__(self, "device", device)
        object.__setattr__(self, "cloud", cloud)
        object.__setattr__(self, "upload", upload)
        object.__setattr__(self, "download", download)
        object.__setattr__(self, "remote", remote)

    @classmethod
    def zeros(cls, n_nodes: int, n_tensors: int) -> "Weights":
        """All-zero weights of the given sizes, a neutral start for building objectives.

        Args:
            n_nodes: number of nodes N.
            n_tensors: number of tensors T.

        Returns:
            Weights with every entry 0.
        """
        return cls(np.zeros(n_nodes), np.zeros(n_nodes), np.zeros(n_tensors), np.zeros(n_tensors), 0.0)

    def combine(self, other: "Weights", x: float) -> "Weights":
        """The weights ``self + x * other``, e.g. base + (1 / bandwidth) * slope.

        Args:
            other: weights of the same sizes.
            x: the factor, >= 0 (a negative one could make entries negative).

        Returns:
            New Weights; cost is linear, so ``evaluate(self.combine(o, x), S) ==
            evaluate(self, S) + x * evaluate(o, S)``.

        Raises:
            SolverInputError: if sizes differ or an entry of the result is negative.
        """
        if self.device.size != other.device.size or self.upload.size != other.upload.size:
            raise SolverInputError(
                f"Weights.combine: sizes differ ({self.device.size} nodes/{self.upload.size} tensors "
                f"vs {other.device.size}/{other.upload.size}); build both for the same CutGraph"
            )
        x = float(x)
        return Weights(
            self.device + x * other.device,
            self.cloud + x * other.cloud,
            self.upload + x * other.upload,
            self.download + x * other.download,
            self.remote + x * other.remote,
        )

    def _check(self, graph: CutGraph) -> None:
        if self.device.size != graph.n_nodes or self.upload.size != graph.n_tensors:
            raise SolverInputError(
                f"Weights have {self.device.size} nodes and {self.upload.size} tensors but the "
                f"graph has {graph.n_nodes} and {graph.n_tensors}; build them from the same graph"
            )


@dataclass(frozen=True, eq=False)
class Cut:
    """A device set and its cost.

    Attributes:
        device: bool[N], the device set S (closed under producers).
        cost: the objective value of S under the weights it was solved for, evaluated
            exactly (for a :class:`Segment`, at the segment's ``x_from``).
        gap: an upper bound on ``cost - optimum`` from rounding capacities to integers
            for the max-flow solver; 0 when the solve was exact.
    """

    device: np.ndarray
    cost: float
    gap: float = 0.0

    @property
    def n_device(self) -> int:
        """Number of nodes on the device."""
        return int(np.count_nonzero(self.device))


@dataclass(frozen=True, eq=False)
class Segment:
    """One piece of a lower envelope: ``cut`` is optimal for every x in [x_from, x_to].

    Attributes:
        x_from, x_to: the piece's ends (x_from <= x_to).
        cut: the optimal set; ``cut.cost`` is its cost at ``x_from``, ``cut.gap`` the
            rounding bound of the solve that found it.
        intercept, slope: the set's cost is ``intercept + x * slope`` (the base and slope
            objectives evaluated on it).
    """

    x_from: float
    x_to: float
    cut: Cut
    intercept: float
    slope: float

    def cost(self, x: float) -> float:
        """The set's cost at x: ``intercept + x * slope``."""
        return self.intercept + x * self.slope


class Envelope(list):
    """The list of :class:`Segment` returned by :func:`lower_envelope`, plus counters.

    Attributes:
        n_solves: how many min-cut solves (calls of :func:`solve`) it took.
    """

    n_solves: int = 0


# --------------------------------------------------------------------------- direct definitions


def _mask(graph: CutGraph, device_mask) -> np.ndarray:
    m = np.asarray(device_mask)
    if m.shape != (graph.n_nodes,):
        raise SolverInputError(f"device mask has shape {m.shape}, expected ({graph.n_nodes},)")
    return m.astype(bool, copy=False)


def is_closed(graph: CutGraph, device_mask) -> bool:
    """Whether S is closed under producers (every input of a device node is made on the device).

    Args:
        graph: the graph.
        device_mask: bool[N], the device set S.

    Returns:
        True iff for every tensor edge p->c with p a node, c in S implies p in S.

    Raises:
        SolverInputError: if the mask has the wrong shape.
    """
    m = _mask(graph, device_mask)
    net = graph._network()
    p, c = net.edge_prod, net.edge_cons
    return bool(not np.any(m[c] & ~m[p]))


def upload_set(graph: CutGraph, device_mask) -> np.ndarray:
    """Upload(S): tensors produced in S, or graph inputs, that some node outside S consumes.

    Args:
        graph: the graph.
        device_mask: bool[N], the device set S.

    Returns:
        Sorted int64 tensor ids, each once however many consumers it has on the cloud.

    Raises:
        SolverInputError: if the mask has the wrong shape.
    """
    m = _mask(graph, device_mask)
    net = graph._network()
    on_device = np.ones(graph.n_tensors, dtype=bool)
    made = graph.producers >= 0
    on_device[made] = m[graph.producers[made]]
    needed_remote = np.bincount(net.pair_tensor, weights=~m[net.pair_cons], minlength=graph.n_tensors) > 0
    return np.flatnonzero(on_device & needed_remote).astype(np.int64)


def download_set(graph: CutGraph, device_mask) -> np.ndarray:
    """Download(S): graph-output tensors produced by a node outside S.

    Args:
        graph: the graph.
        device_mask: bool[N], the device set S.

    Returns:
        Sorted int64 tensor ids. A graph input that is also an output is never downloaded.

    Raises:
        SolverInputError: if the mask has the wrong shape.
    """
    m = _mask(graph, device_mask)
    p = graph.producers
    remote_made = np.zeros(graph.n_tensors, dtype=bool)
    made = p >= 0
    remote_made[made] = ~m[p[made]]
    return np.flatnonzero(graph.is_output & remote_made).astype(np.int64)


def evaluate(graph: CutGraph, weights: Weights, device_mask) -> float:
    """The objective of S, straight from the definition in :class:`Weights`.

    Args:
        graph: the graph.
        weights: the objective.
        device_mask: bool[N], the device set S (closedness is not checked here).

    Returns:
        cost(S) as a float.

    Raises:
        SolverInputError: if sizes of weights or mask do not match the graph.
    """
    weights._check(graph)
    m = _mask(graph, device_mask)
    cost = float(weights.device[m].sum() + weights.cloud[~m].sum())
    cost += float(weights.upload[upload_set(graph, m)].sum())
    cost += float(weights.download[download_set(graph, m)].sum())
    if not m.all():
        cost += weights.remote
    return cost


# --------------------------------------------------------------------------- min cut


class _Network:
    """The flow network of a graph: a fixed CSR structure, capacities filled per solve.

    Every logical edge (u, v) owns a slot in the CSR data; parallel edges share one and
    are summed. Reverse edges are present with capacity 0 so that scipy's flow matrix
    has exactly this structure and the residual is ``capacity - flow`` slot by slot.
    """

    def __init__(self, graph: CutGraph):
        n = graph.n_nodes
        prod = graph.producers
        # Flat (tensor, consumer) pairs.
        counts = np.fromiter((len(c) for c in graph.consumers), dtype=np.int64, count=graph.n_tensors)
        self.pair_tensor = np.repeat(np.arange(graph.n_tensors, dtype=np.int64), counts)
        self.pair_cons = np.fromiter(
            (c for cs in graph.consumers for c in cs), dtype=np.int64, count=int(counts.sum())
        )
        node_pair = prod[self.pair_tensor] >= 0
        self.edge_prod = prod[self.pair_tensor][node_pair]
        self.edge_cons = self.pair_cons[node_pair]

        multi = np.flatnonzero(counts >= 2)  # tensors that need an auxiliary vertex
        n_aux = multi.size
        self.n_vertices = n + n_aux + 2
        s, t = n + n_aux, n + n_aux + 1
        self.source, self.sink, self.n_nodes = s, t, n
        aux_of = np.full(graph.n_tensors, -1, dtype=np.int64)
        aux_of[multi] = n + np.arange(n_aux)

        # Finite logical edges, in groups whose capacities come from the weights.
        nodes = np.arange(n, dtype=np.int64)
        src_of = np.where(prod >= 0, prod, s)  # upload edge starts at the producer, or s
        up_t = np.flatnonzero(counts >= 1)
        single = counts[up_t] == 1
        first_cons = np.zeros(graph.n_tensors, dtype=np.int64)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]) if graph.n_tensors else counts
        has = counts >= 1
        first_cons[has] = self.pair_cons[starts[has]]
        up_dst = np.where(single, first_cons[up_t], aux_of[up_t])
        self.up_tensors = up_t
        # Graph outputs made by a node: their download is paid when that node is on the cloud.
        self.out_made = np.flatnonzero(graph.is_output & (prod >= 0))
        self.out_prod_nodes = prod[self.out_made]
        fin_u = np.concatenate([np.full(n, s), nodes, src_of[up_t]])
        fin_v = np.concatenate([nodes, np.full(n, t), up_dst])

        # Infinite edges: consumer -> producer (closure) and aux -> consumer.
        pair_aux = aux_of[self.pair_tensor]
        via_aux = pair_aux >= 0
        inf_u = np.concatenate([self.edge_cons, pair_aux[via_aux]])
        inf_v = np.concatenate([self.edge_prod, self.pair_cons[via_aux]])

        V = self.n_vertices
        u = np.concatenate([fin_u, inf_u])
        v = np.concatenate([fin_v, inf_v])
        keys = np.unique(np.concatenate([u * V + v, v * V + u]))  # both directions, sorted
        rows = keys // V
        self.indices = (keys % V).astype(np.int32)
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=V))]).astype(np.int32)
        self.rows = rows
        self.nnz = keys.size
        self.fin_slot = np.searchsorted(keys, fin_u * V + fin_v)
        self.inf_slot = np.unique(np.searchsorted(keys, inf_u * V + inf_v))

    def capacities(self, w: Weights) -> tuple[np.ndarray, float]:
        """Float capacity per slot (inf slots left 0) and the constant the cut omits."""
        n = self.n_nodes
        # Every node pays exactly one of device/cloud, so subtracting their minimum from
        # both shifts all cuts by the same constant: less flow, finer integer scale.
        base = np.minimum(w.device, w.cloud)
        to_cloud = w.cloud - base
        to_cloud += np.bincount(self.out_prod_nodes, weights=w.download[self.out_made], minlength=n)
        caps = np.concatenate([to_cloud, w.device - base, w.upload[self.up_tensors]])
        slot = np.bincount(self.fin_slot, weights=caps, minlength=self.nnz)
        return slot, float(base.sum())

    def solve(self, caps: np.ndarray, upper: float) -> tuple[np.ndarray, float]:
        """Minimal source side of a minimum cut of the rounded network, and a gap bound.

        Args:
            caps: float capacity per slot (0 on infinite and reverse slots).
            upper: a number >= the minimum cut value (the value of some real cut).

        Returns:
            (device mask, gap): the cut's true value exceeds the minimum by at most gap.
        """
        if upper <= 0:
            # A zero cut exists: forbid every positive edge, any 0-valued cut is exact.
            q = (caps > 0).astype(np.int32)
            gap = 0.0
        else:
            # Scale by a power of two, the largest with upper * scale <= _UNIT: integer and
            # other dyadic costs then stay exact (gap 0, exact tie-breaking), others lose
            # at most one bit against the ideal scale. ldexp cannot make 0 * inf = nan.
            exp = int(np.floor(np.log2(_UNIT) - np.log2(upper)))
            with np.errstate(over="ignore"):  # a tiny bound may overflow; clipped below
                scaled = np.ldexp(caps, exp)
            q = np.minimum(np.rint(scaled), _CLIP)
            # Per-slot rounding error, in cost units. Clipped slots (capacity > 2 * upper)
            # are in no minimum cut, true or rounded, so they add nothing to the gap.
            err = np.ldexp(np.where(q < _CLIP, np.abs(q - scaled), 0.0), -exp)
            q = q.astype(np.int32)
        q[self.inf_slot] = _INF
        graph = csr_array((q, self.indices, self.indptr), shape=(self.n_vertices, self.n_vertices))
        flow = maximum_flow(graph, self.source, self.sink, method="dinic").flow
        # flow has graph's structure (reverse slots present), so residual is slotwise.
        live = q.astype(np.int64) - flow.data > 0
        counts = np.bincount(self.rows[live], minlength=self.n_vertices)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
        residual = csr_array(
            (np.ones(int(live.sum()), dtype=np.int8), self.indices[live], indptr),
            shape=(self.n_vertices, self.n_vertices),
        )
        reach = breadth_first_order(residual, self.source, directed=True, return_predecessors=False)
        side = np.zeros(self.n_vertices, dtype=bool)
        side[reach] = True
        if upper > 0:
            # true(found) - OPT <= err(found cut) + err(optimal cut) <= err(found) + sum(err).
            crossing = side[self.rows] & ~side[self.indices]
            gap = float(err[crossing].sum() + err.sum())
        return side[: self.n_nodes], gap


def _upper_bound(net: _Network, caps: np.ndarray) -> float:
    # Reduced cut values of the full set (every n->t edge) and of the empty set (every
    # edge leaving s: cloud costs, downloads, graph-input uploads); either bounds the
    # minimum cut from above.
    n = net.n_nodes
    full = float(caps[net.fin_slot[n : 2 * n]].sum())
    empty = float(caps[net.indptr[net.source] : net.indptr[net.source + 1]].sum())
    return min(full, empty)


def _solve(graph: CutGraph, weights: Weights, known: tuple = ()) -> Cut:
    """:func:`solve`, optionally told some closed sets (masks) whose cost bounds the optimum."""
    weights._check(graph)
    n = graph.n_nodes
    full_mask = np.ones(n, dtype=bool)
    full_cost = float(weights.device.sum())
    if n == 0:
        return Cut(full_mask, 0.0)
    net = graph._network()
    caps, const = net.capacities(weights)

    def reduced(mask: np.ndarray, cost: float) -> float:
        # The set's value in the flow network: no `remote`, no device/cloud minimum.
        return cost - const - (0.0 if mask.all() else weights.remote)

    # Any real set's reduced value bounds the minimum cut: the trivial sets, or known ones
    # (a tighter bound means a finer integer scale).
    upper = _upper_bound(net, caps)
    for m in known:
        upper = min(upper, reduced(m, evaluate(graph, weights, m)))
    upper = max(upper, 0.0)  # float noise only
    mask, gap = net.solve(caps, upper)
    cost = evaluate(graph, weights, mask)
    for _ in range(_MAX_REFINE):
        # The rounding error scales with `upper`; when the optimum is far below it,
        # re-solve with the tighter bound the found cut gives.
        value = reduced(mask, cost)
        if gap == 0.0 or value >= _REFINE_BELOW * upper:
            break
        upper = max(value, 0.0)
        mask2, gap2 = net.solve(caps, upper)
        cost2 = evaluate(graph, weights, mask2)
        if cost2 <= cost:
            mask, gap, cost = mask2, gap2, cost2
        else:
            gap = min(gap, gap2)
    # `remote` is paid by every non-full set: the best non-full set is the min cut's set
    # whenever that is non-full, so comparing with the full set is exact. Ties keep the
    # smaller (non-full) set.
    if not mask.all() and full_cost < cost:
        return Cut(full_mask, full_cost, gap)
    return Cut(mask, cost, gap)


def solve(graph: CutGraph, weights: Weights) -> Cut:
    """The device set of least cost over all sets closed under producers.

    A minimum s-t cut (module docstring) gives the best set ignoring ``remote``; call it
    S*. Every non-full set pays ``remote``, so if S* is not full the best non-full set is
    S* and the answer is the cheaper of S* (+ remote) and the full set; if S* is full it
    is optimal outright. Among equal-cost sets the smallest device set (the minimal
    source side) is returned, deterministically.

    Args:
        graph: the graph.
        weights: the objective (sizes must match the graph).

    Returns:
        The optimal :class:`Cut`; its cost is evaluated exactly and is at most
        ``cut.gap`` above the true optimum. The gap comes from rounding capacities to
        int32 for the max-flow solver: each finite edge is off by at most U / 2**29,
        where U bounds the optimum's cut value (re-solved with a tighter U when the
        optimum is below U / 4), so gap <= 2 * edges * U / 2**29, and 0 when all costs
        are integers (more generally dyadic) at the chosen scale.

    Raises:
        SolverInputError: if the weights do not match the graph.
    """
    return _solve(graph, weights)


# --------------------------------------------------------------------------- envelope


def lower_envelope(
    graph: CutGraph, base: Weights, slope: Weights, x_lo: float, x_hi: float
) -> Envelope:
    """The optimal device set for every x in [x_lo, x_hi] of ``cost(S, x) = A(S) + x * D(S)``.

    ``A = evaluate(base, .)``, ``D = evaluate(slope, .)``; typically x = 1/bandwidth and
    ``slope`` holds the bytes on the wire. The best cost over x is the lower envelope of
    one line per closed set. Eisner-Severance: solve at both ends; if the optimal lines
    differ, solve where they intersect; a strictly better set there splits the interval,
    otherwise the intersection is an exact breakpoint. It takes 2k - 1 solves for k >= 2
    envelope lines (2 for one line), not one per grid point.

    Args:
        graph: the graph.
        base: the objective at x = 0.
        slope: the objective's derivative in x.
        x_lo, x_hi: the interval, 0 <= x_lo <= x_hi, finite.

    Returns:
        An :class:`Envelope` (a list) of :class:`Segment` covering [x_lo, x_hi] in order,
        adjacent segments with different sets, breakpoints where the adjacent sets' costs
        are equal. ``Envelope.n_solves`` counts the min-cut solves.

    Raises:
        SolverInputError: on a bad interval or weights that do not match the graph.
    """
    x_lo, x_hi = float(x_lo), float(x_hi)
    if not (np.isfinite(x_lo) and np.isfinite(x_hi) and 0 <= x_lo <= x_hi):
        raise SolverInputError(
            f"lower_envelope: need 0 <= x_lo <= x_hi, both finite; got [{x_lo}, {x_hi}]"
        )
    base._check(graph)
    slope._check(graph)
    env = Envelope()

    def line_of(cut: Cut) -> tuple[np.ndarray, float, float, float]:
        return cut.device, evaluate(graph, base, cut.device), evaluate(graph, slope, cut.device), cut.gap

    def solve_at(x: float, known: tuple = ()):
        env.n_solves += 1
        return line_of(_solve(graph, base.combine(slope, x), known))

    def same(a, b) -> bool:
        return np.array_equal(a[0], b[0])

    def tol(value: float) -> float:
        return 1e-12 * max(abs(value), 1e-300)

    left = solve_at(x_lo)
    right = left if x_hi == x_lo else solve_at(x_hi)
    pieces: list[tuple[float, float, tuple]] = []
    # Explicit stack, left piece on top, so pieces come out in order. Each entry:
    # (xl, line optimal at xl, xr, line optimal at xr).
    stack = [(x_lo, left, x_hi, right)]
    # A safety net against float trouble only: real envelopes have a handful of lines.
    # Were it spent, the remaining crossings would be kept unverified.
    budget = 4 * graph.n_nodes + 64
    while stack:
        xl, a, xr, b = stack.pop()
        if same(a, b) or (a[1] == b[1] and a[2] == b[2]):
            pieces.append((xl, xr, a))
            continue
        # Lines cross where A_a + x D_a == A_b + x D_b.
        dd = a[2] - b[2]
        xm = (b[1] - a[1]) / dd if dd > 0 else np.nan
        if not (xl < xm < xr):
            # Only possible through rounding: one line is below the other on the whole
            # piece (weakly); keep the one lower in the middle.
            mid = 0.5 * (xl + xr)
            pieces.append((xl, xr, a if a[1] + mid * a[2] <= b[1] + mid * b[2] else b))
            continue
        at = a[1] + xm * a[2]
        if budget <= 0:
            pieces.append((xl, xm, a))
            pieces.append((xm, xr, b))
            continue
        budget -= 1
        c = solve_at(xm, known=(a[0], b[0]))
        if c[1] + xm * c[2] < at - tol(at) and not same(c, a) and not same(c, b):
            stack.append((xm, c, xr, b))
            stack.append((xl, a, xm, c))
        else:
            pieces.append((xl, xm, a))
            pieces.append((xm, xr, b))

    # Merge adjacent pieces with the same set; drop empty ones unless that is all there is.
    merged: list[list] = []
    for xf, xt, ln in pieces:
        if merged and same(merged[-1][2], ln):
            merged[-1][1] = xt
        elif merged and xt <= xf:
            continue
        elif merged and merged[-1][1] <= merged[-1][0]:
            merged[-1] = [xf, xt, ln]
        else:
            merged.append([xf, xt, ln])
    for xf, xt, (mask, a_val, d_val, gap) in merged:
        env.append(Segment(xf, xt, Cut(mask, a_val + xf * d_val, gap), a_val, d_val))
    return env


def lines_envelope(intercepts, slopes, x_lo: float, x_hi: float) -> list[tuple[float, float, int]]:
    """The lower envelope over [x_lo, x_hi] of explicit lines ``intercepts[i] + x * slopes[i]``.

    The planner combines the envelopes of several objectives over the same x with it (one
    per cut-tensor encoding): the minimum of lower envelopes is the lower envelope of all
    their lines, each extended over the whole interval (a line is a real set's cost
    everywhere, so extending it never undercuts a true minimum).

    Args:
        intercepts, slopes: one entry per line (at least one).
        x_lo, x_hi: the interval, x_lo <= x_hi.

    Returns:
        Pieces ``(x_from, x_to, line index)`` covering the interval in order; the line of
        a piece is the lowest on it, adjacent pieces meet where their lines cross. Ties go
        to the line with the smaller slope just after the tie, then to the lower index.

    Raises:
        SolverInputError: no lines, lengths differ, or a bad interval.
    """
    a = np.asarray(intercepts, dtype=np.float64)
    d = np.asarray(slopes, dtype=np.float64)
    if a.ndim != 1 or a.shape != d.shape or a.size == 0:
        raise SolverInputError(f"lines_envelope: need as many intercepts as slopes, at least one; got {a.shape} and {d.shape}")
    if not (np.isfinite(x_lo) and np.isfinite(x_hi) and x_lo <= x_hi):
        raise SolverInputError(f"lines_envelope: need x_lo <= x_hi, both finite; got [{x_lo}, {x_hi}]")
    index = np.arange(a.size)
    x = float(x_lo)
    current = int(np.lexsort((index, d, a + x * d))[0])
    pieces = []
    # Each switch goes to a strictly smaller slope: at most one per line.
    while True:
        lower = np.flatnonzero(d < d[current])
        cross = np.maximum((a[lower] - a[current]) / (d[current] - d[lower]), x) if lower.size else lower
        x_next = float(cross.min()) if lower.size else np.inf
        if x_next >= x_hi:
            pieces.append((x, float(x_hi), current))
            break
        pieces.append((x, x_next, current))
        at = lower[cross == x_next]
        current = int(at[np.lexsort((at, d[at]))[0]])
        x = x_next
    kept = [p for p in pieces if p[1] > p[0]]
    return kept or pieces[-1:]


# --------------------------------------------------------------------------- Pareto fronts


@dataclass(frozen=True, eq=False)
class FrontPoint:
    """One point of a latency-energy (first-second) front: the best pair for every lambda in
    [lambda_from, lambda_to] of ``first + lambda * second``.

    Attributes:
        lambda_from, lambda_to: the weights of ``second`` for which this point is optimal
            (``lambda_to`` is ``inf`` for the last point).
        cut: the device set; ``cut.cost`` is its ``first`` objective, ``cut.gap`` the rounding
            bound of the solve that found it (0 for a hint).
        option: which of the options (e.g. cut-tensor encodings) the point uses.
        first, second: the two objectives of the pair.
    """

    lambda_from: float
    lambda_to: float
    cut: Cut
    option: int
    first: float
    second: float


class Front(list):
    """The list of :class:`FrontPoint` returned by :func:`pareto_front`, first objective
    ascending (so the second descending), plus counters.

    Attributes:
        n_solves: how many min-cut solves it took.
    """

    n_solves: int = 0


def lines_front(firsts, seconds) -> list[tuple[float, float, int]]:
    """The points of least ``firsts[i] + lam * seconds[i]`` over every ``lam >= 0``.

    These are the vertices of the lower-left convex hull of the points
    ``(firsts[i], seconds[i])`` (monotone chain): the supported Pareto points. A point that
    is only ever tied (it lies on the segment between two neighbours, or repeats one) is
    left out, as :func:`lines_envelope` leaves out pieces of zero width; of equal points the
    lower index is kept.

    Args:
        firsts, seconds: one entry per point (at least one), finite.

    Returns:
        ``(lam_from, lam_to, index)`` per front point, ``firsts`` ascending and ``seconds``
        descending; the first starts at 0, the last ends at ``inf``, and neighbours meet at
        the exact ``lam = (firsts[k+1] - firsts[k]) / (seconds[k] - seconds[k+1])`` where
        both cost the same.

    Raises:
        SolverInputError: no points, lengths differ, or a value that is not finite.
    """
    a = np.asarray(firsts, dtype=np.float64)
    e = np.asarray(seconds, dtype=np.float64)
    if a.ndim != 1 or a.shape != e.shape or a.size == 0:
        raise SolverInputError(f"lines_front: need as many firsts as seconds, at least one; got {a.shape} and {e.shape}")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(e))):
        raise SolverInputError("lines_front: every value must be finite")
    hull: list[int] = []
    for i in (int(j) for j in np.lexsort((np.arange(a.size), e, a))):  # first, then second, then index ascending
        if hull and e[i] >= e[hull[-1]]:
            continue  # no better in the second objective than a point at least as good in the first
        # hull[-1] stays a vertex only if it wins on a lambda interval of positive width:
        # lam(hull[-2], hull[-1]) < lam(hull[-1], i), cross-multiplied (both denominators > 0).
        while len(hull) >= 2:
            p, q = hull[-2], hull[-1]
            if (a[q] - a[p]) * (e[q] - e[i]) < (a[i] - a[q]) * (e[p] - e[q]):
                break
            hull.pop()
        hull.append(i)
    cuts = [float((a[q] - a[p]) / (e[p] - e[q])) for p, q in zip(hull, hull[1:])]
    starts, ends = [0.0, *cuts], [*cuts, np.inf]
    return [(lo, hi, i) for lo, hi, i in zip(starts, ends, hull)]


def pareto_front(graph: CutGraph, options, hints=(), hints_hold_ends: bool = False) -> Front:
    """The exact front of ``first + lam * second`` over every closed set, option and ``lam >= 0``.

    Options are alternatives of the same problem, each with its own pair of objectives
    (e.g. cut-tensor encodings: one (latency, energy) pair of weights each); a candidate is a
    (closed set, option) pair. The best cost over lam, ``g(lam) = min first + lam * second``,
    is concave and piecewise linear: the lower envelope of one line per pair, lam its
    parameter. Eisner-Severance, as :func:`lower_envelope` does over bandwidth: take the
    front of the pairs known so far (:func:`lines_front`) and solve one min-cut per option at
    each of its breakpoints; a strictly better pair there joins the known ones, otherwise the
    breakpoint is exact. When both ends (lam = 0, and lam = inf as ``second + mu * first`` at
    mu = 0) and every breakpoint are checked, the known front equals ``g`` everywhere (a
    concave function that meets a piecewise-linear one at its ends and kinks is not below it).
    Breakpoints above lam = 1 are solved as ``second + (1 / lam) * first``, so the weights
    stay within the magnitudes of the two objectives.

    Args:
        graph: the graph.
        options: a sequence of ``(first, second)`` :class:`Weights` pairs (at least one).
        hints: ``(device mask, option)`` pairs to start from (e.g. the front of a nearby
            condition); each must be a closed set.
        hints_hold_ends: the caller vouches that the hints include a pair of least
            ``first`` and a pair of least ``second`` over everything (e.g. from the exact
            per-objective envelopes), which saves the end solves.

    Returns:
        A :class:`Front`: its points, ``first`` ascending, exact breakpoints between them.
        ``Front.n_solves`` counts the min-cut solves.

    Raises:
        SolverInputError: no options, weights that do not match the graph, or a bad hint.
    """
    options = list(options)
    if not options:
        raise SolverInputError("pareto_front: need at least one (first, second) pair of weights")
    for first, second in options:
        first._check(graph)
        second._check(graph)
    front = Front()
    known: dict[tuple[bytes, int], tuple[np.ndarray, int, float, float, float]] = {}

    def add(mask: np.ndarray, option: int, gap: float = 0.0) -> bool:
        key = (mask.tobytes(), option)
        if key in known:
            return False
        first, second = options[option]
        known[key] = (mask, option, evaluate(graph, first, mask), evaluate(graph, second, mask), gap)
        return True

    for mask, option in hints:
        if not 0 <= int(option) < len(options):
            raise SolverInputError(f"pareto_front: hint option {option} is outside 0..{len(options) - 1}")
        mask = _mask(graph, mask).copy()
        if not is_closed(graph, mask):
            raise SolverInputError("pareto_front: a hint is not closed under producers")
        add(mask, int(option))
    if not (hints_hold_ends and known):
        for o, (first, second) in enumerate(options):
            for weights in (first, second):
                front.n_solves += 1
                cut = _solve(graph, weights)
                add(cut.device, o, cut.gap)

    def tol(value: float) -> float:
        return 1e-12 * max(abs(value), 1e-300)

    checked: set[float] = set()  # breakpoints where g is known to equal the known front
    budget = len(options) * (4 * graph.n_nodes + 64)  # a safety net against float trouble only
    while True:
        pairs = list(known.values())
        pieces = lines_front([p[2] for p in pairs], [p[3] for p in pairs])
        todo = next((k for k in range(1, len(pieces)) if pieces[k][0] not in checked), None)
        if todo is None or budget <= 0:
            break
        lam = pieces[todo][0]
        left, right = pairs[pieces[todo - 1][2]], pairs[pieces[todo][2]]
        # The front's value at lam, in the scale the solve uses (divided by lam above 1).
        scale_first, scale_second = (1.0, lam) if lam <= 1.0 else (1.0 / lam, 1.0)
        at = scale_first * left[2] + scale_second * left[3]
        better = False
        for o, (first, second) in enumerate(options):
            budget -= 1
            front.n_solves += 1
            weights = first.combine(second, lam) if lam <= 1.0 else second.combine(first, 1.0 / lam)
            near = tuple(p[0] for p in (left, right) if p[1] == o)
            cut = _solve(graph, weights, known=near)
            if cut.cost < at - tol(at):
                better |= add(cut.device, o, cut.gap)
        if not better:
            checked.add(lam)
    for lo, hi, i in pieces:
        mask, option, first_value, second_value, gap = pairs[i]
        front.append(FrontPoint(lo, hi, Cut(mask, first_value, gap), option, first_value, second_value))
    return front
