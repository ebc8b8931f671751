"""The ``supervisor`` command line: docker-like verbs over the daemon's control socket."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from . import __version__
from .errors import one_line

DEFAULT_SOCKET = "/run/containerd-supervisor/control.sock"

#: Exit codes of the CLI itself, docker's: a script can tell them from a container's own.
#: 125: the CLI or the daemon failed; 126: the command cannot be run; 127: it is not found.
CLI_ERROR, CANNOT_RUN, NOT_FOUND = 125, 126, 127


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """One line on stderr, exit code 125 (docker's, for its own errors)."""
        self.exit(CLI_ERROR, one_line(f"{self.prog}: {message} (see --help)") + "\n")


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="supervisor",
        description="An asyncio container supervisor for containerd. Most commands talk to "
        "the daemon (`supervisor daemon`) over its control socket.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--socket",
        default=os.environ.get("SUPERVISOR_SOCKET", DEFAULT_SOCKET),
        help=f"the daemon's control socket (env SUPERVISOR_SOCKET; default {DEFAULT_SOCKET})",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser)  # fmt: skip

    def cmd(name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help, description=description or help)

    p = cmd("run", "create and start a container", "Create a container from a rootfs and "
            "start it; without -d, stream its output and exit with its exit code (125: "
            "the CLI or the daemon failed, 126: the command cannot be run, 127: it is not "
            "found). Ctrl-C is passed to the container; a second one detaches.")  # fmt: skip
    p.add_argument("--name", default="", help="the container's id (default: one is made up)")
    p.add_argument("-d", "--detach", action="store_true", help="print the id and return")
    p.add_argument("--rm", action="store_true", help="remove the container when it exits")
    p.add_argument("--restart", default="no", help="no | always | on-failure[:N] | unless-stopped")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V", help="environment")
    p.add_argument("--memory", help="memory limit (e.g. 64m)")
    p.add_argument("--cpus", type=float, help="CPU limit (e.g. 0.5)")
    p.add_argument("--pids", type=int, help="process limit")
    p.add_argument("-u", "--user", default="", help="uid[:gid] or names from the rootfs")
    p.add_argument("-w", "--workdir", default="", help="working directory")
    p.add_argument("-t", "--tty", action="store_true", help="give the process a terminal")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("--rootfs", help="the container's root directory (needed for now)")
    p.add_argument("--stop-signal", default="SIGTERM")
    p.add_argument("--stop-timeout", type=float, default=10.0)
    p.add_argument("-l", "--label", action="append", default=[], metavar="K=V")
    p.add_argument("--sig-proxy", default=True, action=argparse.BooleanOptionalAction,
                   help="pass signals (Ctrl-C) to the container when attached")  # fmt: skip
    p.add_argument("cmd", nargs=argparse.REMAINDER, help="the command and its arguments")

    p = cmd("ps", "list containers")
    p.add_argument("-a", "--all", action="store_true", help="include stopped containers")
    p.add_argument("--json", action="store_true", help="one JSON array")

    p = cmd("inspect", "show containers as JSON")
    p.add_argument("ids", nargs="+", metavar="ID")

    p = cmd("logs", "show a container's output (its JSON-lines log)")
    p.add_argument("-f", "--follow", action="store_true", help="go on until the container exits")
    p.add_argument("--tail", type=_count, help="only the last N lines")
    p.add_argument("--since", help="only lines after this time (RFC 3339, or 10s, 5m, 2h ago)")
    p.add_argument("-t", "--timestamps", action="store_true", help="show each line's time")
    p.add_argument("id")

    p = cmd("exec", "run a command in a running container")
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-t", "--tty", action="store_true", help="give the process a terminal")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    p.add_argument("-u", "--user", default="")
    p.add_argument("-w", "--workdir", default="")
    p.add_argument("id")
    p.add_argument("cmd", nargs=argparse.REMAINDER)

    p = cmd("stop", "stop containers (their stop signal, then SIGKILL after the timeout)")
    p.add_argument("-t", "--time", type=float, help="seconds before SIGKILL")
    p.add_argument("ids", nargs="+", metavar="ID")

    p = cmd("start", "start stopped containers again")
    p.add_argument("ids", nargs="+", metavar="ID")

    p = cmd("kill", "send a signal to every process of containers")
    p.add_argument("-s", "--signal", default="SIGKILL")
    p.add_argument("ids", nargs="+", metavar="ID")

    p = cmd("rm", "remove containers")
    p.add_argument("-f", "--force", action="store_true", help="stop running ones first")
    p.add_argument("ids", nargs="+", metavar="ID")

    for name, text in (("pause", "freeze containers"), ("unpause", "thaw paused containers")):
        cmd(name, text).add_argument("ids", nargs="+", metavar="ID")

    p = cmd("stats", "resource usage of containers (all running ones by default)",
            "CPU %% over a short interval (100%% is one core), memory use and limit, "
            "processes; one reading, as `docker stats --no-stream`.")  # fmt: skip
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--json", action="store_true", help="raw numbers as JSON")
    p.add_argument("--no-stream", action="store_true", help="accepted for docker's sake")
    p.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)

    p = cmd("events", "stream the daemon's container events")
    p.add_argument("--json", action="store_true", help="one JSON object per line")

    p = cmd("apply", "create or replace the containers of a definitions directory")
    p.add_argument("directory")

    cmd("reload", "apply the daemon's definitions directory again (as SIGHUP does)")
    cmd("version", "versions of this client, the daemon and containerd")

    p = cmd("daemon", "run the supervisor service", "Run the containers defined in the "
            "definitions directory under their restart policies, with a managed containerd "
            "unless one is configured. SIGHUP reloads the definitions; SIGTERM stops the "
            "daemon and leaves containers running.")  # fmt: skip
    p.add_argument("--config", type=Path, help="TOML configuration file (default: none)")

    p = cmd("demo", "run a container through the library (starts its own containerd)",
            "Start a private containerd in a temporary directory, run a busybox container "
            "through the library (stdio, exec, metrics, kill), clean up.")  # fmt: skip
    p.add_argument("--address", help="use this containerd socket instead of a private one")
    return parser


def _daemon(config_path: Path | None) -> int:
    import logging

    from .daemon import ConfigError, Daemon, DaemonError, load_config

    try:
        config = load_config(config_path)
    except ConfigError as exc:
        print(f"supervisor daemon: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=getattr(logging, config.log_level.upper()),
        format="%(levelname)s %(name)s: %(message)s",
    )
    # asyncio's own note, repeated for every write grpclib makes on a connection
    # containerd just dropped; the loss itself is logged once by the daemon.
    logging.getLogger("asyncio").addFilter(
        lambda record: not record.getMessage().startswith("socket.send() raised exception")
    )
    if os.geteuid() != 0:
        print("supervisor daemon: must run as root (containerd and runc)", file=sys.stderr)
        return 1
    import anyio

    try:
        anyio.run(Daemon(config).run)
    except DaemonError as exc:
        print(f"supervisor daemon: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``supervisor`` console script."""
    argv = sys.argv[1:] if argv is None else argv
    for arg in argv:
        if not arg.isascii():
            try:
                arg.encode()
            except UnicodeEncodeError:  # bytes from the shell that are not UTF-8
                print(one_line(f"supervisor: {arg!r} is not UTF-8 text"), file=sys.stderr)
                return CLI_ERROR
    args = _parser().parse_args(argv)
    if args.command != "daemon":
        # Like other Unix tools: `supervisor logs x | head` just ends quietly.
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    try:
        if args.command == "daemon":
            return _daemon(args.config)
        if args.command == "demo":
            if os.geteuid() != 0:
                print("supervisor demo: must run as root (containerd and runc)", file=sys.stderr)
                return CLI_ERROR
            from ._demo import run_demo

            return run_demo(args.address)
        import anyio

        from ._commands import run_command

        return anyio.run(run_command, args)
    except Exception as exc:
        from .errors import SupervisorError

        if isinstance(exc, TimeoutError):
            print(f"supervisor {args.command}: timed out", file=sys.stderr)
            return CLI_ERROR
        if not isinstance(exc, SupervisorError | FileNotFoundError):
            raise
        print(one_line(f"supervisor {args.command}: {exc}"), file=sys.stderr)
        return CLI_ERROR
    except KeyboardInterrupt:
        return 130
