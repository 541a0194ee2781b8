"""``nscompile zoo``: write the benchmark networks as ONNX files, or list them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from nscompile.cli import app


def _si(n: int) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


@app.command()
def zoo(
    names: Optional[list[str]] = typer.Argument(None, metavar="[NAME]...", help="Models to write; none for all."),
    size: str = typer.Option("full", "--size", help="full (the real network) or small (narrow, for tests)."),
    out: Path = typer.Option(Path("models"), "-o", "--out", help="Output directory."),
    seed: int = typer.Option(0, "--seed", help="Weight seed; the same seed writes the same bytes."),
    list_: bool = typer.Option(False, "--list", help="Print name, task, layers, parameters and MACs; write nothing."),
    as_json: bool = typer.Option(False, "--json", help="With --list: print JSON instead of a table."),
) -> None:
    """Build the benchmark networks in code and write them as ONNX (nothing is downloaded).

    Writes DIR/<name>.onnx (--size full) or DIR/<name>_small.onnx (--size small).

    The paper's eight come first (IMC VGG FACE DIG ASR POS NER CHK), then today's DAGs.
    """
    from rich.console import Console

    from nscompile import zoo as zoo_lib

    console = Console()
    if list_:
        chosen = [zoo_lib.get_info(n) for n in names] if names else zoo_lib.list_models()
        rows = []
        with console.status(f"counting {size} models"):
            for info in chosen:
                st = zoo_lib.model_stats(info.name, size)
                rows.append({"name": info.name, "tag": info.tag, "task": info.task,
                             "description": info.description, "layers": st.layers,
                             "params": st.params, "macs": st.macs})
        if as_json:
            typer.echo(json.dumps({"size": size, "models": rows}, indent=2))
            return
        from rich.table import Table

        table = Table(title=f"nscompile zoo ({size})")
        for col, justify in (("name", "left"), ("tag", "left"), ("task", "left"), ("layers", "right"),
                             ("params", "right"), ("MACs", "right")):
            table.add_column(col, justify=justify)
        for r in rows:
            table.add_row(r["name"], r["tag"], r["task"], str(r["layers"]), _si(r["params"]), _si(r["macs"]))
        console.print(table)
        return

    from rich.progress import Progress

    todo = list(names) if names else [m.name for m in zoo_lib.list_models()]
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"writing {size} models", total=len(dict.fromkeys(todo)))

        def done(name: str, path: Path) -> None:
            progress.advance(task)
            console.print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")

        zoo_lib.write_models(todo, out, size=size, seed=seed, on_written=done)
