"""Plots and ``report.html`` for a benchmark run: pictures first, numbers underneath.

Figures (PNG, matplotlib's Agg backend):

- ``decisions.png``: the paper's decision table, model x (network, device profile), the
  cut nscompile chose, green where it is the oracle's cut, amber where within 10% of the
  oracle's latency, red otherwise;
- ``latency_<profile>.png`` / ``energy_<profile>.png``: chosen vs all-device vs
  all-cloud vs oracle per model and network (log scale);
- ``trace.png``: latency per request over time while the link changes;
- ``load.png``: device latency and queries/s as the server's load rises.
"""

from __future__ import annotations

import html
import math
import statistics
from collections import defaultdict
from pathlib import Path

COLORS = {"nscompile": "#1b9e77", "chosen": "#1b9e77", "oracle": "#7570b3", "all-device": "#d95f02", "all-cloud": "#666666"}


def _fmt(x, digits=1) -> str:
    if isinstance(x, float):
        return "–" if not math.isfinite(x) else f"{x:.{digits}f}"
    return str(x)


def decision_grid(rows: list[dict], load: str | None = None) -> tuple[list[str], list[tuple[str, str]], dict]:
    """(models, columns (network, profile), cell -> row) for one load level."""
    rows = [r for r in rows if load is None or r["load"] == load]
    models = list(dict.fromkeys(r["model"] for r in rows))
    cols = list(dict.fromkeys((r["network"], r["device_profile"]) for r in rows))
    cells = {(r["model"], r["network"], r["device_profile"]): r for r in rows}
    return models, cols, cells


def plot_decisions(rows: list[dict], path: Path, load: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models, cols, cells = decision_grid(rows, load)
    if not models:
        return
    fig, ax = plt.subplots(figsize=(max(6, 1.9 * len(cols) + 1.5), 0.45 * len(models) + 1.6))
    ax.set_xlim(0, len(cols))
    ax.set_ylim(0, len(models))
    ax.invert_yaxis()
    for i, m in enumerate(models):
        for j, (net, prof) in enumerate(cols):
            r = cells.get((m, net, prof))
            if r is None:
                continue
            color = "#b8e186" if r["chosen_cut"] == r["oracle_cut"] else ("#fee08b" if r["within_10pct"] else "#f4a582")
            ax.add_patch(plt.Rectangle((j, i), 1, 1, facecolor=color, edgecolor="white"))
            text = r["chosen_cut"] if r["chosen_cut"] == r["oracle_cut"] else f"{r['chosen_cut']}\n(oracle {r['oracle_cut']})"
            ax.text(j + 0.5, i + 0.5, text, ha="center", va="center", fontsize=7)
    ax.set_xticks([j + 0.5 for j in range(len(cols))], [f"{n}\n{p}" for n, p in cols], fontsize=7)
    ax.set_yticks([i + 0.5 for i in range(len(models))], models, fontsize=8)
    ax.tick_params(length=0)
    ax.set_title(f"Cut chosen by nscompile, {load} server\ngreen: the oracle's cut; amber: other cut, within 10%; red: over 10%", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_bars(rows: list[dict], path: Path, profile: str, what: str) -> None:
    """Grouped bars (log scale) of chosen / oracle / all-device / all-cloud, idle server."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sel = [r for r in rows if r["device_profile"] == profile and r["load"] == rows[0]["load"]]
    if not sel:
        return
    unit = "ms" if what == "latency" else "mJ"
    key = "ms" if what == "latency" else "mj"
    series = [("chosen", f"chosen_{key}"), ("oracle", f"oracle_{key}"), ("all-device", f"all_device_{key}"), ("all-cloud", f"all_cloud_{key}")]
    labels = [f"{r['model']}\n{r['network']}" for r in sel]
    fig, ax = plt.subplots(figsize=(max(7, 0.55 * len(sel) + 2), 4.2))
    w = 0.2
    for k, (name, col) in enumerate(series):
        ys = [r[col] if math.isfinite(r[col]) else 0 for r in sel]
        ax.bar([i + (k - 1.5) * w for i in range(len(sel))], ys, w, label=name, color=COLORS[name])
    ax.set_yscale("log")
    ax.set_xticks(range(len(sel)), labels, fontsize=6, rotation=90)
    ax.set_ylabel(f"{what} per request ({unit}, median, log)")
    ax.set_title(f"{what.capitalize()}: nscompile vs all-device vs all-cloud vs oracle — {profile}, {sel[0]['load']} server", fontsize=9)
    ax.legend(fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_trace(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 3.8))
    for mode in ("all-device", "all-cloud", "nscompile"):
        pts = [r for r in rows if r["mode"] == mode]
        if pts:
            ax.plot([r["t_s"] for r in pts], [r["latency_ms"] for r in pts], ".-", ms=3, lw=0.8, label=mode, color=COLORS[mode])
    bounds = defaultdict(list)
    for r in rows:
        bounds[(r["phase"], r["network"])].append(r["t_s"])
    for (_, net), ts in sorted(bounds.items()):
        start = max(0.0, min(ts))
        ax.axvline(start, color="#cccccc", lw=0.6)
        ax.text(start, 1.0, f" {net}", transform=ax.get_xaxis_transform(), fontsize=8, va="bottom")
    ax.set_yscale("log")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("latency per request (ms, log)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_device_load(rows: list[dict], path: Path) -> None:
    """Three panels over time: the runner's Kd estimate, its cut and its latency, learnt vs pinned."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(8, 6.4), sharex=True)
    cuts = list(dict.fromkeys(r["cut"] for r in rows))
    styles = {"nscompile": COLORS["nscompile"], "pinned Kd=1": COLORS["all-device"]}
    for mode, color in styles.items():
        pts = [r for r in rows if r["mode"] == mode]
        if not pts:
            continue
        t = [r["t_s"] for r in pts]
        axes[0].plot(t, [r["device_load"] for r in pts], ".-", ms=3, lw=0.8, color=color, label=mode)
        axes[1].plot(t, [cuts.index(r["cut"]) for r in pts], ".", ms=4, color=color, label=mode)
        axes[2].plot(t, [r["latency_ms"] for r in pts], ".-", ms=3, lw=0.8, color=color, label=mode)
    for ph in sorted({r["phase"] for r in rows}):
        ts = [r["t_s"] for r in rows if r["phase"] == ph]
        loaded = next(r["loaded"] for r in rows if r["phase"] == ph)
        for ax in axes:
            ax.axvline(max(0.0, min(ts)), color="#cccccc", lw=0.6)
        axes[0].text(max(0.0, min(ts)), 1.0, " loaded" if loaded else " idle", transform=axes[0].get_xaxis_transform(),
                     fontsize=8, va="bottom")
    axes[0].set_ylabel("device load Kd")
    axes[1].set_yticks(range(len(cuts)), cuts, fontsize=7)
    axes[1].set_ylabel("cut")
    axes[2].set_yscale("log")
    axes[2].set_ylabel("latency (ms, log)")
    axes[2].set_xlabel("time (s)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_load(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for mode in ("nscompile", "all-cloud"):
        pts = [r for r in rows if r["mode"] == mode]
        if not pts:
            continue
        a1.plot([r["clients"] for r in pts], [r["latency_ms"] for r in pts], "o-", label=mode, color=COLORS[mode])
        a2.plot([r["clients"] for r in pts], [r["total_qps"] for r in pts], "o-", label=f"{mode}: all queries", color=COLORS[mode])
        a2.plot([r["clients"] for r in pts], [r["others_qps"] for r in pts], "s--", label=f"{mode}: other clients'", color=COLORS[mode], alpha=0.6)
    a1.set_xlabel("other clients on the server")
    a1.set_ylabel("device latency (ms, median)")
    a1.set_yscale("log")
    a2.set_xlabel("other clients on the server")
    a2.set_ylabel("queries/s completed")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _table(rows: list[dict], cols: list[tuple[str, str]]) -> str:
    head = "".join(f"<th>{html.escape(t)}</th>" for t, _ in cols)
    body = []
    for r in rows:
        cells = []
        for _, k in cols:
            v = r.get(k, "")
            cells.append(f"<td>{html.escape(_fmt(v, 2 if isinstance(v, float) and abs(v) < 10 else 1))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def write_report(result, testbed: str) -> Path:
    """Write the PNGs and ``report.html`` (and ``report.md``) into ``result.out_dir``."""
    out = result.out_dir
    rows = result.rows
    figs = []
    for load in dict.fromkeys(r["load"] for r in rows):
        plot_decisions(rows, out / f"decisions_{load}.png", load)
        figs.append((f"Decision table, {load} server", f"decisions_{load}.png"))
    for prof in dict.fromkeys(r["device_profile"] for r in rows):
        for what in ("latency", "energy"):
            plot_bars(rows, out / f"{what}_{prof}.png", prof, what)
            figs.append((f"{what.capitalize()}, {prof}", f"{what}_{prof}.png"))
    if result.trace_rows:
        plot_trace(result.trace_rows, out / "trace.png")
        figs.append(("Network variation: Wi-Fi → LTE → 3G → Wi-Fi", "trace.png"))
    if result.load_rows:
        plot_load(result.load_rows, out / "load.png")
        figs.append(("Server load variation", "load.png"))
    if result.device_load_rows:
        plot_device_load(result.device_load_rows, out / "device_load.png")
        figs.append(("Device load variation: idle → 40% of its CPU → idle", "device_load.png"))
    headline = headline_rows(result.summary)
    by_profile = _by_profile(rows)
    misses = [r for r in rows if not r["within_10pct"]]
    parts = [
        "<!doctype html><meta charset='utf-8'><title>nscompile bench</title>",
        "<style>body{font:14px sans-serif;max-width:1200px;margin:2em auto}img{max-width:100%;border:1px solid #eee}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:2px 6px;text-align:right}"
        ".big td{font-size:15px}</style>",
        "<h1>nscompile bench</h1>",
        f"<p>{html.escape(testbed)}. {len(rows)} cases in {result.seconds / 60:.1f} min. Latencies are medians of "
        "measured end-to-end requests, nscompile's own and every cut forced taking turns in rotating rounds; energy is "
        "estimated from the device profile's power model and the measured phases.</p>",
        "<table class='big'>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in headline) + "</table>",
    ]
    if len(by_profile) > 1:
        parts.append("<h3>Per device profile</h3>" + _table(by_profile, [(h, k) for h, k in _PROFILE_COLS]))
    if result.skipped:
        parts.append(f"<p>Skipped: {html.escape('; '.join(result.skipped))}</p>")
    for title, f in figs:
        parts.append(f"<h2>{html.escape(title)}</h2><img src='{f}'>")
    parts.append("<h2>Where the chosen cut misses (&gt; 110% of the oracle)</h2>")
    parts.append(_table(misses, [("model", "model"), ("network", "network"), ("profile", "device_profile"), ("load", "load"),
                                 ("chosen", "chosen_cut"), ("ms", "chosen_ms"), ("oracle", "oracle_cut"), ("ms", "oracle_ms"),
                                 ("why", "miss_reason")]) if misses else "<p>None.</p>")
    parts.append("<h2>All cases</h2>")
    parts.append(_table(rows, [("model", "model"), ("network", "network"), ("profile", "device_profile"), ("load", "load"),
                               ("K", "server_load_k"), ("chosen", "chosen_cut"), ("chosen ms", "chosen_ms"), ("oracle", "oracle_cut"),
                               ("oracle ms", "oracle_ms"), ("all-device ms", "all_device_ms"), ("all-cloud ms", "all_cloud_ms"),
                               ("chosen mJ", "chosen_mj"), ("all-cloud mJ", "all_cloud_mj"), ("x cloud", "speedup_vs_cloud"),
                               ("regret", "regret"), ("candidates", "n_candidates"), ("timed", "n_timed"),
                               ("contested", "contested")]))
    parts.append("<p>Files: results.csv (one row per case), cuts.csv (every cut measured), trace.csv, load.csv, summary.json.</p>")
    page = out / "report.html"
    page.write_text("\n".join(parts))
    (out / "report.md").write_text(markdown(result, testbed, headline, figs))
    return page


def headline_rows(s: dict) -> list[tuple[str, str]]:
    """The summary as (what, all cases / contested cases) lines, for the report and the CLI."""
    c = s.get("contested") or figures([])

    def both(key: str, fmt: str, note: str = "") -> str:
        return f"{_pct_or(s[key], fmt)} / {_pct_or(c[key], fmt)}{note}"

    return [
        ("cases (all / contested: the oracle is a split, or the best two candidates are within 25%)",
         f"{s['cases']} / {s.get('contested_cases', 0)}"),
        ("oracle is a split (all cases)", _pct_or(s.get("oracle_is_split", math.nan), "%")),
        ("chosen within 10% of the oracle", both("within_10pct", "%", " (targets: 95% / 90%)")),
        ("within 10% or 1 ms (jitter floor)", both("within_10pct_or_1ms", "%")),
        ("within 10% or inside the spread (IQRs overlap)", both("within_10pct_or_iqr", "%")),
        ("same cut as the oracle", both("same_cut_as_oracle", "%")),
        ("regret chosen/oracle (geomean)", both("gmean_regret", ".3f")),
        ("latency speedup vs all-cloud (geomean)", both("gmean_speedup_vs_cloud", ".2fx", " (paper: 3.1x, max 40.7x)")),
        ("latency speedup vs all-cloud (max)", both("max_speedup_vs_cloud", ".1fx")),
        ("latency speedup vs all-device (geomean)", both("gmean_speedup_vs_device", ".2fx")),
        ("device energy saving vs all-cloud (mean)", both("mean_energy_saving_vs_cloud", ".1%", " (paper: 59.5%, max 94.7%)")),
        ("device energy saving vs all-cloud (max)", both("max_energy_saving_vs_cloud", ".1%")),
    ]


def _pct_or(x, fmt: str) -> str:
    """``x`` formatted ("%": a share with no decimals; "…x": a ratio), or "–" when it is not a number."""
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "–"
    if fmt == "%":
        return f"{x:.0%}"
    if fmt.endswith("x"):
        return f"{x:{fmt[:-1]}}x"
    return f"{x:{fmt}}"


_PROFILE_COLS = [("device profile", "profile"), ("cases", "cases"), ("within 10%", "within_10pct"),
                 ("within 10% or 1 ms", "within_10pct_or_1ms"), ("within 10% or IQRs overlap", "within_10pct_or_iqr"),
                 ("same cut", "same_cut_as_oracle"),
                 ("x cloud (geomean)", "gmean_speedup_vs_cloud"), ("x device (geomean)", "gmean_speedup_vs_device"),
                 ("energy saving vs cloud (mean)", "mean_energy_saving_vs_cloud"), ("oracle a split", "oracle_is_split"),
                 ("contested", "contested_cases")]


def summary(rows: list[dict]) -> dict:
    """The headline numbers for all cases, and the same under ``contested`` for the contested ones.

    Figures: share within 10% of the oracle (also counting misses inside the requests'
    spread), geometric-mean regret and speedups, energy saving; plus the share of cases
    whose oracle is a split and the number of contested cases.
    """
    contested = [r for r in rows if r.get("contested")]
    n = len(rows)
    return {**figures(rows), "oracle_is_split": sum(bool(r.get("oracle_is_split")) for r in rows) / n if n else math.nan,
            "contested_cases": len(contested), "contested": figures(contested)}


def figures(rows: list[dict]) -> dict:
    """Share within 10% of the oracle (also counting misses inside the requests' spread),
    geometric-mean regret and speedups, energy saving, over ``rows``."""
    def gmean(xs):
        xs = [x for x in xs if x and math.isfinite(x) and x > 0]
        return math.exp(sum(map(math.log, xs)) / len(xs)) if xs else math.nan

    n = len(rows)
    savings = [r["energy_saving_vs_cloud"] for r in rows if math.isfinite(r["energy_saving_vs_cloud"])]
    return {
        "cases": n,
        "within_10pct": sum(r["within_10pct"] for r in rows) / n if n else math.nan,
        "within_10pct_or_1ms": sum(r["within_tolerance"] for r in rows) / n if n else math.nan,
        "within_10pct_or_iqr": sum(r["within_10pct"] or r.get("iqr_overlap", False) for r in rows) / n if n else math.nan,
        "same_cut_as_oracle": sum(r["chosen_cut"] == r["oracle_cut"] for r in rows) / n if n else math.nan,
        "gmean_speedup_vs_cloud": gmean(r["speedup_vs_cloud"] for r in rows),
        "max_speedup_vs_cloud": max((r["speedup_vs_cloud"] for r in rows if math.isfinite(r["speedup_vs_cloud"])), default=math.nan),
        "gmean_speedup_vs_device": gmean(r["speedup_vs_device"] for r in rows),
        "mean_energy_saving_vs_cloud": statistics.mean(savings) if savings else math.nan,
        "max_energy_saving_vs_cloud": max(savings, default=math.nan),
        "gmean_regret": gmean(r["regret"] for r in rows),
    }


def _by_profile(rows: list[dict]) -> list[dict]:
    return [{"profile": p, **summary([r for r in rows if r["device_profile"] == p])}
            for p in dict.fromkeys(r["device_profile"] for r in rows)]


def markdown(result, testbed: str, headline: list[tuple[str, str]], figs: list[tuple[str, str]]) -> str:
    """The report as markdown: headline, decision tables, misses with reasons, load and trace tables."""
    rows = result.rows
    md = ["# nscompile bench", "", f"Testbed: {testbed}. {len(rows)} cases, {result.seconds / 60:.1f} min.", "",
          "| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in headline] + [""]
    by_profile = _by_profile(rows)
    if len(by_profile) > 1:
        md += ["| " + " | ".join(h for h, _ in _PROFILE_COLS) + " |", "|---" * len(_PROFILE_COLS) + "|"]
        for b in by_profile:
            md.append("| " + " | ".join(b["profile"] if k == "profile" else _fmt(b[k], 2) for _, k in _PROFILE_COLS) + " |")
        md.append("")
    if result.skipped:
        md += [f"Skipped (time limit): {'; '.join(result.skipped)}", ""]
    for load in dict.fromkeys(r["load"] for r in rows):
        models, cols, cells = decision_grid(rows, load)
        md += [f"## Decision table, {load} server (chosen cut; oracle's in brackets when different)", "",
               "| model | " + " | ".join(f"{n} {p}" for n, p in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for m in models:
            out = []
            for n, p in cols:
                r = cells.get((m, n, p))
                out.append("" if r is None else r["chosen_cut"] if r["chosen_cut"] == r["oracle_cut"]
                           else f"{r['chosen_cut']} [{r['oracle_cut']}]{'' if r['within_10pct'] else ' ✗'}")
            md.append(f"| {m} | " + " | ".join(out) + " |")
        md.append("")
    md += ["## Latency (ms) and device energy (mJ), medians", "",
           "| model | net | profile | load | K | chosen | ms | oracle | ms | all-device ms | all-cloud ms | chosen mJ | all-cloud mJ | x cloud | x device | candidates (timed) | contested |",
           "|---" * 17 + "|"]
    for r in rows:
        md.append("| " + " | ".join([r["model"], r["network"], r["device_profile"], r["load"], _fmt(r["server_load_k"], 2), r["chosen_cut"],
                                      _fmt(r["chosen_ms"]), r["oracle_cut"], _fmt(r["oracle_ms"]), _fmt(r["all_device_ms"]),
                                      _fmt(r["all_cloud_ms"]), _fmt(r["chosen_mj"]), _fmt(r["all_cloud_mj"]),
                                      _fmt(r["speedup_vs_cloud"], 2), _fmt(r["speedup_vs_device"], 2),
                                      f"{r.get('n_candidates', '')} ({r.get('n_timed', '')})",
                                      "yes" if r.get("contested") else ""]) + " |")
    misses = [r for r in rows if not r["within_10pct"]]
    md += ["", f"## Misses (> 110% of the oracle): {len(misses)}", ""]
    md += [f"- {r['model']} {r['network']} {r['device_profile']} {r['load']}: {r['miss_reason']}" for r in misses]
    if result.load_rows:
        md += ["", "## Server load variation", "", "| mode | other clients | K | device latency ms | device q/s | others q/s | all q/s | cuts |",
               "|---" * 8 + "|"]
        md += [f"| {r['mode']} | {r['clients']} | {_fmt(r['server_load_k'], 2)} | {_fmt(r['latency_ms'])} | {_fmt(r['device_qps'], 2)} | "
               f"{_fmt(r['others_qps'], 2)} | {_fmt(r['total_qps'], 2)} | {r['cuts']} |" for r in result.load_rows]
    if result.trace_rows:
        phases = sorted({(r["phase"], r["network"]) for r in result.trace_rows})
        md += ["", "## Network variation (median ms per phase)", "", "| mode | " + " | ".join(n for _, n in phases) + " |",
               "|---" * (len(phases) + 1) + "|"]
        for mode in dict.fromkeys(r["mode"] for r in result.trace_rows):
            cells = []
            for ph, _ in phases:
                xs = sorted(r["latency_ms"] for r in result.trace_rows if r["mode"] == mode and r["phase"] == ph)
                cells.append(_fmt(xs[len(xs) // 2]) if xs else "–")
            md.append(f"| {mode} | " + " | ".join(cells) + " |")
    d = result.device_load_summary
    if d:
        md += ["", "## Device load variation (the device at 40% of its CPU in the middle phase)", "",
               f"Cut idle: {d['cut_idle']}; loaded: {d['cut_loaded']} after {d['adapt_requests']} requests "
               f"(Kd estimate {_fmt(d['kd_loaded'], 2)}). Median latency while loaded: {_fmt(d['latency_loaded_ms'])} ms "
               f"learning Kd, {_fmt(d['latency_loaded_pinned_ms'])} ms with Kd pinned at 1."]
    md += [""] + [f"![{t}]({f})" for t, f in figs]
    return "\n".join(md) + "\n"
