"""How an asyncio factory gets a connection from a routed cluster: one loop for every
client library (psycopg's AsyncConnection, asyncpg), over the threaded factory's topology.

A host of the role is chosen without blocking; when there is none, the caller awaits an
event that the monitor sets (thread-safely) at each change of the hosts' state, while the
monitor checks back to back: so nothing blocks the event loop, a waiter wakes when a
threaded caller would, and a cancellation ends its wait at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from qdbpool.drivers.base import ErrorJudge
from qdbpool.dsn import HostPort
from qdbpool.factories.routed import Choice, RoutedFactory

C = TypeVar("C")


async def connect_routed(
    routing: RoutedFactory,
    read_only: bool,
    open_connection: Callable[[HostPort], Awaitable[C]],
    judge: ErrorJudge | None = None,
    sever: Callable[[Any], None] | None = None,
) -> C:
    """A new connection, opened by `open_connection(address)` to a host that `routing`
    chooses for this role; waits up to its `acquire_timeout` for one (NoHostAvailableError
    then). `judge` tells the connection library's errors apart and `sever` shuts one's
    socket down under a stalled host (default: the routing's host driver)."""
    deadline = time.monotonic() + routing.acquire_timeout
    while True:
        choice = routing.try_choose(read_only)
        if choice is None:
            choice = await _wait_for_host(routing, read_only, deadline)
        host = choice[0]
        try:
            conn = await open_connection(host.address)
        except Exception as exc:
            routing.open_failed(host, exc, read_only, deadline, judge)
            continue  # pick again
        except BaseException:  # cancelled while connecting
            routing.forget_choice(host)
            raise
        routing.adopt(conn, choice, read_only, sever)
        return conn


async def _wait_for_host(routing: RoutedFactory, read_only: bool, deadline: float) -> Choice:
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def wake() -> None:  # on the monitor's thread
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits
            loop.call_soon_threadsafe(changed.set)

    with routing.waiting(wake):
        while True:
            changed.clear()  # before asking: a change from here on wakes us
            choice = routing.try_choose(read_only)
            if choice is not None:
                return choice
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise routing.no_host(read_only)
            # asyncio.TimeoutError: not yet the built-in one on Python 3.10.
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), remaining)
