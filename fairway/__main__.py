"""``python -m fairway`` is the ``fairway`` command."""

from fairway.cli import main

main()
