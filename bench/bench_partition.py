"""Benchmark the partition solver on random layered DAGs, against networkx's minimum_cut.

Usage:
    .venv/bin/python bench/bench_partition.py [--sizes 400 2000] [--repeats 7]

Prints, per graph size, the median time of :func:`nscompile.partition.solve` (one min
cut, capacities filled from the weights, exact re-evaluation included), of
:func:`nscompile.partition.lower_envelope` over x in [1/1000, 1/0.1] (1/Mbps, the
default bandwidth grid) with its number of solves, and of networkx's ``minimum_cut`` on
the same flow network (graph prebuilt, so only the flow algorithm is timed), checking
that both find the same cost. networkx is optional (``pip install nscompile[bench]``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from nscompile.partition import CutGraph, Weights, lower_envelope, solve

# The random DAGs are the ones the partition tests solve (tests/helpers.py).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from helpers import layered_dag  # noqa: E402


def latency_weights(rng: np.random.Generator, g: CutGraph) -> tuple[Weights, Weights]:
    """(base, slope) of a latency objective: ms on device/server, bytes/1e6 per 1/Mbps."""
    device = rng.exponential(2.0, g.n_nodes)
    cloud = device / rng.uniform(5, 20, g.n_nodes)
    # Tensors shrink with depth, as in a CNN (the input is ~0.6 MB, the logits tiny);
    # megabytes -> ms at 1/x Mbps is 8000 * MB * x.
    depth = np.maximum(g.producers, 0) / max(g.n_nodes, 1)
    mbytes = 0.6 * np.exp(-5 * depth) * rng.lognormal(0, 0.5, g.n_tensors)
    zeros_n, zeros_t = np.zeros(g.n_nodes), np.zeros(g.n_tensors)
    base = Weights(device, cloud, zeros_t, zeros_t, remote=20.0)  # 20 ms RTT
    slope = Weights(zeros_n, zeros_n, 8000 * mbytes, 8000 * mbytes * g.is_output * 0.1, 0.0)
    return base, slope


def networkx_cut(g: CutGraph, w: Weights):
    """The same flow network (module docstring of nscompile.partition) as an nx.DiGraph."""
    import networkx as nx

    G = nx.DiGraph()
    s, t = "s", "t"
    for n in range(g.n_nodes):
        G.add_edge(s, n, capacity=float(w.cloud[n]))
        G.add_edge(n, t, capacity=float(w.device[n]))
    for ti, (p, cs) in enumerate(zip(g.producers, g.consumers)):
        p = s if p < 0 else int(p)
        if g.is_output[ti] and p != s:
            G[s][p]["capacity"] += float(w.download[ti])
        if not cs:
            continue
        dst = cs[0] if len(cs) == 1 else ("aux", ti)
        if G.has_edge(p, dst):
            G[p][dst]["capacity"] += float(w.upload[ti])
        else:
            G.add_edge(p, dst, capacity=float(w.upload[ti]))
        for c in cs:
            if len(cs) > 1:
                G.add_edge(dst, c)  # no capacity attribute = infinite in networkx
            if p != s:
                G.add_edge(c, p)
    return G


def median_ms(fn, repeats: int) -> float:
    fn()  # warm-up (builds and caches the flow network structure)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[400, 2000])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    try:
        import networkx as nx
    except ImportError:
        nx = None
        print("networkx not installed: skipping the comparison (pip install nscompile[bench])")

    x_lo, x_hi = 1 / 1000, 1 / 0.1
    header = f"{'nodes':>6} {'tensors':>7} {'solve ms':>9} {'nx ms':>8} {'nx/solve':>8} " \
             f"{'envelope ms':>11} {'solves':>6} {'segments':>8}"
    print(header)
    for n in args.sizes:
        rng = np.random.default_rng(args.seed)
        g = layered_dag(rng, n, width=8)
        base, slope = latency_weights(rng, g)
        w = base.combine(slope, 1 / 5.85)  # LTE uplink
        cut = solve(g, w)
        t_solve = median_ms(lambda: solve(g, w), args.repeats)
        env = lower_envelope(g, base, slope, x_lo, x_hi)
        t_env = median_ms(lambda: lower_envelope(g, base, slope, x_lo, x_hi), max(3, args.repeats // 2))
        nx_ms, ratio = float("nan"), float("nan")
        if nx is not None:
            # networkx solves without `remote`, like the cut itself; compare those values.
            w0 = Weights(w.device, w.cloud, w.upload, w.download, 0.0)
            G = networkx_cut(g, w0)
            # Only the value is compared: with float capacities networkx's partition can
            # be wrong (it tests saturation with ==), its value is not.
            value = nx.minimum_cut_value(G, "s", "t")
            mine = solve(g, w0)
            assert abs(value - mine.cost) <= 1e-6 * max(1.0, value) + mine.gap, (value, mine.cost)
            nx_ms = median_ms(lambda: nx.minimum_cut(G, "s", "t"), max(3, args.repeats // 2))
            ratio = nx_ms / t_solve
        print(f"{n:>6} {g.n_tensors:>7} {t_solve:>9.2f} {nx_ms:>8.2f} {ratio:>7.1f}x "
              f"{t_env:>11.2f} {env.n_solves:>6} {len(env):>8}   (cut: {cut.n_device} on device)")


if __name__ == "__main__":
    main()
