"""The partition solver against brute force, the paper's chain formula, and hand-made DAGs."""

import numpy as np
import pytest

from helpers import all_closed_sets, brute_costs, layered_dag, random_dag
from nscompile.partition import (
    CutGraph,
    SolverInputError,
    Weights,
    download_set,
    evaluate,
    is_closed,
    lower_envelope,
    solve,
    upload_set,
)

# --------------------------------------------------------------------------- helpers


def diamond() -> CutGraph:
    """x -> n0 -> a; a -> n1 -> b; a -> n2 -> c; (b, c) -> n3 -> y (output).

    Tensors: 0 = x (graph input), 1 = a (two consumers), 2 = b, 3 = c, 4 = y.
    """
    return CutGraph(
        n_nodes=4,
        producers=np.array([-1, 0, 1, 2, 3]),
        consumers=((0,), (1, 2), (3,), (3,), ()),
        is_output=np.array([False, False, False, False, True]),
    )


def random_weights(rng: np.random.Generator, g: CutGraph, ints: bool) -> Weights:
    """Random non-negative weights; integer draws make zeros and exact ties common."""

    def draw(size):
        if ints:
            return rng.integers(0, 4, size).astype(float)
        v = rng.exponential(1.0, size)
        v[rng.random(size) < 0.2] = 0.0
        return v

    remote = float(draw(1)[0])
    return Weights(draw(g.n_nodes), draw(g.n_nodes), draw(g.n_tensors), draw(g.n_tensors), remote)


# --------------------------------------------------------------------------- hand-made diamond


def test_diamond_closedness():
    g = diamond()
    assert is_closed(g, [False] * 4)
    assert is_closed(g, [True] * 4)
    assert is_closed(g, [True, True, False, False])
    assert not is_closed(g, [False, True, False, False])  # n1 without its producer n0
    assert not is_closed(g, [True, True, False, True])  # n3 without n2
    assert len(all_closed_sets(g)) == 6  # {}, {0}, {0,1}, {0,2}, {0,1,2}, all


def test_diamond_upload_download():
    g = diamond()
    np.testing.assert_array_equal(upload_set(g, [False] * 4), [0])  # the model input
    np.testing.assert_array_equal(download_set(g, [False] * 4), [4])
    # a has two cloud consumers but is uploaded once.
    np.testing.assert_array_equal(upload_set(g, [True, False, False, False]), [1])
    np.testing.assert_array_equal(upload_set(g, [True, True, False, False]), [1, 2])
    np.testing.assert_array_equal(upload_set(g, [True, True, True, False]), [2, 3])
    np.testing.assert_array_equal(upload_set(g, [True] * 4), [])
    np.testing.assert_array_equal(download_set(g, [True] * 4), [])


def test_diamond_costs_and_solve():
    g = diamond()
    w = Weights(device=[5, 5, 5, 1], cloud=[1, 1, 1, 1], upload=[10, 3, 2, 2, 1],
                download=[0, 0, 0, 0, 4], remote=0.5)
    # {n0}: device 5 + cloud 3 + upload a once (3) + download y (4) + remote 0.5
    assert evaluate(g, w, [True, False, False, False]) == pytest.approx(15.5)
    assert evaluate(g, w, [True] * 4) == pytest.approx(16.0)  # no network, no remote
    assert evaluate(g, w, [False] * 4) == pytest.approx(4 + 10 + 4 + 0.5)
    cut = solve(g, w)
    np.testing.assert_array_equal(cut.device, [True, False, False, False])
    assert cut.cost == pytest.approx(15.5, abs=1e-12)
    # A larger remote cost tips it to all-device (at remote=1 it would be a tie: 16 vs 16).
    w2 = Weights(w.device, w.cloud, w.upload, w.download, remote=1.5)
    cut2 = solve(g, w2)
    assert cut2.device.all() and cut2.cost == pytest.approx(16.0)


# --------------------------------------------------------------------------- brute force


@pytest.mark.parametrize("ints", [True, False])
def test_solve_matches_brute_force(ints):
    rng = np.random.default_rng(1234 + ints)
    checked = 0
    for _ in range(150):  # x 2 parametrizations = 300 graphs, 600 solves
        g = random_dag(rng, int(rng.integers(1, 13)))
        masks = all_closed_sets(g)
        for _ in range(2):
            w = random_weights(rng, g, ints)
            costs = brute_costs(g, w, masks)
            best = costs.min()
            cut = solve(g, w)
            assert is_closed(g, cut.device)
            exact = brute_costs(g, w, cut.device[None, :])[0]
            assert cut.cost == pytest.approx(exact, rel=1e-12, abs=1e-12)
            assert cut.cost <= best + 1e-9 * max(1.0, best), (cut.cost, best)
            assert cut.gap <= 1e-6 * max(1.0, best)
            if ints:
                # Small integers scale exactly: no rounding gap, and the returned set is
                # the smallest optimum, contained in every optimal set.
                assert cut.gap == 0.0 and cut.cost == best
                optimal = masks[costs == best]
                np.testing.assert_array_equal(cut.device, optimal.all(axis=0))
            # evaluate agrees with the independent brute-force formula on a few sets.
            for i in rng.choice(len(masks), size=min(3, len(masks)), replace=False):
                assert evaluate(g, w, masks[i]) == pytest.approx(costs[i], rel=1e-12, abs=1e-12)
            checked += 1
    assert checked == 300


def test_solve_regression_infinite_edge_overflow():
    # Found by random search: with infinite edges at 2**31 - 1, scipy's int32 residual
    # capacity - flow of a closure edge carrying reverse upload flow wrapped negative,
    # the augmenting path through it was lost and solve returned 12.807 instead of 10.871.
    g = CutGraph(7, np.array([-1, -1, 0, 1, 1, 2, 2, 3, 4, 5, 6]),
                 ((2, 5, 6), (3, 5), (6,), (), (3,), (6,), (5,), (), (), (), ()),
                 np.array([0, 0, 0, 1, 0, 1, 0, 1, 1, 1, 1], dtype=bool))
    w = Weights(
        [0.3737963355639477, 2.5174294228053076, 0.11511161756754078, 0.5090525239744826,
         0.5396798690844707, 1.537862967547234, 7.214491899871922],
        [0.10904310491596762, 0.6526815300667553, 0.03559451669382903, 0.02694667355096631,
         0.08643350781866298, 0.12798057607033572, 0.37694967843201105],
        [0.8979974111197655, 7.136652422861339, 0.5859007380780996, 0.5886850507790319,
         3.1611025082437694, 3.1538021825676084, 0.1812992264893728, 0.5474323978912687,
         4.71126323041938, 2.552630415452689, 5.369813596585964],
        [0.5229539436801564, 1.0065862441567683, 1.0518065266738919, 0.3807593519146597,
         0.30792687749468906, 0.11136974548572907, 0.03942679128240303, 0.3117311932201042,
         1.3596811881038209, 0.5334258916745919, 1.1140546348319174],
        0.0,
    )
    best = brute_costs(g, w, all_closed_sets(g)).min()
    assert best == pytest.approx(10.870983412846305, rel=1e-12)
    assert solve(g, w).cost == pytest.approx(best, rel=1e-12)


def test_solve_prefers_smallest_set_on_ties():
    g = diamond()
    # Every set costs the same: nothing costs anything.
    w = Weights.zeros(g.n_nodes, g.n_tensors)
    cut = solve(g, w)
    assert cut.n_device == 0 and cut.cost == 0.0
    # Deterministic: the same call gives the same set.
    w = Weights([1, 1, 1, 1], [1, 1, 1, 1], [0, 0, 0, 0, 0], [0] * 5, 0.0)
    a, b = solve(g, w), solve(g, w)
    np.testing.assert_array_equal(a.device, b.device)
    assert a.n_device == 0


def test_solve_precision_with_wide_range_of_costs():
    # Costs spanning 1e9 to 1e-3: the answer must still be optimal within a tight
    # relative tolerance, thanks to the min(device, cloud) shift and refinement.
    rng = np.random.default_rng(7)
    for _ in range(30):
        g = random_dag(rng, 10)
        masks = all_closed_sets(g)
        scale = 10.0 ** rng.uniform(-3, 9, size=4)
        w = Weights(rng.random(g.n_nodes) * scale[0], rng.random(g.n_nodes) * scale[1],
                    rng.random(g.n_tensors) * scale[2], rng.random(g.n_tensors) * scale[3],
                    float(rng.random()))
        best = brute_costs(g, w, masks).min()
        cut = solve(g, w)
        assert cut.cost <= best * (1 + 1e-6) + 1e-12
        assert cut.cost - best <= cut.gap + 1e-9 * best


def test_solve_refines_when_optimum_is_far_below_trivial_cuts():
    # Chain n0 -> n1 -> n2 -> n3: n0 must stay on the device, n3 on the server (1e9 on
    # the other side), and the cut crosses one of three tiny tensors. Scaled to the
    # trivial bound (1e9) they all round to 0; re-solving at the found cut's scale
    # separates them.
    g = chain(4)
    big = 1e9
    w = Weights([0, 0, 0, big], [big, 0, 0, 0], [5.0, 3e-3, 2e-3, 1e-3, 0.0], np.zeros(5), 0.0)
    cut = solve(g, w)
    np.testing.assert_array_equal(cut.device, [True, True, True, False])
    assert cut.cost == pytest.approx(1e-3, rel=1e-12)
    assert cut.gap < 1e-9


def cut_lp_value(g: CutGraph, w: Weights) -> float:
    """The optimum without ``remote`` from the cut LP (exact: the s-t cut LP is integral).

    Variables y_n in [0, 1] (1 = device) and z_t in [0, 1] (t uploaded):
    min sum device*y + cloud*(1-y) + upload*z + download*(1 - y_producer),
    s.t. y_c <= y_p (closure) and z_t >= y_p - y_c (y_p = 1 for a graph input).
    """
    from scipy.optimize import linprog

    n, T = g.n_nodes, g.n_tensors
    c = np.concatenate([w.device - w.cloud, w.upload])
    const = w.cloud.sum()
    for t in range(T):
        p = g.producers[t]
        if g.is_output[t] and p >= 0:
            c[p] -= w.download[t]
            const += w.download[t]
    rows, rhs = [], []
    for t, cs in enumerate(g.consumers):
        p = int(g.producers[t])
        for cn in cs:
            r = np.zeros(n + T)  # y_p - y_c - z_t <= 0, or 1 - y_c - z_t <= 0 for an input
            r[cn], r[n + t] = -1, -1
            if p >= 0:
                r[p] = 1
                closure = np.zeros(n + T)
                closure[cn], closure[p] = 1, -1
                rows.append(closure)
                rhs.append(0.0)
                rhs.append(0.0)
            else:
                rhs.append(-1.0)
            rows.append(r)
    res = linprog(c, A_ub=np.array(rows), b_ub=np.array(rhs), bounds=(0, 1), method="highs")
    assert res.status == 0
    return float(res.fun + const)


def test_solve_matches_cut_lp_on_medium_graphs():
    # Hundreds of nodes: real augmenting paths through the infinite closure edges, with
    # flow on the opposite upload edges (an int32 overflow there once lost the optimum).
    rng = np.random.default_rng(11)
    for _ in range(12):
        n = int(rng.integers(50, 250))
        g = layered_dag(rng, n, int(rng.integers(1, 10)))
        device = rng.exponential(2.0, n)
        depth = np.maximum(g.producers, 0) / n
        upload = 8000 * 0.6 * np.exp(-5 * depth) * rng.lognormal(0, 0.5, g.n_tensors)
        x = 10 ** rng.uniform(-3, 0)
        w = Weights(device, device / rng.uniform(5, 20, n), upload * x, upload * x * 0.1, 0.0)
        cut = solve(g, w)
        best = cut_lp_value(g, w)
        assert is_closed(g, cut.device)
        assert cut.cost == pytest.approx(best, rel=1e-7), (n, cut.cost, best)


# --------------------------------------------------------------------------- chains (the paper)


def chain(n: int) -> CutGraph:
    """input -> n0 -> t1 -> n1 -> ... -> n_{n-1} -> output (tensor i feeds node i)."""
    producers = np.arange(-1, n)
    consumers = tuple((i,) for i in range(n)) + ((),)
    is_output = np.zeros(n + 1, bool)
    is_output[-1] = True
    return CutGraph(n, producers, consumers, is_output)


def test_chain_matches_neurosurgeon_formula():
    rng = np.random.default_rng(3)
    for _ in range(100):
        n = int(rng.integers(1, 30))
        g = chain(n)
        tm, tc = rng.exponential(10, n), rng.exponential(1, n)
        data = rng.exponential(1e5, n + 1)  # D_j: bytes leaving the first j layers
        bandwidth = 10.0 ** rng.uniform(3, 7)
        # Neurosurgeon: min_j sum_{i<=j} TM_i + sum_{k>j} TC_k + D_j / B, j = 0 (all
        # cloud, D_0 = the input) .. n (all device, nothing sent).
        paper = [tm[:j].sum() + tc[j:].sum() + (data[j] / bandwidth if j < n else 0.0)
                 for j in range(n + 1)]
        w = Weights(tm, tc, data / bandwidth, np.zeros(n + 1), 0.0)
        cut = solve(g, w)
        j = cut.n_device
        np.testing.assert_array_equal(cut.device, np.arange(n) < j)  # a prefix
        assert cut.cost == pytest.approx(min(paper), rel=1e-9)
        assert paper[j] == pytest.approx(min(paper), rel=1e-9)


# --------------------------------------------------------------------------- lower envelope


def check_envelope(g, base, slope, x_lo, x_hi, masks, xs):
    env = lower_envelope(g, base, slope, x_lo, x_hi)
    assert env[0].x_from == x_lo and env[-1].x_to == x_hi
    a = brute_costs(g, base, masks)
    d = brute_costs(g, slope, masks)
    for s0, s1 in zip(env, env[1:]):
        assert s0.x_to == s1.x_from and s0.x_from < s0.x_to
        assert not np.array_equal(s0.cut.device, s1.cut.device)
        # Exact breakpoint: the two sets cost the same there.
        x = s0.x_to
        assert s0.cost(x) == pytest.approx(s1.cost(x), rel=1e-9, abs=1e-12)
    for seg in env:
        assert is_closed(g, seg.cut.device)
        ref = brute_costs(g, base, seg.cut.device[None]), brute_costs(g, slope, seg.cut.device[None])
        assert seg.intercept == pytest.approx(ref[0][0], abs=1e-12)
        assert seg.slope == pytest.approx(ref[1][0], abs=1e-12)
        assert seg.cut.cost == pytest.approx(seg.cost(seg.x_from), rel=1e-12, abs=1e-12)
    for x in xs:
        seg = next(s for s in env if s.x_from <= x <= s.x_to)
        best = (a + x * d).min()
        assert seg.cost(x) <= best + 1e-9 * max(1.0, best), (x, seg.cost(x), best)
    # Eisner-Severance: 2k - 1 solves for k >= 2 lines; a tie at an end (the smaller set
    # wins there, its piece is empty) can cost one more per end.
    assert env.n_solves <= 2 * len(env) + 1
    return env


@pytest.mark.parametrize("ints", [True, False])
def test_lower_envelope_matches_brute_force(ints):
    rng = np.random.default_rng(99 + ints)
    n_segments = []
    for _ in range(60):
        g = random_dag(rng, int(rng.integers(1, 11)))
        masks = all_closed_sets(g)
        # Latency-like: the device is slower than the server, and the slope (the network
        # part, x = 1/bandwidth) is bytes; the graph inputs are big. With ints, ties abound.
        draw = (lambda lo, hi, k: rng.integers(lo, hi, k) * 1.0) if ints else (
            lambda lo, hi, k: rng.uniform(lo, hi, k))
        base = Weights(draw(1, 5, g.n_nodes), draw(0, 2, g.n_nodes), np.zeros(g.n_tensors),
                       np.zeros(g.n_tensors), float(draw(0, 2, 1)[0]))
        up = draw(0, 6, g.n_tensors)
        up[g.producers < 0] += 6
        slope = Weights(np.zeros(g.n_nodes), np.zeros(g.n_nodes), up, draw(0, 2, g.n_tensors), 0.0)
        x_hi = float(rng.choice([1.0, 5.0, 50.0]))
        env = check_envelope(g, base, slope, 0.0, x_hi, masks, np.linspace(0, x_hi, 201))
        n_segments.append(len(env))
    assert max(n_segments) >= 3  # the test exercises real envelopes, not single lines


def test_lower_envelope_chain_breakpoints_exact():
    # Chain with decreasing tensor sizes: as x grows, the cut moves deeper.
    g = chain(4)
    base = Weights([4.0, 4.0, 4.0, 4.0], [1.0, 1.0, 1.0, 1.0], np.zeros(5), np.zeros(5), 0.0)
    slope = Weights(np.zeros(4), np.zeros(4), [8.0, 4.0, 2.0, 1.0, 0.0], np.zeros(5), 0.0)
    env = lower_envelope(g, base, slope, 0.0, 10.0)
    # Lines: j=0: 4 + 8x, j=1: 7 + 4x, j=2: 10 + 2x, j=3: 13 + x, j=4: 16.
    # Crossings: 0/1 at 0.75, 1/2 at 1.5, 2/3 at 3, 3/4 at 3.
    assert [s.cut.n_device for s in env] == [0, 1, 2, 4]
    assert [s.x_to for s in env[:-1]] == pytest.approx([0.75, 1.5, 3.0], abs=1e-12)
    assert env.n_solves <= 2 * len(env) + 1


def test_lower_envelope_single_point_and_errors():
    g = diamond()
    w = Weights([1, 1, 1, 1], [2, 2, 2, 2], [1, 1, 1, 1, 1], [1] * 5, 0.0)
    env = lower_envelope(g, w, w, 2.0, 2.0)
    assert len(env) == 1 and env.n_solves == 1
    with pytest.raises(SolverInputError, match="x_lo"):
        lower_envelope(g, w, w, 3.0, 1.0)
    with pytest.raises(SolverInputError, match="x_lo"):
        lower_envelope(g, w, w, 0.0, np.inf)


# --------------------------------------------------------------------------- validation


def test_user_errors_name_the_problem():
    with pytest.raises(SolverInputError, match="producer"):
        CutGraph(2, np.array([-1, 5]), ((0,), ()), np.array([False, True]))
    with pytest.raises(SolverInputError, match="consumers has 1"):
        CutGraph(2, np.array([-1, 0]), ((0,),), np.array([False, True]))
    with pytest.raises(SolverInputError, match="consumes its own"):
        CutGraph(2, np.array([-1, 0]), ((0,), (0,)), np.array([False, True]))
    with pytest.raises(SolverInputError, match=r"device\[1\]"):
        Weights([1.0, -1.0], [1, 1], [0], [0])
    with pytest.raises(SolverInputError, match="1-D"):
        Weights([[1.0]], [1.0], [0], [0])
    with pytest.raises(SolverInputError, match="remote"):
        Weights([1.0], [1.0], [0], [0], remote=np.nan)
    g = diamond()
    with pytest.raises(SolverInputError, match="same graph"):
        solve(g, Weights([1, 1], [1, 1], [0], [0]))
    with pytest.raises(SolverInputError, match="mask"):
        evaluate(g, Weights.zeros(4, 5), [True])


def test_empty_graph():
    g = CutGraph(0, np.array([-1]), ((),), np.array([True]))
    cut = solve(g, Weights.zeros(0, 1))
    assert cut.device.shape == (0,) and cut.cost == 0.0
