"""`python -m core`: the command line (arguments.py) and what each command does (commands.py)."""

from core.cli.commands import main

__all__ = ["main"]
