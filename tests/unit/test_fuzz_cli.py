"""Fuzz the CLI's argument handling (issue 9), in process: ``supervisor.cli.main``
with generated argvs (every verb but ``daemon`` and ``demo``, their flags with
good and bad values, stray tokens) and a control socket where nothing listens.
Every call returns an exit code (0, 125, 126 or 127) or exits through argparse
with 0 (--help, --version) or 125, and writes at most one line to stderr:
never a traceback.

Per run (deterministic; see tests/fuzz.py): 1,000 argvs.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor import cli
from supervisor.cli import main

from ..fuzz import (
    Counter,
    fuzz_settings,
    ids,
    odd_floats,
    odd_paths,
    restarts,
    signal_strings,
    size_strings,
    texts,
    users,
)

ARGVS = 1000

#: The verbs that only talk to the daemon; `daemon` and `demo` start things.
VERBS = (
    "run",
    "ps",
    "inspect",
    "logs",
    "exec",
    "stop",
    "start",
    "kill",
    "rm",
    "pause",
    "unpause",
    "stats",
    "events",
    "apply",
    "reload",
    "version",
)

numbers = st.one_of(
    odd_floats.map(str),
    st.integers(-(2**70), 2**70).map(str),
    st.sampled_from(["", "1", "-1", "0", "nan", "inf", "1e999", "0x10", "1_0", "٣", "one"]),
)
env_pairs = st.one_of(
    st.sampled_from(["A=B", "A=", "=B", "A", "", "PATH=/bin", "A=B=C"]),
    st.builds(lambda k, v: f"{k}={v}", texts, texts),
    texts,
)
since = st.one_of(
    st.builds(
        lambda n, unit: f"{n}{unit}",
        st.one_of(st.integers(0, 10**20), st.floats(0, 1e20).map(lambda f: f"{f:f}")),
        st.sampled_from("smhd"),
    ),
    st.sampled_from(
        [
            "10s",
            "1.5s",
            "1y",
            "٣s",
            "2024-01-01T00:00:00Z",
            "2024-01-01",
            "0001-01-01T00:00:00",
            "0001-01-01T00:00:00+14:00",
            "9999-12-31T23:59:59-14:00",
            "yesterday",
            "",
        ]
    ),
    texts,
)
stray = st.one_of(
    st.sampled_from(["-", "--", "-x", "--unknown", "-h", "--help", "--json", "-a", "-f", "-ti"]),
    st.sampled_from(["\udcff", "c1\udc80", "-\udcfe"]),  # argv bytes that are not UTF-8
    texts,
)


def _flag(name: str, values: st.SearchStrategy[str]) -> st.SearchStrategy[list[str]]:
    return st.one_of(
        values.map(lambda v: [name, v]),
        values.map(lambda v: [f"{name}={v}"]),
        st.just([name]),  # the value missing
    )


_FLAGS: dict[str, list[st.SearchStrategy[list[str]]]] = {
    "run": [
        _flag("--name", ids),
        st.just(["-d"]),
        st.just(["--rm"]),
        _flag("--restart", restarts),
        _flag("-e", env_pairs),
        _flag("--memory", size_strings),
        _flag("--cpus", numbers),
        _flag("--pids", numbers),
        _flag("-u", users),
        _flag("-w", odd_paths),
        st.just(["-t"]),
        st.just(["-i"]),
        _flag("--rootfs", odd_paths),
        _flag("--stop-signal", signal_strings),
        _flag("--stop-timeout", numbers),
        _flag("-l", env_pairs),
        st.sampled_from([["--sig-proxy"], ["--no-sig-proxy"]]),
    ],
    "ps": [st.just(["-a"]), st.just(["--json"])],
    "logs": [
        st.just(["-f"]),
        _flag("--tail", numbers),
        _flag("--since", since),
        st.just(["-t"]),
    ],
    "exec": [
        st.just(["-i"]),
        st.just(["-t"]),
        _flag("-e", env_pairs),
        _flag("-u", users),
        _flag("-w", odd_paths),
    ],
    "stop": [_flag("-t", numbers)],
    "kill": [_flag("-s", signal_strings)],
    "rm": [st.just(["-f"])],
    "stats": [st.just(["--json"]), st.just(["--no-stream"]), _flag("--interval", numbers)],
}

#: Whole commands: flags and stray tokens, positional ids, a command to run.
_TAIL = st.lists(st.one_of(ids, texts, st.sampled_from(["sh", "-c", "echo hi"])), max_size=3)


@st.composite
def argvs(draw: st.DrawFn) -> list[str]:
    """Mostly a verb with one or two of its flags (values good and bad) and
    sound positional arguments, so that the values reach the verb's own
    checks; otherwise anything: stray tokens, odd ids, a bogus verb, --help."""
    if draw(st.integers(0, 9)) < 6:
        verb = draw(st.sampled_from(sorted(_FLAGS)))
        parts = draw(st.lists(st.one_of(*_FLAGS[verb]), min_size=1, max_size=2))
        positional = [] if verb in ("ps", "stats") else ["c1"]
        tail = ["sh", "-c", "true"] if verb in ("run", "exec") else []
        if verb == "run":
            parts.insert(0, ["--rootfs", "/srv/rootfs"])  # later ones win
        return [verb, *[token for part in parts for token in part], *positional, *tail]
    verb = draw(
        st.one_of(
            st.sampled_from(VERBS),
            st.sampled_from(["", "RUN", "rum", "daemons", "-h", "--help", "--version", "help"]),
        )
    )
    flags = _FLAGS.get(verb)
    parts = draw(st.lists(st.one_of(*flags), max_size=3)) if flags else []
    parts.insert(draw(st.integers(0, len(parts))), [draw(stray)])
    positional = draw(st.lists(ids, max_size=2))
    tail = draw(_TAIL) if verb in ("run", "exec") else []
    return [verb, *[token for part in parts for token in part], *positional, *tail]


@pytest.fixture
def dead_sockets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """Paths where nothing listens: none there, a socket bound but not
    listening, a directory, a file, a path too long for a socket, one with NUL."""
    missing = str(tmp_path / "missing.sock")
    monkeypatch.setenv("SUPERVISOR_SOCKET", missing)
    # The parser is built once, not for every call (it takes as long as a call):
    # parsing leaves no state in it.
    parser = cli._parser()
    monkeypatch.setattr(cli, "_parser", lambda only=None: parser)
    bound = socket.socket(socket.AF_UNIX)
    bound.bind(str(tmp_path / "bound.sock"))  # never listen(): connecting is refused
    (tmp_path / "file.sock").write_text("")
    previous = signal.getsignal(signal.SIGPIPE)
    try:
        yield [
            missing,
            missing,
            str(tmp_path / "bound.sock"),
            str(tmp_path),
            str(tmp_path / "file.sock"),
            str(tmp_path / ("x" * 120)),
            str(tmp_path / "nul\0.sock"),
            "relative-missing.sock",
        ]
    finally:
        bound.close()
        signal.signal(signal.SIGPIPE, previous)  # main() sets SIG_DFL, as the CLI wants


def test_fuzz_cli_arguments(dead_sockets: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    counter = Counter()
    codes: dict[int, int] = {}

    @fuzz_settings(ARGVS)
    @given(argv=argvs(), where=st.sampled_from(dead_sockets))
    def check(argv: list[str], where: str) -> None:
        counter()
        capsys.readouterr()
        full = ["--socket", where, *argv]
        try:
            code = main(full)
        except SystemExit as exc:  # argparse: --help, --version, a usage error
            assert exc.code in (0, 125), f"{full!r}: exit {exc.code!r}"
            code = int(exc.code or 0)
        except BaseException as exc:
            raise AssertionError(f"{full!r}: {type(exc).__name__}: {exc}") from exc
        out = capsys.readouterr()
        assert isinstance(code, int)
        assert code in (0, 125, 126, 127), f"{full!r}: exit code {code}"
        assert "Traceback" not in out.err, f"{full!r}:\n{out.err}"
        assert len(out.err.splitlines()) <= 1, f"{full!r}: more than one line:\n{out.err}"
        if code == 0:
            # Nothing listens: only --help and --version succeed.
            assert not out.err and out.out, f"{full!r}: exit 0"
        codes[code] = codes.get(code, 0) + 1
        if "cannot reach the daemon" in out.err:
            codes[-1] = codes.get(-1, 0) + 1  # parsed and validated: a verb ran

    check()
    assert counter.count >= fuzz_settings(ARGVS).max_examples
    # Every side was reached: help, argparse's refusals, the verbs' own checks
    # and calls that got as far as the (missing) daemon.
    assert codes.get(0, 0) > 0 and codes.get(-1, 0) > ARGVS // 10, codes
    assert codes[125] > codes[-1], codes
