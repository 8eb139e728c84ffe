"""Cost of one acquire + release, pool against pool, with connections that cost nothing.

Variants (each pool holds 4 connections; 1 and 4 threads, so nobody ever waits):
  qdbpool BoundedPool connect/release   conn = pool.connect(); pool.release(conn)
  qdbpool BoundedPool @with_conn        a decorated function with an empty body
  pymysql-pool get_connection/close     conn = pool.get_connection(); conn.close()
  psycopg_pool getconn/putconn          conn = pool.getconn(); pool.putconn(conn)
qdbpool and pymysql-pool get fake connections: a trivial Python object with close() (for
pymysql-pool, also the no-op cursor()/commit()/autocommit() its release calls), so only the
pools' own work is measured. psycopg_pool can only pool real psycopg connections: it gets
real ones to a local PostgreSQL (PostgresCluster(standbys=0)); acquiring and releasing an
idle one does no I/O. Printed: median ns per acquire+release and medians of per-round
ratios (the method: docs/benchmarks.md). Run: python -m bench.acquire [--quick]
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
from collections.abc import Iterator
from typing import Any

import qdbpool
from bench._harness import Variant, argument_parser, compare, pin_to_one_cpu, ratio

SIZE = 4


class FakeConnection:
    """A connection that costs nothing: what qdbpool pools here."""

    def close(self) -> None:
        pass


class _FakeCursor:
    def close(self) -> None:
        pass


class FakePyMySQLPoolConnection:
    """What pymysql-pool's release path touches on a connection, all no-ops."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._create_ts = int(time.time())
        self._returned = False

    def cursor(self) -> _FakeCursor:
        return _FakeCursor()

    def get_autocommit(self) -> bool:
        return True

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def autocommit(self, value: bool) -> None:
        pass

    def close(self) -> None:  # as pymysqlpool.Connection.close: back to its pool
        if self._pool is not None:
            self._pool._put_connection(self)


def make_pymysql_pool() -> Any:
    import pymysqlpool

    class FakeConnectionPool(pymysqlpool.ConnectionPool):  # type: ignore[misc]
        """pymysql-pool's own get/put logic over fake connections."""

        def _create_connection(self) -> FakePyMySQLPoolConnection:
            conn = FakePyMySQLPoolConnection(self)
            self._created_num.append(1)
            return conn

    logging.getLogger("pymysqlpool").setLevel(logging.ERROR)
    return FakeConnectionPool(size=SIZE, maxsize=SIZE, name="fake")


@contextlib.contextmanager
def psycopg_pool_or_none() -> Iterator[tuple[Any, str]]:
    """A psycopg_pool.ConnectionPool of SIZE real connections, or None (and why)."""
    try:
        import psycopg_pool

        from qdbpool.testing.postgres import PostgresCluster, ServerUnavailable
    except ImportError as exc:
        yield None, f"psycopg_pool skipped: {exc}"
        return
    try:
        cluster = PostgresCluster(standbys=0)
        cluster.start()
    except ServerUnavailable as exc:
        yield None, f"psycopg_pool skipped: no PostgreSQL server binaries ({exc})"
        return
    try:
        pool = psycopg_pool.ConnectionPool(
            cluster.primary.dsn(), min_size=SIZE, max_size=SIZE, open=True
        )
        try:
            pool.wait(timeout=30)
            note = (
                f"psycopg_pool pools real psycopg connections to a local PostgreSQL "
                f"(PostgresCluster(standbys=0), port {cluster.primary.port}); the others "
                f"pool fake ones"
            )
            yield pool, note
        finally:
            pool.close()
    finally:
        cluster.close()


def variants(bounded: qdbpool.BoundedPool, peer: Any, pg: Any) -> list[Variant]:
    def connect_release() -> None:
        pool = bounded
        pool.release(pool.connect())

    @qdbpool.with_conn
    def decorated(conn: Any) -> None:
        pass

    def peer_call() -> None:
        peer.get_connection().close()

    found = [
        Variant("qdbpool BoundedPool connect/release", lambda: connect_release),
        Variant("qdbpool BoundedPool @with_conn", lambda: decorated),
        Variant("pymysql-pool get_connection/close", lambda: peer_call),
    ]
    if pg is not None:

        def pg_call() -> None:
            pg.putconn(pg.getconn())

        found.append(Variant("psycopg_pool getconn/putconn", lambda: pg_call))
    return found


def render(title: str, vs: list[Variant], base: Variant) -> str:
    width = max(len(v.name) for v in vs)
    lines = [
        title,
        f"  {'variant':<{width}}  {'ns per acquire+release':>22}  {'x ' + base.name:>38}",
    ]
    for v in vs:
        lines.append(
            f"  {v.name:<{width}}  {statistics.median(v.samples):>22.0f}  {ratio(v, base):>38.2f}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argument_parser(__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer rounds (smoke run)")
    args = parser.parse_args()
    rounds, calls = (5, 4_000) if args.quick else (25, 20_000)
    started = time.monotonic()
    pinned = pin_to_one_cpu()  # before PostgreSQL starts: it inherits the mask
    bounded = qdbpool.BoundedPool(FakeConnection, size=SIZE, timeout=30)
    qdbpool.initialize(bounded)
    peer = make_pymysql_pool()
    with psycopg_pool_or_none() as (pg, note):
        print(
            f"bench.acquire: {pinned}; {rounds} rounds, shuffled, medians of per-round "
            f"ratios; pools of {SIZE} connections, nobody waits\n{note}"
        )
        summary = []
        for threads in (1, SIZE):
            vs = variants(bounded, peer, pg)
            compare(vs, threads=threads, rounds=rounds, calls=calls // threads)
            base = vs[0]
            print(render(f"\n{threads} thread(s), {calls // threads} calls each:", vs, base))
            for peer_variant in vs[2:]:
                summary.append(
                    f"{threads} thread(s), cost relative to {peer_variant.name}: "
                    f"qdbpool connect/release {ratio(vs[0], peer_variant):.2f}x, "
                    f"qdbpool @with_conn {ratio(vs[1], peer_variant):.2f}x"
                )
    qdbpool.close()
    print("\n" + "\n".join(summary))
    print(f"\ntotal {time.monotonic() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
