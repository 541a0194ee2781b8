"""Human-readable views of a build: per-layer rows (the paper's figure) and the decision map.

``layer_rows`` and ``decision_map`` read only ``plan.json`` plus the annotation that the
build stores next to it, so ``nscompile inspect`` works on a finished build directory;
``write_report`` renders the same data as a self-contained HTML page (CSS bars, no
scripts, no plotting dependency).
"""

from __future__ import annotations

import html
import json
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


def render_html(plan_doc: dict, layers: list[dict]) -> str:
    """The report page: per-layer latency and output size, then the decision map per objective."""
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
        (Path(build_dir) / "report.html").write_text(render_html(plan_doc, layers))
