"""From a DSN to the host driver that checks roles.

The drivers are the ones the Postgres and MySQL factories use, so `qdbpool probe` judges
roles exactly as the pools route (a primary made read-only counts as a replica).
"""

from __future__ import annotations

import math
from dataclasses import replace

from qdbpool.drivers.base import HostDriver
from qdbpool.drivers.pgsql import HOST_SELECTION_PARAMS
from qdbpool.dsn import ParsedDSN

_LIBPQ_MIN_CONNECT_TIMEOUT = 2  # libpq rounds anything lower up to 2 s


class DriverUnavailable(Exception):
    """The database driver for this DSN's family is not installed."""


def make_driver(parsed: ParsedDSN, timeout: float) -> HostDriver:
    """The driver for `parsed`'s family; raises ConfigurationError for options the driver
    does not take (so that they fail once, as bad usage, not once per host)."""
    if parsed.family == "postgresql":
        return _postgres_driver(parsed, timeout)
    return _mysql_driver(parsed)


def _postgres_driver(parsed: ParsedDSN, timeout: float) -> HostDriver:
    try:
        from qdbpool.drivers import psycopg as psycopg_driver
    except ImportError as exc:
        raise DriverUnavailable(str(exc)) from None
    # The probe connects to one host at a time and must reach replicas too.
    params = {k: v for k, v in parsed.params.items() if k not in HOST_SELECTION_PARAMS}
    psycopg_driver.check_connect_kwargs(params, from_dsn=True)
    # The round's deadline bounds the check anyway; this bounds the thread behind it, which
    # cannot be cut off while it connects (there is no socket to shut down yet).
    connect_timeout = max(_LIBPQ_MIN_CONNECT_TIMEOUT, math.ceil(timeout))
    return psycopg_driver.PsycopgDriver(
        replace(parsed, params=params), {"connect_timeout": connect_timeout}
    )


def _mysql_driver(parsed: ParsedDSN) -> HostDriver:
    try:
        from qdbpool.drivers import pymysql as pymysql_driver
    except ImportError as exc:
        raise DriverUnavailable(str(exc)) from None
    pymysql_driver.check_options(dict(parsed.params), "DSN parameter(s)")
    # open_probe applies the timeout to connect, read and write itself.
    return pymysql_driver.PyMySQLDriver(parsed, {}, check_lag=True)
