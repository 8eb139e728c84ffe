"""High availability: which hosts are up, in which role, and which one a connection goes to.

The topology watches hosts and knows nothing of pools or threads; the routed factory asks
it for a host and tags each connection with the host's generation, so that a connection
whose host changed role is found unfit at its next checkout. Only the driver (one small
class per database) knows SQL or a client library.
"""
