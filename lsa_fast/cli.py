"""The `lsa-fast` command. Each subcommand lives in lsa_fast/commands/<name>.py and
exposes register(subparsers); this file only wires them together."""
from __future__ import annotations

import argparse
import importlib
import os
import sys

# (subcommand, module in lsa_fast.commands)
COMMANDS = [
    ("demo", "demo"),
    ("analyze", "analyze"),
    ("train", "train"),
    ("eval", "evaluate"),
    ("reproduce", "reproduce"),
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lsa-fast",
        description="Layer Sustainability Analysis and layer-wise regularised adversarial training (arXiv:2202.02626).",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS:
        try:
            command = importlib.import_module(f"lsa_fast.commands.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"lsa_fast.commands.{module}":
                raise
            continue  # not built yet: the command is simply not offered
        command.register(subparsers, name)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, TypeError) as error:
        # Under torchrun every rank meets the same error: rank 0 alone says it.
        if os.environ.get("RANK", "0") in ("", "0"):
            print(f"lsa-fast {args.command}: error: {error}", file=sys.stderr, flush=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
