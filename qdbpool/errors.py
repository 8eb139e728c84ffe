"""The exception hierarchy: every error qdbpool raises derives from QdbPoolError."""

from __future__ import annotations


class QdbPoolError(Exception):
    """Base of every error qdbpool raises itself (driver errors pass through unchanged)."""


class PoolNotInitializedError(QdbPoolError, RuntimeError):
    """`instance()` (or `@with_conn`) was used before `initialize()`."""


class PoolClosedError(QdbPoolError, RuntimeError):
    """The pool was closed; it hands out no more connections."""


class PoolTimeoutError(QdbPoolError, TimeoutError):
    """No connection became available within the pool's timeout."""


class NoHostAvailableError(QdbPoolError, ConnectionError):
    """No host of a multi-host cluster can serve the requested role right now."""


class ConfigurationError(QdbPoolError, ValueError):
    """An argument or DSN is malformed; the message names the bad part, never a password."""


class ArgumentTypeError(ConfigurationError, TypeError):
    """An argument is of the wrong kind (a callable expected, a str, ...): a
    ConfigurationError that is also the TypeError Python code expects for it."""


class ConnectionReleasedError(QdbPoolError, RuntimeError):
    """A connection from `connect()` was used after it was released (by `with`, `.close()`
    or `pool.release()`): check out a new one instead."""
