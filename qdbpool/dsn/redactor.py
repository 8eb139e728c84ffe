"""What counts as a secret, and the one way qdbpool blanks secrets out of text.

Everything qdbpool shows (error messages, reprs, log lines, the probe's output) goes through
`Redactor` when it may hold a password it knows of; `redact_dsn` (qdbpool.dsn.redact) handles
a DSN that could not be parsed, where the secrets are not known.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import quote, quote_plus

__all__ = ["REDACTED", "Redactor", "is_secret_key"]

REDACTED = "***"
"""What stands in for a password (or a secret parameter) in redacted output."""

_SECRET_KEY = re.compile(r"pass|secret|token", re.IGNORECASE)

# A piece of text as repr() quotes it: '...' or "...", with backslash escapes.
_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", re.DOTALL)


def is_secret_key(key: str) -> bool:
    """Whether a parameter of this name holds a secret (``password``, ``sslpassword``,
    ``passwd``, ``auth_token``, ...): its value is never shown."""
    return _SECRET_KEY.search(key) is not None


def _forms(secret: str) -> set[str]:
    """The ways a secret shows up in text: as written, percent-encoded as a URL carries it
    (with or without '/' kept, '+' for spaces), and escaped as repr() writes it inside
    '...' or, when it holds a quote, inside "..."."""
    return {
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        repr(secret)[1:-1],
        # The escaping repr() uses for a str holding both quotes: '\'' for each '.
        # The 4 characters cut off the end are the added \' and " and the closing quote.
        repr(secret + "'\"")[1:-4],
    }


class Redactor:
    """Replaces every known secret in a text by ``***``, in all the forms it may take.

    >>> scrub = Redactor(["p w/@"])
    >>> scrub("failed for p%20w%2F%40 and p w/@")
    'failed for *** and ***'

    Empty and ``None`` secrets are ignored; other non-str values are hidden as ``str()``
    shows them.
    """

    __slots__ = ("_pattern",)

    def __init__(self, secrets: Iterable[object]) -> None:
        forms: set[str] = set()
        for secret in secrets:
            if secret is None or secret == "":
                continue
            forms |= _forms(secret if isinstance(secret, str) else str(secret))
        forms.discard("")
        # Longest first, so that a form holding another is replaced whole, in one pass.
        ordered = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None

    def __bool__(self) -> bool:
        """False when there is nothing to hide."""
        return self._pattern is not None

    def __call__(self, text: str) -> str:
        """`text` with every form of every secret replaced by ``***``."""
        if self._pattern is None:
            return text
        return self._pattern.sub(REDACTED, text)

    def inside_quotes(self, text: str) -> str:
        """Like calling it, but only inside the quoted pieces of `text`.

        For messages whose every piece of user input is quoted by repr(): the fixed words
        around them stay readable even when a secret is a single letter.
        """
        if self._pattern is None:
            return text
        return _QUOTED.sub(lambda match: self(match.group(0)), text)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<{'some' if self else 'no'} secrets>)"
