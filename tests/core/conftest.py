"""Fixtures of the core suite (the shared ones are in tests/conftest.py).

Helpers are handed out as fixtures: the suite runs with --import-mode=importlib, so test
modules cannot import this file.
"""

from __future__ import annotations

import socket
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
def free_port() -> int:
    """A loopback TCP port with nothing listening on it (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port
