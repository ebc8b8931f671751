import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.client import validate_id
from supervisor.errors import InvalidArgument

ALNUM = st.text("abcXYZ0189", min_size=1, max_size=8)


@given(st.lists(st.tuples(st.sampled_from("._-"), ALNUM), max_size=5), ALNUM)
def test_valid_ids_pass(parts: list[tuple[str, str]], head: str) -> None:
    value = head + "".join(sep + word for sep, word in parts)
    if len(value) <= 76:
        assert validate_id(value) == value


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("", "must not be empty"),
        ("x" * 77, "the limit is 76"),
        ("../x", "is invalid"),
        ("a b", "is invalid"),
        ("a--b", "is invalid"),
        ("-a", "is invalid"),
        ("a.", "is invalid"),
        ("ä", "is invalid"),
        ("a/b", "is invalid"),
    ],
)
def test_invalid_ids_say_why(bad: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_id(bad, "container id")


@given(st.text(min_size=1, max_size=90))
def test_anything_accepted_matches_containerd_rules(value: str) -> None:
    try:
        validate_id(value)
    except InvalidArgument:
        return
    assert len(value) <= 76
    assert value[0].isascii() and value[0].isalnum()
    assert value[-1].isascii() and value[-1].isalnum()
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in value)


def test_exactly_76_is_allowed() -> None:
    assert validate_id("a" * 76)
