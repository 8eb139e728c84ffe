"""Moved: see qdbpool.cluster (kept until examples/demo_ha.py imports it from there)."""

from qdbpool.cluster import HostStatus, Role

__all__ = ["HostStatus", "Role"]
