"""Restart policies and backoff, with moby's restartmanager semantics.

Pure and synchronous: the caller passes the exit code and how long the task ran,
and stores the returned :class:`RestartState` (as containerd labels) itself.
"""

from __future__ import annotations

import enum
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TypeVar

from supervisor.errors import InvalidArgument

__all__ = (
    "BACKOFF_INITIAL",
    "BACKOFF_MAX",
    "BACKOFF_MULTIPLIER",
    "LABEL_PREFIX",
    "RESET_AFTER",
    "Decision",
    "PolicyKind",
    "RestartPolicy",
    "RestartState",
    "decide",
    "manual_start",
    "manual_stop",
    "record_oom",
    "restart_on_daemon_start",
)

BACKOFF_INITIAL = 0.1
BACKOFF_MULTIPLIER = 2
BACKOFF_MAX = 60.0
RESET_AFTER = 10.0

LABEL_PREFIX = "io.containerd-supervisor/"
_RESTART_COUNT = LABEL_PREFIX + "restart-count"
_BACKOFF = LABEL_PREFIX + "backoff"
_MANUALLY_STOPPED = LABEL_PREFIX + "manually-stopped"
_OOM_KILLS = LABEL_PREFIX + "oom-kills"

# Strict on purpose: int() and float() also accept signs, spaces and underscores.
_UINT = re.compile(r"[0-9]+")
_UFLOAT = re.compile(r"[0-9]+(\.[0-9]+)?(e[-+]?[0-9]+)?")
_BOOL = re.compile(r"true|false")
_T = TypeVar("_T")

_FORMS = "'no', 'always', 'on-failure', 'on-failure:N' (N >= 0) or 'unless-stopped'"


class PolicyKind(enum.Enum):
    """When a container is restarted after its task exits."""

    NO = "no"
    ALWAYS = "always"
    ON_FAILURE = "on-failure"
    UNLESS_STOPPED = "unless-stopped"


@dataclass(frozen=True, slots=True)
class RestartPolicy:
    """A policy kind and, for on-failure, a retry limit (0 = unlimited)."""

    kind: PolicyKind
    max_retries: int = 0

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise InvalidArgument(f"max_retries must be >= 0, not {self.max_retries}")
        if self.max_retries and self.kind is not PolicyKind.ON_FAILURE:
            raise InvalidArgument(f"max_retries only applies to on-failure, not {self.kind.value}")

    @classmethod
    def parse(cls, text: str) -> RestartPolicy:
        """Parse Docker's ``--restart`` syntax, e.g. ``"on-failure:3"``."""
        name, sep, count = text.strip().partition(":")
        try:
            kind = PolicyKind(name)
        except ValueError:
            raise InvalidArgument(f"invalid restart policy {text!r}: expected {_FORMS}") from None
        if not sep:
            return cls(kind)
        if kind is not PolicyKind.ON_FAILURE or not _UINT.fullmatch(count):
            raise InvalidArgument(f"invalid restart policy {text!r}: expected {_FORMS}")
        return cls(kind, int(count))

    def __str__(self) -> str:
        if self.max_retries:
            return f"{self.kind.value}:{self.max_retries}"
        return self.kind.value


@dataclass(frozen=True, slots=True)
class RestartState:
    """What the restart logic remembers about one container between exits."""

    restart_count: int = 0
    backoff: float = 0.0
    manually_stopped: bool = False
    oom_kills: int = 0

    def to_labels(self) -> dict[str, str]:
        """Encode as containerd labels; :meth:`from_labels` reverses it exactly."""
        return {
            _RESTART_COUNT: str(self.restart_count),
            _BACKOFF: repr(self.backoff),
            _MANUALLY_STOPPED: "true" if self.manually_stopped else "false",
            _OOM_KILLS: str(self.oom_kills),
        }

    @classmethod
    def from_labels(cls, labels: Mapping[str, str]) -> RestartState:
        """Decode from container labels; missing keys take their defaults."""
        return cls(
            restart_count=_label(labels, _RESTART_COUNT, _UINT, int, 0),
            backoff=_label(labels, _BACKOFF, _UFLOAT, _finite, 0.0),
            manually_stopped=_label(labels, _MANUALLY_STOPPED, _BOOL, "true".__eq__, False),
            oom_kills=_label(labels, _OOM_KILLS, _UINT, int, 0),
        )


def _label(
    labels: Mapping[str, str],
    key: str,
    pattern: re.Pattern[str],
    convert: Callable[[str], _T],
    default: _T,
) -> _T:
    text = labels.get(key)
    if text is None:
        return default
    try:
        if not pattern.fullmatch(text):
            raise ValueError(text)
        return convert(text)
    except ValueError:
        raise InvalidArgument(f"malformed label {key}={text!r}") from None


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


@dataclass(frozen=True, slots=True)
class Decision:
    """The outcome of :func:`decide`: whether and when to restart, and the state to store."""

    restart: bool
    delay: float
    state: RestartState
    reason: str


def decide(policy: RestartPolicy, state: RestartState, exit_code: int, ran_for: float) -> Decision:
    """Decide whether a task that exited with ``exit_code`` after ``ran_for`` seconds restarts."""
    if state.manually_stopped:
        return Decision(False, 0.0, state, "manually stopped")
    kind = policy.kind
    if kind is PolicyKind.NO:
        return Decision(False, 0.0, state, f"exit code {exit_code} and policy no")
    if kind is PolicyKind.ON_FAILURE:
        if exit_code == 0:
            return Decision(False, 0.0, state, "exit code 0 and policy on-failure")
        if policy.max_retries and state.restart_count >= policy.max_retries:
            reason = f"on-failure: gave up after {state.restart_count} restarts"
            return Decision(False, 0.0, state, reason)
    backoff = 0.0 if ran_for >= RESET_AFTER else state.backoff
    delay = BACKOFF_INITIAL if backoff == 0 else backoff * BACKOFF_MULTIPLIER
    # Clamped both ways so that a hand-edited label cannot yield a busy loop or a stall.
    delay = min(max(delay, BACKOFF_INITIAL), BACKOFF_MAX)
    count = state.restart_count + 1
    of = f" of {policy.max_retries}" if policy.max_retries else ""
    reason = f"exit code {exit_code}, {kind.value}: restart {count}{of} in {delay:g}s"
    return Decision(True, delay, replace(state, restart_count=count, backoff=delay), reason)


def record_oom(state: RestartState) -> RestartState:
    """Count one more OOM kill of the container."""
    return replace(state, oom_kills=state.oom_kills + 1)


def manual_stop(state: RestartState) -> RestartState:
    """Mark an operator's stop, which no policy overrides while the daemon runs."""
    return replace(state, manually_stopped=True)


def manual_start(state: RestartState) -> RestartState:
    """Clear the stop mark and, as Docker does, the restart history."""
    return replace(state, manually_stopped=False, restart_count=0, backoff=0.0)


def restart_on_daemon_start(policy: RestartPolicy, state: RestartState) -> bool:
    """Whether a container found stopped when the daemon starts is started again.

    ``always`` wins even over a manual stop (Docker's rule); on-failure and no
    exits are handled by :func:`decide` when they happen.
    """
    if policy.kind is PolicyKind.ALWAYS:
        return True
    return policy.kind is PolicyKind.UNLESS_STOPPED and not state.manually_stopped
