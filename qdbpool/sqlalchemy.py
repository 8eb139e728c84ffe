"""SQLAlchemy engines whose connections come from a qdbpool factory (`pip install
'qdbpool[sqlalchemy]'`).

    from qdbpool.sqlalchemy import create_engine
    factory = Postgres("postgresql://app:pw@db1,db2,db3/app")
    engine = create_engine(factory)                       # the primary: reads and writes
    replicas = create_engine(factory, read_only=True)     # replicas, by the same balancer

SQLAlchemy keeps its own pool (so `pool_size`, `max_overflow`, `pool_pre_ping`, ... keep
their meaning, and `Session`, `scoped_session` and the ORM work as documented); qdbpool
decides which host each new connection goes to and tells SQLAlchemy when one is unfit.
This goes through SQLAlchemy's public extension points only, on each engine:

- `creator`: a new DBAPI connection is `factory.connect(read_only=...)`, routed like any
  qdbpool connection (the primary, or a replica by the balancer; waiting out a failover
  within the factory's `acquire_timeout`);
- the pool's `checkout` event: a connection whose host changed role (or was found down)
  since it was opened raises `DisconnectionError`, which makes SQLAlchemy discard it and
  take another — the same no-I/O check a qdbpool pool makes at every checkout;
- the engine's `handle_error` event: the factory's `is_disconnect` sees every error, so that
  a write refused as read-only (a demoted primary) or a lost connection makes the host
  suspect at once, and SQLAlchemy treats the connection as disconnected;
- the pool's `close` event: the factory forgets a connection SQLAlchemy closes.

Why not a qdbpool pool under SQLAlchemy's: two pools stacked would each hold connections
the other thinks idle, and SQLAlchemy's reset, pre-ping and recycling would run twice.
"""

from __future__ import annotations

import sys
from typing import Any

try:
    import sqlalchemy
    from sqlalchemy import event
    from sqlalchemy.engine import Engine, ExceptionContext
    from sqlalchemy.exc import DisconnectionError
    from sqlalchemy.pool import ConnectionPoolEntry, PoolProxiedConnection
except ImportError as exc:  # pragma: no cover - tested in a subprocess without it
    raise ImportError(
        "qdbpool.sqlalchemy needs SQLAlchemy 2: pip install 'qdbpool[sqlalchemy]'"
    ) from exc

from qdbpool.errors import ArgumentTypeError
from qdbpool.protocol import ConnectionFactory

__all__ = ["create_engine"]

# Where a connection's generation (see ConnectionFactory.generation_of) is kept: the
# record's `info`, which SQLAlchemy keeps for as long as the DBAPI connection lives.
_GENERATION = "qdbpool.generation"


# The dialect of each factory of ours, by the module that defines it.
_DIALECTS = (
    ("qdbpool.factories.sqlite", "SQLite", "sqlite://"),
    ("qdbpool.factories.postgres", "Postgres", "postgresql+{driver}://"),  # psycopg or psycopg2
    ("qdbpool.factories.mysql", "MySQL", "mysql+pymysql://"),
)


def _url_for(factory: ConnectionFactory) -> str:
    """The dialect SQLAlchemy needs for the connections `factory` makes (the host and
    credentials in a URL are unused: the factory connects)."""
    for module_name, class_name, url in _DIALECTS:
        # A factory of a kind exists only once its module is imported: looking in
        # sys.modules imports no driver that the application does not use.
        module = sys.modules.get(module_name)
        if module is not None and isinstance(factory, getattr(module, class_name)):
            return url.format(driver=getattr(factory, "driver", ""))
    raise ArgumentTypeError(
        f"create_engine() cannot tell the SQLAlchemy dialect of a {type(factory).__name__}; "
        f"pass url=, e.g. url='postgresql+psycopg://'"
    )


def create_engine(
    factory: ConnectionFactory,
    *,
    read_only: bool = False,
    url: str | None = None,
    **engine_kwargs: Any,
) -> Engine:
    """A SQLAlchemy `Engine` whose new connections come from `factory`.

    Args:
        factory: A qdbpool factory: `Postgres`, `MySQL`, `SQLite`, or your own
            `ConnectionFactory`. Several engines may share one (a primary engine and a
            replica engine share its cluster monitor). Closing the factory is yours, after
            `engine.dispose()`.
        read_only: Connect to replicas (routing factories), as `connect(read_only=True)`;
            a bool.
        url: The SQLAlchemy URL naming the dialect, when it cannot be told from the
            factory (e.g. `"postgresql+psycopg://"`); hosts and credentials in it are
            ignored.
        **engine_kwargs: Passed to `sqlalchemy.create_engine` (`pool_size`, `echo`, ...);
            not `creator`, which is this function's job.

    Raises:
        ArgumentTypeError: `factory` is not a `ConnectionFactory`, its dialect is unknown
            and no `url` was given, `read_only` is not a bool, or `creator` was passed.
    """
    if not isinstance(factory, ConnectionFactory):
        raise ArgumentTypeError(
            f"create_engine() needs a qdbpool factory (qdbpool.factories), "
            f"not {type(factory).__name__}"
        )
    if "creator" in engine_kwargs:
        raise ArgumentTypeError("create_engine() makes the creator itself: do not pass one")
    if read_only is not False and read_only is not True:
        raise ArgumentTypeError(f"create_engine(read_only=...) takes a bool, not {read_only!r}")

    def creator() -> Any:
        return factory.connect(read_only=read_only)

    engine = sqlalchemy.create_engine(url or _url_for(factory), creator=creator, **engine_kwargs)

    @event.listens_for(engine, "connect")
    def remember_generation(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_GENERATION] = factory.generation_of(dbapi_connection)

    @event.listens_for(engine, "checkout")
    def refuse_stale(
        dbapi_connection: Any, record: ConnectionPoolEntry, proxy: PoolProxiedConnection
    ) -> None:
        watched, value = record.info[_GENERATION]
        if watched.value != value or not factory.is_usable(dbapi_connection):
            raise DisconnectionError("qdbpool: the connection's host changed role or is down")

    @event.listens_for(engine, "handle_error")
    def tell_the_factory(context: ExceptionContext) -> None:
        connection = context.connection
        # An invalidated or closed Connection has no DBAPI connection: asking for it would
        # reconnect (or raise) inside the error handler, replacing the error and keeping
        # the application's own handle_error listeners from it.
        if connection is None or context.is_pre_ping or connection.invalidated or connection.closed:
            return
        dbapi_connection = connection.connection.dbapi_connection
        if dbapi_connection is None:
            return
        if factory.is_disconnect(dbapi_connection, context.original_exception):
            context.is_disconnect = True

    @event.listens_for(engine, "close")
    def forget(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        factory.close_connection(dbapi_connection)

    return engine
