"""Fitting the per-op-key latency regressions (scikit-learn) and exporting them as data.

For every op key the profiler tries a few model forms (non-negative linear on the key's
features, linear on its main work term alone, log-log power law), scores each by k-fold
held-out mean absolute relative error (relative to the time plus ``ABS_FLOOR_MS``), and
keeps the best. Fitted models become plain
:class:`~nscompile.cost_model.Regression` records: no estimator object is ever stored.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nscompile.cost_model import Regression

__all__ = ["Sample", "FEATURE_SETS", "fit_key", "fit_all", "fit_linear_law", "fit_fused"]

# Features each op key's regression may use (why: these are what its kernel's time
# scales with; MAC counts are split per MLAS kernel family for Conv).
# Extra candidate feature sets (tried in addition to FEATURE_SETS / the main term).
EXTRA_SETS: dict[str, list[tuple[str, ...]]] = {
    "Conv": [
        ("macs", "c_in_per_group", "c_out", "spatial_out", "kernel", "stride", "is_dw", "is_grouped", "is_1x1"),
        ("macs", "c_in_per_group", "c_out", "spatial_out", "is_dw", "is_grouped", "is_1x1"),
        ("macs", "bytes_in", "bytes_out", "param_bytes", "c_in_per_group", "c_out", "is_dw", "is_grouped",
         "is_1x1"),
    ],
    "Gemm": [("macs", "param_bytes")],
    "MatMul": [("macs", "param_bytes", "bytes_in")],
}
_CONV_SHAPE = ("macs", "c_in_per_group", "c_out", "spatial_out", "kernel", "stride")
for _k in ("Conv.depthwise", "Conv.grouped"):
    EXTRA_SETS[_k] = [_CONV_SHAPE, ("macs", "spatial_out", "c_out")]

FEATURE_SETS: dict[str, tuple[str, ...]] = {
    "Conv": ("macs_1x1", "macs_kxk", "macs_dw", "macs_grouped", "macs_narrow", "bytes_in", "bytes_out",
             "param_bytes"),
    "Conv.depthwise": ("macs", "bytes_in", "bytes_out", "param_bytes"),
    "Conv.grouped": ("macs", "bytes_in", "bytes_out", "param_bytes"),
    "Gemm": ("macs_few_rows", "macs_many_rows", "param_bytes", "bytes_in", "bytes_out", "param_bytes_over_1mb",
             "param_bytes_over_8mb", "param_bytes_cold"),
    "MatMul": ("macs_few_rows", "macs_many_rows", "param_bytes", "bytes_in", "bytes_out", "param_bytes_over_1mb",
               "param_bytes_over_8mb", "param_bytes_cold", "matmul_batch"),
    "LSTM": ("macs_input", "macs_recurrent", "recurrent_traffic_over_4mb", "seq"),
    "GRU": ("macs_input", "macs_recurrent", "recurrent_traffic_over_4mb", "seq"),
    "Gather": ("n_indices", "bytes_out"),
    "MaxPool": ("macs", "bytes_in", "bytes_out"),
    "AveragePool": ("macs", "bytes_in", "bytes_out"),
    "LRN": ("macs", "bytes_in"),
    "fused:*": ("elems_out", "bytes_in"),
    "Softmax": ("bytes_total", "elems_out"),
    "Gelu": ("elems_out",),
    "Erf": ("elems_out",),
    "LayerNormalization": ("bytes_total", "elems_out"),
    # The cut-tensor casts go both ways: fp32->fp16 reads 4 bytes per element and writes
    # 2, fp16->fp32 the reverse. Equal totals, so separate terms let the fit price each.
    "Cast": ("bytes_in", "bytes_out"),
}
_DEFAULT_FEATURES = ("bytes_total", "elems_out")
# Keys fitted with linear forms only: few samples, and models run them far beyond the
# sweep (a power law fitted on 8 LSTMs extrapolates wildly to a 1024-unit LSTM).
_LINEAR_ONLY = frozenset({"LSTM", "GRU", "Gather"})
# The single main work term per key, for the one-feature candidate.
_MAIN = {"Conv": "macs", "Conv.depthwise": "macs", "Conv.grouped": "macs",
         "Gemm": "macs", "MatMul": "macs", "LSTM": "macs", "GRU": "macs",
         "MaxPool": "macs", "AveragePool": "macs", "LRN": "macs", "fallback": "bytes_total"}


@dataclass
class Sample:
    """One measured microbenchmark attributed to an op key."""

    key: str
    values: dict[str, float]
    ms: float


def _design(samples, feats):
    return np.array([[float(s.values.get(f, 0.0)) for f in feats] for s in samples], dtype=np.float64)


#: Errors are relative to the measured time plus this (ms). A sample's time is net of
#: the per-run and per-kernel overheads (~4 us here), and what is left of a sub-
#: microsecond op is mostly the error of that subtraction: judged by pure relative error,
#: a 0.3 us sample would outweigh a 10 us one 1000 times and bend the fit of every size.
ABS_FLOOR_MS = 0.002


def _fit_linear(X, y, feats, intercept=True):
    """Non-negative least squares on relative error (floored), with a non-negative intercept (or none)."""
    from sklearn.linear_model import LinearRegression

    scale = np.maximum(np.abs(X).max(axis=0), 1e-12)
    A = np.hstack([X / scale, np.ones((len(y), 1))]) if intercept else X / scale
    w = 1.0 / (np.maximum(y, 0.0) + ABS_FLOOR_MS) ** 2
    lr = LinearRegression(positive=True, fit_intercept=False).fit(A, y, sample_weight=w)
    coef = lr.coef_[:len(feats)] / scale
    return Regression(tuple(feats), "linear", tuple(float(c) for c in coef), float(lr.coef_[-1]) if intercept else 0.0)


def _fit_loglog(X, y, feats):
    from sklearn.linear_model import Ridge

    L = np.log1p(np.maximum(X, 0.0))
    # A log-space residual is a relative error; weigh it down where the floor dominates.
    y = np.maximum(y, 1e-5)
    lr = Ridge(alpha=1e-3).fit(L, np.log(y), sample_weight=(y / (y + ABS_FLOOR_MS)) ** 2)
    return Regression(tuple(feats), "loglog", tuple(float(c) for c in lr.coef_), float(lr.intercept_))


def _rel_err(reg: Regression, samples) -> float:
    errs = [abs(reg.predict(s.values) - s.ms) / (max(s.ms, 0.0) + ABS_FLOOR_MS) for s in samples]
    return float(np.mean(errs)) if errs else float("nan")


def fit_key(key: str, samples: list[Sample], seed: int = 0) -> Regression:
    """The best regression for one op key, chosen by k-fold held-out error.

    Args:
        key: The op key (selects the candidate feature set).
        samples: Its measurements (ms already net of the fixed per-run overhead).
        seed: Seed of the fold split.

    Returns:
        The chosen regression, refitted on all samples, with ``heldout_error`` and
        ``n_samples`` filled in.
    """
    y = np.array([s.ms for s in samples], dtype=np.float64)
    if len(samples) < 3:
        c = float(np.median(y)) if len(y) else 0.0
        return Regression((), "constant", (), c, None, len(samples))
    feats_all = FEATURE_SETS.get(key, _DEFAULT_FEATURES)
    X_all = _design(samples, feats_all)
    keep = [i for i, f in enumerate(feats_all) if np.ptp(X_all[:, i]) > 0]
    feats = tuple(feats_all[i] for i in keep)
    candidates: list[tuple[str, tuple[str, ...]]] = [("const", ())]
    if feats:
        candidates.append(("linear", feats))
        candidates.append(("loglog", feats))
        main = _MAIN.get(key, feats[0])
        if main in samples[0].values and main != feats[0] or len(feats) > 1:
            candidates.append(("linear", (main,)))
            candidates.append(("loglog", (main,)))
        if key in _LINEAR_ONLY:
            candidates = [c for c in candidates if c[0] != "loglog"]
        for extra in ([] if key in _LINEAR_ONLY else EXTRA_SETS.get(key, [])):
            X_e = _design(samples, extra)
            fs_e = tuple(f for i, f in enumerate(extra) if np.ptp(X_e[:, i]) > 0)
            if fs_e:
                candidates.append(("loglog", fs_e))

    def fit(form, fs, subset):
        yy = np.array([s.ms for s in subset])
        if form == "const":
            return Regression((), "constant", (), float(np.median(yy)))
        X = _design(subset, fs)
        return _fit_linear(X, yy, fs) if form == "linear" else _fit_loglog(X, yy, fs)

    rng = np.random.default_rng(seed)
    order = rng.permutation(len(samples))
    k = min(5, len(samples))
    folds = [order[i::k] for i in range(k)]
    best = None
    best_linear = None
    for form, fs in candidates:
        errs = []
        for fi in range(k):
            test = [samples[i] for i in folds[fi]]
            train = [samples[i] for j in range(k) if j != fi for i in folds[j]]
            if len(train) < 2:
                continue
            errs.append(_rel_err(fit(form, fs, train), test) * len(test))
        err = float(np.sum(errs) / len(samples))
        if best is None or err < best[0] - 1e-9:
            best = (err, form, fs)
        if form == "linear" and (best_linear is None or err < best_linear[0] - 1e-9):
            best_linear = (err, form, fs)
    err, form, fs = best
    if form == "loglog" and best_linear is not None and err > 0.8 * best_linear[0]:
        # A power law extrapolates far worse than a linear law beyond the sweep (a
        # model's layer bigger than any benchmark): take it only when clearly better.
        err, form, fs = best_linear
    reg = fit(form, fs, samples)
    return Regression(reg.features, reg.transform, reg.coef, reg.intercept, err, len(samples))


def fit_all(samples: list[Sample], seed: int = 0) -> dict[str, Regression]:
    """One regression per op key present in ``samples``.

    Args:
        samples: All attributed measurements.
        seed: Fold-split seed.

    Returns:
        Op key -> regression.
    """
    by_key: dict[str, list[Sample]] = {}
    for s in samples:
        by_key.setdefault(s.key, []).append(s)
    return {k: fit_key(k, v, seed) for k, v in sorted(by_key.items())}


def fit_linear_law(samples: list[Sample], features: tuple[str, ...], intercept: bool = True) -> Regression:
    """The non-negative linear regression of ``samples`` on ``features``, with its held-out error.

    Args:
        samples: Measurements (any keys).
        features: Feature names.
        intercept: Fit a non-negative intercept (else it is 0).

    Returns:
        The linear regression (used for the fallback model, which must extrapolate sanely).
    """
    y = np.array([s.ms for s in samples], dtype=np.float64)
    reg = _fit_linear(_design(samples, features), y, features, intercept)
    rng = np.random.default_rng(0)
    order = rng.permutation(len(samples))
    k = min(5, len(samples))
    errs = []
    for fi in range(k):
        test = [samples[i] for i in order[fi::k]]
        train = [samples[i] for j in range(k) if j != fi for i in order[j::k]]
        part = _fit_linear(_design(train, features), np.array([s.ms for s in train]), features, intercept)
        errs.append(_rel_err(part, test) * len(test))
    return Regression(reg.features, "linear", reg.coef, reg.intercept, float(np.sum(errs) / len(samples)),
                      len(samples))


def fit_fused(patterns: list[tuple[list[str], list[float], float]], min_patterns: int = 3) -> dict[str, Regression]:
    """Per fused op key, the cost per output element of a node folded into its producer's kernel.

    One joint fit over all patterns: a pattern's time beyond its base kernel is the sum,
    over its fused nodes, of ``c[key] * elems_out`` (non-negative). Joint, because a
    pattern folds several nodes (BatchNormalization and Relu): fitted one key at a time,
    each would be charged the others' cost. Why per key at all: a fused Relu is free, a
    fused Clip (ReLU6) costs a pass over the output, about 40 us per MB here.

    Args:
        patterns: ``(fused keys, their elems_out, extra ms)`` per fused-pattern benchmark.
        min_patterns: Keys seen in fewer patterns get no model (the generic one applies).

    Returns:
        Fused key -> linear regression on ``elems_out``, each with the joint fit's k-fold
        held-out error and the number of patterns it appeared in.
    """
    counts: dict[str, int] = {}
    for ks, _, _ in patterns:
        for k in set(ks):
            counts[k] = counts.get(k, 0) + 1
    keys = tuple(sorted(k for k, n in counts.items() if n >= min_patterns))
    if not keys:
        return {}
    samples = []
    for ks, elems, extra in patterns:
        values = dict.fromkeys(keys, 0.0)  # a fused key's column: its nodes' output elements
        for k, e in zip(ks, elems):
            if k in values:
                values[k] += e
        samples.append(Sample("fused", values, extra))
    joint = fit_linear_law(samples, keys, intercept=False)
    return {key: Regression(("elems_out",), "linear", (c,), 0.0, joint.heldout_error, counts[key])
            for key, c in zip(joint.features, joint.coef)}
