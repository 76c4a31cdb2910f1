"""`python -m engine` is the `botengine` command."""

from engine.cli import main

main()
