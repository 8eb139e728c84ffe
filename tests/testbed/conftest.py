"""Fixtures for the PostgreSQL test bed (qdbpool.testing.postgres) and the fault proxy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qdbpool.testing.availability import require_postgres
from qdbpool.testing.postgres import PostgresCluster

# Deliberately awkward, so that URL quoting is exercised wherever the password goes.
APP_PASSWORD = "s3cret/@:% pw"


@pytest.fixture(name="require_postgres")
def require_postgres_fixture() -> Callable[[], Path]:
    """The helper itself, for tests of its skip/fail policy."""
    return require_postgres


@pytest.fixture
def cluster() -> Iterator[PostgresCluster]:
    """A fresh primary + 2 standbys, role `app` with a password; the test may break it."""
    require_postgres()
    with PostgresCluster(standbys=2, user="app", password=APP_PASSWORD) as c:
        yield c


@pytest.fixture(scope="module")
def single_node() -> Iterator[PostgresCluster]:
    """One primary, no standbys, shared by a module's tests that leave it running."""
    require_postgres()
    with PostgresCluster(standbys=0) as c:
        yield c
