"""User-facing errors: each carries one line that says what, where and how to fix.

Command-line entry points catch `DdpmError` and print only its message
(no traceback) with a non-zero exit code; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

import functools
import sys
from typing import Callable, TypeVar

F = TypeVar("F", bound=Callable)

EXIT_USER_ERROR = 2


class DdpmError(Exception):
    """A problem the user can fix; the message is the whole story."""


class ConfigError(DdpmError):
    """A params key with a wrong type, an out-of-range value or an unknown name."""


class DataError(DdpmError):
    """A data source that does not exist, is unreadable or yields nothing usable."""


def one_line_errors(fn: F) -> F:
    """Decorate a command so a `DdpmError` ends it with one line on stderr and exit 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except DdpmError as err:
            print(f"error: {err}", file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None

    return wrapper  # type: ignore[return-value]
