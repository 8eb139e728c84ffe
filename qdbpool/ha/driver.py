"""Moved: see qdbpool.drivers.base (kept until qdbpool/cli/drivers.py imports it)."""

from qdbpool.drivers.base import HostDriver

__all__ = ["HostDriver"]
