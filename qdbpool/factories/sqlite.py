"""SQLite: the embedded, zero-setup factory used by the demo and by code that needs no server."""

from __future__ import annotations

import operator
import os
import sqlite3
from typing import Any

from qdbpool.errors import ArgumentTypeError
from qdbpool.protocol import ConnectionFactory, sqlite_is_usable


class SQLite(ConnectionFactory):
    """Opens `sqlite3.connect(path, **connect_kwargs)` per connection.

    `check_same_thread` defaults to False: a connection is used by one thread at a time, but
    the pool may close it from another one (pool close, the end of its thread).
    """

    def __init__(self, path: str | os.PathLike[str] = ":memory:", **connect_kwargs: Any) -> None:
        if not isinstance(path, (str, os.PathLike)):
            raise ArgumentTypeError(
                f"SQLite path must be a str or os.PathLike, not {type(path).__name__}"
            )
        self.path = os.fspath(path)
        connect_kwargs.setdefault("check_same_thread", False)
        self._connect_kwargs = connect_kwargs

    def connect(self, *, read_only: bool = False) -> sqlite3.Connection:
        conn: sqlite3.Connection = sqlite3.connect(self.path, **self._connect_kwargs)
        return conn

    # A plain function, not a method: the pool calls it at every checkout.
    is_usable = staticmethod(sqlite_is_usable)

    def ping(self, conn: sqlite3.Connection) -> None:
        conn.execute("SELECT 1").fetchall()

    def needs_reset(self, conn: sqlite3.Connection) -> bool:
        return conn.in_transaction

    def reset(self, conn: sqlite3.Connection) -> None:
        conn.rollback()

    # One attribute read answers both questions: true means a transaction is open
    # (NEEDS_RESET), and it raises once the handle is closed (LOST). A C-level getter, as
    # it runs after every call (see ConnectionFactory.state_after_use).
    state_after_use = operator.attrgetter("in_transaction")  # type: ignore[assignment]

    def is_disconnect(self, conn: sqlite3.Connection, exc: BaseException) -> bool:
        # An embedded database has no link to lose: only a closed handle is unusable.
        return not sqlite_is_usable(conn)

    def __repr__(self) -> str:
        return f"SQLite({self.path!r})"
