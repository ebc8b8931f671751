"""The command line builds the parser of the command being called only: the
same parse as with every command's parser, and the full one when in doubt."""

from __future__ import annotations

import pytest

from supervisor import cli


@pytest.mark.parametrize(
    ("argv", "word"),
    [
        (["ps"], "ps"),
        (["--socket", "/s", "rm", "-f", "a"], "rm"),
        (["--socket=/s", "run", "-d", "--rootfs", "/r", "sh"], "run"),
        (["--sock", "/s", "ps"], None),  # an abbreviation: argparse decides
        (["--help"], None),
        (["--version"], None),
        ([], None),
        (["--socket"], None),
    ],
)
def test_command_word(argv: list[str], word: str | None) -> None:
    assert cli._command_word(argv) == word


@pytest.mark.parametrize(
    "argv",
    [
        ["ps", "-a", "--json"],
        ["--socket", "/s", "rm", "-f", "a", "b"],
        ["run", "-d", "--name", "x", "--rootfs", "/r", "-p", "8080:80", "sh", "-c", "true"],
        ["logs", "-f", "--tail", "5", "x"],
        ["network", "create", "n1"],
    ],
)
def test_one_commands_parser_parses_as_all_of_them(argv: list[str]) -> None:
    assert cli._parser(cli._command_word(argv)).parse_args(argv) == cli._parser().parse_args(argv)


def test_an_unknown_command_gets_the_full_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli._parser("nosuch").parse_args(["nosuch"])
    err = capsys.readouterr().err
    assert "invalid choice: 'nosuch'" in err and "'ps'" in err and "'run'" in err
