"""The ``supervisor`` command line: docker-like verbs over the daemon's control socket."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from collections.abc import Callable, Sequence

from . import __version__
from .errors import one_line

TYPE_CHECKING = False  # typing is not imported at run time: the CLI's start-up
if TYPE_CHECKING:
    from pathlib import Path
    from typing import Any, NoReturn

DEFAULT_SOCKET = "/run/containerd-supervisor/control.sock"

#: Exit codes of the CLI itself, docker's: a script can tell them from a container's own.
#: 125: the CLI or the daemon failed; 126: the command cannot be run; 127: it is not found.
CLI_ERROR, CANNOT_RUN, NOT_FOUND = 125, 126, 127

_columns: int | None = None


def _terminal_columns() -> int:
    """shutil.get_terminal_size().columns, without importing shutil (and its
    compression modules) on every call of the CLI."""
    global _columns
    if _columns is None:
        try:
            columns = int(os.environ.get("COLUMNS", ""))
        except ValueError:
            columns = 0
        if columns <= 0:
            try:
                columns = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
            except (AttributeError, ValueError, OSError):
                columns = 0
        _columns = columns or 80
    return _columns


class _Formatter(argparse.HelpFormatter):
    def __init__(
        self,
        prog: str,
        indent_increment: int = 2,
        max_help_position: int = 24,
        width: int | None = None,
    ) -> None:
        width = _terminal_columns() - 2 if width is None else width
        super().__init__(prog, indent_increment, max_help_position, width)


class _Parser(argparse.ArgumentParser):
    """One line on stderr for a usage error; a subcommand's arguments are added
    when it is the one being parsed (or its help shown): a call builds one."""

    def __init__(
        self, *args: Any, arguments: Callable[[_Parser], None] | None = None, **kwargs: Any
    ) -> None:
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)
        self._arguments = arguments

    def _complete(self) -> None:
        if self._arguments is not None:
            arguments, self._arguments = self._arguments, None
            arguments(self)

    def parse_known_args(self, *args: Any, **kwargs: Any) -> Any:
        self._complete()
        return super().parse_known_args(*args, **kwargs)

    def format_help(self) -> str:
        self._complete()
        return super().format_help()

    def format_usage(self) -> str:
        self._complete()
        return super().format_usage()

    def error(self, message: str) -> NoReturn:
        """One line on stderr, exit code 125 (docker's, for its own errors)."""
        self.exit(CLI_ERROR, one_line(f"{self.prog}: {message} (see --help)") + "\n")


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative")
    return value


def _run_arguments(p: argparse.ArgumentParser) -> None:
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
    p.add_argument("--rootfs", help="a root directory to run instead of an image")
    p.add_argument("--entrypoint", help="run this instead of the image's entrypoint")
    p.add_argument(
        "--pull",
        choices=("missing", "always", "never"),
        default="",
        help="when to pull the image (default: missing)",
    )
    p.add_argument("--platform", default="", help=argparse.SUPPRESS)
    p.add_argument("--stop-signal", default="SIGTERM")
    p.add_argument("--stop-timeout", type=float, default=10.0)
    p.add_argument("-l", "--label", action="append", default=[], metavar="K=V")
    p.add_argument(
        "--network",
        "--net",
        default="",
        metavar="NET",
        help="bridge (the default), none, host, container:ID or a network's name",
    )
    p.add_argument(
        "-p",
        "--publish",
        action="append",
        default=[],
        metavar="[IP:]HOST:CONTAINER[/PROTO]",
        help="publish a port on the host",
    )
    p.add_argument("--shim-group", default="", metavar="NAME",
                   help="share one runc shim with the group's other containers")  # fmt: skip
    p.add_argument("--sig-proxy", default=True, action=argparse.BooleanOptionalAction,
                   help="pass signals (Ctrl-C) to the container when attached")  # fmt: skip
    p.add_argument(
        "cmd",
        nargs=argparse.REMAINDER,
        metavar="IMAGE [CMD...]",
        help="the image (unless --rootfs), then the command and its arguments",
    )


def _pull_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="print only the image's name")
    p.add_argument("--platform", default="", help="os/arch[/variant] (default: this machine's)")
    p.add_argument("ref", metavar="IMAGE")


def _images_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-q", "--quiet", action="store_true", help="names only")
    p.add_argument("--json", action="store_true", help="one JSON array")


def _rmi_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="even if containers use them")
    p.add_argument("refs", nargs="+", metavar="IMAGE")


def _image_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="image_command", required=True, metavar="COMMAND",
                           parser_class=_Parser, prog="supervisor image")  # fmt: skip
    _pull_arguments(sub.add_parser("pull", help="pull an image from a registry"))
    _images_arguments(sub.add_parser("ls", help="list images"))
    _rmi_arguments(sub.add_parser("rm", help="remove images"))
    sub.add_parser("prune", help="remove the images no container uses")
    imported = sub.add_parser("import", help="import an OCI or docker-save archive")
    imported.add_argument("--name", default="", help="the name of images the archive does not name")
    imported.add_argument("file")
    saved = sub.add_parser("save", help="save an image as an OCI archive")
    saved.add_argument("-o", "--output", required=True, help="the archive to write")
    saved.add_argument("ref", metavar="IMAGE")


def _login_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-u", "--username", required=True)
    p.add_argument(
        "--password-stdin",
        action="store_true",
        required=True,
        help="read the password from stdin (the only way: never in argv)",
    )
    p.add_argument("--config", help="the docker-style config.json (default: root's)")
    p.add_argument("registry", help="a registry host, e.g. registry.example.com:5000")


def _ps_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-a", "--all", action="store_true", help="include stopped containers")
    p.add_argument("--json", action="store_true", help="one JSON array")


def _ids(p: argparse.ArgumentParser) -> None:
    p.add_argument("ids", nargs="+", metavar="ID")


def _logs_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--follow", action="store_true", help="go on until the container exits")
    p.add_argument("--tail", type=_count, help="only the last N lines")
    p.add_argument("--since", help="only lines after this time (RFC 3339, or 10s, 5m, 2h ago)")
    p.add_argument("-t", "--timestamps", action="store_true", help="show each line's time")
    p.add_argument("id")


def _exec_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-i", "--interactive", action="store_true", help="keep stdin open")
    p.add_argument("-t", "--tty", action="store_true", help="give the process a terminal")
    p.add_argument("-e", "--env", action="append", default=[], metavar="K=V")
    p.add_argument("-u", "--user", default="")
    p.add_argument("-w", "--workdir", default="")
    p.add_argument("id")
    p.add_argument("cmd", nargs=argparse.REMAINDER)


def _stop_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-t", "--time", type=float, help="seconds before SIGKILL")
    _ids(p)


def _kill_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-s", "--signal", default="SIGKILL")
    _ids(p)


def _rm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-f", "--force", action="store_true", help="stop running ones first")
    _ids(p)


def _stats_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("ids", nargs="*", metavar="ID")
    p.add_argument("--json", action="store_true", help="raw numbers as JSON")
    p.add_argument("--no-stream", action="store_true", help="accepted for docker's sake")
    p.add_argument("--interval", type=float, default=0.5, help=argparse.SUPPRESS)


def _events_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="one JSON object per line")


def _apply_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("directory")


def _network_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="network_command", required=True, metavar="COMMAND",
                           parser_class=_Parser, prog="supervisor network")  # fmt: skip
    create = sub.add_parser("create", help="create a bridge network")
    create.add_argument("--subnet", default="", help="an IPv4 subnet (default: a free /24)")
    create.add_argument("name")
    sub.add_parser("ls", help="list networks")
    inspect = sub.add_parser("inspect", help="show networks as JSON")
    inspect.add_argument("names", nargs="+", metavar="NAME")
    rm = sub.add_parser("rm", help="remove networks (no container may be on them)")
    rm.add_argument("names", nargs="+", metavar="NAME")


def _daemon_arguments(p: argparse.ArgumentParser) -> None:
    from pathlib import Path

    p.add_argument("--config", type=Path, help="TOML configuration file (default: none)")


def _demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", help="use this containerd socket instead of a private one")


def _no_arguments(p: argparse.ArgumentParser) -> None:
    pass


def _command_word(argv: Sequence[str]) -> str | None:
    """The command of a call such as ``[--socket PATH] COMMAND ...``; None for
    anything else (help, --version, an abbreviated option), which builds them all."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--socket":
            i += 2
        elif arg.startswith("--socket="):
            i += 1
        elif arg.startswith("-"):
            return None
        else:
            return arg
    return None


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser. ``only``: the command being called, when
    known: the other commands' parsers are not made (~10 ms of every call)."""
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
    # prog given: argparse would otherwise format the parent's usage to make it.
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=_Parser, prog="supervisor")  # fmt: skip

    made: list[str] = []

    def cmd(
        name: str,
        help: str,
        arguments: Callable[[_Parser], None],
        description: str | None = None,
    ) -> None:
        if only is None or name == only:
            made.append(name)
            sub.add_parser(name, help=help, description=description or help, arguments=arguments)

    cmd("run", "create and start a container", _run_arguments, "Create a container from an "
        "image (pulled if missing) or a rootfs directory and start it; without -d, stream "
        "its output and exit with its exit code (125: the CLI or the daemon failed, 126: "
        "the command cannot be run, 127: it is not found). Ctrl-C is passed to the "
        "container; a second one detaches.")  # fmt: skip
    cmd("ps", "list containers", _ps_arguments)
    cmd("inspect", "show containers as JSON", _ids)
    cmd("logs", "show a container's output (its JSON-lines log)", _logs_arguments)
    cmd("exec", "run a command in a running container", _exec_arguments)
    cmd("stop", "stop containers (their stop signal, then SIGKILL after the timeout)",
        _stop_arguments)  # fmt: skip
    cmd("start", "start stopped containers again", _ids)
    cmd("kill", "send a signal to every process of containers", _kill_arguments)
    cmd("rm", "remove containers", _rm_arguments)
    cmd("pause", "freeze containers", _ids)
    cmd("unpause", "thaw paused containers", _ids)
    cmd("stats", "resource usage of containers (all running ones by default)", _stats_arguments,
        "CPU %% over a short interval (100%% is one core), memory use and limit, "
        "processes; one reading, as `docker stats --no-stream`.")  # fmt: skip
    cmd("events", "stream the daemon's container events", _events_arguments)
    cmd("apply", "create or replace the containers of a definitions directory", _apply_arguments)
    cmd("reload", "apply the daemon's definitions directory again (as SIGHUP does)",
        _no_arguments)  # fmt: skip
    cmd("pull", "pull an image from a registry", _pull_arguments)
    cmd("images", "list images", _images_arguments)
    cmd("rmi", "remove images (refused while containers use them, unless -f)", _rmi_arguments)
    cmd("image", "pull, list, remove, prune, import and save images", _image_arguments)
    cmd("login", "store a registry's credentials for pulls (root's config.json)",
        _login_arguments)  # fmt: skip
    cmd("network", "create, list, inspect and remove networks", _network_arguments,
        "Bridge networks: containers on one reach each other (by name on a network you "
        "create), the outside through NAT, and not the containers of another network.")  # fmt: skip
    cmd("version", "versions of this client, the daemon and containerd", _no_arguments)
    cmd("daemon", "run the supervisor service", _daemon_arguments, "Run the containers defined "
        "in the definitions directory under their restart policies, with a managed containerd "
        "unless one is configured. SIGHUP reloads the definitions; SIGTERM stops the "
        "daemon and leaves containers running.")  # fmt: skip
    cmd("demo", "run a container through the library (starts its own containerd)",
        _demo_arguments, "Start a private containerd in a temporary directory, run a busybox "
        "container through the library (stdio, exec, metrics, kill), clean up.")  # fmt: skip
    if only is not None and not made:
        return _parser()  # not a command: argparse says so, with the list of them
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
    args = _parser(_command_word(argv)).parse_args(argv)
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
        from ._commands import run_command

        return run_command(args)
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
