"""The ``supervisor`` command line."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import anyio

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
    daemon = commands.add_parser(
        "daemon",
        help="run the supervisor service",
        description="Run the containers defined in the definitions directory under their "
        "restart policies, with a managed containerd unless one is configured. SIGHUP "
        "reloads the definitions; SIGTERM stops the daemon and leaves containers running.",
    )
    daemon.add_argument("--config", type=Path, help="TOML configuration file (default: none)")
    return parser


def _daemon(config_path: Path | None) -> int:
    from .daemon import ConfigError, Daemon, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"supervisor daemon: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(levelname)s %(name)s: %(message)s",
    )
    if os.geteuid() != 0:
        print("supervisor daemon: must run as root (containerd and runc)", file=sys.stderr)
        return 1
    anyio.run(Daemon(config).run)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``supervisor`` console script."""
    args = _parser().parse_args(argv)
    try:
        if args.command == "daemon":
            return _daemon(args.config)
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
