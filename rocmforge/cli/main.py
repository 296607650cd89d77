"""Entry point: builds the parser from the command modules and the plugins' commands."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from .. import __version__
from ..errors import RocmforgeError

# Each module exposes add_parser(subparsers); order is the order in --help.
COMMANDS = ("list_archs", "info", "run", "chat", "serve", "bench", "conformance")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rocmforge",
        description="Run, inspect and benchmark LLMs from GGUF files or Hugging Face folders, "
                    "on AMD/NVIDIA GPUs through CuPy or on any CPU through NumPy.",
        epilog="Examples:\n"
               "  rocmforge list-archs\n"
               "  rocmforge info model.gguf --json\n"
               "  rocmforge run smollm2 -p 'The capital of France is' -n 32\n"
               "Run 'rocmforge COMMAND --help' for the options of a command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"rocmforge {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens (to stderr)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f".{name}", __package__).add_parser(sub)
    from ..plugin_manager import get_plugin_manager

    get_plugin_manager().hook.register_commands(cli=sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except RocmforgeError as exc:
        print(f"rocmforge: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
