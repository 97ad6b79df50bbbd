"""``python -m dropkit``: the same as the ``dropkit`` command."""

from dropkit.cli import main

main()
