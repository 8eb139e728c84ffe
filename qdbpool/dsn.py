"""Multi-host DSN parsing and redaction, shared by the PostgreSQL and MySQL factories.

Two input forms are accepted:

* URLs: ``postgresql://``, ``postgres://``, ``mysql://`` and ``mariadb://``, e.g.
  ``postgresql://user:p%40ss@db1:5433,db2,[::1]:5434/app?sslmode=require``.
* libpq key/value strings: ``host=a,b port=5432,5433 user=u password='p w' dbname=app``
  (values may be single-quoted; a backslash escapes the next character, as in libpq).

Host lists follow hasql's rules (which users of multi-host DSNs already know):

* ``postgresql://db1,db2,db3/`` -> every host gets the default port (5432, or 3306 for MySQL);
* ``postgresql://db1:1234,db2:5678,db3/`` -> per-host ports, the default for the rest;
* ``postgresql://db1,db2,db3:6432/`` -> a port on the *last* host, when it is the only port
  given, applies to every host. Any other mix (e.g. ``db1:1,db2,db3:3``) is per-host.

In key/value strings, ``port`` holds either one port (for every host) or one per host; an empty
entry means the default port.

Decisions worth knowing:

* A repeated host:port is dropped (first occurrence wins), as hasql does.
* A repeated query parameter or key is an error (libpq would silently keep the last one).
* ``host``, ``port``, ``user``, ``password``, ``dbname`` and ``database`` given as query
  parameters are lifted into the structured fields (libpq allows ``?host=...``); giving one of
  them both in the URL and in the query is an error. They never appear in ``params``.
* A DSN without any host means ``localhost`` (with the default port unless one is given).
* ``+`` in a query is a literal plus (libpq semantics), not a space.
* ``'@'``, ``'/'``, ``'?'``, ``'#'`` in a user name, password or database name must be
  percent-encoded. A raw ``'@'`` after the host list is rejected, since it almost always means an
  unencoded password, and the error then quotes no part of the DSN.
* Passwords never appear in ``repr()``, ``str()``, ``to_url(redact=True)`` or in any
  `ConfigurationError` message; neither do the values of parameters
  whose name contains ``pass``, ``secret`` or ``token`` (e.g. ``sslpassword``).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal
from urllib.parse import quote, unquote

from qdbpool.errors import ConfigurationError

__all__ = [
    "DEFAULT_PORTS",
    "REDACTED",
    "HostPort",
    "Params",
    "ParsedDSN",
    "parse_dsn",
    "redact_dsn",
]

REDACTED = "***"
"""What stands in for a password (or a secret parameter) in redacted output."""

Family = Literal["postgresql", "mysql"]

DEFAULT_PORTS: Mapping[Family, int] = MappingProxyType({"postgresql": 5432, "mysql": 3306})

_FAMILY_OF_SCHEME: Mapping[str, Family] = MappingProxyType(
    {"postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
)
_SCHEMES_TEXT = ", ".join(_FAMILY_OF_SCHEME)

# Keys that are fields of ParsedDSN, never free-form parameters.
_STRUCTURAL_KEYS = frozenset({"host", "port", "user", "password", "dbname", "database"})

_URL_START = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
_DIGITS = re.compile(r"[0-9]+")
_SECRET_KEY = re.compile(r"pass|secret|token", re.IGNORECASE)
_SPACE = frozenset(" \t\n\r\f\v")  # what libpq's isspace() skips in key/value strings

_MISPLACED_CREDENTIALS = (
    "malformed DSN: found '@' after the host list; a user name, password or database name "
    "probably contains a raw '@', '/', '?' or '#': percent-encode them "
    "(e.g. '@' as %40, '/' as %2F, '?' as %3F, '#' as %23)"
)


def _is_secret_key(key: str) -> bool:
    return _SECRET_KEY.search(key) is not None


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def _show(text: str, limit: int = 60) -> str:
    """Quote a piece of the DSN for an error message, shortened if it is long."""
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)


def _check_port(port: int, host: str) -> int:
    if isinstance(port, bool) or not isinstance(port, int):
        raise ConfigurationError(f"port {port!r} of host {_show(host)} is not an integer")
    if not 1 <= port <= 65535:
        raise ConfigurationError(f"port {port} of host {_show(host)} is out of range 1..65535")
    return port


def _parse_port(text: str, host: str) -> int:
    if not _DIGITS.fullmatch(text):
        raise ConfigurationError(f"port {_show(text)} of host {_show(host)} is not a number")
    if len(text.lstrip("0")) > 5:
        shown = text if len(text) <= 20 else text[:17] + "..."
        raise ConfigurationError(f"port {shown} of host {_show(host)} is out of range 1..65535")
    return _check_port(int(text), host)


@dataclass(frozen=True, order=True)
class HostPort:
    """One server address. ``str()`` gives ``host:port``, with IPv6 hosts in brackets."""

    host: str
    port: int

    def __post_init__(self) -> None:
        if not isinstance(self.host, str):
            raise ConfigurationError(f"host must be a str, not {type(self.host).__name__}")
        if not self.host:
            raise ConfigurationError("empty host")
        _check_port(self.port, self.host)
        if ":" in self.host and not _is_ipv6(self.host):
            raise ConfigurationError(
                f"host {_show(self.host)} contains ':' but is not an IPv6 address "
                "(give ports separately, not as host:port)"
            )

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def __str__(self) -> str:
        if self.is_ipv6:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"

    def _url_form(self) -> str:
        if self.is_ipv6:
            return f"[{quote(self.host, safe=':')}]:{self.port}"
        return f"{quote(self.host, safe='')}:{self.port}"


def _dedupe(hosts: Iterable[HostPort]) -> tuple[HostPort, ...]:
    return tuple(dict.fromkeys(hosts))


class Params(Mapping[str, str]):
    """The read-only, ordered ``str -> str`` mapping behind :attr:`ParsedDSN.params`.

    Hashable, picklable, equal to any mapping with the same items; its ``repr()`` hides the
    values of secret-looking keys (``dict(params)`` shows everything).
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping[str, str] | Iterable[tuple[str, str]] = ()) -> None:
        self._items: dict[str, str] = dict(items)

    def __getitem__(self, key: str) -> str:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._items == dict(other.items())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(frozenset(self._items.items()))

    def __reduce__(self) -> tuple[type[Params], tuple[dict[str, str]]]:
        return (type(self), (self._items,))

    def __repr__(self) -> str:
        shown = {k: REDACTED if _is_secret_key(k) else v for k, v in self._items.items()}
        return f"{type(self).__name__}({shown!r})"


@dataclass(frozen=True, repr=False)
class ParsedDSN:
    """A parsed (possibly multi-host) DSN.

    ``scheme`` is one of ``postgresql``, ``postgres``, ``mysql``, ``mariadb`` (lower-cased);
    ``hosts`` is never empty and holds no duplicates; an empty ``user`` or ``database`` is
    stored as ``None``; ``params`` is a read-only, ordered ``str -> str`` mapping that never
    holds host, port, user, password, dbname or database.
    """

    scheme: str
    hosts: tuple[HostPort, ...]
    user: str | None = None
    password: str | None = None
    database: str | None = None
    params: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.scheme, str) or self.scheme.lower() not in _FAMILY_OF_SCHEME:
            raise ConfigurationError(
                f"unsupported scheme {_show(str(self.scheme))} (expected one of {_SCHEMES_TEXT})"
            )
        object.__setattr__(self, "scheme", self.scheme.lower())
        hosts = tuple(self.hosts)
        if not hosts:
            raise ConfigurationError("a DSN needs at least one host")
        for hp in hosts:
            if not isinstance(hp, HostPort):
                raise ConfigurationError(f"hosts must be HostPort objects, not {type(hp).__name__}")
        object.__setattr__(self, "hosts", _dedupe(hosts))
        for name in ("user", "password", "database"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, str):
                raise ConfigurationError(
                    f"{name} must be a str or None, not {type(value).__name__}"
                )
        if self.user == "":
            object.__setattr__(self, "user", None)
        if self.database == "":
            object.__setattr__(self, "database", None)
        params = dict(self.params)
        for key, value in params.items():
            if not isinstance(key, str) or not key:
                raise ConfigurationError("parameter names must be non-empty strings")
            if not isinstance(value, str):
                raise ConfigurationError(f"parameter {_show(key)} must be a str")
            if key in _STRUCTURAL_KEYS:
                raise ConfigurationError(
                    f"{key!r} is a field of the DSN and cannot be given as a parameter"
                )
        object.__setattr__(self, "params", Params(params))

    @classmethod
    def parse(cls, dsn: str, *, default_port: int | None = None) -> ParsedDSN:
        """Same as `parse_dsn`."""
        return parse_dsn(dsn, default_port=default_port)

    @property
    def family(self) -> Family:
        """``"postgresql"`` or ``"mysql"`` (for ``mariadb://``)."""
        return _FAMILY_OF_SCHEME[self.scheme]

    @property
    def default_port(self) -> int:
        return DEFAULT_PORTS[self.family]

    @property
    def is_multi_host(self) -> bool:
        return len(self.hosts) > 1

    def host_kwargs(self, host: HostPort | None = None) -> dict[str, str | int]:
        """Connection keywords for one host, in a driver-neutral form.

        Keys: ``host`` (str, IPv6 without brackets), ``port`` (int), then ``user``,
        ``password``, ``database`` when set, then every entry of ``params`` (str values).
        psycopg wants ``dbname`` where this says ``database``; PyMySQL takes these names
        as they are but wants typed values for some params: the factories map them.
        ``host`` may be omitted for a single-host DSN.
        """
        if host is None:
            if len(self.hosts) != 1:
                raise ValueError(
                    f"this DSN has {len(self.hosts)} hosts; pass the one to connect to"
                )
            host = self.hosts[0]
        kwargs: dict[str, str | int] = {"host": host.host, "port": host.port}
        if self.user is not None:
            kwargs["user"] = self.user
        if self.password is not None:
            kwargs["password"] = self.password
        if self.database is not None:
            kwargs["database"] = self.database
        kwargs.update(self.params)
        return kwargs

    def split(self) -> tuple[ParsedDSN, ...]:
        """One single-host DSN per host, in order (hasql's ``split_dsn``)."""
        return tuple(replace(self, hosts=(hp,)) for hp in self.hosts)

    def to_url(self, *, redact: bool = True) -> str:
        """The DSN as a URL, every host with an explicit port.

        With ``redact=True`` (the default) the password and secret parameters read ``***``;
        with ``redact=False`` the result parses back to an equal `ParsedDSN`.
        """
        parts = [self.scheme, "://"]
        if self.user is not None or self.password is not None:
            if self.user is not None:
                parts.append(quote(self.user, safe=""))
            if self.password is not None:
                parts.append(":")
                parts.append(REDACTED if redact else quote(self.password, safe=""))
            parts.append("@")
        parts.append(",".join(hp._url_form() for hp in self.hosts))
        parts.append("/")
        if self.database is not None:
            parts.append(quote(self.database, safe=""))
        if self.params:
            items = []
            for key, value in self.params.items():
                shown = REDACTED if redact and _is_secret_key(key) else quote(value, safe="")
                items.append(f"{quote(key, safe='')}={shown}")
            parts.append("?")
            parts.append("&".join(items))
        return "".join(parts)

    def __str__(self) -> str:
        return self.to_url(redact=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_url(redact=True)!r})"


# --------------------------------------------------------------------------- parsing


def parse_dsn(dsn: str, *, default_port: int | None = None) -> ParsedDSN:
    """Parse a URL or libpq key/value DSN into a `ParsedDSN`.

    ``default_port`` overrides the scheme's default (5432 for PostgreSQL, 3306 for MySQL)
    for hosts given without a port. Raises `ConfigurationError`
    naming the malformed part; the message never contains the password.
    """
    if not isinstance(dsn, str):
        raise TypeError(f"a DSN must be a str, not {type(dsn).__name__}")
    if default_port is not None and (
        isinstance(default_port, bool)
        or not isinstance(default_port, int)
        or not 1 <= default_port <= 65535
    ):
        raise ConfigurationError(f"default_port {default_port!r} is not a port in 1..65535")
    secrets: list[str] = []
    try:
        return _parse(dsn.strip(), default_port, secrets)
    except ConfigurationError as exc:
        message = str(exc)
    # Raised outside the handler: no __context__ that might hold a piece of the DSN.
    raise ConfigurationError(_scrub(message, secrets))


_QUOTED = re.compile(r"'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\"", re.DOTALL)


def _scrub(message: str, secrets: Iterable[str]) -> str:
    """Blank out secrets inside the quoted (repr'd) pieces of an error message.

    Every piece of the DSN an error quotes goes through repr(), so a secret can only show up
    inside quotes, raw or repr-escaped; the fixed wording around them stays readable even for
    a one-letter password.
    """
    forms: set[str] = set()
    for secret in secrets:
        if secret:
            forms.add(secret)
            forms.add(repr(secret)[1:-1])
            forms.add(repr(secret + "'\"")[1:-3])  # the escaping repr() uses inside "..."
    ordered = sorted((f for f in forms if f), key=len, reverse=True)
    if not ordered:
        return message

    def blank(match: re.Match[str]) -> str:
        piece = match.group(0)
        for form in ordered:
            piece = piece.replace(form, REDACTED)
        return piece

    return _QUOTED.sub(blank, message)


def _parse(text: str, default_port: int | None, secrets: list[str]) -> ParsedDSN:
    if not text:
        raise ConfigurationError("empty DSN")
    match = _URL_START.match(text)
    if match is not None:
        return _parse_url(match.group(1), text[match.end() :], default_port, secrets)
    if "=" in text:
        return _parse_keyword_value(text, default_port, secrets)
    raise ConfigurationError(
        "malformed DSN: neither a URL (scheme://...) nor a libpq 'key=value' string"
    )


def _decode(text: str, what: str) -> str:
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        pass
    # Raised outside the handler, so the decode error (which holds the bytes) is not chained.
    raise ConfigurationError(f"{what} is not valid percent-encoded UTF-8")


def _family_default(scheme: str, default_port: int | None) -> int:
    if default_port is not None:
        return default_port
    return DEFAULT_PORTS[_FAMILY_OF_SCHEME[scheme]]


def _parse_url(
    scheme_text: str, rest: str, default_port: int | None, secrets: list[str]
) -> ParsedDSN:
    scheme = scheme_text.lower()
    if scheme not in _FAMILY_OF_SCHEME:
        raise ConfigurationError(
            f"unsupported scheme {_show(scheme_text)} (expected one of {_SCHEMES_TEXT})"
        )
    end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
    authority, tail = rest[:end], rest[end:]
    userinfo, at, hostlist = authority.rpartition("@")
    if at:
        secrets.append(userinfo.partition(":")[2])
    try:
        return _parse_url_parts(
            scheme, userinfo if at else None, hostlist, tail, default_port, secrets
        )
    except ConfigurationError as exc:
        message = str(exc)
    if "@" in tail:
        # The '@' after the host list probably ends an unencoded password, and what we took
        # for hosts, ports or parameters is a piece of it: quote nothing.
        message = _MISPLACED_CREDENTIALS
    raise ConfigurationError(message)


def _parse_url_parts(
    scheme: str,
    userinfo: str | None,
    hostlist: str,
    tail: str,
    default_port: int | None,
    secrets: list[str],
) -> ParsedDSN:
    before_fragment, hash_sign, _ = tail.partition("#")
    path, question, query = before_fragment.partition("?")
    if "@" in path:
        raise ConfigurationError(_MISPLACED_CREDENTIALS)
    if hash_sign:
        raise ConfigurationError(
            "a '#' fragment is not allowed in a DSN (percent-encode '#' as %23)"
        )

    user: str | None = None
    password: str | None = None
    if userinfo is not None:
        raw_user, colon, raw_password = userinfo.partition(":")
        user = _decode(raw_user, "the user name")
        if colon:
            password = _decode(raw_password, "the password")
            secrets.append(password)

    database = _decode(path[1:], "the database name") if path else None
    params = _parse_query(query, secrets) if question else {}
    default = _family_default(scheme, default_port)

    lifted_user = params.pop("user", None)
    if lifted_user is not None:
        if user is not None:
            raise ConfigurationError(
                "user name given both in the URL and as query parameter 'user'"
            )
        user = lifted_user
    lifted_password = params.pop("password", None)
    if lifted_password is not None:
        if password is not None:
            raise ConfigurationError(
                "password given both in the URL and as query parameter 'password'"
            )
        password = lifted_password
    lifted_database = _pop_database(params)
    if lifted_database is not None:
        if database:
            raise ConfigurationError("database given both in the URL path and as a query parameter")
        database = lifted_database

    query_host = params.pop("host", None)
    query_port = params.pop("port", None)
    if query_host is not None or query_port is not None:
        if hostlist:
            which = "host" if query_host is not None else "port"
            raise ConfigurationError(
                f"hosts given both in the URL and as query parameter {which!r}"
            )
        hosts = _hosts_from_lists(query_host, query_port, default)
    else:
        hosts = _hosts_from_url(hostlist, default)
    return ParsedDSN(scheme, hosts, user, password, database, params)


def _parse_query(query: str, secrets: list[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in query.split("&"):
        if not item:
            continue
        raw_key, equals, raw_value = item.partition("=")
        key = _decode(raw_key, "a query parameter name")
        if not key:
            raise ConfigurationError("query parameter with an empty name")
        if _is_secret_key(key):
            secrets.append(raw_value)
        if not equals:
            raise ConfigurationError(f"query parameter {_show(key)} has no '=value'")
        value = _decode(raw_value, f"the value of query parameter {_show(key)}")
        if _is_secret_key(key):
            secrets.append(value)
        if key in params:
            raise ConfigurationError(f"query parameter {_show(key)} is given twice")
        params[key] = value
    return params


def _pop_database(params: dict[str, str]) -> str | None:
    dbname = params.pop("dbname", None)
    database = params.pop("database", None)
    if dbname is not None and database is not None:
        raise ConfigurationError("both 'dbname' and 'database' are given")
    return dbname if dbname is not None else database


def _split_url_host(entry: str) -> tuple[str, str | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (decoded host, port text)."""
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0:
            raise ConfigurationError(f"unbalanced brackets in host {_show(entry)}")
        inside, after = entry[1:close], entry[close + 1 :]
        if "[" in inside:
            raise ConfigurationError(f"unbalanced brackets in host {_show(entry)}")
        if after and not after.startswith(":"):
            raise ConfigurationError(f"unexpected {_show(after)} after ']' in host {_show(entry)}")
        host = _decode(inside, f"host {_show(entry)}")
        if not host:
            raise ConfigurationError(f"empty IPv6 address in host {_show(entry)}")
        if not _is_ipv6(host):
            raise ConfigurationError(f"{_show(host)} in brackets is not an IPv6 address")
        return host, (after[1:] if after else None)
    if "[" in entry or "]" in entry:
        raise ConfigurationError(f"unbalanced brackets in host {_show(entry)}")
    if entry.count(":") > 1:
        raise ConfigurationError(
            f"host {_show(entry)} has more than one ':'; "
            "write IPv6 addresses in brackets, e.g. [::1]:5432"
        )
    raw_host, colon, port_text = entry.partition(":")
    host = _decode(raw_host, f"host {_show(entry)}")
    return host, (port_text if colon else None)


def _hosts_from_url(hostlist: str, default: int) -> tuple[HostPort, ...]:
    entries = hostlist.split(",")
    split: list[tuple[str, int | None]] = []
    for index, entry in enumerate(entries):
        host, port_text = _split_url_host(entry.strip())
        if not host:
            if len(entries) > 1:
                raise ConfigurationError(
                    f"empty host in host list (entry {index + 1} of {len(entries)})"
                )
            host = "localhost"
        port = None if port_text is None else _parse_port(port_text, host)
        split.append((host, port))
    # hasql's rule: when the last host carries the only port given, it applies to all hosts.
    given = sum(1 for _, port in split if port is not None)
    last_port = split[-1][1]
    if len(split) > 1 and given == 1 and last_port is not None:
        return _dedupe(HostPort(host, last_port) for host, _ in split)
    return _dedupe(HostPort(host, default if port is None else port) for host, port in split)


def _hosts_from_lists(
    host_value: str | None, port_value: str | None, default: int
) -> tuple[HostPort, ...]:
    """libpq's ``host=a,b port=1,2`` rule: one port for all hosts, or one per host."""
    hosts: list[str] = []
    items = (host_value or "").split(",")
    if len(items) == 1 and not items[0].strip():
        hosts = ["localhost"]
    else:
        for index, item in enumerate(items):
            host = item.strip()
            if host.startswith("[") or host.endswith("]"):
                if not (host.startswith("[") and host.endswith("]")):
                    raise ConfigurationError(f"unbalanced brackets in host {_show(host)}")
                host = host[1:-1]
            if not host:
                raise ConfigurationError(
                    f"empty host in host list (entry {index + 1} of {len(items)})"
                )
            hosts.append(host)
    port_items = [p.strip() for p in (port_value or "").split(",")]
    if len(port_items) == 1:
        port_items = port_items * len(hosts)
    elif len(port_items) != len(hosts):
        raise ConfigurationError(
            f"{len(port_items)} ports given for {len(hosts)} hosts; "
            "give one port for all hosts or one per host"
        )
    return _dedupe(
        HostPort(host, _parse_port(port, host) if port else default)
        for host, port in zip(hosts, port_items, strict=True)
    )


def _split_keyword_value(text: str, secrets: list[str]) -> dict[str, str]:
    """libpq's ``key = value`` tokenizer; values may be 'quoted', backslash escapes a char."""
    pairs: dict[str, str] = {}
    previous: str | None = None
    i, n = 0, len(text)
    while True:
        while i < n and text[i] in _SPACE:
            i += 1
        if i >= n:
            return pairs
        start = i
        while i < n and text[i] != "=" and text[i] not in _SPACE:
            i += 1
        key = text[start:i]
        while i < n and text[i] in _SPACE:
            i += 1
        if i >= n or text[i] != "=":
            if previous is not None and _is_secret_key(previous):
                raise ConfigurationError(
                    f"missing '=' after the word following the value of {previous!r}; "
                    f"quote values that contain spaces, e.g. {previous}='...'"
                )
            raise ConfigurationError(f"missing '=' after {_show(key)}")
        if not key:
            raise ConfigurationError("missing key before '='")
        i += 1
        while i < n and text[i] in _SPACE:
            i += 1
        chars: list[str] = []
        if i < n and text[i] == "'":
            i += 1
            while True:
                if i >= n:
                    if _is_secret_key(key):
                        secrets.append("".join(chars))
                    raise ConfigurationError(f"unterminated quoted value of {_show(key)}")
                char = text[i]
                i += 1
                if char == "'":
                    break
                if char == "\\" and i < n:
                    char = text[i]
                    i += 1
                chars.append(char)
        else:
            while i < n and text[i] not in _SPACE:
                char = text[i]
                i += 1
                if char == "\\":
                    if i >= n:
                        break  # libpq drops a trailing backslash
                    char = text[i]
                    i += 1
                chars.append(char)
        value = "".join(chars)
        if _is_secret_key(key):
            secrets.append(value)
        if key in pairs:
            raise ConfigurationError(f"key {_show(key)} is given twice")
        pairs[key] = value
        previous = key


def _parse_keyword_value(text: str, default_port: int | None, secrets: list[str]) -> ParsedDSN:
    params = _split_keyword_value(text, secrets)
    scheme = "postgresql"
    user = params.pop("user", None)
    password = params.pop("password", None)
    database = _pop_database(params)
    hosts = _hosts_from_lists(
        params.pop("host", None), params.pop("port", None), _family_default(scheme, default_port)
    )
    return ParsedDSN(scheme, hosts, user, password, database, params)


# --------------------------------------------------------------------------- redaction

_URL_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*:/*)(.*)@", re.DOTALL)
_SECRET_QUERY_VALUE = re.compile(r"([?&][^=&#]*(?:pass|secret|token)[^=&#]*=)[^&#]*", re.I)
_SECRET_KEYWORD_VALUE = re.compile(
    r"(\S*(?:pass|secret|token)[^\s=]*\s*=\s*)('(?:[^'\\]|\\.)*'?|(?:[^\s\\]|\\.)*\\?)",
    re.IGNORECASE | re.DOTALL,
)


def redact_dsn(dsn: str) -> str:
    """A form of ``dsn`` that is safe to log.

    A valid DSN gives ``parse_dsn(dsn).to_url(redact=True)``. A malformed one is redacted
    textually and generously (it may hide more than the secrets): everything between
    ``scheme:`` and the last ``@`` (user name included), and the values of query parameters
    and keys whose name contains ``pass``, ``secret`` or ``token``.
    """
    try:
        return parse_dsn(dsn).to_url(redact=True)
    except ConfigurationError:
        pass
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", dsn.strip(), count=1)
    text = _SECRET_QUERY_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
    return _SECRET_KEYWORD_VALUE.sub(lambda m: m.group(1) + REDACTED, text)
