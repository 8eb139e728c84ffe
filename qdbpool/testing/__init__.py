"""Real local servers and network faults for tests, demos and benchmarks.

The names below are importable from here; each server's module is imported only when one of
its names is first used, so that a PostgreSQL-only user needs no MySQL driver (PyMySQL) and
a MariaDB-only user no psycopg.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qdbpool.testing._process import ServerUnavailable as ServerUnavailable
    from qdbpool.testing.availability import require_haproxy as require_haproxy
    from qdbpool.testing.availability import require_mariadb as require_mariadb
    from qdbpool.testing.availability import require_patroni as require_patroni
    from qdbpool.testing.availability import require_pgbouncer as require_pgbouncer
    from qdbpool.testing.availability import require_postgres as require_postgres
    from qdbpool.testing.availability import under_ci as under_ci
    from qdbpool.testing.haproxy import HAProxy as HAProxy
    from qdbpool.testing.mariadb import MariaDBCluster as MariaDBCluster
    from qdbpool.testing.mariadb import MariaDBReplicaPair as MariaDBReplicaPair
    from qdbpool.testing.mariadb import MariaDBServer as MariaDBServer
    from qdbpool.testing.patroni import PatroniCluster as PatroniCluster
    from qdbpool.testing.patroni import PatroniMember as PatroniMember
    from qdbpool.testing.pgbouncer import PgBouncer as PgBouncer
    from qdbpool.testing.postgres import Node as Node
    from qdbpool.testing.postgres import PostgresCluster as PostgresCluster
    from qdbpool.testing.proxy import FaultProxy as FaultProxy

# name -> the module that defines it
_LAZY = {
    "FaultProxy": "qdbpool.testing.proxy",
    "HAProxy": "qdbpool.testing.haproxy",
    "MariaDBCluster": "qdbpool.testing.mariadb",
    "MariaDBReplicaPair": "qdbpool.testing.mariadb",
    "MariaDBServer": "qdbpool.testing.mariadb",
    "Node": "qdbpool.testing.postgres",
    "PatroniCluster": "qdbpool.testing.patroni",
    "PatroniMember": "qdbpool.testing.patroni",
    "PgBouncer": "qdbpool.testing.pgbouncer",
    "PostgresCluster": "qdbpool.testing.postgres",
    "ServerUnavailable": "qdbpool.testing._process",
    "require_haproxy": "qdbpool.testing.availability",
    "require_mariadb": "qdbpool.testing.availability",
    "require_patroni": "qdbpool.testing.availability",
    "require_pgbouncer": "qdbpool.testing.availability",
    "require_postgres": "qdbpool.testing.availability",
    "under_ci": "qdbpool.testing.availability",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup does not come here
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
