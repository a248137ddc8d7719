"""The `lsa-fast` command. Each subcommand lives in lsa_fast/commands/<name>.py and
exposes register(subparsers); this file only wires them together."""
from __future__ import annotations

import argparse
import importlib
import os
import re
import sys

from .commands.messages import for_the_command_line

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
    parser = build_parser()
    args = parser.parse_args(_attach_negative_values(parser, sys.argv[1:] if argv is None else list(argv)))
    try:
        return int(args.run(args) or 0)
    except (ValueError, FileNotFoundError, TypeError) as error:
        # Under torchrun every rank meets the same error: rank 0 alone says it.
        if os.environ.get("RANK", "0") in ("", "0"):
            print(f"lsa-fast {args.command}: error: {for_the_command_line(str(error))}", file=sys.stderr, flush=True)
        return 2
    except KeyboardInterrupt:  # a second Ctrl-C during training, or one anywhere else
        print(f"\nlsa-fast {args.command}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, what a shell reports for Ctrl-C


def _attach_negative_values(parser: argparse.ArgumentParser, argv):
    """`--eps -0.1,0.2` -> `--eps=-0.1,0.2`: argparse reads a value that starts with '-'
    and is not a plain number as the next option ("expected one argument"); attached,
    it reaches the option's own check, which says what is wrong with it."""
    options = {option for action in _all_actions(parser) if action.nargs != 0 for option in action.option_strings}
    out = []
    for i, token in enumerate(argv):
        if out and out[-1] in options and re.match(r"-[\d.]", token) and i > 0 and argv[i - 1] == out[-1]:
            out[-1] = f"{out[-1]}={token}"
        else:
            out.append(token)
    return out


def _all_actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_actions(sub)


if __name__ == "__main__":
    sys.exit(main())
