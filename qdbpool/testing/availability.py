"""Whether the server binaries a test needs are here: skip where they may be missing, fail
under CI (CI=true), where they must be, so that a CI machine without them cannot pass by
skipping everything. For pytest suites: the functions call pytest.skip / pytest.fail.

Each server's module is imported only by its own check: `require_postgres` needs no MySQL
driver, `require_mariadb` no psycopg."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NoReturn

from qdbpool.testing._process import ServerUnavailable


def under_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("true", "1")


def _unavailable(reason: str) -> NoReturn:
    import pytest

    if under_ci():
        pytest.fail(reason)
    pytest.skip(reason)


def require_postgres() -> Path:
    """The PostgreSQL server binaries' directory, or skip (locally) / fail (under CI)."""
    from qdbpool.testing import postgres

    try:
        return postgres.find_postgres_bindir()
    except ServerUnavailable as exc:
        _unavailable(f"PostgreSQL server binaries not installed: {exc}")


def require_mariadb() -> tuple[str, str]:
    """The paths of mariadbd and mariadb-install-db, or skip (locally) / fail (under CI)."""
    from qdbpool.testing import mariadb

    try:
        return mariadb.mariadb_binaries()
    except ServerUnavailable as exc:
        _unavailable(f"MariaDB server binaries not installed: {exc}")


def require_patroni() -> tuple[str, str, Path]:
    """The paths of patroni and etcd and PostgreSQL's bindir, or skip (locally) / fail (CI)."""
    from qdbpool.testing import patroni

    try:
        return patroni.find_patroni()
    except ServerUnavailable as exc:
        _unavailable(f"Patroni, etcd or PostgreSQL not installed: {exc}")


def require_haproxy() -> str:
    """The path of the haproxy binary, or skip (locally) / fail (under CI)."""
    from qdbpool.testing import haproxy

    try:
        return haproxy.find_haproxy()
    except ServerUnavailable as exc:
        _unavailable(f"HAProxy not installed: {exc}")


def require_pgbouncer() -> str:
    """The path of the pgbouncer binary, or skip (locally) / fail (under CI)."""
    from qdbpool.testing import pgbouncer

    try:
        return pgbouncer.find_pgbouncer()
    except ServerUnavailable as exc:
        _unavailable(f"PgBouncer not installed: {exc}")
