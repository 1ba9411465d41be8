"""`python -m bot` is the `qunban` command."""

from bot.cli import main

main(prog_name="qunban")
