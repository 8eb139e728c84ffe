"""Checks of the numbers users pass as options: one place, one kind of error.

Every check raises ConfigurationError (a ValueError) naming the option and the bad value, for
any input: a bool, a string, NaN, infinity or an int too large for a float (10**400) alike.
"""

from __future__ import annotations

import math
import threading

from qdbpool.errors import ConfigurationError

# The longest wait the threading module accepts: larger timeouts raise OverflowError there.
MAX_SECONDS = float(threading.TIMEOUT_MAX)


def seconds(name: str, value: object, *, zero_ok: bool = False) -> float:
    """A number of seconds: positive (or >= 0 with `zero_ok`), finite, at most MAX_SECONDS."""
    lowest = "a number of seconds >= 0" if zero_ok else "a positive number of seconds"
    problem = f"{name} must be {lowest} (at most {MAX_SECONDS:g}), not {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(problem)
    try:
        number = float(value)
    except OverflowError:
        raise ConfigurationError(problem) from None
    if not math.isfinite(number) or number > MAX_SECONDS or number < 0:
        raise ConfigurationError(problem)
    if number == 0 and not zero_ok:
        raise ConfigurationError(problem)
    return number


def optional_seconds(name: str, value: object) -> float | None:
    """`seconds`, or None for "no limit"."""
    return None if value is None else seconds(name, value)


def count(name: str, value: object, minimum: int) -> int:
    """A whole number >= `minimum` (bools refused: True is not a size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an int >= {minimum}, not {value!r}")
    return value
