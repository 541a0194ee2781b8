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
)

# Importing a command module registers its commands on `app`. Optional heavy
# dependencies (fastapi, matplotlib) are imported inside the commands, not here.
from nscompile.cli import bench, compile, demo, profile, serve, zoo  # noqa: E402,F401


def _usage_error_types() -> tuple[type[Exception], ...]:
    """Click's usage-error base class, wherever this typer takes click from.

    typer 0.2x vendors click as ``typer._click`` (and raises its classes); older typers use
    the ``click`` package. Either may be absent.
    """
    import importlib

    found = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(module).ClickException)
        except (ImportError, AttributeError):
            pass
    return tuple(found)


def _usage_message(exc: Exception) -> str:
    """One line: click's message, and the --help of the command it was about."""
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "nscompile"
    return f"error: {exc.format_message().rstrip('.')} (see `{command} --help`)"


def main() -> None:
    """Console-script entry point: user errors and usage errors print one line and exit 2."""
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
    except typer.Abort:
        sys.exit(1)
    except Exception as exc:  # usage errors arrive here with standalone_mode=False
        usage_errors = _usage_error_types()
        if usage_errors and isinstance(exc, usage_errors):
            if exc.format_message():  # empty when `nscompile` alone has just printed its help
                print(_usage_message(exc), file=sys.stderr)
            sys.exit(2)
        raise
