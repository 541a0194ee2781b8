"""``python -m nscompile``: the same as the ``nscompile`` command."""

from nscompile.cli import main

main()
