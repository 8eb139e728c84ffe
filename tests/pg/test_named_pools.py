"""Two databases at once: a PostgreSQL cluster (the default pool, routed) and SQLite (a
pool named "cache"), through `@with_conn` from many threads (issue 15 §2)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

import qdbpool as pool
from qdbpool.factories import SQLite

JOIN = 30.0


@pool.with_conn(pool="cache")
def cache_file(conn: sqlite3.Connection) -> str:
    return Path(conn.execute("PRAGMA database_list").fetchone()[2]).name


@pool.with_conn(read_only=True)
def replica(conn: Any) -> tuple[int, bool]:
    pid, in_recovery = conn.execute("SELECT pg_backend_pid(), pg_is_in_recovery()").fetchone()
    return pid, in_recovery


@pool.with_conn()
def primary_then_the_others(conn: Any) -> dict[str, Any]:
    outer = conn.execute("SELECT pg_backend_pid(), pg_is_in_recovery()").fetchone()
    cache = cache_file()  # another pool's function, inside this one's
    read = replica()  # this pool's other route
    inner = nested_primary()  # this pool, this route: the same session
    return {"outer": outer, "cache": cache, "replica": read, "inner": inner}


@pool.with_conn()
def nested_primary(conn: Any) -> tuple[int, bool]:
    pid, in_recovery = conn.execute("SELECT pg_backend_pid(), pg_is_in_recovery()").fetchone()
    return pid, in_recovery


@pytest.mark.parametrize("pool_cls", [pool.SingletonPool, pool.BoundedPool])
def test_a_postgres_cluster_and_sqlite_side_by_side_from_eight_threads(
    module_cluster: Any, tmp_path: Path, pool_cls: type[pool.Pool], pg: Any
) -> None:
    factory = pg.factory(module_cluster.multi_host_dsn())
    # A BoundedPool thread holding a primary connection waits for a replica one (see
    # docs/concepts/pools.md): room for both per thread, so that none waits for ever.
    kwargs = {"size": 8, "max_size": 16} if pool_cls is pool.BoundedPool else {}
    pool.initialize(pool_cls(factory, **kwargs))
    pool.initialize(SQLite(str(tmp_path / "cache.db")), name="cache")
    factory.ready(masters_count=1, replicas_count=2, timeout=10)

    results: list[dict[str, Any]] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(8, timeout=JOIN)

    def work() -> None:
        try:
            barrier.wait()
            for _ in range(20):
                results.append(primary_then_the_others())
        except BaseException as exc:  # reported below, with the rest
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(JOIN)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(results) == 160
    for r in results:
        assert r["outer"][1] is False and r["replica"][1] is True  # each route its role
        assert r["inner"] == r["outer"]  # nested in one pool and route: one session
        assert r["cache"] == "cache.db"  # the other pool's function got its own pool's
    assert pool.instance().stats().in_use == 0
    assert pool.instance("cache").stats().in_use == 0
    cache = pool.instance("cache").stats()  # a connection per thread, closed as it ended
    assert (cache.created, cache.closed, cache.open) == (8, 8, 0)
