"""Human-readable views of a build: per-layer rows (the paper's figure), the decision map and
the latency-energy fronts.

``layer_rows`` and ``decision_map`` read only ``plan.json`` plus the annotation that the
build stores next to it, so ``nscompile inspect`` works on a finished build directory;
``pareto_points`` reads the device's plan as a device would; ``write_report`` renders the
same data as a self-contained HTML page (CSS bars and inline SVG, no scripts, no
plotting dependency).
"""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from nscompile.errors import NscompileError
from nscompile.runtime.contract import PLAN_SCHEMA

LAYERS_FILE = "layers.json"


def layer_table(model, annotation, plan_doc: dict) -> list[dict]:
    """One row per node: op, predicted device and cloud ms, output KB, and the cuts right after it."""
    behind = {}
    for cut in plan_doc["cuts"]:
        for t in cut["tensors"]:
            behind.setdefault(t.get("source", t["name"]), []).append(cut["id"])
    rows = []
    for node, f, dms, cms in zip(model.nodes, annotation.features, annotation.device_ms, annotation.cloud_ms):
        out_bytes = sum(model.tensors[o].nbytes for o in node.output if o in model.tensors)
        rows.append({"node": node.name, "op": node.op_type, "key": f.key, "device_ms": round(float(dms), 4),
                     "cloud_ms": round(float(cms), 4), "output_kb": round(out_bytes / 1024, 2),
                     "cuts": sorted({c for o in node.output for c in behind.get(o, [])})})
    return rows


def worst_rel_l2(accuracy: dict) -> float:
    """A lossy cut's largest relative L2 error over its outputs (``cuts[].accuracy``)."""
    return max((f.get("rel_l2", 0.0) for f in accuracy["outputs"].values()), default=0.0)


def load_build(build_dir: Path) -> tuple[dict, list[dict]]:
    """Read ``plan.json`` and the per-layer rows of a build directory.

    Raises:
        NscompileError: not a build directory, or files from another tool.
    """
    build_dir = Path(build_dir)
    try:
        plan_doc = json.loads((build_dir / "plan.json").read_text())
        layers = json.loads((build_dir / LAYERS_FILE).read_text())
    except FileNotFoundError as exc:
        raise NscompileError(f"'{build_dir}' is not an nscompile build ({Path(exc.filename).name} missing); pass the directory `nscompile build -o` wrote") from None
    except json.JSONDecodeError as exc:
        raise NscompileError(f"'{build_dir}' has a damaged plan.json or {LAYERS_FILE} ({exc.msg}); rebuild it") from None
    if plan_doc.get("schema") != PLAN_SCHEMA:
        raise NscompileError(f"'{build_dir}/plan.json' has schema {plan_doc.get('schema')!r}, not {PLAN_SCHEMA}; rebuild with this nscompile")
    return plan_doc, layers


_PALETTE = ["#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]


def _bar(value: float, scale: float, colour: str) -> str:
    width = 0 if scale <= 0 else max(0.5, 100 * value / scale) if value > 0 else 0
    return f'<div class="bar" style="width:{width:.1f}%;background:{colour}"></div>'


def pareto_points(build_dir: Path, bandwidth_mbps: float | None, load: float = 1.0, device_load: float = 1.0,
                  rtt_ms: float | None = None) -> list[dict]:
    """The build's latency-energy front at one condition, as the device's runtime sees it.

    Args:
        build_dir: a build directory (its ``device/`` is read).
        bandwidth_mbps: uplink Mbit/s (> 0).
        load: server slowdown factor K (>= 1).
        device_load: device slowdown factor Kd (> 0).
        rtt_ms: round-trip time; None: the plan's.

    Returns:
        ``[{"cut", "latency_ms", "energy_mj"}]``, fastest first
        (:meth:`nscompile.runtime.plan.Plan.pareto_front`).

    Raises:
        NscompileError: a missing or non-positive condition, or a build without fronts.
    """
    from nscompile.runtime.plan import load_plan

    if bandwidth_mbps is None:
        raise NscompileError("--pareto needs --bandwidth MBPS: the uplink to show the front at (e.g. 5.85 for LTE)")
    for flag, value, valid, what in (("--bandwidth", bandwidth_mbps, bandwidth_mbps > 0, "a positive number of Mbit/s"),
                                     ("--load", load, load >= 1, "a server slowdown factor >= 1"),
                                     ("--device-load", device_load, device_load > 0, "a device slowdown factor > 0"),
                                     ("--rtt", rtt_ms, rtt_ms is None or rtt_ms >= 0, "a round-trip time >= 0 ms")):
        if value is not None and (not math.isfinite(value) or not valid):
            raise NscompileError(f"{flag} must be {what}, got {value:g}")
    plan = load_plan(Path(build_dir) / "device")
    if not plan.has_pareto:
        raise NscompileError(f"'{build_dir}' was built without latency-energy fronts; rebuild it with this nscompile")
    return [{"cut": p.cut, "latency_ms": round(p.latency_ms, 4), "energy_mj": round(p.energy_mj, 4)}
            for p in plan.pareto_front(bandwidth_mbps, load, rtt_ms, None, device_load)]


def preset_fronts(build_dir: Path, annotation) -> dict[str, dict]:
    """Per network preset (planner.NETWORK_PRESETS), the plan's front at its uplink, downlink and
    RTT, idle server, the device as profiled, energy with the preset's radio model.

    Returns:
        preset -> {"conditions", "points": [ParetoPoint, ...]}; empty for a build without fronts.
    """
    from nscompile.planner import NETWORK_PRESETS
    from nscompile.runtime.plan import EnergyModel, load_plan

    plan = load_plan(Path(build_dir) / "device")
    if not plan.has_pareto:
        return {}
    out = {}
    base = plan.energy_model
    for name, preset in NETWORK_PRESETS.items():
        try:
            radio = annotation.device.radio(preset["radio"])
        except NscompileError:  # a profile without this radio: the plan's own model
            energy = base
        else:
            energy = EnergyModel(base.compute_power_w, base.idle_power_w, preset["radio"], radio.up_alpha_w_per_mbps,
                                 radio.up_beta_w, radio.down_alpha_w_per_mbps, radio.down_beta_w)
        points = plan.pareto_front(preset["uplink_mbps"], 1.0, preset["rtt_ms"], preset["downlink_mbps"], 1.0, energy)
        out[name] = {"conditions": preset, "points": points}
    return out


def _front_svg(points, width: int = 360, height: int = 230) -> str:
    """One front as an inline SVG scatter: latency (x) against device energy (y), points named."""
    left, right, top, bottom = 52, 16, 12, 34
    xs, ys = [p.latency_ms for p in points], [p.energy_mj for p in points]

    def span(values):
        lo, hi = min(values), max(values)
        pad = (hi - lo) * 0.08 or max(abs(hi), 1.0) * 0.1
        return lo - pad, hi + pad

    (x0, x1), (y0, y1) = span(xs), span(ys)
    px = lambda v: left + (v - x0) / (x1 - x0) * (width - left - right)
    py = lambda v: height - bottom - (v - y0) / (y1 - y0) * (height - top - bottom)
    out = [f"<svg width='{width}' height='{height}' viewBox='0 0 {width} {height}' style='font:10px sans-serif'>",
           f"<line x1='{left}' y1='{height - bottom}' x2='{width - right}' y2='{height - bottom}' stroke='#888'/>",
           f"<line x1='{left}' y1='{top}' x2='{left}' y2='{height - bottom}' stroke='#888'/>",
           f"<text x='{(left + width - right) / 2}' y='{height - 4}' text-anchor='middle'>latency (ms)</text>",
           f"<text x='10' y='{(top + height - bottom) / 2}' text-anchor='middle' transform='rotate(-90 10 {(top + height - bottom) / 2})'>device energy (mJ)</text>"]
    for v in (x0 + (x1 - x0) * f for f in (0.1, 0.5, 0.9)):
        out.append(f"<text x='{px(v):.1f}' y='{height - bottom + 12}' text-anchor='middle' fill='#666'>{v:.3g}</text>")
    for v in (y0 + (y1 - y0) * f for f in (0.1, 0.5, 0.9)):
        out.append(f"<text x='{left - 4}' y='{py(v) + 3:.1f}' text-anchor='end' fill='#666'>{v:.3g}</text>")
    if len(points) > 1:
        path = " ".join(f"{px(p.latency_ms):.1f},{py(p.energy_mj):.1f}" for p in points)
        out.append(f"<polyline points='{path}' fill='none' stroke='#4e79a7' stroke-dasharray='3 2'/>")
    for i, p in enumerate(points):
        x, y = px(p.latency_ms), py(p.energy_mj)
        anchor = "end" if x > width * 0.65 else "start"
        dx = -6 if anchor == "end" else 6
        out.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='3.5' fill='#e15759'><title>{html.escape(p.cut)}: "
                   f"{p.latency_ms:.2f} ms, {p.energy_mj:.2f} mJ</title></circle>"
                   f"<text x='{x + dx:.1f}' y='{y - 5:.1f}' text-anchor='{anchor}'>{html.escape(p.cut)}</text>")
    out.append("</svg>")
    return "".join(out)


def render_html(plan_doc: dict, layers: list[dict], fronts: dict[str, dict] | None = None) -> str:
    """The report page: per-layer latency and output size, the decision map per objective, and
    the latency-energy front per network preset (``fronts``: :func:`preset_fronts`)."""
    model = plan_doc["model"]
    ids = [c["id"] for c in plan_doc["cuts"]]
    colour = {c: _PALETTE[i % len(_PALETTE)] for i, c in enumerate(ids)}
    max_ms = max([max(r["device_ms"], r["cloud_ms"]) for r in layers] + [1e-9])
    max_kb = max([r["output_kb"] for r in layers] + [1e-9])
    out = [f"<!doctype html><meta charset='utf-8'><title>nscompile: {html.escape(model['name'])}</title>",
           "<style>body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}"
           "td,th{padding:2px 6px;border-bottom:1px solid #eee;text-align:left;white-space:nowrap}"
           ".bar{height:10px;display:inline-block}.w{width:180px}.map td{width:14px;height:14px;padding:0;border:1px solid #fff}"
           ".legend span{display:inline-block;margin-right:1em}.sw{display:inline-block;width:12px;height:12px;margin-right:4px}</style>",
           f"<h1>{html.escape(model['name'])}</h1><p>sha256 {model['sha256'][:16]}… · {len(layers)} nodes · "
           f"device profile <b>{html.escape(plan_doc['profiles']['device']['name'])}</b>, server profile "
           f"<b>{html.escape(plan_doc['profiles']['cloud']['name'])}</b></p>",
           "<h2>Cuts emitted</h2><p>Upload KB of each cut's tensors under every encoding (bold: the cut's own); "
           "accuracy: the gate's largest relative L2 error over the outputs of a lossy cut.</p>"
           "<table><tr><th>cut</th><th>encoding</th><th>device nodes</th><th>device ms</th><th>cloud ms</th><th>upload KB</th>"
           "<th>fp32 KB</th><th>fp16 KB</th><th>int8 KB</th><th>download KB</th><th>accuracy</th></tr>"]
    for c in plan_doc["cuts"]:
        p = c["predicted"]
        encoding = c.get("encoding", "fp32")
        sizes = c.get("upload_bytes_by_encoding", {})
        by_encoding = "".join(f"<td>{'<b>' if e == encoding else ''}{sizes[e] / 1024:.1f}{'</b>' if e == encoding else ''}</td>"
                              if e in sizes else "<td></td>" for e in ("fp32", "fp16", "int8"))
        acc = c.get("accuracy")
        accuracy = "lossless" if not acc else f"rel L2 {worst_rel_l2(acc):.2g} ({acc['inputs']} {'real' if acc['real_data'] else 'random'} inputs)"
        out.append(f"<tr><td><span class='sw' style='background:{colour[c['id']]}'></span>{html.escape(c['id'])}</td><td>{encoding}</td>"
                   f"<td>{c['device_nodes']}</td><td>{p['device_ms']:.2f}</td><td>{p['cloud_ms']:.2f}</td><td>{p['upload_bytes'] / 1024:.1f}</td>"
                   f"{by_encoding}<td>{p['download_bytes'] / 1024:.1f}</td><td>{accuracy}</td></tr>")
    out.append("</table>")
    grid = plan_doc["grid"]
    for objective, table in plan_doc.get("tables", {"latency": plan_doc["table"]}).items():
        out.append(f"<h2>Decision map ({objective})</h2><p>rows: server load factor; columns: uplink Mbps (bucket start)</p><table class='map'>")
        for load, row in zip(grid["load"], table):
            cells = "".join(f"<td title='{html.escape(c)} @ {b:g} Mbps' style='background:{colour[c]}'></td>" for c, b in zip(row, grid["bandwidth_mbps"]))
            out.append(f"<tr><th>K={load:g}</th>{cells}</tr>")
        ticks = "".join(f"<td style='border:0;font-size:9px'>{b:.3g}</td>" if i % 4 == 0 else "<td style='border:0'></td>"
                        for i, b in enumerate(grid["bandwidth_mbps"]))
        out.append(f"<tr><th></th>{ticks}</tr></table>")
    if fronts:
        radio = (plan_doc.get("energy_model") or {}).get("radio", {}).get("name", "?")
        out.append("<h2>Latency against device energy</h2><p>Per network preset (uplink / downlink Mbps, RTT; idle "
                   "server, the device as profiled): the cuts of the plan's latency-energy front for that bucket, with "
                   "the latency and energy optima at that uplink and all-device, each predicted as the runtime predicts "
                   f"it; points another beats in both are left out. Energy uses the preset's radio model (the fronts were "
                   f"solved with the grid's, {html.escape(radio)}). A point is named by its cut and encoding "
                   "(<code>@int8</code>); fastest on the left.</p><div>")
        for name, front in fronts.items():
            c = front["conditions"]
            rows = "".join(f"<tr><td>{html.escape(p.cut)}</td><td>{p.latency_ms:.2f}</td><td>{p.energy_mj:.2f}</td></tr>"
                           for p in front["points"])
            out.append(f"<div style='display:inline-block;vertical-align:top;margin:0 1.5em 1em 0'><b>{html.escape(name)}</b> "
                       f"({c['uplink_mbps']:g} / {c['downlink_mbps']:g} Mbps, RTT {c['rtt_ms']:g} ms)<br>"
                       f"{_front_svg(front['points'])}<table><tr><th>cut</th><th>ms</th><th>mJ</th></tr>{rows}</table></div>")
        out.append("</div>")
    out.append("<h2>Per layer</h2><table><tr><th>node</th><th>op</th><th>device ms</th><th class='w'></th><th>cloud ms</th>"
               "<th class='w'></th><th>output KB</th><th class='w'></th><th>cuts after</th></tr>")
    for r in layers:
        out.append(f"<tr><td>{html.escape(r['node'])}</td><td>{html.escape(r['op'])}</td><td>{r['device_ms']:.3f}</td>"
                   f"<td class='w'>{_bar(r['device_ms'], max_ms, '#4e79a7')}</td><td>{r['cloud_ms']:.3f}</td>"
                   f"<td class='w'>{_bar(r['cloud_ms'], max_ms, '#f28e2b')}</td><td>{r['output_kb']:.1f}</td>"
                   f"<td class='w'>{_bar(r['output_kb'], max_kb, '#59a14f')}</td><td>{html.escape(', '.join(r['cuts']))}</td></tr>")
    out.append("</table>")
    return "\n".join(out)


def write_report(build_dir: Path, model, annotation, plan_doc: dict, html_page: bool = True) -> None:
    """Write the per-layer data ``layers.json`` (read by ``inspect``) and, optionally, ``report.html``."""
    layers = layer_table(model, annotation, plan_doc)
    (Path(build_dir) / LAYERS_FILE).write_text(json.dumps(layers, indent=0))
    if html_page:
        (Path(build_dir) / "report.html").write_text(render_html(plan_doc, layers, preset_fronts(build_dir, annotation)))
