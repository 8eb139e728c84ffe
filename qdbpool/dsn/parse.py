"""`parse_dsn`: a URL or libpq key/value string into a `ParsedDSN`.

Forms: URLs (``postgresql://``, ``postgres://``, ``mysql://``, ``mariadb://``), e.g.
``postgresql://user:p%40ss@db1:5433,db2,[::1]:5434/app?sslmode=require``, and libpq
key/value strings, ``host=a,b port=5432,5433 user=u password='p w' dbname=app`` (values may be
single-quoted; a backslash escapes the next character, as in libpq).

Host lists follow hasql, not libpq, where they differ: ``db1,db2,db3`` -> every host on the
default port (5432, or 3306 for MySQL); ``db1:1234,db2:5678,db3`` -> per-host ports, the
default for the rest; ``db1,db2,db3:6432`` -> a port on the *last* host, when it is the only
port given, applies to every host (libpq: to db3 alone). Any other mix is per-host. In
key/value strings ``port`` holds one port for all hosts or one per host ('' = the default).

Decisions worth knowing:

* A repeated host:port is dropped (first wins, as hasql); a repeated parameter or key is an
  error (libpq keeps the last one).
* ``host``, ``port``, ``user``, ``password``, ``dbname``/``database`` given as query
  parameters are lifted into the fields (libpq allows ``?host=...``); giving one of them
  both ways is an error. They never appear in ``params``.
* A DSN without any host means ``localhost``. ``+`` in a query is a literal plus (libpq).
* ``'@'``, ``'/'``, ``'?'``, ``'#'`` in a user name, password or database name must be
  percent-encoded. A raw ``'@'`` anywhere after the host list (path, query or fragment) is
  refused as ambiguous, since it almost always means an unencoded password, and the error
  then quotes no part of the DSN.
* Key/value option names are letters, digits and ``_`` (libpq knows no others).
* Errors never quote the password, nor the values of parameters whose name contains
  ``pass``, ``secret`` or ``token`` (e.g. ``sslpassword``).
"""

from __future__ import annotations

import re
from urllib.parse import unquote

from qdbpool.dsn.redactor import Redactor, is_secret_key
from qdbpool.dsn.values import (
    DEFAULT_PORTS,
    HostPort,
    ParsedDSN,
    family_of,
    is_ipv6,
    quoted,
)
from qdbpool.errors import ArgumentTypeError, ConfigurationError

__all__ = ["parse_dsn"]

_URL_START = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*)://")
_DIGITS = re.compile(r"[0-9]+")
_KEY_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SPACE = frozenset(" \t\n\r\f\v")  # what libpq's isspace() skips in key/value strings

_MISPLACED_CREDENTIALS = (
    "malformed DSN: found a raw '@' after the host list, which makes the DSN ambiguous; "
    "a user name, password or database name probably contains a raw '@', '/', '?' or '#': "
    "percent-encode them (e.g. '@' as %40, '/' as %2F, '?' as %3F, '#' as %23)"
)


def parse_dsn(dsn: str, *, default_port: int | None = None) -> ParsedDSN:
    """Parse a URL or libpq key/value DSN into a `ParsedDSN`.

    ``default_port`` overrides the scheme's default (5432 for PostgreSQL, 3306 for MySQL)
    for hosts given without a port. Raises `ConfigurationError`
    naming the malformed part; the message never contains the password.
    """
    if not isinstance(dsn, str):
        raise ArgumentTypeError(f"a DSN must be a str, not {type(dsn).__name__}")
    if default_port is not None and (
        isinstance(default_port, bool)
        or not isinstance(default_port, int)
        or not 1 <= default_port <= 65535
    ):
        # Not shown: repr() of an int of over 4300 digits raises ValueError.
        raise ConfigurationError("default_port is not an int in 1..65535")
    secrets: list[str] = []
    try:
        return _parse(dsn.strip(), default_port, secrets)
    except ConfigurationError as exc:
        message = str(exc)
    # Raised outside the handler: no __context__ that might hold a piece of the DSN.
    raise ConfigurationError(Redactor(secrets).inside_quotes(message))


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
    return DEFAULT_PORTS[family_of(scheme)]


def _parse_url(
    scheme_text: str, rest: str, default_port: int | None, secrets: list[str]
) -> ParsedDSN:
    family_of(scheme_text)
    scheme = scheme_text.lower()
    end = next((i for i, c in enumerate(rest) if c in "/?#"), len(rest))
    authority, tail = rest[:end], rest[end:]
    if "@" in tail:
        # The last '@' probably ends an unencoded password holding '/', '?' or '#', and what
        # we would take for hosts, database or parameters is a piece of it: quote nothing.
        raise ConfigurationError(_MISPLACED_CREDENTIALS)
    userinfo, at, hostlist = authority.rpartition("@")
    if at:
        secrets.append(userinfo.partition(":")[2])
    return _parse_url_parts(scheme, userinfo if at else None, hostlist, tail, default_port, secrets)


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
        # Without a user name ('@'), 'user:password' reads as 'host:port' (or, with a ','
        # in the password, as several hosts): the first entry tells, unless it is an IPv6
        # address in brackets.
        first = hostlist.split(",", 1)[0].strip()
        may_hold_password = userinfo is None and ":" in first and not first.startswith("[")
        hosts = _hosts_from_url(hostlist, default, show=not may_hold_password)
    _check_hostaddr(hosts, params)
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
        if is_secret_key(key):
            secrets.append(raw_value)
        if not equals:
            raise ConfigurationError(f"query parameter {quoted(key)} has no '=value'")
        value = _decode(raw_value, f"the value of query parameter {quoted(key)}")
        if is_secret_key(key):
            secrets.append(value)
        if key in params:
            raise ConfigurationError(f"query parameter {quoted(key)} is given twice")
        params[key] = value
    return params


def _pop_database(params: dict[str, str]) -> str | None:
    dbname = params.pop("dbname", None)
    database = params.pop("database", None)
    if dbname is not None and database is not None:
        raise ConfigurationError("both 'dbname' and 'database' are given")
    return dbname if dbname is not None else database


def _parse_port(text: str, host: str, *, show: bool = True) -> int:
    """The port in `text`; `show=False` keeps `text` out of the error message."""
    if not _DIGITS.fullmatch(text):
        if not show:
            raise ConfigurationError(
                f"port of host {quoted(host)} is not a number "
                "(if the DSN starts with user:password, add '@' and the host after it)"
            )
        raise ConfigurationError(f"port {quoted(text)} of host {quoted(host)} is not a number")
    digits = text.lstrip("0")
    # len() before int(): it refuses strings of over 4300 digits. HostPort checks the
    # range too, but its message shows the number.
    if len(digits) > 5 or not 1 <= int(digits or "0") <= 65535:
        if not show:
            raise ConfigurationError(
                f"port of host {quoted(host)} is out of range 1..65535 "
                "(if the DSN starts with user:password, add '@' and the host after it)"
            )
        shown = (digits or "0") if len(digits) <= 20 else digits[:5] + "..."
        raise ConfigurationError(f"port {shown} of host {quoted(host)} is out of range 1..65535")
    return int(digits)


def _split_url_host(entry: str, name: str, show: bool) -> tuple[str, str | None]:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port`` -> (decoded host, port text).
    `name` is how error messages call the entry; they quote none of it unless `show`."""
    if entry.startswith("["):
        close = entry.find("]")
        if close < 0:
            raise ConfigurationError(f"unbalanced brackets in {name}")
        inside, after = entry[1:close], entry[close + 1 :]
        if "[" in inside:
            raise ConfigurationError(f"unbalanced brackets in {name}")
        if after and not after.startswith(":"):
            what = quoted(after) if show else "text"
            raise ConfigurationError(f"unexpected {what} after ']' in {name}")
        host = _decode(inside, name)
        if not host:
            raise ConfigurationError(f"empty IPv6 address in {name}")
        if not is_ipv6(host):
            what = quoted(host) if show else f"what {name} holds"
            raise ConfigurationError(f"{what} in brackets is not an IPv6 address")
        return host, (after[1:] if after else None)
    if "[" in entry or "]" in entry:
        raise ConfigurationError(f"unbalanced brackets in {name}")
    if entry.count(":") > 1:
        raise ConfigurationError(
            f"{name} has more than one ':'; write IPv6 addresses in brackets, e.g. [::1]:5432"
        )
    raw_host, colon, port_text = entry.partition(":")
    host = _decode(raw_host, name)
    return host, (port_text if colon else None)


def _hosts_from_url(hostlist: str, default: int, *, show: bool) -> tuple[HostPort, ...]:
    """The hosts of a URL. `show=False` when the host list may hold a password (a URL with
    no '@', where 'user:password' reads as 'host:port'): no error quotes any of it."""
    entries = hostlist.split(",")
    split: list[tuple[str, int | None]] = []
    for index, entry in enumerate(entries):
        entry = entry.strip()
        name = (
            f"host {quoted(entry)}"
            if show
            else f"host entry {index + 1} (not quoted: with no '@' in the URL it may be "
            "user:password; if so, add '@' and the host after it)"
        )
        host, port_text = _split_url_host(entry, name, show)
        if not host:
            if len(entries) > 1:
                raise ConfigurationError(
                    f"empty host in host list (entry {index + 1} of {len(entries)})"
                )
            host = "localhost"
        port = None if port_text is None else _parse_port(port_text, host, show=show)
        split.append((host, port))
    # hasql's rule: when the last host carries the only port given, it applies to all hosts.
    given = sum(1 for _, port in split if port is not None)
    last_port = split[-1][1]
    if len(split) > 1 and given == 1 and last_port is not None:
        return tuple(HostPort(host, last_port) for host, _ in split)
    return tuple(HostPort(host, default if port is None else port) for host, port in split)


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
                    raise ConfigurationError(f"unbalanced brackets in host {quoted(host)}")
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
    return tuple(
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
        if key and not _KEY_NAME.fullmatch(key):
            # Not quoted: such a "key" is often a URL without its scheme
            # ('//user:password@host/db?x=1') or a piece of an unquoted password.
            raise ConfigurationError(
                "malformed DSN: a key/value option name holds a character other than a "
                "letter, digit or '_' (quote values that contain spaces, e.g. key='...'; "
                "write URLs with their scheme, e.g. postgresql://)"
            )
        while i < n and text[i] in _SPACE:
            i += 1
        if i >= n or text[i] != "=":
            if previous is not None and is_secret_key(previous):
                raise ConfigurationError(
                    f"missing '=' after the word following the value of {previous!r}; "
                    f"quote values that contain spaces, e.g. {previous}='...'"
                )
            raise ConfigurationError(f"missing '=' after {quoted(key)}")
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
                    if is_secret_key(key):
                        secrets.append("".join(chars))
                    raise ConfigurationError(f"unterminated quoted value of {quoted(key)}")
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
        if is_secret_key(key):
            secrets.append(value)
        if key in pairs:
            raise ConfigurationError(f"key {quoted(key)} is given twice")
        pairs[key] = value
        previous = key


def _parse_keyword_value(text: str, default_port: int | None, secrets: list[str]) -> ParsedDSN:
    params = _split_keyword_value(text, secrets)
    scheme = "postgresql"
    user = params.pop("user", None)
    password = params.pop("password", None)
    database = _pop_database(params)
    _check_hostaddr((), params)  # before the hosts: their count may be the list's
    hosts = _hosts_from_lists(
        params.pop("host", None), params.pop("port", None), _family_default(scheme, default_port)
    )
    _check_hostaddr(hosts, params)
    return ParsedDSN(scheme, hosts, user, password, database, params)


def _check_hostaddr(hosts: tuple[HostPort, ...], params: dict[str, str]) -> None:
    """libpq's `hostaddr` holds one address per host; the factory connects to one host at a
    time, each with the DSN's parameters, so a list of them would reach every host whole
    (and libpq refuse it there: every host would look down)."""
    hostaddr = params.get("hostaddr")
    if hostaddr is not None and (len(hosts) > 1 or "," in hostaddr):
        raise ConfigurationError(
            "hostaddr with several hosts is not supported: give the addresses as the hosts "
            "(host=10.0.0.1,10.0.0.2)"
        )
