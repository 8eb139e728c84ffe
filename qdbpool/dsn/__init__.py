"""Multi-host DSNs, shared by the PostgreSQL and MySQL factories.

* `values`: what a DSN parses into (`HostPort`, `Params`, `ParsedDSN`, `DEFAULT_PORTS`);
* `parse`: `parse_dsn`, from a URL or a libpq key/value string (its docstring has the rules:
  hasql's for host lists, where they differ from libpq's);
* `redactor`: `Redactor`, the one place qdbpool blanks known secrets out of a text, and
  `is_secret_key`;
* `redact`: `redact_dsn`, any DSN, even a malformed one, in a form that is safe to log.
"""

from qdbpool.dsn.parse import parse_dsn
from qdbpool.dsn.redact import redact_dsn
from qdbpool.dsn.redactor import REDACTED, Redactor, is_secret_key
from qdbpool.dsn.values import DEFAULT_PORTS, HostPort, Params, ParsedDSN

__all__ = [
    "DEFAULT_PORTS",
    "REDACTED",
    "HostPort",
    "Params",
    "ParsedDSN",
    "Redactor",
    "is_secret_key",
    "parse_dsn",
    "redact_dsn",
]
