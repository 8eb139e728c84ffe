"""The asyncio factories over a routed cluster (psycopg's AsyncConnection, asyncpg): one
base class and one connect loop for every client library, over the threaded factory's
topology and router.

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

from qdbpool.aio.protocol import ConnectionFactory
from qdbpool.cluster.hosts import HostStatus
from qdbpool.drivers.base import ErrorJudge
from qdbpool.dsn import HostPort
from qdbpool.events import Listener
from qdbpool.factories.routed import Choice, RoutedFactory
from qdbpool.protocol import Generation

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


class RoutedAioFactory(ConnectionFactory):
    """The base of `qdbpool.aio.factories.Postgres` and `AsyncPG`: what they share with
    the threaded factory that keeps their cluster's state (`self._routing`); a subclass
    opens its library's connection to an address (`_open`) and may tell its errors apart
    (`_judge`) and shut its sockets down (`_sever`) where the host driver cannot."""

    routes_reads = True
    _routing: RoutedFactory
    _judge: ErrorJudge | None = None
    _sever: Callable[[Any], None] | None = None

    async def _open(self, address: HostPort, *, read_only: bool) -> Any:
        raise NotImplementedError

    async def connect(self, *, read_only: bool = False) -> Any:
        async def open_connection(address: HostPort) -> Any:
            return await self._open(address, read_only=read_only)

        return await connect_routed(
            self._routing, read_only, open_connection, self._judge, self._sever
        )

    def generation_of(self, conn: Any) -> tuple[Generation, int]:
        return self._routing.generation_of(conn)

    def is_disconnect(self, conn: Any, exc: BaseException) -> bool:
        return self._routing.is_disconnect(conn, exc, self._judge)

    async def ready(
        self,
        masters_count: int | None = None,
        replicas_count: int | None = None,
        timeout: float = 10.0,
    ) -> None:
        """As the threaded factory's `ready()`, awaited (the wait runs in a thread)."""
        await asyncio.to_thread(self._routing.ready, masters_count, replicas_count, timeout)

    def hosts(self) -> list[HostStatus]:
        """Each host's last known state (role, response time, lag, error)."""
        return self._routing.hosts()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        """Hosts changing role and failovers, as the monitor finds them (qdbpool.events);
        `listener` is called on the monitor's thread. Returns the unsubscribe function."""
        return self._routing.subscribe(listener)

    async def close(self) -> None:
        """Stop the monitor (in a thread: it joins the monitor's)."""
        await asyncio.to_thread(self._routing.close)
