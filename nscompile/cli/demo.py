"""``nscompile demo``: serve a page that runs a build's split in the browser."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer

from nscompile.cli import app


@app.command()
def demo(
    build_dir: Path = typer.Argument(..., help="A build directory (nscompile build -o)."),
    server: Optional[str] = typer.Option(
        None, help="A running nscompile serve of the build's cloud/, started with --cors-origin this page's URL "
                   "(default: start one next to the page)."),
    host: str = typer.Option("127.0.0.1", help="Address to serve the page on."),
    port: int = typer.Option(8080, help="TCP port of the page."),
) -> None:
    """Serve the device directory, the JavaScript runner and a page that runs one input through the split.

    The page shows the chosen cut on the layer chart, the time split into device, upload,
    server and download (predicted against measured), the bytes sent and the decision map.
    Needs `npm ci` in nscompile/runtime/js (onnxruntime-web). Stop with Ctrl-C.
    """
    from nscompile.demo import demo_site, free_port, start_server

    proc = None
    server_url = server
    if server_url is None:
        server_url = f"http://{host}:{free_port(host)}"
    site = demo_site(build_dir, server_url, host=host, port=port)
    try:
        if server is None:
            proc, _ = start_server(build_dir / "cloud", site.url, host=host, port=int(server_url.rsplit(":", 1)[1]))
            typer.echo(f"started nscompile serve {build_dir / 'cloud'} at {server_url} (allowing {site.url})")
        else:
            typer.echo(f"the page calls {server_url}; start it with --cors-origin {site.url}")
        typer.echo(f"open {site.url}/ (Ctrl-C to stop)")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        typer.echo("stopped")
    finally:
        site.close()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
