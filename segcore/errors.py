"""The one exception type for problems a user can cause (bad flags, config, data, space).

The CLIs turn it into one clear line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools
import sys
from typing import Callable, Iterable


class UserError(Exception):
    """A problem with the user's input: the message names the file / key / flag and what is wrong."""

    def __init__(self, message: str, problems: Iterable[str] = ()):
        self.problems = list(problems)
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


EXIT_USER_ERROR = 2


def cli_entry(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI ``main``: a UserError becomes 'error: ...' on stderr and exit code 2, no traceback."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            return EXIT_USER_ERROR

    return wrapper
