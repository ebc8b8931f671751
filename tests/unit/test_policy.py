"""The restart policy: parsing, moby's backoff, label round trips, daemon-start rules."""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.daemon._policy import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    BACKOFF_MULTIPLIER,
    LABEL_PREFIX,
    RESET_AFTER,
    Decision,
    PolicyKind,
    RestartPolicy,
    RestartState,
    decide,
    manual_start,
    manual_stop,
    record_oom,
    restart_on_daemon_start,
)
from supervisor.errors import InvalidArgument

NO = RestartPolicy(PolicyKind.NO)
ALWAYS = RestartPolicy(PolicyKind.ALWAYS)
UNLESS_STOPPED = RestartPolicy(PolicyKind.UNLESS_STOPPED)
ON_FAILURE = RestartPolicy(PolicyKind.ON_FAILURE)
STOPPED = RestartState(manually_stopped=True)

#: A crash: failed at once, well under RESET_AFTER.
CRASH = 0.5


def crash_loop(policy: RestartPolicy, n: int, exit_code: int = 1) -> list[Decision]:
    state = RestartState()
    decisions = []
    for _ in range(n):
        decision = decide(policy, state, exit_code, CRASH)
        decisions.append(decision)
        state = decision.state
    return decisions


def test_constants_are_mobys() -> None:
    assert (BACKOFF_INITIAL, BACKOFF_MULTIPLIER, BACKOFF_MAX, RESET_AFTER) == (0.1, 2, 60.0, 10.0)


@pytest.mark.parametrize(
    ("text", "policy"),
    [
        ("no", NO),
        ("always", ALWAYS),
        ("unless-stopped", UNLESS_STOPPED),
        ("on-failure", ON_FAILURE),
        ("on-failure:0", ON_FAILURE),
        ("on-failure:3", RestartPolicy(PolicyKind.ON_FAILURE, 3)),
        ("on-failure:10", RestartPolicy(PolicyKind.ON_FAILURE, 10)),
        ("  always\n", ALWAYS),
        ("\ton-failure:2 ", RestartPolicy(PolicyKind.ON_FAILURE, 2)),
    ],
)
def test_parse(text: str, policy: RestartPolicy) -> None:
    assert RestartPolicy.parse(text) == policy


@pytest.mark.parametrize(
    ("policy", "text"),
    [
        (NO, "no"),
        (ALWAYS, "always"),
        (UNLESS_STOPPED, "unless-stopped"),
        (ON_FAILURE, "on-failure"),
        (RestartPolicy(PolicyKind.ON_FAILURE, 3), "on-failure:3"),
    ],
)
def test_str_is_canonical_and_round_trips(policy: RestartPolicy, text: str) -> None:
    assert str(policy) == text
    assert RestartPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "yes",
        "Always",
        "NO",
        "on_failure",
        "onfailure",
        "unless stopped",
        "no:3",
        "always:2",
        "unless-stopped:1",
        "on-failure:",
        "on-failure:-1",
        "on-failure:+1",
        "on-failure:x",
        "on-failure:1.5",
        "on-failure: 3",
        "on-failure:3:4",
        "on-failure:1_0",
        "on-failure:٣",
        ":3",
    ],
)
def test_parse_rejects(text: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        RestartPolicy.parse(text)
    message = str(info.value)
    assert repr(text) in message
    for form in ("no", "always", "on-failure:N", "unless-stopped"):
        assert f"'{form}'" in message


@pytest.mark.parametrize(
    ("kind", "max_retries"),
    [(PolicyKind.ON_FAILURE, -1), (PolicyKind.ALWAYS, 3), (PolicyKind.NO, 1)],
)
def test_policy_rejects_bad_max_retries(kind: PolicyKind, max_retries: int) -> None:
    with pytest.raises(InvalidArgument):
        RestartPolicy(kind, max_retries)


def test_backoff_doubles_from_100ms_and_caps_at_a_minute() -> None:
    delays = [d.delay for d in crash_loop(ALWAYS, 14)]
    expected = [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 60, 60, 60, 60]
    assert delays == pytest.approx(expected)
    assert all(d.restart for d in crash_loop(ALWAYS, 14))


def test_state_counts_restarts_and_keeps_the_last_delay() -> None:
    decisions = crash_loop(ON_FAILURE, 3)
    assert [d.state.restart_count for d in decisions] == [1, 2, 3]
    assert [d.state.backoff for d in decisions] == [d.delay for d in decisions]


def test_backoff_resets_after_running_long_enough() -> None:
    state = crash_loop(ALWAYS, 8)[-1].state
    assert state.backoff == pytest.approx(12.8)
    decision = decide(ALWAYS, state, 1, RESET_AFTER)
    assert decision.restart
    assert decision.delay == BACKOFF_INITIAL
    assert decision.state.backoff == BACKOFF_INITIAL
    # The count is history, not backoff: it keeps growing.
    assert decision.state.restart_count == 9
    after = decide(ALWAYS, decision.state, 1, CRASH)
    assert after.delay == pytest.approx(0.2)


def test_no_reset_just_under_the_threshold() -> None:
    state = RestartState(restart_count=2, backoff=0.2)
    assert decide(ALWAYS, state, 1, RESET_AFTER - 0.001).delay == pytest.approx(0.4)


def test_on_failure_gives_up_after_exactly_max_retries() -> None:
    policy = RestartPolicy.parse("on-failure:3")
    decisions = crash_loop(policy, 5)
    assert [d.restart for d in decisions] == [True, True, True, False, False]
    assert [d.reason for d in decisions] == [
        "exit code 1, on-failure: restart 1 of 3 in 0.1s",
        "exit code 1, on-failure: restart 2 of 3 in 0.2s",
        "exit code 1, on-failure: restart 3 of 3 in 0.4s",
        "on-failure: gave up after 3 restarts",
        "on-failure: gave up after 3 restarts",
    ]
    gave_up = decisions[3]
    assert gave_up.delay == 0
    assert gave_up.state == decisions[2].state


def test_on_failure_unlimited_keeps_restarting() -> None:
    decisions = crash_loop(ON_FAILURE, 50, exit_code=137)
    assert all(d.restart for d in decisions)
    assert decisions[-1].state.restart_count == 50
    assert decisions[0].reason == "exit code 137, on-failure: restart 1 in 0.1s"


@pytest.mark.parametrize("policy", [ON_FAILURE, RestartPolicy(PolicyKind.ON_FAILURE, 3)])
def test_on_failure_does_not_restart_a_clean_exit(policy: RestartPolicy) -> None:
    state = RestartState(restart_count=1, backoff=0.1)
    decision = decide(policy, state, 0, CRASH)
    assert not decision.restart
    assert decision.state == state
    assert decision.reason == "exit code 0 and policy on-failure"


@pytest.mark.parametrize("policy", [ALWAYS, UNLESS_STOPPED])
def test_always_and_unless_stopped_restart_a_clean_exit(policy: RestartPolicy) -> None:
    decision = decide(policy, RestartState(), 0, 3600)
    assert decision.restart
    assert decision.delay == BACKOFF_INITIAL
    assert decision.state == RestartState(restart_count=1, backoff=BACKOFF_INITIAL)
    assert decision.reason == f"exit code 0, {policy}: restart 1 in 0.1s"


@pytest.mark.parametrize("exit_code", [0, 1, 137])
def test_no_never_restarts(exit_code: int) -> None:
    state = RestartState(restart_count=4, backoff=1.6, oom_kills=1)
    decision = decide(NO, state, exit_code, CRASH)
    assert not decision.restart
    assert decision.delay == 0
    assert decision.state == state
    assert decision.reason == f"exit code {exit_code} and policy no"


@pytest.mark.parametrize("policy", [NO, ALWAYS, UNLESS_STOPPED, ON_FAILURE])
@pytest.mark.parametrize("exit_code", [0, 1, 137])
def test_a_manual_stop_never_restarts(policy: RestartPolicy, exit_code: int) -> None:
    state = manual_stop(RestartState(restart_count=2, backoff=0.2))
    decision = decide(policy, state, exit_code, CRASH)
    assert not decision.restart
    assert decision.state == state
    assert decision.reason == "manually stopped"


def test_manual_stop_and_start() -> None:
    state = RestartState(restart_count=5, backoff=3.2, oom_kills=2)
    stopped = manual_stop(state)
    assert stopped == RestartState(5, 3.2, True, 2)
    started = manual_start(stopped)
    assert started == RestartState(oom_kills=2)
    assert decide(ALWAYS, started, 1, CRASH).delay == BACKOFF_INITIAL


def test_record_oom() -> None:
    state = RestartState(restart_count=1, backoff=0.1)
    assert record_oom(record_oom(state)) == RestartState(1, 0.1, False, 2)


@pytest.mark.parametrize(
    ("policy", "manually_stopped", "expected"),
    [
        (ALWAYS, False, True),
        (ALWAYS, True, True),
        (UNLESS_STOPPED, False, True),
        (UNLESS_STOPPED, True, False),
        (ON_FAILURE, False, False),
        (ON_FAILURE, True, False),
        (RestartPolicy(PolicyKind.ON_FAILURE, 3), False, False),
        (NO, False, False),
        (NO, True, False),
    ],
)
def test_restart_on_daemon_start(
    policy: RestartPolicy, manually_stopped: bool, expected: bool
) -> None:
    state = RestartState(restart_count=1, manually_stopped=manually_stopped)
    assert restart_on_daemon_start(policy, state) is expected


def test_labels() -> None:
    state = RestartState(restart_count=3, backoff=0.4, manually_stopped=True, oom_kills=1)
    assert state.to_labels() == {
        LABEL_PREFIX + "restart-count": "3",
        LABEL_PREFIX + "backoff": "0.4",
        LABEL_PREFIX + "manually-stopped": "true",
        LABEL_PREFIX + "oom-kills": "1",
    }
    assert all(key.startswith("io.containerd-supervisor/") for key in state.to_labels())


def test_from_labels_defaults_and_ignores_other_labels() -> None:
    assert RestartState.from_labels({}) == RestartState()
    labels = {"app": "web", LABEL_PREFIX + "restart-policy": "always"}
    assert RestartState.from_labels(labels) == RestartState()
    partial = {LABEL_PREFIX + "oom-kills": "2", LABEL_PREFIX + "manually-stopped": "false"}
    assert RestartState.from_labels(partial) == RestartState(oom_kills=2)


@given(
    st.builds(
        RestartState,
        restart_count=st.integers(min_value=0, max_value=10**12),
        backoff=st.floats(min_value=0, max_value=1e300),
        manually_stopped=st.booleans(),
        oom_kills=st.integers(min_value=0, max_value=10**12),
    )
)
def test_labels_round_trip(state: RestartState) -> None:
    labels = state.to_labels()
    assert all(isinstance(value, str) for value in labels.values())
    assert RestartState.from_labels(labels) == state


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("restart-count", ""),
        ("restart-count", "-1"),
        ("restart-count", "+1"),
        ("restart-count", " 1"),
        ("restart-count", "1.0"),
        ("restart-count", "1_000"),
        ("restart-count", "three"),
        ("backoff", ""),
        ("backoff", "-0.1"),
        ("backoff", "nan"),
        ("backoff", "inf"),
        ("backoff", "1e999"),
        ("backoff", "0.1s"),
        ("backoff", "1_0.0"),
        ("manually-stopped", ""),
        ("manually-stopped", "True"),
        ("manually-stopped", "1"),
        ("manually-stopped", "yes"),
        ("oom-kills", "-2"),
        ("oom-kills", "x"),
    ],
)
def test_from_labels_rejects_malformed(key: str, value: str) -> None:
    labels = RestartState().to_labels() | {LABEL_PREFIX + key: value}
    with pytest.raises(InvalidArgument, match=key):
        RestartState.from_labels(labels)


POLICIES = st.one_of(
    st.sampled_from([NO, ALWAYS, UNLESS_STOPPED]),
    st.builds(RestartPolicy, st.just(PolicyKind.ON_FAILURE), st.integers(0, 5)),
)
STATES = st.builds(
    RestartState,
    restart_count=st.integers(0, 20),
    backoff=st.floats(0, 1000),
    manually_stopped=st.booleans(),
    oom_kills=st.integers(0, 3),
)
#: Exits (code, seconds run) are weighted so that long crash loops reach the cap.
STEPS = st.one_of(
    st.tuples(st.sampled_from([0, 1, 2, 137, 143]), st.floats(0, 100)),
    st.tuples(st.just(1), st.floats(0, RESET_AFTER, exclude_max=True)),
    st.sampled_from(["oom", "stop", "start"]),
)


@given(POLICIES, STATES, st.lists(STEPS, max_size=60))
def test_decide_properties(
    policy: RestartPolicy, state: RestartState, steps: list[tuple[int, float] | str]
) -> None:
    for step in steps:
        if step == "oom":
            state = record_oom(state)
            continue
        if step == "stop":
            state = manual_stop(state)
            continue
        if step == "start":
            state = manual_start(state)
            continue
        assert isinstance(step, tuple)
        exit_code, ran_for = step
        decision = decide(policy, state, exit_code, ran_for)
        assert decision.state.restart_count >= state.restart_count
        assert decision.state.oom_kills == state.oom_kills
        assert decision.state.manually_stopped == state.manually_stopped
        if decision.restart:
            assert BACKOFF_INITIAL <= decision.delay <= BACKOFF_MAX
            assert decision.state.backoff == decision.delay
            assert decision.state.restart_count == state.restart_count + 1
            assert not state.manually_stopped
            assert policy.kind is not PolicyKind.NO
            if policy.kind is PolicyKind.ON_FAILURE:
                assert exit_code != 0
                assert policy.max_retries == 0 or state.restart_count < policy.max_retries
            if ran_for >= RESET_AFTER:
                assert decision.delay == BACKOFF_INITIAL
        else:
            assert decision.delay == 0
            assert decision.state == state
            assert decision.reason
        if policy.kind in (PolicyKind.ALWAYS, PolicyKind.UNLESS_STOPPED):
            assert decision.restart is not state.manually_stopped
        assert math.isfinite(decision.delay)
        state = decision.state
