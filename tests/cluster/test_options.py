"""RoutingOptions: the routing keywords of Postgres and MySQL, checked once."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qdbpool.cluster.options import RoutingOptions
from qdbpool.errors import ConfigurationError

NUMBERS = st.one_of(st.integers(), st.just(10**400), st.just(-(10**400)), st.floats(allow_nan=True))


@pytest.mark.parametrize("name", ["refresh_delay", "refresh_timeout", "acquire_timeout"])
@given(value=NUMBERS)
def test_a_wait_option_is_a_float_a_thread_can_wait_or_a_configuration_error(
    name: str, value: float
) -> None:
    try:
        options = RoutingOptions(**{name: value})  # type: ignore[arg-type]
    except ConfigurationError as exc:
        assert name in str(exc)
    else:
        seconds = getattr(options, name)
        assert isinstance(seconds, float)
        assert 0 < seconds <= threading.TIMEOUT_MAX


@given(value=NUMBERS)
def test_max_replica_lag_is_seconds_from_zero_or_a_configuration_error(value: float) -> None:
    try:
        options = RoutingOptions(max_replica_lag=value)
    except ConfigurationError as exc:
        assert "max_replica_lag" in str(exc)
    else:
        assert options.max_replica_lag is not None
        assert 0 <= options.max_replica_lag <= threading.TIMEOUT_MAX


def test_take_from_removes_the_routing_keywords_and_leaves_the_drivers() -> None:
    kwargs = {"refresh_delay": 2, "balancer": "round_robin", "sslmode": "require"}
    options = RoutingOptions.take_from(kwargs)
    assert (options.refresh_delay, options.balancer) == (2.0, "round_robin")
    assert kwargs == {"sslmode": "require"}
