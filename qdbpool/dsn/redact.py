"""`redact_dsn`: any DSN, valid or not, in a form that is safe to log."""

from __future__ import annotations

import re
from urllib.parse import unquote

from qdbpool.dsn.parse import parse_dsn
from qdbpool.dsn.redactor import REDACTED, is_secret_key
from qdbpool.dsn.values import ParsedDSN
from qdbpool.errors import ConfigurationError

__all__ = ["redact_dsn"]

# What may stay in front of hidden credentials: a scheme ('postgresql:', 'mysql://'), slashes.
_KEPT_PREFIX = re.compile(r"(?:[A-Za-z][A-Za-z0-9+.\-]*:)?/*")
# A key that names a secret, as a query parameter ('?sslpassword=') or a key/value option
# ('password = ', or 'password' followed by a space when its '=' was forgotten).
_SECRET_KEY = re.compile(r"[^\s=&?#;:]*(?:pass|secret|token)[^\s=&?#;:]*(?:\s*[=:]|\s)", re.I)
# A host list entry that is a host with an optional port: anything else after a ':' may be a
# password whose '@host' was forgotten ('postgresql://user:password/db').
_HOST_ENTRY = re.compile(r"\s*(?:\[[^\[\]]*\]|[^:\[\]]*)(?::[0-9]*)?\s*")


def redact_dsn(dsn: str) -> str:
    """A form of ``dsn`` that is safe to log, whatever ``dsn`` holds.

    A valid DSN gives ``parse_dsn(dsn).to_url(redact=True)``, unless a part of it shown in
    clear reads like ``password=...``. A malformed one (or that one) is redacted
    textually and generously, hiding more than the secrets: everything before the last
    ``@`` but a scheme (the user name too), everything after the first key whose name
    contains ``pass``, ``secret`` or ``token``, and, when there is no ``@``, whatever follows
    a ``:`` in a host entry but a port.
    """
    try:
        parsed = parse_dsn(dsn)
    except ConfigurationError:
        return _redact_malformed(dsn.strip())
    if _holds_a_secret_key(parsed):
        # e.g. 'host=h x=a\\ password=pw': valid, but the password went into the value of
        # x (an escaped space); the user meant it as a password, so hide it as one.
        return _redact_malformed(dsn.strip())
    return parsed.to_url(redact=True)


def _holds_a_secret_key(parsed: ParsedDSN) -> bool:
    """Whether a field shown in clear reads like 'password=...'."""
    shown = [parsed.user or "", parsed.database or "", *(hp.host for hp in parsed.hosts)]
    shown += [value for key, value in parsed.params.items() if not is_secret_key(key)]
    return any(_SECRET_KEY.search(text) for text in shown)


def _redact_malformed(text: str) -> str:
    secret_key = _SECRET_KEY.search(text)
    if secret_key is not None:
        text = text[: secret_key.end()] + REDACTED
    elif _SECRET_KEY.search(unquote(text)) is not None:
        # A percent-encoded secret key ('?p%61ssword=...'): keep no more than the scheme.
        return _KEPT_PREFIX.match(text).group(0) + REDACTED  # type: ignore[union-attr]
    prefix = _KEPT_PREFIX.match(text).group(0)  # type: ignore[union-attr]
    rest = text[len(prefix) :]
    if "@" in rest:
        return prefix + REDACTED + "@" + rest.rpartition("@")[2]
    end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
    entries = [_hide_non_port(entry) for entry in rest[:end].split(",")]
    return prefix + ",".join(entries) + rest[end:]


def _hide_non_port(entry: str) -> str:
    if ":" not in entry or _HOST_ENTRY.fullmatch(entry):
        return entry
    return entry.partition(":")[0] + ":" + REDACTED
