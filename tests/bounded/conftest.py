"""Fixtures of the BoundedPool suite (the shared ones are in tests/conftest.py): pools that
are BoundedPools unless told otherwise. BoundedPool over a real MariaDB server is tested in
tests/mysql.

Helpers are handed out as fixtures: the suite runs with --import-mode=importlib, so test
modules cannot import this file.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import pytest

import qdbpool


@pytest.fixture
def make_pool(make_pool: Callable[..., Any]) -> Callable[..., qdbpool.BoundedPool]:
    """make_pool(*args, **kwargs): a BoundedPool, closed when the test ends."""
    return functools.partial(make_pool, pool_cls=qdbpool.BoundedPool)
