"""Drivers: how to talk to one host of a database (connect, check its role, ping, reset,
and tell a lost connection from other errors). One module per client library; each is
imported on its own, so that users of one need not install the others.

- base.py: `HostDriver`, the interface, and what a check reports (`Role`, `Observation`).
- psycopg.py: PostgreSQL through psycopg 3 (`PsycopgDriver`).
- psycopg2.py: PostgreSQL through psycopg2 (`Psycopg2Driver`), `Postgres(driver="psycopg2")`.
- pgsql.py: what both PostgreSQL drivers share (the role query, SQLSTATE rules).
- pymysql.py: MySQL and MariaDB through PyMySQL (`PyMySQLDriver`).
"""

from qdbpool.drivers.base import HostDriver, Observation, Role

__all__ = ["HostDriver", "Observation", "Role"]
