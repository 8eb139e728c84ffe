"""Fixtures of the DSN suite.

Helpers are handed out as fixtures: the suite runs with --import-mode=importlib, so test
modules cannot import this file.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from qdbpool import ConfigurationError
from qdbpool.dsn import parse_dsn


def _config_error(dsn: str) -> str:
    with pytest.raises(ConfigurationError) as info:
        parse_dsn(dsn)
    assert info.value.__context__ is None and info.value.__cause__ is None
    return str(info.value)


@pytest.fixture(scope="session")  # stateless: also fine under hypothesis
def config_error() -> Callable[[str], str]:
    """config_error(dsn): the message of the ConfigurationError parse_dsn(dsn) raises,
    which must carry no other exception as its context or cause."""
    return _config_error
