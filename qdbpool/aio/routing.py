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
import logging
import time
import weakref
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

logger = logging.getLogger("qdbpool.aio")

#: Sends one cancel request for a connection's server session (usable after it closed).
CancelSender = Callable[[], Awaitable[None]]

# PostgreSQL ignores a cancel request that reaches a session while it is still reading its
# next statement, which then runs to its end: under load, a driver's one cancel of a task's
# statement loses that race now and then. After an interrupted use, the cancel is sent
# again after each of these delays until the server is seen to answer the statement, or
# they run out (3.15 s in all).
CANCEL_AGAIN_AFTER = (0.05, 0.1, 0.2, 0.4, 0.8, 1.6)


async def cancel_again_until(
    answered: asyncio.Future[Any] | None, send_cancel: CancelSender
) -> None:
    """Send a cancel request after each delay of CANCEL_AGAIN_AFTER until `answered` is
    done; every time when the answer cannot be seen (`answered` None). Stops at the first
    request that cannot be delivered: the server is gone, or cannot be reached for it."""
    for delay in CANCEL_AGAIN_AFTER:
        if answered is None:
            await asyncio.sleep(delay)
        else:
            await asyncio.wait((answered,), timeout=delay)
            if answered.done():
                return
        try:
            await asyncio.wait_for(send_cancel(), CANCEL_AGAIN_AFTER[-1])
        except Exception as exc:
            logger.debug("sending a cancel request failed (%s): not again", type(exc).__name__)
            return


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

    def __init__(
        self,
        routing: RoutedFactory,
        judge: ErrorJudge | None = None,
        sever: Callable[[Any], None] | None = None,
    ) -> None:
        self._routing = routing
        self._judge = judge
        self._sever = sever
        # Each open connection's way to cancel its statement (see close_interrupted).
        self._cancel_senders: weakref.WeakKeyDictionary[Any, CancelSender] = (
            weakref.WeakKeyDictionary()
        )

    async def _open(self, address: HostPort, *, read_only: bool) -> Any:
        raise NotImplementedError

    def _cancel_sender(self, conn: Any) -> CancelSender | None:
        """How to cancel `conn`'s statement on the server, made as it opens (so that it
        still works once the connection is closed); None: no way. By default the host
        driver's (HostDriver.cancel_sender), in a thread: its sending blocks."""
        send = self._routing.cancel_sender(conn)
        if send is None:
            return None

        async def send_cancel() -> None:
            await asyncio.to_thread(send)

        return send_cancel

    async def connect(self, *, read_only: bool = False) -> Any:
        async def open_connection(address: HostPort) -> Any:
            return await self._open(address, read_only=read_only)

        conn = await connect_routed(
            self._routing, read_only, open_connection, self._judge, self._sever
        )
        send_cancel = self._cancel_sender(conn)
        if send_cancel is not None:
            self._cancel_senders[conn] = send_cancel
        return conn

    # Whether close_connection() waits for the server to answer a cancelled statement
    # (asyncpg's close does); if not, the cancel is sent again blindly, every time.
    _close_awaits_answer = False

    def _may_be_running(self, conn: Any) -> bool:
        """Whether an interrupted use may have left a statement running on the server."""
        return True

    async def close_interrupted(self, conn: Any) -> None:
        """Close `conn` while its statement, if one may still be running, is cancelled
        again (CANCEL_AGAIN_AFTER) until the server answers it: its caller's one cancel
        may have reached the server before the statement and been ignored."""
        send_cancel = self._cancel_senders.pop(conn, None)
        if send_cancel is None or not self._may_be_running(conn):
            await self.close_connection(conn)
            return
        closing = asyncio.ensure_future(self.close_connection(conn))
        try:
            answered = closing if self._close_awaits_answer else None
            await cancel_again_until(answered, send_cancel)
        finally:
            # Still waiting for an answer after every cancel: the close gives up (for
            # asyncpg, by closing the socket at once).
            if not closing.done():
                closing.cancel()
            await asyncio.wait((closing,))
        if not closing.cancelled():
            closing.result()  # its error, if it raised one

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
