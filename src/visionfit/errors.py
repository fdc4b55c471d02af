"""The one exception type for mistakes a user can fix.

The CLI prints a `UserError` as a single line and exits non-zero; anything else is a bug and keeps
its traceback. Library callers can catch it like any other exception.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """A problem with the user's input, data or environment, with the fix in the message."""


class TrainingStopped(Exception):
    """Training stopped on a signal (SIGTERM, SIGINT, SIGUSR1) after saving its position; the CLI
    exits with `exit_code` (128 + the signal's number, as shells report it)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean X?)' for a close match among `choices`, else ''."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""
