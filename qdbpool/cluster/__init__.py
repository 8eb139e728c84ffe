"""A cluster: which hosts are up, in which role, and which one a new connection goes to.

- hosts.py: each host's state (role, generation, latencies) and `HostStatus`, what
  `hosts()` reports.
- topology.py: the monitor thread that keeps every host's role up to date.
- check.py: one check of one host, shared with `qdbpool probe`.
- patroni.py: an optional source beside the checks: Patroni's keys in etcd, read by a
  thread of its own, announce leader changes and switchovers (`Topology.hint`).
- router.py: hasql's routing rules and balancers.
- options.py: `RoutingOptions`, the routing keywords of Postgres and MySQL, checked once.

The cluster knows nothing of pools or threads' connections; `qdbpool.factories.routed`
asks it for a host and tags each connection with the host's generation. Only the driver
(`qdbpool.drivers`) knows SQL or a client library.
"""

from qdbpool.cluster.hosts import HostStatus
from qdbpool.drivers.base import Role

__all__ = ["HostStatus", "Role"]
