"""HostDriver: the little a topology and a routed factory need to know about one database."""

from __future__ import annotations

import abc
import contextlib
import enum
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from qdbpool.dsn import HostPort, ParsedDSN, Redactor, is_secret_key
from qdbpool.protocol import CLEAN, LOST

Connection = Any

# How long close() waits for the server to end a session it said goodbye to: a backend
# normally goes within milliseconds; a stalled host is not waited for longer than this.
SESSION_END_WAIT = 0.25

logger = logging.getLogger("qdbpool")


class Role(enum.Enum):
    """A host's role, as the last check (or error) found it."""

    UNKNOWN = "unknown"  # not checked yet, or suspect after an error until checked again
    PRIMARY = "primary"  # accepts writes
    REPLICA = "replica"  # read-only: a standby, or a primary made read-only
    DOWN = "down"  # the last check failed or timed out


@dataclass(frozen=True)
class Observation:
    """What one successful check of a host found."""

    role: Role
    replica_lag: float | None = None


def shutdown_socket(fd: int) -> None:
    """shutdown(2) both ways on socket `fd`, owned by someone else (through a duplicate, so
    that the owner's descriptor stays open until the owner closes it)."""
    with contextlib.suppress(OSError):
        dup = socket.socket(fileno=os.dup(fd))
        try:
            dup.shutdown(socket.SHUT_RDWR)
        finally:
            dup.close()


class ErrorJudge(Protocol):
    """How a routed factory tells the errors of its application connections apart: a
    HostDriver for its own connections, or (qdbpool.aio's asyncpg factory) the judge of
    another client library whose connections the same topology routes."""

    def is_connection_lost(self, conn: Connection, exc: BaseException) -> bool: ...

    def is_read_only_violation(self, exc: BaseException) -> bool: ...

    def is_configuration_error(self, exc: BaseException) -> bool: ...

    def describe_error(self, exc: BaseException) -> str: ...


class HostDriver(abc.ABC):
    """Opens connections to one host of a cluster and tells what a host is doing.

    Every method that does I/O must be bounded by the timeout it is given (or, for app
    connections, by the connect timeout the factory was configured with).
    """

    @abc.abstractmethod
    def open(self, address: HostPort, *, read_only: bool) -> Connection:
        """A new application connection to `address`."""

    @abc.abstractmethod
    def open_probe(self, address: HostPort, timeout: float) -> Connection:
        """A connection for health checks (autocommit, short timeouts)."""

    @abc.abstractmethod
    def observe(self, probe: Connection) -> Observation:
        """Role (and replica lag) of the host behind `probe`; raises if it does not answer."""

    @abc.abstractmethod
    def is_open(self, conn: Connection) -> bool:
        """No-I/O: the driver has not seen this connection closed or broken."""

    @abc.abstractmethod
    def is_connection_lost(self, conn: Connection, exc: BaseException) -> bool:
        """Whether `exc` means the connection (or the server) is gone."""

    @abc.abstractmethod
    def is_read_only_violation(self, exc: BaseException) -> bool:
        """Whether `exc` says a write reached a read-only server (the host was demoted)."""

    @abc.abstractmethod
    def socket_of(self, conn: Connection) -> int | None:
        """The connection's socket file descriptor, if it has one open."""

    def sever(self, conn: Connection) -> None:
        """Shut down the connection's socket under whoever is blocked on it.

        A stalled host never answers and the kernel keeps ACKing, so a thread waiting for
        a result would wait forever; after shutdown(2) its read returns and the driver
        raises. The file descriptor itself stays owned (and later closed) by the driver.
        """
        fd = self.socket_of(conn)
        if fd is not None:
            shutdown_socket(fd)

    def close(self, conn: Connection) -> None:
        """Close `conn`, then wait (briefly) until the server has ended the session.

        The server closes its end of the socket only once the session is gone, so a
        duplicate of our descriptor sees end-of-file then. Waiting for it means that a
        replacement opened next never puts one session more on the server than the pool
        allows (a backend otherwise lingers for a moment after the goodbye)."""
        watcher = None
        fd = self.socket_of(conn)
        if fd is not None:
            with contextlib.suppress(OSError):
                watcher = socket.socket(fileno=os.dup(fd))
        with contextlib.suppress(Exception):
            conn.close()
        if watcher is None:
            return
        try:
            watcher.settimeout(SESSION_END_WAIT)
            for _ in range(64):  # whatever the server still sends, then end-of-file
                if not watcher.recv(4096):
                    break
        except OSError:  # reset, or no end within the wait (a stalled host): go on
            pass
        finally:
            watcher.close()

    def cancel_sender(self, conn: Connection, address: HostPort) -> Callable[[], None] | None:
        """What asks the server at `address` to stop the statement `conn` is running, over
        a separate connection (None: the database has no such request).

        Called from a thread that does not own `conn`, while its owner may be blocked in
        a query: it must do no I/O on `conn` and read only what stays valid once `conn`
        is closed. The callable returned does the I/O, later, in a thread of its own, and
        may be called more than once (qdbpool.aio sends a request again that the server
        may have ignored)."""
        return None

    def cancel(self, conn: Connection, address: HostPort) -> None:
        """Send the request of `cancel_sender` without waiting for it (a stalled host must
        not hold up whoever interrupts: a pool's close(), say)."""
        send = self.cancel_sender(conn, address)
        if send is not None:
            threading.Thread(
                target=self._send_cancel, args=(send, address), name="qdbpool-cancel", daemon=True
            ).start()

    def _send_cancel(self, send: Callable[[], None], address: HostPort) -> None:
        try:
            send()
        except Exception as exc:  # the statement may have ended, or the host be gone
            logger.debug("cancel request to %s failed: %s", address, self.describe_error(exc))

    @abc.abstractmethod
    def ping(self, conn: Connection) -> None:
        """A round trip that opens no transaction; raises if it fails."""

    #: See ConnectionFactory.after_use_hint: falsy means clean, for certain.
    after_use_hint: Callable[[Connection], object] | None = None

    def state_after_use(self, conn: Connection) -> int:
        """CLEAN / NEEDS_RESET / LOST (see qdbpool.protocol), without I/O."""
        return CLEAN if self.is_open(conn) else LOST

    @abc.abstractmethod
    def reset(self, conn: Connection) -> None:
        """Roll back what the last user left open."""

    @abc.abstractmethod
    def is_configuration_error(self, exc: BaseException) -> bool:
        """Whether opening a connection failed because of what we asked (a wrong password,
        an unknown database or option) rather than the host: retrying cannot help."""

    #: Passwords this driver connects with: never shown in what describe_error returns.
    secrets: tuple[str, ...] = ()

    @abc.abstractmethod
    def describe_error(self, exc: BaseException) -> str:
        """A one-line description of a check or connect error, free of credentials."""

    def _one_line(self, exc: BaseException, text: str) -> str:
        """`Type: first line of text`, with every secret blanked out."""
        text = text.strip().splitlines()[0] if text.strip() else ""
        text = Redactor(self.secrets)(text)
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def secrets_of(dsn: ParsedDSN, connect_kwargs: dict[str, Any]) -> tuple[str, ...]:
    """The credentials a driver connects with: the DSN's, and every keyword named like one
    (`password`, `sslpassword`, ...)."""
    given = (v for k, v in connect_kwargs.items() if is_secret_key(k) and isinstance(v, str))
    return (*dsn.secrets, *(v for v in given if v))
