"""``nscompile bench``: the paper's experiments on an emulated device-network-server testbed."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from nscompile.cli import app


def _list(text: str | None) -> list[str] | None:
    return [t.strip() for t in text.split(",") if t.strip()] if text else None


@app.command()
def bench(
    output: Path = typer.Option(Path("bench/out/bench"), "--output", "-o", help="Output directory (CSV, PNG, report.html)."),
    quick: bool = typer.Option(False, "--quick", help="Reduced sweep: LeNet and AlexNet (small) on 3G and 5G, idle and loaded, and the LSTM acoustic model (full) on 5G idle; the phone-class device (< 3 min)."),
    models: str | None = typer.Option(None, help="Zoo models, comma separated (default: the whole zoo; --quick: lenet,alexnet,speech_lstm)."),
    size: str | None = typer.Option(None, help="Zoo size: full or small (default: full; --quick: small, speech_lstm full)."),
    networks: str | None = typer.Option(None, help="Network presets, comma separated (default: 3G,LTE,WIFI,5G; --quick: 3G,5G)."),
    device_profile: list[Path] | None = typer.Option(None, "--device-profile", help="Device profile JSON (repeatable; default: every shipped device profile)."),
    cloud_profile: Path | None = typer.Option(None, "--cloud-profile", help="Server profile JSON (default: this CPU's 1-thread profile "
                                                 "when the testbed pins the server to one CPU, else the shipped server profile)."),
    loaded_clients: int | None = typer.Option(None, help="Load-generator clients for the 'loaded' server (default 4; --quick 3)."),
    repeats: int | None = typer.Option(None, help="Rounds per case (more while under --min-s); a round is one request of nscompile's own and of "
                                          "every cut forced, in random order (default 9; --quick 5; medians taken)."),
    max_s: float | None = typer.Option(None, "--max-s", help="Seconds per case after which no new round starts once 3 are done "
                                          "(default 12; --quick 3)."),
    min_s: float | None = typer.Option(None, "--min-s", help="Seconds per case during which rounds go on past --repeats "
                                          "(fast models: sharper medians; default 2; --quick 0.5)."),
    trace_model: str | None = typer.Option(None, help="Model for the network-variation trace ('' to skip)."),
    load_model: str | None = typer.Option(None, help="Model for the server-load sweep ('' to skip)."),
    max_minutes: float | None = typer.Option(None, help="Start no new model after this many minutes (partial results are kept)."),
    userspace: bool = typer.Option(False, "--userspace", help="Use the user-space fallback even where namespaces, tc and cgroups work."),
) -> None:
    """Measure nscompile's cuts against all-device, all-cloud and the oracle on an emulated testbed.

    The oracle is the fastest of every candidate cut measured forced: every layer boundary
    of a chain (thinned topological prefixes of a DAG), under every encoding, and every cut
    of the build. Writes DIR/results.csv (one row per model x network x device profile x
    load), cuts.csv, trace.csv, load.csv, PNG plots and DIR/report.html.
    """
    from rich.console import Console
    from rich.table import Table

    from nscompile.errors import NscompileError
    from nscompile.testbed.experiments import BenchConfig, Progress, run_bench
    from nscompile.testbed.report import headline_rows

    if size not in (None, "full", "small"):
        raise NscompileError(f"--size must be full or small, not '{size}'")
    if loaded_clients is not None and loaded_clients < 1:
        raise NscompileError("--loaded-clients must be >= 1")
    if repeats is not None and repeats < 1:
        raise NscompileError("--repeats must be >= 1")
    if max_s is not None and max_s < 0:
        raise NscompileError("--max-s must be >= 0")
    if min_s is not None and min_s < 0:
        raise NscompileError("--min-s must be >= 0")
    kw = dict(models=_list(models), size=size, networks=[n.upper().replace("-", "") for n in _list(networks)] if networks else None,
              device_profiles=list(device_profile) if device_profile else None, cloud_profile=cloud_profile,
              repeats=repeats, max_s=max_s, min_s=min_s, userspace=userspace, deadline_min=max_minutes)
    if trace_model is not None:
        kw["trace_model"] = trace_model or "-"
    if load_model is not None:
        kw["load_model"] = load_model or "-"
    cfg = BenchConfig.quick(**kw) if quick else BenchConfig.full(**kw)
    if loaded_clients is not None:
        cfg.loads = {"idle": 0, "loaded": loaded_clients}
    console = Console()
    table = Table(title="cases (median ms; mJ estimated)")
    for col in ("model", "network", "profile", "load", "K", "chosen", "ms", "oracle", "ms", "device ms", "cloud ms", "x cloud", "mJ vs cloud"):
        table.add_column(col, justify="left" if col in ("model", "network", "profile", "load", "chosen", "oracle") else "right")

    def on_case(r: dict) -> None:
        mark = ("" if r["within_10pct"] else " ✗") + (" (contested)" if r["contested"] else "")
        console.print(f"  {r['model']:<12} {r['network']:<5} {r['load']:<6} chose {r['chosen_cut']} {r['chosen_ms']:.1f} ms; "
                      f"oracle {r['oracle_cut']} {r['oracle_ms']:.1f} ms of {r['n_candidates']} candidates "
                      f"({r['n_timed']} timed){mark}")
        saving = r["energy_saving_vs_cloud"]
        table.add_row(r["model"], r["network"], r["device_profile"], r["load"], f"{r['server_load_k']:.2f}", r["chosen_cut"],
                      f"{r['chosen_ms']:.1f}", r["oracle_cut"], f"{r['oracle_ms']:.1f}", f"{r['all_device_ms']:.1f}",
                      "–" if math.isnan(r["all_cloud_ms"]) else f"{r['all_cloud_ms']:.1f}",
                      "–" if math.isnan(r["speedup_vs_cloud"]) else f"{r['speedup_vs_cloud']:.2f}",
                      "–" if math.isnan(saving) else f"{saving:+.0%}")

    result = run_bench(cfg, output, Progress(stage=lambda t: console.print(f"[bold]{t}[/bold]"), case=on_case))
    console.print(table)
    _decision_tables(console, result.rows)
    if result.load_rows:
        lt = Table(title="server load variation")
        for col in ("mode", "clients", "K", "latency ms", "device q/s", "others q/s", "all q/s", "cuts"):
            lt.add_column(col)
        for r in result.load_rows:
            lt.add_row(r["mode"], str(r["clients"]), f"{r['server_load_k']:.2f}", f"{r['latency_ms']:.1f}", f"{r['device_qps']:.2f}",
                       f"{r['others_qps']:.2f}", f"{r['total_qps']:.2f}", r["cuts"])
        console.print(lt)
    if result.trace_rows:
        tt = Table(title="network variation (median ms per phase)")
        tt.add_column("mode")
        phases = sorted({(r["phase"], r["network"]) for r in result.trace_rows})
        for _, net in phases:
            tt.add_column(net, justify="right")
        for mode in dict.fromkeys(r["mode"] for r in result.trace_rows):
            cells = []
            for ph, _ in phases:
                xs = sorted(r["latency_ms"] for r in result.trace_rows if r["mode"] == mode and r["phase"] == ph)
                cells.append(f"{xs[len(xs) // 2]:.1f}" if xs else "–")
            tt.add_row(mode, *cells)
        console.print(tt)
    st = Table(title=f"summary ({result.testbed} testbed, {result.seconds / 60:.1f} min): all cases / contested cases",
               show_header=False)
    for what, value in headline_rows(result.summary):
        st.add_row(what, value)
    console.print(st)
    if result.skipped:
        console.print(f"[yellow]skipped: {'; '.join(result.skipped)}[/yellow]")
    console.print(f"testbed: {(output / 'testbed.txt').read_text().strip()}")
    console.print(f"wrote {output / 'results.csv'} and {output / 'report.html'}")


def _decision_tables(console, rows: list[dict]) -> None:
    from rich.table import Table

    from nscompile.testbed.report import decision_grid

    for load in dict.fromkeys(r["load"] for r in rows):
        models, cols, cells = decision_grid(rows, load)
        t = Table(title=f"decision table ({load} server): cut chosen [oracle's if different]")
        t.add_column("model")
        for net, prof in cols:
            t.add_column(f"{net}\n{prof}")
        for m in models:
            out = []
            for net, prof in cols:
                r = cells.get((m, net, prof))
                if r is None:
                    out.append("")
                elif r["chosen_cut"] == r["oracle_cut"]:
                    out.append(f"[green]{r['chosen_cut']}[/green]")
                else:
                    color = "yellow" if r["within_10pct"] else "red"
                    out.append(f"[{color}]{r['chosen_cut']}[/{color}] [{r['oracle_cut']}]")
            t.add_row(m, *out)
        console.print(t)
