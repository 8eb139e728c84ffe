"""Fork: a child never uses, nor closes, the connections it inherits from its parent.

The connections here are real loopback TCP sessions to a tiny server started by the test.
Closing one says "BYE" and the server then ends that session, as a database server does on
a client's goodbye: a child that closed an inherited connection would end the *parent's*
session, and the parent's next request would fail. Fork rules are Pool's: both pool classes.
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import os
import socket
import sys
import threading
from collections.abc import Iterator

import pytest

import qdbpool
from qdbpool import with_conn
from qdbpool.testing._process import wait_until

pytestmark = pytest.mark.skipif(
    not hasattr(os, "fork") or sys.platform == "win32", reason="needs the fork start method"
)

# Forking while other threads run is the point of these tests (Python 3.12+ warns of it).
FORK_WHILE_THREADED = pytest.mark.filterwarnings(
    "ignore:This process .* is multi-threaded, use of fork:DeprecationWarning"
)

WAIT = 30.0


class SessionServer:
    """Numbered sessions; PING -> "PONG <session>", BYE -> recorded, then the session ends."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.address = self._listener.getsockname()
        self._lock = threading.Lock()
        self._sessions = 0
        self.byes: list[int] = []
        self._threads: list[threading.Thread] = []
        self._accepting = threading.Thread(target=self._accept, daemon=True)
        self._accepting.start()

    def _accept(self) -> None:
        for _ in range(1000):
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self._sessions += 1
                session = self._sessions
            t = threading.Thread(target=self._serve, args=(sock, session), daemon=True)
            self._threads.append(t)
            t.start()

    def _serve(self, sock: socket.socket, session: int) -> None:
        with sock, sock.makefile("rb") as lines:
            sock.sendall(f"HELLO {session}\n".encode())
            for _ in range(10_000):
                line = lines.readline()
                if line == b"PING\n":
                    sock.sendall(f"PONG {session}\n".encode())
                elif line == b"BYE\n":
                    with self._lock:
                        self.byes.append(session)
                    return
                else:  # end of stream, or garbage
                    return

    def said_bye(self, session: int) -> bool:
        with self._lock:
            return session in self.byes

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept() on Linux
        self._listener.close()
        self._accepting.join(WAIT)


class SessionConnection:
    """A client session; like a database driver, it says goodbye when closed or finalized."""

    def __init__(self, address: tuple[str, int]) -> None:
        self.sock = socket.create_connection(address, timeout=WAIT)
        self.lines = self.sock.makefile("rb")
        self.session = int(self.lines.readline().split()[1])
        self.pid = os.getpid()
        self.closed = False

    def request(self) -> int:
        self.sock.sendall(b"PING\n")
        line = self.lines.readline()
        if not line:
            raise ConnectionError(f"session {self.session} was ended by the server")
        return int(line.split()[1])

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(OSError):
                self.sock.sendall(b"BYE\n")
            self.lines.close()
            self.sock.close()

    def __del__(self) -> None:
        self.close()


@pytest.fixture
def server() -> Iterator[SessionServer]:
    s = SessionServer()
    yield s
    s.close()


@with_conn
def ask(conn):
    """(session, pid of the process that opened it, the server's answer for that session)."""
    return conn.session, conn.pid, conn.request()


def child_main(send) -> None:
    try:
        result = ask()
        qdbpool.close()  # close the child's pool ...
        gc.collect()  # ... and collect: any wrongful close of an inherited one happens now
        send.send(("ok", result))
    except BaseException as exc:
        send.send(("error", repr(exc)))
    finally:
        send.close()


def run_child(target, wait: float = WAIT) -> tuple[str, object]:
    """Run `target(send)` in a forked child: what it sent, or ("hung", None) when it sent
    nothing within `wait` seconds (then it is killed)."""
    ctx = multiprocessing.get_context("fork")
    recv, send = ctx.Pipe(duplex=False)
    child = ctx.Process(target=target, args=(send,))
    child.start()
    send.close()
    try:
        if not recv.poll(wait):
            child.kill()
            return ("hung", None)
        outcome = recv.recv()
    finally:
        child.join(WAIT)
        recv.close()
    assert child.exitcode == 0
    return outcome


@FORK_WHILE_THREADED
def test_a_forked_child_gets_a_fresh_connection_and_the_parents_keeps_working(
    server, make_global_pool
):
    opened: list[int] = []  # session numbers only: no reference may keep a connection alive

    def get_conn() -> SessionConnection:
        conn = SessionConnection(server.address)
        opened.append(conn.session)
        return conn

    make_global_pool(get_conn)
    parent_session, parent_pid, answer = ask()
    assert (parent_pid, answer) == (os.getpid(), parent_session)

    status, result = run_child(child_main)

    assert status == "ok", result
    child_session, child_pid, child_answer = result
    assert child_pid != os.getpid()  # opened in the child ...
    assert child_session != parent_session  # ... as a session of its own
    assert child_answer == child_session
    # The child closed its own connection: the server heard that goodbye ...
    wait_until(lambda: server.said_bye(child_session), timeout=WAIT, what="the child's goodbye")
    # ... and none from the parent's session, which still answers, on the same connection.
    assert ask() == (parent_session, os.getpid(), parent_session)
    assert not server.said_bye(parent_session)
    assert opened == [parent_session]  # in this process: the child's list is its own


@FORK_WHILE_THREADED
def test_a_child_forked_while_the_parents_connection_is_in_use_gets_a_fresh_one(
    server, make_global_pool
):
    make_global_pool(lambda: SessionConnection(server.address))

    @with_conn
    def fork_while_in_use(conn):
        before = conn.request()
        outcome = run_child(child_main)
        return before, outcome, conn.request()

    before, (status, result), after = fork_while_in_use()

    assert status == "ok", result
    child_session, child_pid, _ = result
    assert child_pid != os.getpid()
    assert child_session != before
    assert after == before
    wait_until(lambda: server.said_bye(child_session), timeout=WAIT, what="the child's goodbye")
    assert not server.said_bye(before)
    assert ask()[0] == before


@FORK_WHILE_THREADED
def test_a_child_leaving_a_checkout_that_close_gave_up_on_leaves_the_parents_session(
    server, make_pool, pool_cls
):
    # close(timeout) gave up on the connection this thread holds (counted closed, left to
    # its holder, off the pool's list), then the thread forked. The child's release of that
    # checkout closed the parent's session: the fork hook had not seen the connection.
    pool = make_pool(lambda: SessionConnection(server.address), pool_cls=pool_cls)

    def leave_the_checkout(send) -> None:
        try:
            held.close()  # the child's copy of the wrapper: released in the child
            gc.collect()
            send.send(("ok", None))
        except BaseException as exc:
            send.send(("error", repr(exc)))
        finally:
            send.close()

    with pool.connect() as held:
        session = held.request()
        pool.close(timeout=0)  # gives up on it at once
        status, result = run_child(leave_the_checkout)
        assert status == "ok", result
        assert held.request() == session  # the parent's session still answers
        assert not server.said_bye(session)
    # Released in the parent, its holder: closed now, with the goodbye.
    wait_until(lambda: server.said_bye(session), timeout=WAIT, what="the parent's goodbye")


@FORK_WHILE_THREADED
def test_a_child_forked_while_another_thread_makes_and_closes_pools_can_make_its_own(
    server,
):
    # A module lock that every Pool() and close() takes was not renewed in the child: one
    # forked while another thread held it waited for that thread (absent there) for good.
    stop = threading.Event()

    def churn() -> None:
        for _ in range(1_000_000):
            if stop.is_set():
                return
            qdbpool.SingletonPool(lambda: SessionConnection(server.address)).close()

    def make_and_close(send) -> None:
        try:
            qdbpool.SingletonPool(lambda: SessionConnection(server.address)).close()
            send.send(("ok", None))
        except BaseException as exc:
            send.send(("error", repr(exc)))
        finally:
            send.close()

    churner = threading.Thread(target=churn, daemon=True)
    churner.start()
    try:
        outcomes = [run_child(make_and_close, wait=5.0) for _ in range(60)]
    finally:
        stop.set()
        churner.join(WAIT)
    assert outcomes == [("ok", None)] * 60
