"""The ``nscompile`` command line.

Each sub-command lives in its own module and stays thin: parse, call one library
function, print. User errors (:class:`~nscompile.errors.NscompileError`) print one line
and exit 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

import typer

from nscompile.errors import NscompileError

app = typer.Typer(
    name="nscompile",
    help="Split a neural network between a device and a server (Neurosurgeon as an ONNX compiler).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rich help rendering cost 80 ms of every `--help` (0.29 -> 0.21 s)
)

# Importing a command module registers its commands on `app`. Optional heavy
# dependencies (fastapi, matplotlib) are imported inside the commands, not here.
from nscompile.cli import compile as _compile  # noqa: E402,F401

for _optional in ("zoo", "profile", "serve", "bench"):
    try:
        __import__(f"nscompile.cli.{_optional}")
    except ModuleNotFoundError as exc:  # module not written yet, or its extra not installed
        if exc.name != f"nscompile.cli.{_optional}":
            raise


def main() -> None:
    """Console-script entry point."""
    try:
        app(standalone_mode=False)
    except NscompileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort,):
        sys.exit(1)
    except Exception as exc:  # click usage errors arrive here in standalone_mode=False
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        raise
