"""quasardb: `quasardb.Cluster` connections, as the original `quasardb.pool` makes them."""

from __future__ import annotations

from typing import Any

from qdbpool.errors import ArgumentTypeError
from qdbpool.protocol import ConnectionFactory

# Parameters of quasardb.Cluster that carry secrets: never shown in a repr or a log line.
_SECRET_PARAMS = frozenset({"user_private_key", "cluster_public_key", "user_security_file"})


def _import_quasardb() -> Any:
    try:
        import quasardb
    except ImportError as exc:  # pragma: no cover - depends on the installed extras
        raise ImportError(
            "the QuasarDB factory needs the quasardb client: pip install 'qdbpool[quasardb]'"
        ) from exc
    return quasardb


class QuasarDB(ConnectionFactory):
    """Calls `quasardb.Cluster(uri, **cluster_kwargs)` for each new connection.

    The keyword arguments are forwarded exactly as given (user_name, user_private_key,
    cluster_public_key, timeout, ...), so anything quasardb.Cluster accepts works here.
    """

    def __init__(self, uri: str | None = None, **cluster_kwargs: Any) -> None:
        if uri is not None:
            if not isinstance(uri, str):
                raise ArgumentTypeError(f"QuasarDB uri must be a str, not {type(uri).__name__}")
            cluster_kwargs["uri"] = uri
        self._cluster_kwargs = cluster_kwargs
        self._qdb = _import_quasardb()

    @property
    def uri(self) -> str | None:
        uri = self._cluster_kwargs.get("uri")
        return uri if isinstance(uri, str) else None

    def connect(self, *, read_only: bool = False) -> Any:
        return self._qdb.Cluster(**self._cluster_kwargs)

    def is_usable(self, conn: Any) -> bool:
        return bool(conn.is_open())

    def ping(self, conn: Any) -> None:
        # The cheapest round trip the client offers that needs no particular entry or table.
        conn.node_status(self._first_endpoint())

    def _first_endpoint(self) -> str:
        uri = self.uri or ""
        return uri.removeprefix("qdb://").split(",")[0]

    def is_disconnect(self, conn: Any, exc: BaseException) -> bool:
        qdb = self._qdb
        if isinstance(exc, (qdb.InvalidHandleError, qdb.UninitializedError, ConnectionError)):
            return True
        # quasardb reports network failures with its base Error and a message such as
        # "at qdb_connect: Connection refused." / "Connection reset by peer".
        if type(exc) is qdb.Error and "connection" in str(exc).lower():
            return True
        try:
            return not conn.is_open()
        except Exception:
            return True

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{key}={'***' if key in _SECRET_PARAMS else repr(value)}"
            for key, value in self._cluster_kwargs.items()
        )
        return f"QuasarDB({shown})"
