"""``python -m avatarsdk``: the same CLI as the ``avatarsdk`` command."""

from avatarsdk.cli import main

main()
