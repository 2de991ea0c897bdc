"""One place where every sftkit CLI turns a user error into one line on stderr and exit code 2.

    def main(argv=None) -> int:
        return run_cli(_main, argv)

``_main(argv)`` raises :class:`UserError` (or RecordError, ModelNotAvailableError, FileNotFoundError)
with a message naming the file, field or flag; ``run_cli`` prints ``error: <message>`` and returns 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable, Sequence

USAGE_ERROR_EXIT_CODE = 2
INTERRUPTED_EXIT_CODE = 130


class UserError(Exception):
    """Bad input from the user; the message is one line naming the file, field or flag and the reason."""


def _user_error_types() -> tuple[type[BaseException], ...]:
    from sft_core.hub import ModelNotAvailableError
    from sft_core.records import RecordError

    return (UserError, RecordError, ModelNotAvailableError, FileNotFoundError)


def error_line(error: BaseException) -> str:
    """The one line printed for a user error (FileNotFoundError: 'PATH: no such file or directory')."""
    if isinstance(error, FileNotFoundError) and error.filename and error.strerror:
        message = f"{error.filename}: {error.strerror.lower()}"
    else:
        message = str(error) or type(error).__name__
    return "error: " + " ".join(message.split())  # one line, whatever the message held


def run_cli(main_function: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """Call ``main_function(argv)``; user errors -> one ``error: ...`` line on stderr and exit code 2."""
    try:
        return int(main_function(argv) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return INTERRUPTED_EXIT_CODE
    except _user_error_types() as error:
        print(error_line(error), file=sys.stderr)
        return USAGE_ERROR_EXIT_CODE
