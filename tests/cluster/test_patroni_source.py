"""Following Patroni, without a server: the `patroni=` option, what Patroni's keys are read
as, and what a hint does to routing (qdbpool.cluster.patroni, Topology.hint)."""

from __future__ import annotations

import base64
import gc
import http.server
import json
import shutil
import ssl
import subprocess
import threading
import warnings
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from qdbpool.cluster import patroni
from qdbpool.cluster.hosts import HostState
from qdbpool.cluster.options import RoutingOptions
from qdbpool.cluster.patroni import PatroniSource, PatroniWatcher, _EtcdReader, read_view
from qdbpool.cluster.router import Router
from qdbpool.cluster.topology import Topology
from qdbpool.drivers.base import Role
from qdbpool.dsn import HostPort
from qdbpool.errors import ConfigurationError
from qdbpool.factories.postgres import Postgres
from qdbpool.testing.availability import under_ci

NOW = datetime(2026, 12, 5, 12, 0, tzinfo=timezone.utc)


def member(port: int, role: str = "replica", state: str = "running") -> str:
    return json.dumps(
        {
            "conn_url": f"postgres://127.0.0.1:{port}/postgres",
            "role": role,
            "state": state,
            "api_url": f"http://127.0.0.1:{port + 1000}/patroni",
            "xlog_location": 5,
        }
    )


def keys(leader: str | None = "m0", failover: dict[str, Any] | None = None) -> dict[str, str]:
    kvs = {
        "members/m0": member(5000, "master"),
        "members/m1": member(5001),
        "members/m2": member(5002),
    }
    if leader is not None:
        kvs["leader"] = leader
    if failover is not None:
        kvs["failover"] = json.dumps(failover)
    return kvs


# -- the option ----------------------------------------------------------------------------------


def test_the_option_takes_etcd_endpoints_and_patronis_key_prefix() -> None:
    source = PatroniSource.parse("http://e1:2379,e2,[::1]:2380/service/batman/", 0.05)
    assert source.endpoints == (HostPort("e1", 2379), HostPort("e2", 2379), HostPort("::1", 2380))
    assert source.prefix == "/service/batman/"
    assert not source.tls
    assert str(source) == "http://e1:2379,e2:2379,[::1]:2380/service/batman"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (8008, "must be a URL"),
        ("", "http:// or https://"),
        ("etcd1:2379/service/x", "http:// or https://"),
        ("http://etcd1:2379", "namespace and scope"),
        ("http://etcd1:2379/", "namespace and scope"),
        ("http://etcd1:port/service/x", "bad etcd endpoint"),
        ("http://etcd1,/service/x", "bad etcd endpoint"),
        ("http://etcd1/service/x?timeout=1", "no query"),
        ("http://[::1/service/x", "cannot be parsed"),
    ],
)
def test_a_bad_patroni_option_is_a_configuration_error(value: object, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Postgres("postgresql://db1,db2/app", patroni=value)  # type: ignore[arg-type]


def test_credentials_in_the_patroni_url_are_refused_and_never_shown() -> None:
    with pytest.raises(ConfigurationError) as caught:
        Postgres("postgresql://db1/app", patroni="http://root:s3cret@etcd1/service/x")
    assert "s3cret" not in str(caught.value)


@pytest.mark.parametrize("interval", [0, -1, "0.05", True, float("nan")])
def test_a_bad_patroni_interval_is_a_configuration_error(interval: object) -> None:
    with pytest.raises(ConfigurationError, match="patroni_interval"):
        Postgres("postgresql://db1/app", patroni="http://e/service/x", patroni_interval=interval)  # type: ignore[arg-type]


def test_the_factory_shows_what_it_follows_and_no_password() -> None:
    factory = Postgres("postgresql://app:s3cret@db1,db2/app", patroni="http://e1/service/x")
    try:
        assert repr(factory) == (
            "Postgres('postgresql://app:***@db1:5432,db2:5432/app', "
            "patroni='http://e1:2379/service/x')"
        )
    finally:
        factory.close()


# -- what the keys say ---------------------------------------------------------------------------


def test_every_member_but_the_leader_is_held_back() -> None:
    view = read_view(keys(), NOW)
    assert view.leader == "m0" and view.leaving is None
    assert view.held_back() == {"m1", "m2"}
    assert view.addresses["m1"] == HostPort("127.0.0.1", 5001)


def test_a_switchover_away_from_the_leader_holds_the_leader_back_too() -> None:
    view = read_view(keys(failover={"leader": "m0"}), NOW)
    assert view.leaving == "m0"
    assert view.held_back() == {"m0", "m1", "m2"}
    assert "switchover away from m0" in view.why()


def test_a_failover_to_a_candidate_holds_the_leader_back() -> None:
    assert read_view(keys(failover={"candidate": "m2"}), NOW).leaving == "m0"


def test_the_finished_switchover_does_not_hold_the_new_leader_back() -> None:
    # Patroni leaves "{}" behind, or the old request for a while after the new leader took
    # the key.
    for failover in ({}, {"leader": "m0", "candidate": "m1"}):
        view = read_view(keys(leader="m1", failover=failover), NOW)
        assert view.leaving is None
        assert view.held_back() == {"m0", "m2"}


def test_a_switchover_scheduled_later_holds_nothing_back_until_its_time() -> None:
    later = (NOW + timedelta(minutes=5)).isoformat()
    assert read_view(keys(failover={"leader": "m0", "scheduled_at": later}), NOW).leaving is None
    due = NOW + timedelta(minutes=6)
    assert read_view(keys(failover={"leader": "m0", "scheduled_at": later}), due).leaving == "m0"


def test_with_no_leader_key_every_member_is_held_back() -> None:
    assert read_view(keys(leader=None), NOW).held_back() == {"m0", "m1", "m2"}


def test_a_member_key_that_cannot_be_read_is_no_address() -> None:
    kvs = keys()
    kvs["members/m2"] = "not json"
    view = read_view(kvs, NOW)
    assert "m2" not in view.addresses
    assert view.held_back() == {"m1"}


# -- what a hint does ----------------------------------------------------------------------------


class NoDriver:
    """The topology's monitor is never started here: nothing is asked of a driver."""


def topology_with_roles(*roles: Role) -> Topology:
    addresses = [HostPort("127.0.0.1", 5000 + i) for i in range(len(roles))]
    topology = Topology(addresses, NoDriver(), refresh_delay=1.0, refresh_timeout=1.0)  # type: ignore[arg-type]
    for host, role in zip(topology.hosts, roles, strict=True):
        host.set_role(role, None)
    return topology


def select_primary(topology: Topology) -> HostState | None:
    return Router(RoutingOptions()).select_primary(topology.hosts)


def test_a_held_back_primary_takes_no_new_writes_and_its_connections_become_unfit() -> None:
    topology = topology_with_roles(Role.PRIMARY, Role.REPLICA)
    primary = topology.hosts[0]
    before = primary.generation.value
    topology.hint("switchover announced", {primary.address})
    assert primary.generation.value != before  # its connections are not handed out again
    primary.set_role(Role.PRIMARY, None)  # its next check still finds a primary ...
    assert select_primary(topology) is None  # ... but writes wait for another one
    assert "held back" in str(primary.status())


def test_a_later_hint_lifts_the_hold() -> None:
    topology = topology_with_roles(Role.PRIMARY, Role.REPLICA)
    primary = topology.hosts[0]
    topology.hint("switchover announced", {primary.address})
    primary.set_role(Role.PRIMARY, None)
    topology.hint("Patroni's state unknown", ())
    primary.set_role(Role.PRIMARY, None)  # the re-check the hint asked for
    assert select_primary(topology) is primary


def test_a_hint_makes_every_known_host_suspect_until_checked_again() -> None:
    topology = topology_with_roles(Role.PRIMARY, Role.REPLICA, Role.DOWN)
    topology.hint("Patroni: leader m0", ())
    assert [h.suspect for h in topology.hosts] == [True, True, False]
    assert all(h.role is not Role.UNKNOWN for h in topology.hosts)  # connections stay fit


# -- the watcher against an etcd that misbehaves (a fake one, on loopback) -----------------------


class FakeEtcd:
    """An etcd v3 JSON gateway that answers each range read as `answer` says: "keys" (the
    keys of `kvs`, under /service/batman/), "garbage" (valid JSON of another shape), "drip"
    (the headers, then the body one byte every 0.2 s), "drip-headers" (a header line
    every 0.2 s), "keys-then-hang-up" (the keys, then it closes the kept connection
    without a word, as a proxy's idle timeout does) or "huge" (a Content-Length of a
    petabyte). Before the nth answer it waits `delays[n]` seconds, if given."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.answer = "keys"
        self.kvs: dict[str, str] = {}
        self.reads = 0
        self.delays: list[float] = []
        self.stopping = threading.Event()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers["Content-Length"]))
                delay = fake.delays[fake.reads] if fake.reads < len(fake.delays) else 0.0
                fake.reads += 1
                body = fake.body()
                if fake.stopping.wait(delay):
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                length = 10**15 if fake.answer == "huge" else len(body)
                self.send_header("Content-Length", str(length))
                if fake.answer == "drip-headers":
                    for n in range(90):  # 18 s at most, or until the test ends
                        self.send_header(f"X-Padding-{n}", "x")
                        self.flush_headers()
                        if fake.stopping.wait(0.2):
                            return
                self.end_headers()
                if fake.answer != "drip":
                    self.wfile.write(body)
                    self.close_connection = fake.answer == "keys-then-hang-up"
                    return
                for byte in body[:100]:  # 20 s at most, or until the test ends
                    if fake.stopping.wait(0.2):
                        return
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.scheme = "http"
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
            self.scheme = "https"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def body(self) -> bytes:
        if self.answer == "garbage":
            return b'{"kvs": [5]}'
        kvs = [
            {
                "key": base64.b64encode(f"/service/batman/{k}".encode()).decode(),
                "value": base64.b64encode(v.encode()).decode(),
            }
            for k, v in self.kvs.items()
        ]
        return json.dumps({"kvs": kvs, "padding": " " * 200}).encode()

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.server.server_address[1]}/service/batman"

    def close(self) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def etcd() -> Iterator[FakeEtcd]:
    fake = FakeEtcd()
    try:
        yield fake
    finally:
        fake.close()


def watched(etcd: FakeEtcd) -> tuple[Topology, PatroniWatcher]:
    """A topology of the three members in keys(), m0 its primary, and a watcher of `etcd`."""
    topology = topology_with_roles(Role.PRIMARY, Role.REPLICA, Role.REPLICA)
    return topology, PatroniWatcher(PatroniSource.parse(etcd.url, 0.02), topology)


def test_the_watcher_outlives_an_answer_of_the_wrong_shape(etcd: FakeEtcd, poll: Any) -> None:
    # One such answer (valid JSON, not a range) ended the watcher's thread for good: the
    # switchover announced next was never heard of.
    topology, watcher = watched(etcd)
    primary = topology.hosts[0]
    etcd.answer = "garbage"
    watcher.start()
    try:
        poll(lambda: etcd.reads >= 3, what="three reads of the wrong shape")
        etcd.kvs, etcd.answer = keys(failover={"leader": "m0", "candidate": "m1"}), "keys"
        poll(lambda: primary.held_back, what="the announced switchover heard")
    finally:
        watcher.stop()


@pytest.mark.parametrize("drip", ["drip", "drip-headers"])
def test_an_etcd_answering_a_bit_at_a_time_counts_as_silent(
    etcd: FakeEtcd, poll: Any, drip: str
) -> None:
    # Each byte (then, once the body was bounded, each header line) came within the
    # socket's timeout, so the read never ended: the switchover announced before held the
    # leader back for as long as etcd dripped, and close() left the thread reading.
    topology, watcher = watched(etcd)
    primary = topology.hosts[0]
    etcd.kvs = keys(failover={"leader": "m0", "candidate": "m1"})
    watcher.start()
    thread = watcher._thread
    assert thread is not None
    try:
        poll(lambda: primary.held_back, what="the announced switchover heard")
        etcd.answer = drip
        poll(lambda: not primary.held_back, timeout=5, what="etcd taken as silent")
    finally:
        watcher.stop()
    assert not thread.is_alive()


def test_a_slow_answer_leaves_the_next_read_its_whole_time(
    etcd: FakeEtcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The connection kept between reads kept the socket timeout the last read had left:
    # after an answer that took most of its time, the next one had the rest only.
    monkeypatch.setattr(patroni, "REQUEST_TIMEOUT", 2.0)
    etcd.kvs = keys()
    etcd.delays = [1.7, 0.5]
    reader = _EtcdReader(PatroniSource.parse(etcd.url, 0.02))
    assert reader.read() == keys()
    assert reader.read() == keys()


def test_stop_ends_a_read_whichever_endpoint_it_has_come_to(
    monkeypatch: pytest.MonkeyPatch, poll: Any
) -> None:
    # sever() shut the socket of the read in progress, and the reader went on to the next
    # endpoint, to wait there for as long as a read may take.
    monkeypatch.setattr(patroni, "REQUEST_TIMEOUT", 30.0)
    first, second = FakeEtcd(), FakeEtcd()
    try:
        first.answer = second.answer = "drip"
        ports = [f.server.server_address[1] for f in (first, second)]
        url = f"http://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/service/batman"
        reader = _EtcdReader(PatroniSource.parse(url, 0.02))
        results: list[object] = []
        thread = threading.Thread(target=lambda: results.append(reader.read()), daemon=True)
        thread.start()
        poll(lambda: first.reads == 1, what="the first endpoint asked")
        reader.sever()
        thread.join(timeout=10)
        assert not thread.is_alive(), "the read went on after sever()"
        assert results == [None]
    finally:
        first.close()
        second.close()


@pytest.fixture
def tls_etcd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeEtcd]:
    """A FakeEtcd over TLS, with a certificate of its own that this process trusts (as a
    user trusts a private CA: SSL_CERT_FILE)."""
    if shutil.which("openssl") is None:
        missing = pytest.fail if under_ci() else pytest.skip
        missing("openssl is needed to make the test certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    fake = FakeEtcd(tls=context)
    try:
        yield fake
    finally:
        fake.close()


def test_etcd_over_tls_is_read_on_one_kept_connection(tls_etcd: FakeEtcd) -> None:
    tls_etcd.kvs = keys()
    reader = _EtcdReader(PatroniSource.parse(tls_etcd.url, 0.02))
    assert reader.read() == keys()
    kept = reader._sock
    assert isinstance(kept, ssl.SSLSocket)
    assert reader.read() == keys()
    assert reader._sock is kept


def test_etcd_over_tls_dripping_counts_as_silent(
    tls_etcd: FakeEtcd, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(patroni, "REQUEST_TIMEOUT", 0.5)
    tls_etcd.kvs = keys()
    tls_etcd.answer = "drip"
    reader = _EtcdReader(PatroniSource.parse(tls_etcd.url, 0.02))
    assert reader.read() is None


def test_a_kept_connection_the_server_closed_meanwhile_is_not_silence(etcd: FakeEtcd) -> None:
    # The next read found the connection closed and counted etcd as silent: behind a
    # proxy that closes idle connections, every other round lifted a switchover's hold.
    etcd.kvs = keys()
    etcd.answer = "keys-then-hang-up"
    reader = _EtcdReader(PatroniSource.parse(etcd.url, 0.02))
    try:
        assert [reader.read() for _ in range(5)] == [keys()] * 5
    finally:
        reader.close()


def test_an_answer_claiming_a_petabyte_counts_as_no_answer(etcd: FakeEtcd) -> None:
    # Its Content-Length raised MemoryError, out of the reader: the other endpoints were
    # not tried and the round failed with a traceback.
    etcd.answer = "huge"
    reader = _EtcdReader(PatroniSource.parse(etcd.url, 0.02))
    assert reader.read() is None


def test_a_stopped_watcher_closes_its_kept_connection(etcd: FakeEtcd, poll: Any) -> None:
    etcd.kvs = keys()
    _, watcher = watched(etcd)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always", ResourceWarning)
        watcher.start()
        poll(lambda: etcd.reads >= 2, what="two reads")
        watcher.stop()
        del watcher
        gc.collect()
    assert [w for w in seen if issubclass(w.category, ResourceWarning)] == []
