"""The `c10k` command: a thin layer over the library.

Each subcommand lives in its own module with two functions, ``add_parser``
(declare its arguments) and ``run`` (call the library, return an exit status).
Only this package parses arguments, prompts and prints tables or progress.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from c10k import __version__
from c10k.errors import C10kError

__all__ = ["main"]

SUBCOMMANDS = ("serve", "load", "study", "doctor", "locust")


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line plus usage, exit 2 (the contract)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="c10k", description="Measure how server concurrency architectures scale.")
    parser.add_argument("--version", action="version", version=f"c10k {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in SUBCOMMANDS:
        module = importlib.import_module(f"c10k.cli.{name}")
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
    except C10kError as exc:
        print(f"c10k {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print(f"c10k {args.command}: interrupted", file=sys.stderr)
        return 130
    return status
