"""The ``supervisor`` command line."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import __version__
from .errors import SupervisorError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="supervisor", description="An asyncio container supervisor for containerd."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = commands.add_parser(
        "demo",
        help="run a container through the library (starts its own containerd)",
        description="Start a private containerd in a temporary directory, run a busybox "
        "container through the library (stdio, exec, metrics, kill), clean up.",
    )
    demo.add_argument(
        "--address", help="use this containerd socket instead of starting a private one"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``supervisor`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            if os.geteuid() != 0:
                print("supervisor demo: must run as root (containerd and runc)", file=sys.stderr)
                return 1
            from ._demo import run_demo

            return run_demo(args.address)
    except (SupervisorError, FileNotFoundError) as exc:
        print(f"supervisor {args.command}: {exc}", file=sys.stderr)
        return 1
    except TimeoutError:
        print(f"supervisor {args.command}: timed out", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 2
