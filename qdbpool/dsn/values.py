"""The values a DSN parses into: `HostPort`, `Params` and `ParsedDSN`.

They validate what they are given, so a `ParsedDSN` built by hand is as sound as one from
`parse_dsn`, and they never show a password: ``repr()``, ``str()`` and ``to_url()`` redact it.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Literal
from urllib.parse import quote

from qdbpool.dsn.redactor import REDACTED, is_secret_key
from qdbpool.errors import ConfigurationError

__all__ = [
    "DEFAULT_PORTS",
    "Family",
    "HostPort",
    "Params",
    "ParsedDSN",
    "check_port",
    "family_of",
    "is_ipv6",
    "quoted",
]

Family = Literal["postgresql", "mysql"]

DEFAULT_PORTS: Mapping[Family, int] = MappingProxyType({"postgresql": 5432, "mysql": 3306})

_FAMILY_OF_SCHEME: Mapping[str, Family] = MappingProxyType(
    {"postgresql": "postgresql", "postgres": "postgresql", "mysql": "mysql", "mariadb": "mysql"}
)
_SCHEMES_TEXT = ", ".join(_FAMILY_OF_SCHEME)

# Keys that are fields of ParsedDSN, never free-form parameters.
_STRUCTURAL_KEYS = frozenset({"host", "port", "user", "password", "dbname", "database"})


def family_of(scheme: object) -> Family:
    """The family of a scheme, any case (``mariadb`` -> ``mysql``); ConfigurationError if
    qdbpool does not know it."""
    family = _FAMILY_OF_SCHEME.get(scheme.lower()) if isinstance(scheme, str) else None
    if family is None:
        raise ConfigurationError(
            f"unsupported scheme {quoted(str(scheme))} (expected one of {_SCHEMES_TEXT})"
        )
    return family


def is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def quoted(text: str, limit: int = 60) -> str:
    """Quote a piece of a DSN for an error message (repr, shortened if it is long).

    Every piece of user input in a message goes through here, so `Redactor.inside_quotes`
    finds any secret in it.
    """
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return repr(text)


def check_port(port: object, host: str) -> int:
    """`port` if it is an int in 1..65535, else ConfigurationError (of any size: no
    OverflowError)."""
    if isinstance(port, bool) or not isinstance(port, int):
        raise ConfigurationError(f"port {port!r} of host {quoted(host)} is not an integer")
    if not 1 <= port <= 65535:
        # str() of an int of over 4300 digits raises ValueError: show a huge one by its size.
        shown = str(port) if abs(port) < 10**20 else "with over 20 digits"
        raise ConfigurationError(f"port {shown} of host {quoted(host)} is out of range 1..65535")
    return port


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
        check_port(self.port, self.host)
        if ":" in self.host and not is_ipv6(self.host):
            raise ConfigurationError(
                f"host {quoted(self.host)} contains ':' but is not an IPv6 address "
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
        shown = {k: REDACTED if is_secret_key(k) else v for k, v in self._items.items()}
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
        family_of(self.scheme)
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
                raise ConfigurationError(f"parameter {quoted(key)} must be a str")
            if key in _STRUCTURAL_KEYS:
                raise ConfigurationError(
                    f"{key!r} is a field of the DSN and cannot be given as a parameter"
                )
        object.__setattr__(self, "params", Params(params))

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

    @property
    def secrets(self) -> tuple[str, ...]:
        """The password and the values of secret-looking parameters (e.g. ``sslpassword``),
        empty ones left out: what a `Redactor` for this DSN's errors must hide."""
        found = [self.password] if self.password else []
        found += [value for key, value in self.params.items() if value and is_secret_key(key)]
        return tuple(found)

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
                raise ConfigurationError(
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
                shown = REDACTED if redact and is_secret_key(key) else quote(value, safe="")
                items.append(f"{quote(key, safe='')}={shown}")
            parts.append("?")
            parts.append("&".join(items))
        return "".join(parts)

    def __str__(self) -> str:
        return self.to_url(redact=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_url(redact=True)!r})"
