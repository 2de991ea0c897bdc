"""sft_core.cli_errors.run_cli: user errors become one line and exit code 2; bugs keep their traceback."""

from __future__ import annotations

import pytest

from sft_core.cli_errors import UserError, run_cli
from sft_core.hub import ModelNotAvailableError
from sft_core.records import RecordError


@pytest.mark.parametrize("error, expected", [
    (UserError("--data x.csv: no column 'text'"), "error: --data x.csv: no column 'text'"),
    (RecordError("f.jsonl", 3, "malformed JSON"), "error: f.jsonl:3: malformed JSON"),
    (ModelNotAvailableError("unknown model alias 'x'"), "error: unknown model alias 'x'"),
    (FileNotFoundError(2, "No such file or directory", "/nope.jsonl"), "error: /nope.jsonl: no such file or directory"),
    (UserError("two\nlines"), "error: two lines"),
])
def test_user_errors_print_one_line_and_exit_2(capsys, error, expected):
    def main(argv):
        raise error

    assert run_cli(main, []) == 2
    captured = capsys.readouterr()
    assert captured.err == expected + "\n" and captured.out == ""


def test_return_value_and_argv_pass_through():
    assert run_cli(lambda argv: len(argv), ["a", "b", "c"]) == 3
    assert run_cli(lambda argv: None, []) == 0


def test_keyboard_interrupt_exits_130(capsys):
    def main(argv):
        raise KeyboardInterrupt

    assert run_cli(main) == 130
    assert capsys.readouterr().err == "interrupted\n"


def test_programming_errors_are_not_swallowed():
    def main(argv):
        raise TypeError("a bug")

    with pytest.raises(TypeError, match="a bug"):
        run_cli(main, [])
