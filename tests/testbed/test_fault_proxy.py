"""The TCP fault proxy: forwarding, and the faults a test switches on at runtime."""

from __future__ import annotations

import socket
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from qdbpool.testing._process import free_port, wait_until
from qdbpool.testing.postgres import PostgresCluster
from qdbpool.testing.proxy import FaultProxy, Mode

pytestmark = pytest.mark.timeout(60)

# Long enough for loopback bytes to arrive many times over, short enough to keep tests quick.
# Used only to show that nothing arrives, never to wait for something to happen.
QUIET = 0.3


class _EchoHandler(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        sock: socket.socket = self.request
        try:
            while data := sock.recv(65536):
                sock.sendall(data)
        except OSError:
            pass  # reset by the proxy: what several tests do on purpose


@pytest.fixture
def echo() -> Iterator[tuple[str, int]]:
    """A tiny threaded echo server on loopback."""
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _EchoHandler)
    server.daemon_threads = True
    server.block_on_close = False
    # A short poll interval: shutdown() waits for the serving loop to look up.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), name="echo", daemon=True)
    thread.start()
    try:
        yield server.server_address[0], server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@pytest.fixture
def proxy(echo: tuple[str, int]) -> Iterator[FaultProxy]:
    with FaultProxy(*echo) as p:
        yield p


def connect(proxy: FaultProxy) -> socket.socket:
    return socket.create_connection(proxy.address, timeout=5)


def roundtrip(sock: socket.socket, payload: bytes = b"ping") -> bytes:
    sock.sendall(payload)
    received = b""
    while len(received) < len(payload):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def receives_nothing(sock: socket.socket) -> bool:
    sock.settimeout(QUIET)
    try:
        sock.recv(1)
    except TimeoutError:
        return True
    finally:
        sock.settimeout(5)
    return False


def connection_count(proxy: FaultProxy, expected: int) -> None:
    wait_until(lambda: proxy.connections == expected, timeout=5, what=f"{expected} connections")


# -- forwarding --------------------------------------------------------------------------------


def test_forwards_bytes_both_ways(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock, b"hello") == b"hello"
    assert proxy.address == ("127.0.0.1", proxy.port)
    assert proxy.mode is Mode.PASS


def test_large_transfers_arrive_intact_in_both_directions(proxy: FaultProxy) -> None:
    payload = bytes(range(256)) * 16384  # 4 MiB: far beyond every buffer on the way
    with connect(proxy) as sock:
        # Write from another thread: the echo comes back while we are still sending.
        writer = threading.Thread(target=sock.sendall, args=(payload,))
        writer.start()
        received = bytearray()
        while len(received) < len(payload):
            chunk = sock.recv(1 << 20)
            assert chunk, "closed early"
            received += chunk
        writer.join(10)
    assert received == payload


def test_counts_open_connections(proxy: FaultProxy) -> None:
    first, second = connect(proxy), connect(proxy)
    connection_count(proxy, 2)
    first.close()
    connection_count(proxy, 1)
    second.close()
    connection_count(proxy, 0)
    assert proxy.accepted == 2


def test_a_half_close_is_forwarded(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        sock.sendall(b"last words")
        sock.shutdown(socket.SHUT_WR)  # the echo server sees EOF, answers, then closes
        received = b""
        while chunk := sock.recv(100):
            received += chunk
    assert received == b"last words"
    connection_count(proxy, 0)


def test_a_refusing_target_resets_the_client() -> None:
    with FaultProxy("127.0.0.1", free_port()) as proxy:
        # The reset may even beat connect() back to the client.
        with pytest.raises(ConnectionResetError), connect(proxy) as sock:
            sock.recv(1)
        connection_count(proxy, 0)


def test_connections_beyond_the_limit_are_reset(echo: tuple[str, int]) -> None:
    with FaultProxy(*echo, max_connections=1) as proxy, connect(proxy) as kept:
        connection_count(proxy, 1)
        # The reset may even beat connect() back to the client: either way it is refused.
        with pytest.raises(ConnectionResetError), connect(proxy) as extra:
            extra.recv(1)
        assert roundtrip(kept) == b"ping"


# -- faults ------------------------------------------------------------------------------------


def test_stall_holds_the_data_of_open_connections_without_closing_them(
    proxy: FaultProxy,
) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
        proxy.stall()
        sock.sendall(b"held")
        assert receives_nothing(sock)
        assert proxy.connections == 1
        proxy.pass_through()  # the network heals: what was sent arrives
        assert sock.recv(100) == b"held"


def test_stall_accepts_new_connections_but_forwards_nothing(proxy: FaultProxy) -> None:
    proxy.stall()
    with connect(proxy) as sock:
        sock.sendall(b"hello?")
        assert receives_nothing(sock)
        connection_count(proxy, 1)
        proxy.pass_through()
        assert sock.recv(100) == b"hello?"


def test_refuse_makes_connects_fail_and_resets_open_connections(proxy: FaultProxy) -> None:
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"
        proxy.refuse()
        with pytest.raises(ConnectionResetError):
            sock.recv(1)
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    assert proxy.connections == 0


def test_pass_through_listens_again_on_the_same_port_after_refuse(proxy: FaultProxy) -> None:
    port = proxy.port
    proxy.refuse()
    proxy.pass_through()
    assert proxy.port == port
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"


def test_reset_resets_open_connections_and_keeps_accepting(proxy: FaultProxy) -> None:
    with connect(proxy) as first, connect(proxy) as second:
        connection_count(proxy, 2)
        proxy.reset()
        for sock in (first, second):
            with pytest.raises(ConnectionResetError):
                sock.recv(1)
    assert proxy.connections == 0
    with connect(proxy) as sock:
        assert roundtrip(sock) == b"ping"


# -- stopping ----------------------------------------------------------------------------------


def test_close_stops_the_thread_and_frees_the_port(echo: tuple[str, int]) -> None:
    proxy = FaultProxy(*echo)
    sock = connect(proxy)
    assert roundtrip(sock) == b"ping"
    proxy.close()
    assert not proxy._thread.is_alive()
    with pytest.raises(ConnectionResetError):
        sock.recv(1)
    sock.close()
    with pytest.raises(ConnectionRefusedError):
        connect(proxy)
    with pytest.raises(RuntimeError, match="closed"):
        proxy.stall()
    proxy.close()  # twice is fine


# -- in front of a real PostgreSQL -------------------------------------------------------------


@pytest.fixture
def pg_proxy(single_node: PostgresCluster) -> Iterator[FaultProxy]:
    node = single_node.primary
    with FaultProxy(node.host, node.port) as p:
        yield p


def pg_connect(proxy: FaultProxy, timeout: int = 5) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        host=proxy.host, port=proxy.port, user="postgres", dbname="postgres",
        connect_timeout=timeout, autocommit=True,
    )  # fmt: skip


@pytest.mark.postgres
def test_postgres_queries_pass_through(pg_proxy: FaultProxy) -> None:
    with pg_connect(pg_proxy) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)
        assert pg_proxy.connections == 1


@pytest.mark.postgres
def test_postgres_query_hangs_while_stalled_and_completes_once_healed(
    pg_proxy: FaultProxy,
) -> None:
    with pg_connect(pg_proxy) as conn, ThreadPoolExecutor(1) as pool:
        pg_proxy.stall()
        pending = pool.submit(lambda: conn.execute("SELECT 42").fetchone())
        with pytest.raises(TimeoutError):
            pending.result(timeout=QUIET)  # the client-side timeout fires: no answer
        pg_proxy.pass_through()
        assert pending.result(timeout=10) == (42,)


@pytest.mark.postgres
def test_postgres_connect_to_a_stalled_host_times_out(pg_proxy: FaultProxy) -> None:
    pg_proxy.stall()
    started = time.monotonic()
    with pytest.raises(psycopg.OperationalError, match="timeout"):
        pg_connect(pg_proxy, timeout=2)
    assert 1.5 < time.monotonic() - started < 10


@pytest.mark.postgres
def test_postgres_connect_is_refused_fast(pg_proxy: FaultProxy) -> None:
    with pg_connect(pg_proxy) as conn:
        pg_proxy.refuse()
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match="refused"):
            pg_connect(pg_proxy)
        assert time.monotonic() - started < 1
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")  # it was reset


@pytest.mark.postgres
def test_postgres_connection_breaks_on_reset(pg_proxy: FaultProxy) -> None:
    with pg_connect(pg_proxy) as conn:
        pg_proxy.reset()
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
        assert conn.closed
    with pg_connect(pg_proxy) as fresh:
        assert fresh.execute("SELECT 1").fetchone() == (1,)


# In a process of its own, allowed 21 file descriptors more than it holds: a target that
# never accepts, a client (another process) opening 60 connections through the proxy at
# once. The proxy runs out of descriptors exactly between a link's two sockets.
OUT_OF_DESCRIPTORS = """
import os, resource, socket, subprocess, sys
from qdbpool.testing.proxy import FaultProxy

target = socket.socket()  # nobody accepts: the proxy's links to it stay open
target.bind(("127.0.0.1", 0))
target.listen(512)
limit = resource.getrlimit(resource.RLIMIT_NOFILE)
burst = (
    "import resource, socket, time\\n"
    f"resource.setrlimit(resource.RLIMIT_NOFILE, {limit})\\n"
    "address = ('127.0.0.1', int(__import__('sys').argv[1]))\\n"
    "s = [socket.create_connection(address, timeout=5) for _ in range(60)]\\n"
    "time.sleep(0.5)\\n"
)
with FaultProxy("127.0.0.1", target.getsockname()[1]) as proxy:
    # Each link takes two descriptors, the client's (accept) and the target's (socket):
    # leave an odd number free, so that the last accept leaves none for socket().
    in_use = len(os.listdir("/proc/self/fd")) - 1  # not listdir's own
    resource.setrlimit(resource.RLIMIT_NOFILE, (in_use + 21, limit[1]))
    # No pipes: this process opens no descriptor of its own while the burst runs.
    subprocess.Popen([sys.executable, "-c", burst, str(proxy.port)]).wait(timeout=60)
    resource.setrlimit(resource.RLIMIT_NOFILE, limit)  # room again for the check below
    socket.create_connection(proxy.address, timeout=5).close()  # refused if the proxy died
    proxy.stall()
    proxy.pass_through()
    print("proxy alive", proxy._thread.is_alive())
"""


def test_the_proxy_survives_running_out_of_file_descriptors() -> None:
    # socket() for the target failing with EMFILE ended the proxy's thread: every
    # connection reset, new ones refused, every control call "the fault proxy is closed".
    run = subprocess.run(
        [sys.executable, "-c", OUT_OF_DESCRIPTORS], capture_output=True, text=True, timeout=90
    )
    assert run.stdout.strip() == "proxy alive True", run.stderr[-2000:]
