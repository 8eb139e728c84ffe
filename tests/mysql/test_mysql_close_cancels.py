"""pool.close(timeout) that interrupts queries in flight also stops them on the server
(KILL QUERY over a connection of its own), instead of leaving them to run (issue 11 §4)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import qdbpool
from qdbpool.testing.mariadb import MariaDBServer

SLEEP = "SELECT SLEEP(30) /* qdbpool close-cancel test */"
SESSIONS = 16


def _sleeping(server: MariaDBServer) -> int:
    rows = server.sql(
        "SELECT count(*) FROM information_schema.PROCESSLIST WHERE INFO = %s", (SLEEP,)
    )
    return int(rows[0][0])


def test_close_with_a_timeout_stops_the_queries_in_flight_on_the_server(
    server: MariaDBServer,
    make_factory: Callable[..., Any],
    closing: Callable[[Any], Any],
    poll: Callable[..., Any],
) -> None:
    pool = closing(qdbpool.SingletonPool(make_factory(server)))

    def sleep() -> None:
        try:
            with pool.connect() as conn, conn.cursor() as cur:
                cur.execute(SLEEP)
        except Exception:  # interrupted: how it ends is the holder's business
            pass

    threads = [threading.Thread(target=sleep, name=f"sleeper-{i}") for i in range(SESSIONS)]
    for thread in threads:
        thread.start()
    try:
        poll(lambda: _sleeping(server) == SESSIONS, timeout=20, what="16 sessions in SLEEP")
        pool.close(timeout=0.5)
        poll(lambda: _sleeping(server) == 0, timeout=2.0, what="no SLEEP left on the server")
    finally:
        for thread in threads:
            thread.join(timeout=35)
    assert not any(t.is_alive() for t in threads)
    assert pool.stats().open == 0
