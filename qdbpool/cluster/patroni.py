"""Following Patroni: a thread that reads Patroni's keys in etcd and tells the topology.

    Postgres(dsn, patroni="http://etcd1:2379,etcd2:2379/service/batman")

The URL names etcd's client endpoints (the v3 API; its JSON gateway, so the standard
library is enough) and Patroni's key prefix, `namespace` + `scope` of its configuration
(`/service/` and the cluster's name by default). Every `interval` seconds one range read
of that prefix gives the leader key, the `failover` key (a switchover or failover asked
for) and each member's role, state and PostgreSQL address.

Why etcd and not Patroni's REST API: a planned switchover is written to the `failover` key
about 0.17 s before the old leader's PostgreSQL shuts down, and nothing in `GET /cluster`
shows it until the leader key is released, after the shutdown (measured with Patroni
3.0.2; see docs/guides/postgres.md).

What it says, the topology hears through one call, `Topology.hint`: on any change, every
host is checked again now, and the hosts that Patroni does not make the leader (or that a
switchover is leaving) take no new connection for writes. It never makes a host a primary:
the SQL checks stay the judge, and writers wait for them. Should etcd not answer, nothing
is held back (the SQL checks alone decide, as without this option).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import io
import json
import logging
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from qdbpool import _fork
from qdbpool.cluster.topology import Topology
from qdbpool.dsn import HostPort
from qdbpool.errors import ConfigurationError
from qdbpool.validation import seconds

logger = logging.getLogger("qdbpool")

ETCD_PORT = 2379
REQUEST_TIMEOUT = 1.0  # seconds one read of etcd may take, in all, before the next is tried


@dataclass(frozen=True)
class PatroniSource:
    """Where Patroni keeps its state: etcd endpoints and the cluster's key prefix."""

    endpoints: tuple[HostPort, ...]
    prefix: str  # e.g. "/service/batman/"
    tls: bool
    interval: float

    @classmethod
    def parse(cls, url: object, interval: object) -> PatroniSource:
        every = seconds("patroni_interval", interval)
        if not isinstance(url, str):
            raise ConfigurationError(
                "patroni must be a URL such as 'http://etcd1:2379,etcd2:2379/service/batman' "
                f"(etcd's endpoints, then Patroni's namespace and scope), not {type(url).__name__}"
            )
        try:
            parts = urlsplit(url)
        except ValueError:  # e.g. an unclosed [ of an IPv6 address; never quoted: a secret?
            raise ConfigurationError("patroni: the etcd URL cannot be parsed") from None
        if parts.scheme not in ("http", "https"):
            raise ConfigurationError(
                "patroni must be an http:// or https:// URL of etcd (v3 API), "
                f"not {parts.scheme or 'one without a scheme'}"
            )
        if "@" in parts.netloc:  # never shown: it may hold a password
            raise ConfigurationError("patroni: credentials in the etcd URL are not supported")
        if parts.query or parts.fragment:
            raise ConfigurationError("patroni: the etcd URL takes no query or fragment")
        endpoints = tuple(_endpoint(part) for part in parts.netloc.split(","))
        path = parts.path.strip("/")
        if not path:
            raise ConfigurationError(
                "patroni: the URL's path must be Patroni's namespace and scope, "
                "e.g. /service/batman"
            )
        return cls(endpoints, f"/{path}/", parts.scheme == "https", every)

    def __str__(self) -> str:
        hosts = ",".join(str(e) for e in self.endpoints)
        return f"{'https' if self.tls else 'http'}://{hosts}{self.prefix.rstrip('/')}"


def _endpoint(text: str) -> HostPort:
    host, sep, port = text.rpartition(":") if not text.endswith("]") else (text, "", "")
    if not sep:
        host, port = text, str(ETCD_PORT)
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ConfigurationError(f"patroni: bad etcd endpoint {text!r}")
    return HostPort(host, int(port))


@dataclass(frozen=True)
class View:
    """What Patroni's keys say, reduced to what routing needs."""

    leader: str | None  # the member holding the leader key
    leaving: str | None  # the leader, when a switchover (or failover) away from it is asked
    members: frozenset[tuple[str, str, str]]  # (name, role, state)
    addresses: dict[str, HostPort]  # member -> its PostgreSQL

    def held_back(self) -> set[str]:
        """Members that must take no new writes: every one but the leader, and the leader
        too while a switchover away from it is pending."""
        return {n for n in self.addresses if n != self.leader or n == self.leaving}

    def why(self) -> str:
        if self.leaving is not None:
            return f"Patroni: a switchover away from {self.leaving} is announced"
        return f"Patroni: leader {self.leader or '(none)'}"


def read_view(kvs: dict[str, str], now: datetime) -> View:
    """The View of the keys under the prefix (their names without it)."""
    leader = kvs.get("leader") or None
    leaving = leader if leader is not None and _pending(kvs.get("failover"), leader, now) else None
    members, addresses = set(), {}
    for key, value in kvs.items():
        if not key.startswith("members/"):
            continue
        name = key[len("members/") :]
        try:
            data = json.loads(value)
            conn = urlsplit(str(data.get("conn_url", "")))
            if conn.hostname:
                addresses[name] = HostPort(conn.hostname, conn.port or 5432)
        except (ValueError, TypeError, AttributeError):
            data = {}
        if not isinstance(data, dict):
            data = {}
        members.add((name, str(data.get("role", "")), str(data.get("state", ""))))
    return View(leader, leaving, frozenset(members), addresses)


def _pending(failover: str | None, leader: str, now: datetime) -> bool:
    """True if the `failover` key asks, now, for the leader to hand over. Patroni leaves
    it as "{}" once done; one naming another leader is stale; one scheduled later is not
    due yet (nor one whose time cannot be read: better no announcement than a wrong one)."""
    try:
        data = json.loads(failover or "{}")
    except ValueError:
        return False
    if not isinstance(data, dict):
        return False
    asked_from, candidate = data.get("leader"), data.get("candidate")
    due: bool
    if asked_from is not None:
        due = bool(asked_from == leader)
    else:
        due = candidate is not None and bool(candidate != leader)
    at = data.get("scheduled_at")
    if due and at:
        try:
            when = datetime.fromisoformat(str(at))
            if when.tzinfo is None:
                when = when.replace(tzinfo=timezone.utc)
        except ValueError:
            return False
        return when <= now
    return due


class PatroniWatcher:
    """One thread reading Patroni's keys every `interval` and hinting the topology."""

    def __init__(self, source: PatroniSource, topology: Topology) -> None:
        self.source = source
        self._topology = topology
        self._lock = threading.Lock()
        self._reset()
        _fork.watch(self)

    def _reset(self) -> None:
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._reader: _EtcdReader | None = None

    def __repr__(self) -> str:
        return f"<PatroniWatcher {self.source}>"

    def start(self) -> None:
        """Start the thread (idempotent; again after stop(), and in a forked child)."""
        if self._thread is not None:  # the hot path: no lock once it runs
            return
        with self._lock:
            if self._thread is None:
                stop = self._stop = threading.Event()
                self._thread = threading.Thread(
                    target=self._run,
                    args=(stop,),
                    name=f"qdbpool-patroni[{self.source}]",
                    daemon=True,
                )
                self._thread.start()

    def stop(self) -> None:
        with self._lock:
            thread, self._thread = self._thread, None
            reader, self._reader = self._reader, None
            self._stop.set()
        if reader is not None:
            reader.sever()  # a read in progress ends now, not at its deadline
        if thread is not None and thread is not threading.current_thread():
            # A read tries each endpoint, twice where a kept connection turns out closed.
            thread.join(timeout=2 * REQUEST_TIMEOUT * len(self.source.endpoints) + 1.0)

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self._reset()  # the parent's thread does not exist here: started again on use

    # -- the thread --------------------------------------------------------------------

    def _run(self, stop: threading.Event) -> None:
        reader = _EtcdReader(self.source)
        with self._lock:
            if stop.is_set():
                return
            self._reader = reader
        last: View | None = None
        reachable = True
        warned_unmatched = False
        try:
            while not stop.is_set():
                try:
                    kvs = reader.read()
                    if stop.is_set():
                        return
                    if kvs is None:
                        if reachable:  # nothing to go by: the SQL checks alone decide
                            logger.warning("patroni: etcd at %s does not answer", self.source)
                            self._topology.hint("Patroni's state unknown", ())
                            reachable, last = False, None
                    else:
                        reachable = True
                        view = read_view(kvs, datetime.now(timezone.utc))
                        if view != last:
                            held = self._ours({view.addresses[n] for n in view.held_back()})
                            if (
                                not warned_unmatched
                                and view.addresses
                                and not self._ours(set(view.addresses.values()))
                            ):
                                warned_unmatched = True
                                logger.warning(
                                    "patroni: no member's PostgreSQL address is a host of the DSN"
                                )
                            self._topology.hint(view.why(), held)
                            last = view
                except Exception:  # a bug of ours: logged, and the watcher goes on
                    logger.exception("patroni watcher round failed")
                    if last is not None or reachable:
                        self._topology.hint("Patroni's state unknown", ())
                    reachable, last = False, None
                stop.wait(self.source.interval)
        finally:
            reader.close()  # its kept connection, which stop() only shut down

    def _ours(self, addresses: set[HostPort]) -> set[HostPort]:
        """The topology's own HostPorts among `addresses` (matched case-insensitively)."""
        by_key = {_key(h.address): h.address for h in self._topology.hosts}
        return {by_key[_key(a)] for a in addresses if _key(a) in by_key}


def _key(address: HostPort) -> tuple[str, int]:
    return address.host.lower(), address.port


class _EtcdReader:
    """Range reads of the prefix through etcd's v3 JSON gateway, one endpoint at a time,
    on a connection kept between reads (a new one 20 times a second would cost etcd a TLS
    handshake each).

    http.client writes each request and parses each answer, but the socket is ours: left
    to http.client, the socket's timeout bounds each receive only, so an etcd (or a proxy)
    that sent its headers or its body a byte at a time kept an old announcement in force
    for good. Every receive of one read is bounded by what is left of that read's deadline.
    """

    def __init__(self, source: PatroniSource) -> None:
        self._source = source
        self._next = 0
        self._sock: socket.socket | None = None
        self._severed = False
        # Made once: loading the system's certificates takes milliseconds.
        self._tls = ssl.create_default_context() if source.tls else None
        prefix = source.prefix.encode()
        end = prefix[:-1] + bytes([prefix[-1] + 1])
        self._body = json.dumps({"key": _b64(prefix), "range_end": _b64(end)}).encode()

    def read(self) -> dict[str, str] | None:
        """The keys under the prefix (names without it) and their values; None when no
        endpoint answered, or once `sever()` was called."""
        for _ in self._source.endpoints:
            if self._severed:
                break
            try:
                return self._read_endpoint()
            except _READ_FAILURES as exc:
                logger.debug("patroni: etcd read failed: %s", type(exc).__name__)
                self.close()
                self._next = (self._next + 1) % len(self._source.endpoints)
        self.close()
        return None

    def _read_endpoint(self) -> dict[str, str]:
        """A read of the current endpoint. A kept connection that the server (or a proxy)
        closed since the last read shows it only now: once more on a new connection, rather
        than count a live etcd as silent for a round."""
        if self._sock is not None:
            try:
                return self._read_one()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if self._severed:
                    raise
        return self._read_one()

    def _read_one(self) -> dict[str, str]:
        deadline = time.monotonic() + REQUEST_TIMEOUT
        where = self._source.endpoints[self._next]
        if self._sock is None:
            self._sock = self._connect(where)
            if self._severed:  # sever() came while we connected, and saw no socket
                raise ConnectionAbortedError("the watcher stopped")
        self._sock.settimeout(REQUEST_TIMEOUT)  # for the request: the last read's is left
        # An HTTPConnection only formats the request here (the same for https), on our socket.
        conn = http.client.HTTPConnection(where.host, where.port)
        conn.sock = self._sock
        conn.request("POST", "/v3/kv/range", self._body, {"Content-Type": "application/json"})
        response = http.client.HTTPResponse(
            _BoundedSocket(self._sock, deadline),  # type: ignore[arg-type]
            method="POST",
        )
        response.begin()
        if response.length is not None and response.length > MAX_ANSWER:
            raise ValueError(f"an answer of {response.length} bytes")
        body = response.read(MAX_ANSWER + 1)
        if len(body) > MAX_ANSWER:
            raise ValueError(f"an answer of over {MAX_ANSWER} bytes")
        if response.will_close or not response.isclosed():  # nothing may be left unread
            self.close()
        if response.status != 200:
            raise ValueError(f"HTTP {response.status}")
        return _range_answer(body, len(self._source.prefix))

    def _connect(self, where: HostPort) -> socket.socket:
        if self._tls is None:
            conn = http.client.HTTPConnection(where.host, where.port, timeout=REQUEST_TIMEOUT)
        else:
            conn = http.client.HTTPSConnection(
                where.host, where.port, timeout=REQUEST_TIMEOUT, context=self._tls
            )
        conn.connect()
        return conn.sock

    def sever(self) -> None:
        """From another thread: end a read in progress (its socket is shut down) and let
        no other begin."""
        self._severed = True  # before looking at the socket: _read_one sets it, then looks
        sock = self._sock
        if sock is not None:
            with contextlib.suppress(OSError):  # closed meanwhile
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Close the kept connection (from the reading thread)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            sock.close()


MAX_ANSWER = 4 * 1024 * 1024  # bytes: Patroni's keys of a cluster take a few kilobytes
# What a read may fail with: the network, HTTP, an answer of the wrong shape or size.
_READ_FAILURES = (OSError, http.client.HTTPException, ValueError)


class _BoundedSocket(io.RawIOBase):
    """A socket as http.client reads an answer from it (through makefile()), each receive
    bounded by what is left until `deadline`."""

    def __init__(self, sock: socket.socket, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(self)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError(f"no whole answer within {REQUEST_TIMEOUT:g}s")
        self._sock.settimeout(remaining)
        return self._sock.recv_into(buffer)


def _range_answer(payload: bytes, cut: int) -> dict[str, str]:
    """The keys (without the prefix's `cut` characters) and values of an etcd v3 range
    answer; ValueError for anything else, which counts as no answer."""
    data: Any = json.loads(payload)
    kvs = data.get("kvs", []) if isinstance(data, dict) else None
    if not isinstance(kvs, list):
        raise ValueError("not an etcd range answer")
    found: dict[str, str] = {}
    for kv in kvs:
        key = kv.get("key") if isinstance(kv, dict) else None
        value = kv.get("value", "") if isinstance(kv, dict) else None
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError("not an etcd range answer")
        found[base64.b64decode(key).decode()[cut:]] = base64.b64decode(value).decode()
    return found


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()
