"""The one exception type for problems a user can cause (bad flags, config, data, space).

The CLIs turn it into one clear line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import functools
import signal
import sys
from typing import Callable, Iterable


class UserError(Exception):
    """A problem with the user's input: the message names the file / key / flag and what is wrong."""

    def __init__(self, message: str, problems: Iterable[str] = ()):
        self.problems = list(problems)
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(message)


class Interrupted(KeyboardInterrupt):
    """A stop signal (SIGINT, SIGTERM) a CLI turned into an interrupt; exits with 128 + the signal's number."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


EXIT_USER_ERROR = 2


def cli_entry(main: Callable[..., int | None]) -> Callable[..., int]:
    """Wrap a CLI ``main``: a UserError becomes 'error: ...' on stderr and exit code 2, no traceback; Ctrl-C (or a
    signal turned into ``Interrupted``) one line and the shell's 128 + signal number."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs) -> int:
        try:
            return main(*args, **kwargs) or 0
        except UserError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            return EXIT_USER_ERROR
        except KeyboardInterrupt as err:
            signum = getattr(err, "signum", signal.SIGINT)
            print(f"interrupted ({signal.Signals(signum).name})", file=sys.stderr, flush=True)
            return 128 + signum

    return wrapper
