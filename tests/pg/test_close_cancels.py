"""pool.close(timeout) that interrupts queries in flight also stops them on the server
(a PostgreSQL cancel request), instead of leaving them to run to their end (issue 11 §4)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

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
