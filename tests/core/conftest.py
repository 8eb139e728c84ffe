"""Fixtures of the core suite (the shared ones are in tests/conftest.py).

Helpers are handed out as fixtures: the suite runs with --import-mode=importlib, so test
modules cannot import this file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

import qdbpool


@pytest.fixture
def global_pool(recorder: Any) -> qdbpool.SingletonPool:
    """The global pool over `recorder`."""
    pool = qdbpool.initialize(recorder)
    assert isinstance(pool, qdbpool.SingletonPool)
    return pool


@pytest.fixture
def make_global_pool(
    make_pool: Callable[..., Any], pool_cls: type[qdbpool.Pool]
) -> Callable[..., qdbpool.Pool]:
    """make_global_pool(get_conn, **kwargs): a pool of each class in turn (`pool_cls`),
    made the global pool, for `@with_conn` behaviour that both classes share."""

    def make(*args: Any, **kwargs: Any) -> qdbpool.Pool:
        pool: qdbpool.Pool = qdbpool.initialize(make_pool(*args, pool_cls=pool_cls, **kwargs))
        return pool

    return make
