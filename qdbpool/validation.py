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
    """A number of seconds: positive (or >= 0 with `zero_ok`), at most MAX_SECONDS."""
    wanted = "a number of seconds >= 0" if zero_ok else "a positive number of seconds"
    wanted += f", at most {MAX_SECONDS:.0f}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigurationError(f"{name} must be {wanted}, not {_shown(value)}")
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        number = math.inf
    if not 0 <= number <= MAX_SECONDS or (number == 0 and not zero_ok):  # NaN fails too
        raise ConfigurationError(f"{name} must be {wanted}, not {_shown(value)}")
    return number


def _shown(value: object) -> str:
    """repr(value), except for ints too long to print (repr(10**5000) raises ValueError)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return "an int too large"
    return repr(value)


def optional_seconds(name: str, value: object) -> float | None:
    """`seconds`, or None for "no limit"."""
    return None if value is None else seconds(name, value)


def count(name: str, value: object, minimum: int) -> int:
    """A whole number >= `minimum` (bools refused: True is not a size)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(f"{name} must be an int >= {minimum}, not {_shown(value)}")
    return value
