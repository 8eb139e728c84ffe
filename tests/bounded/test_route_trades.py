"""The route-trade rule both BoundedPools follow, on plain waiters (and the `clock` fixture).

The pools' own tests (test_bounded_routing.py, tests/aio/test_pool.py) show what the rule
does for callers; these pin the rule itself, case by case and for any line.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from qdbpool.route_trades import TRADE_AFTER, LineWaiter, RouteTrades


class Gone(LineWaiter[str]):
    """A waiter that left the line (asyncio: cancelled) but is still in it."""

    __slots__ = ()

    def gone(self) -> bool:
        return True


def counts(rw: int, ro: int) -> dict[str, int]:
    return {"rw": rw, "ro": ro}


def test_a_released_connection_goes_to_the_first_waiter_of_its_route() -> None:
    trades: RouteTrades[str] = RouteTrades("rw", "ro")
    first, second = LineWaiter("rw"), LineWaiter("rw")
    line = deque([first, second])
    assert trades.first_served(line, "rw", counts(2, 1).__getitem__) is first
    assert trades.first_served(line, "ro", counts(2, 1).__getitem__) is None


def test_a_waiter_whose_route_has_no_connection_gets_the_capacity() -> None:
    trades: RouteTrades[str] = RouteTrades("rw", "ro")
    writer, reader = LineWaiter("rw"), LineWaiter("ro")
    line = deque([writer, reader])
    # No writer connection exists: the writer ahead is served by the reader's release.
    assert trades.first_served(line, "ro", counts(0, 4).__getitem__) is writer
    # Once one is on its way to it (promised), the reader behind gets the next release.
    trades.trade(line, writer)
    assert writer.promised and line[0] is writer
    assert trades.first_served(line, "ro", counts(0, 3).__getitem__) is reader


def test_an_impatient_waiter_gets_one_trade_per_route_every_trade_after(clock: Any) -> None:
    trades: RouteTrades[str] = RouteTrades("rw", "ro")
    writers = [LineWaiter("rw") for _ in range(2)]
    for writer in writers:
        writer.impatient = True
    line: deque[LineWaiter[str]] = deque(writers)
    count = counts(1, 3).__getitem__  # the writers' route has a connection, busy
    assert trades.first_served(line, "ro", count) is writers[0]
    trades.trade(line, writers[0])
    # The second impatient writer must wait out TRADE_AFTER since the last trade.
    assert trades.first_served(line, "ro", count) is None
    clock.advance(TRADE_AFTER)
    assert trades.first_served(line, "ro", count) is writers[1]


def test_an_impatient_waiter_never_takes_the_last_connection_of_the_other_route() -> None:
    trades: RouteTrades[str] = RouteTrades("rw", "ro")
    writer = LineWaiter("rw")
    writer.impatient = True
    line = deque([writer])
    assert trades.first_served(line, "ro", counts(3, 1).__getitem__) is None
    assert trades.first_served(line, "ro", counts(3, 2).__getitem__) is writer


def test_waiters_that_left_are_skipped() -> None:
    trades: RouteTrades[str] = RouteTrades("rw", "ro")
    left, staying = Gone("rw"), LineWaiter("rw")
    line = deque([left, staying])
    assert trades.first_served(line, "rw", counts(1, 0).__getitem__) is staying


waiter_specs = st.lists(
    st.tuples(st.sampled_from(["rw", "ro"]), st.booleans(), st.booleans(), st.booleans()),
    max_size=8,
)


@given(
    specs=waiter_specs,
    route=st.sampled_from(["rw", "ro"]),
    rw=st.integers(0, 4),
    ro=st.integers(0, 4),
)
def test_whoever_is_served_is_in_line_and_no_later_than_the_first_of_the_route(
    specs: list[tuple[str, bool, bool, bool]], route: str, rw: int, ro: int
) -> None:
    trades: RouteTrades[str] = RouteTrades("rw", "ro")
    line: deque[LineWaiter[str]] = deque()
    for waiter_route, impatient, promised, gone in specs:
        waiter = Gone(waiter_route) if gone else LineWaiter(waiter_route)
        waiter.impatient, waiter.promised = impatient, promised
        line.append(waiter)
    served = trades.first_served(line, route, counts(rw, ro).__getitem__)
    present = [w for w in line if not w.gone()]
    own = next((w for w in present if w.route == route), None)
    if served is None:
        assert own is None
        return
    assert served in present
    assert served.route == route or not served.promised  # promised: its capacity is on the way
    if own is not None:  # served no later than the first waiter of the released route
        assert present.index(served) <= present.index(own)
    if served.route != route:
        # Capacity moves only to a route with none, or to an impatient waiter, never
        # taking the released route's last connection.
        other_count = rw if served.route == "rw" else ro
        own_count = ro if served.route == "rw" else rw
        assert other_count == 0 or (served.impatient and own_count > 1)
