"""Route trades: who gets a released connection when callers of both routes wait in line.

Both BoundedPools (threaded and asyncio) share one `size` between their two routes (primary
and replica). A released connection goes to the longest waiter of its own route. But
callers of one route could then keep every connection busy while the other route's
callers wait until their timeout (writers after a failover, say, with none of theirs
left), so a waiter of the other route ahead of that one gets the connection's capacity
instead (the connection is closed, the waiter opens its own) when either:

- no connection of its route is open, being opened or promised to it; or
- it is `impatient` (it waited TRADE_AFTER and found no idle connection of the other route
  to trade), its route got no trade in the last TRADE_AFTER, and the released connection
  is not the last of its own route (the two routes would trade it back and forth).

Trading more often would open a connection per checkout under mixed load. One trade at a
time, capacity moves to where callers wait. Each pool keeps its own line and locking;
this module is the rule they both follow.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any, Generic, TypeVar

# How long a caller waits for a connection of its own route to come back before it trades
# an idle one of the other route for it: long enough that steady mixed load (each route's
# releases a few ms apart) never churns, short enough that an unused one is not hoarded.
TRADE_AFTER = 0.05

Route = TypeVar("Route", bound=Hashable)


class LineWaiter(Generic[Route]):
    """A caller in a pool's waiting line, as the trade rule sees it."""

    __slots__ = ("impatient", "promised", "route")

    def __init__(self, route: Route) -> None:
        self.route = route
        # Waited TRADE_AFTER with no idle connection of the other route to trade; then
        # promised the capacity of a connection being closed for it.
        self.impatient = False
        self.promised = False

    def gone(self) -> bool:
        """Whether it left the line without being removed yet (asyncio: cancelled)."""
        return False


Waiter = TypeVar("Waiter", bound="LineWaiter[Any]")


class RouteTrades(Generic[Route]):
    """The trade rule, with the time of each route's last trade."""

    def __init__(self, first: Route, second: Route) -> None:
        self._other = {first: second, second: first}
        self._last_trade = {first: -TRADE_AFTER, second: -TRADE_AFTER}  # time.monotonic()

    def other(self, route: Route) -> Route:
        return self._other[route]

    def first_served(
        self, line: deque[Waiter], route: Route, route_count: Callable[[Route], int]
    ) -> Waiter | None:
        """The waiter a released connection of `route` goes to (same route) or whose
        capacity it becomes (the other route); None: nobody. `route_count(r)`: connections
        of route r open or being opened. Waiters that are `gone` are skipped."""
        other = self._other[route]
        other_exists: bool | None = None  # looked up at the first waiter that asks
        for waiter in line:
            if waiter.gone():
                continue
            if waiter.route == route:
                return waiter
            if waiter.promised:
                other_exists = True  # its connection is on the way
                continue
            if other_exists is None:
                other_exists = route_count(other) > 0
            if not other_exists or (
                waiter.impatient
                and time.monotonic() >= self._last_trade[other] + TRADE_AFTER
                and route_count(route) > 1
            ):
                return waiter
        return None

    def trade(self, line: deque[Waiter], waiter: Waiter) -> None:
        """`waiter` gets the capacity of a released connection about to be closed."""
        self.promise(line, waiter)
        self._last_trade[waiter.route] = time.monotonic()

    @staticmethod
    def promise(line: deque[Waiter], waiter: Waiter) -> None:
        """`waiter` gets the capacity of a connection about to be closed: first in line, so
        that the pool grants that capacity to it once the connection is closed. (Alone, for
        an idle connection traded when the waiter's patience ran out: that one does not
        count as its route's last trade.)"""
        line.remove(waiter)
        line.appendleft(waiter)
        waiter.promised = True
