"""pool.close(timeout) that interrupts queries in flight also stops them on the server
(a PostgreSQL cancel request), instead of leaving them to run to their end (issue 11 §4)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from qdbpool.testing.proxy import FaultProxy

SLEEP = "SELECT pg_sleep(30) /* qdbpool close-cancel test */"
SESSIONS = 16


def _sleeping(node: Any) -> int:
    rows = node.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = %s", [SLEEP]
    )
    return int(rows[0][0])


def test_close_with_a_timeout_stops_the_queries_in_flight_on_the_server(
    shared_cluster: Any, make_pool: Callable[..., Any], poll: Callable[..., Any]
) -> None:
    primary = shared_cluster.primary
    pool = make_pool(shared_cluster.multi_host_dsn())
    errors: list[BaseException] = []

    def sleep() -> None:
        try:
            with pool.connect() as conn:
                conn.execute(SLEEP)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=sleep, name=f"sleeper-{i}") for i in range(SESSIONS)]
    for thread in threads:
        thread.start()
    try:
        poll(lambda: _sleeping(primary) == SESSIONS, timeout=20, what="16 sessions in pg_sleep")
        pool.close(timeout=0.5)
        poll(lambda: _sleeping(primary) == 0, timeout=2.0, what="no pg_sleep left on the server")
    finally:
        for thread in threads:
            thread.join(timeout=35)
    assert not any(t.is_alive() for t in threads)
    assert len(errors) == SESSIONS  # each holder saw its query fail
    assert pool.stats().open == 0


def test_interrupting_a_query_on_a_stalled_host_freezes_nothing(
    shared_cluster: Any,
    make_pool: Callable[..., Any],
    url_for: Callable[..., str],
    poll: Callable[..., Any],
) -> None:
    # The cancel request goes to a host that no longer answers: it must wait in a thread of
    # its own, bounded, with the GIL free (libpq's old PQcancel held it until the host
    # answered, which a stalled one never does: the whole process froze).
    primary = shared_cluster.primary
    with FaultProxy(primary.host, primary.port) as proxy:
        pool = make_pool(url_for(shared_cluster, [proxy.address]))

        def sleep() -> None:
            try:
                with pool.connect() as conn:
                    conn.execute(SLEEP)
            except Exception:
                pass

        holder = threading.Thread(target=sleep, name="stalled-sleeper")
        holder.start()
        try:
            poll(lambda: _sleeping(primary) == 1, timeout=20, what="pg_sleep running")
            proxy.stall()
            # Counted by a thread of its own: close() may take its time in this one (it
            # waits for the monitor's checks of the stalled host), but no thread may freeze.
            ticks: list[float] = []

            def tick() -> None:
                while time.monotonic() - started < 1.5:
                    time.sleep(0.01)
                    ticks.append(time.monotonic())

            started = time.monotonic()
            ticker = threading.Thread(target=tick, name="ticker")
            ticker.start()
            pool.close(timeout=0.2)
            ticker.join(10)
            assert len(ticks) > 50, f"the process ran only {len(ticks)} ticks of 10 ms in 1.5 s"
        finally:
            proxy.pass_through()
            holder.join(timeout=35)
        assert not holder.is_alive()
