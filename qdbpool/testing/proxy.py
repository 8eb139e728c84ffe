"""A loopback TCP forwarder whose network faults a test switches on and off at runtime.

    with FaultProxy(node.host, node.port) as proxy:
        conn = psycopg.connect(host=proxy.host, port=proxy.port, ...)
        proxy.stall()         # a blackholed host: nothing moves, nothing is closed
        proxy.pass_through()  # the network heals: queued bytes flow again
        proxy.refuse()        # nothing listens: connects fail, open connections are reset
        proxy.reset()         # RST every open connection, keep accepting new ones

Design: one background thread runs a selector over the listening socket and both ends of
every connection. Control methods hand a closure to that thread and return only once it has
run, so when `stall()` returns the stall is in effect: tests need no sleeps. Only the loop
thread touches sockets.

Forwarding reads from one side only while the bytes already read from it have been written
to the other side (bounded buffers), so a slow reader slows its writer down as in a real
network. A stall simply stops reading and writing; the kernel's buffers fill up, then the
peers block, exactly as when packets are dropped. Closing is forwarded as closing: a FIN
becomes a FIN (half-close), a reset becomes a reset.
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import queue
import selectors
import socket
import struct
import threading
from collections.abc import Callable
from types import TracebackType

__all__ = ["FaultProxy", "Mode"]

log = logging.getLogger("qdbpool.testing")

_CHUNK = 64 * 1024
_MAX_BUFFERED = 256 * 1024  # per direction; reading pauses above it
_CONTROL_TIMEOUT = 10.0  # a control call that takes longer means the loop thread is stuck


class Mode(enum.Enum):
    PASS = "pass-through"
    STALL = "stall"
    REFUSE = "refuse"


def _abort(sock: socket.socket) -> None:
    """Close with a TCP reset (RST) instead of a FIN: SO_LINGER on, timeout 0."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


class _Command:
    """A closure for the loop thread, and a way for the caller to wait for its outcome."""

    def __init__(self, action: Callable[[], None]) -> None:
        self.action = action
        self.done = threading.Event()
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self.action()
        except Exception as exc:  # handed back to the calling thread
            self.failure = exc
        finally:
            self.done.set()

    def fail(self, exc: BaseException) -> None:
        self.failure = exc
        self.done.set()


class _End:
    """One socket of a forwarded connection and the bytes waiting to be written to it."""

    def __init__(self, sock: socket.socket | None) -> None:
        self.sock = sock
        self.outbox = bytearray()
        self.eof = False  # it sent us FIN: nothing more will come from it
        self.shut = False  # we sent it FIN
        self.events = 0  # what it is registered for in the selector


class _Link:
    """A client connection and its connection to the target."""

    def __init__(self, client: socket.socket) -> None:
        self.client = _End(client)
        self.server = _End(None)
        self.connected = False  # the connection to the target is established

    def peer(self, end: _End) -> _End:
        return self.server if end is self.client else self.client

    def ends(self) -> tuple[_End, _End]:
        return self.client, self.server


class FaultProxy:
    """Forward `listen_host:port` to `target_host:target_port`, with switchable faults.

    Starts forwarding on construction; `close()` (or leaving the `with` block) stops the
    thread and closes every socket. `listen_port=0` picks a free port, kept for the proxy's
    lifetime (also across `refuse()` / `pass_through()`).
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        *,
        max_connections: int = 256,
    ) -> None:
        family, _, _, _, address = socket.getaddrinfo(
            target_host, target_port, type=socket.SOCK_STREAM
        )[0]
        self.target = (target_host, target_port)
        self._target_family = family
        self._target_address = address
        self.host = listen_host
        self._max_connections = max_connections
        self._mode = Mode.PASS
        self._links: set[_Link] = set()
        self._accepted = 0
        self._selector = selectors.DefaultSelector()
        self._commands: queue.SimpleQueue[_Command] = queue.SimpleQueue()
        self._closing = False
        self._closed = False
        self._close_lock = threading.Lock()
        self._listener: socket.socket | None = None
        try:
            self._open_listener(listen_port)
        except OSError:
            self._selector.close()
            raise
        assert self._listener is not None
        self.port: int = self._listener.getsockname()[1]
        # Writing a byte to _wake_w interrupts the selector so it picks up commands.
        self._wake_r: socket.socket
        self._wake_w: socket.socket
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, lambda _mask: self._on_wake())
        self._thread: threading.Thread = threading.Thread(
            target=self._run, name=f"qdbpool-fault-proxy-{self.port}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        state = "closed" if self._closing else f"{self._mode.value}, {self.connections} connections"
        return f"<FaultProxy {self.host}:{self.port} -> {self.target[0]}:{self.target[1]} {state}>"

    # -- what tests use --------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.port

    @property
    def mode(self) -> Mode:
        return self._mode

    @property
    def connections(self) -> int:
        """Client connections currently open through the proxy (stalled ones included)."""
        return len(self._links)

    @property
    def accepted(self) -> int:
        """Client connections accepted since the proxy started."""
        return self._accepted

    def pass_through(self) -> None:
        """Forward everything; resume stalled connections; listen again after `refuse()`."""
        self._control(lambda: self._set_mode(Mode.PASS))

    def stall(self) -> None:
        """Behave like a blackholed host: keep accepting connections, but forward nothing in
        either direction, on new and existing connections alike, and close nothing."""
        self._control(lambda: self._set_mode(Mode.STALL))

    def refuse(self) -> None:
        """Stop listening (connects get ECONNREFUSED) and reset every open connection."""
        self._control(lambda: self._set_mode(Mode.REFUSE))

    def reset(self) -> None:
        """Reset (RST) every open connection; keep accepting new ones in the current mode."""
        self._control(self._abort_all)

    def close(self) -> None:
        """Stop the thread; reset every connection; close every socket. Idempotent."""
        with self._close_lock:
            if self._closing:
                return
            self._closing = True
        self._wake()
        self._thread.join(_CONTROL_TIMEOUT)
        if self._thread.is_alive():
            log.warning("fault proxy thread %s did not stop", self._thread.name)
        else:
            self._close_everything()  # no-op unless the loop died before its own cleanup

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- control: run a closure on the loop thread and wait for it ---------------------------

    def _control(self, action: Callable[[], None]) -> None:
        if self._closing or not self._thread.is_alive():
            raise RuntimeError("the fault proxy is closed")
        command = _Command(action)
        self._commands.put(command)
        self._wake()
        if not command.done.wait(_CONTROL_TIMEOUT):
            raise TimeoutError("the fault proxy thread did not respond")
        if command.failure is not None:
            raise command.failure

    def _wake(self) -> None:
        # A full socket buffer means a wake-up is already pending: nothing to do.
        with contextlib.suppress(BlockingIOError, OSError):
            self._wake_w.send(b"\0")

    def _on_wake(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while self._wake_r.recv(4096):
                pass
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            command.run()

    # -- the loop ------------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._closing:
                for key, mask in self._selector.select():
                    handler: Callable[[int], None] = key.data
                    handler(mask)
        except Exception:
            log.exception("fault proxy %s:%s failed", self.host, self.port)
        finally:
            self._close_everything()

    def _close_everything(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._abort_all()
        self._close_listener()
        for sock in (self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()
        # A command that raced with close() fails now instead of waiting for its timeout.
        with contextlib.suppress(queue.Empty):
            while True:
                self._commands.get_nowait().fail(RuntimeError("the fault proxy is closed"))

    def _set_mode(self, mode: Mode) -> None:
        if mode is Mode.REFUSE:
            self._close_listener()
            self._abort_all()
        elif self._listener is None:
            self._open_listener(self.port)
        self._mode = mode
        for link in list(self._links):
            if mode is Mode.PASS and link.server.sock is None:
                self._connect_target(link)  # accepted while stalled
            self._update(link)

    # -- listening -----------------------------------------------------------------------------

    def _open_listener(self, port: int) -> None:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            # The port must be bindable again right after refuse(), even with connections
            # of ours still in TIME_WAIT on it.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, port))
            sock.listen(128)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        self._listener = sock
        self._selector.register(sock, selectors.EVENT_READ, lambda _mask: self._on_accept())

    def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(KeyError, ValueError):
                self._selector.unregister(self._listener)
            # Closing also resets connections still waiting in the accept queue.
            self._listener.close()
            self._listener = None

    def _on_accept(self) -> None:
        while self._listener is not None:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. out of file descriptors: refuse this one only
                log.debug("fault proxy accept failed: %s", exc)
                return
            self._accepted += 1
            if len(self._links) >= self._max_connections:
                _abort(client)
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client)
            self._links.add(link)
            if self._mode is Mode.PASS:
                self._connect_target(link)
            self._update(link)

    def _connect_target(self, link: _Link) -> None:
        try:
            sock = socket.socket(self._target_family, socket.SOCK_STREAM)
        except OSError as exc:  # out of file descriptors: this connection only is reset
            log.debug("fault proxy could not connect to its target: %s", exc)
            self._drop(link)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link.server.sock = sock
        code = sock.connect_ex(self._target_address)
        if code == 0:
            link.connected = True
        elif code not in (errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN):
            # The target refuses: the client sees its connection reset, as with a dead host.
            self._drop(link)

    # -- forwarding ----------------------------------------------------------------------------

    def _wanted_events(self, link: _Link, end: _End) -> int:
        if self._mode is not Mode.PASS or end.sock is None:
            return 0
        if not link.connected:
            # Writable means the connect to the target completed (or failed).
            return selectors.EVENT_WRITE if end is link.server else 0
        events = 0
        if not end.eof and len(link.peer(end).outbox) < _MAX_BUFFERED:
            events |= selectors.EVENT_READ
        if end.outbox:
            events |= selectors.EVENT_WRITE
        return events

    def _update(self, link: _Link) -> None:
        """Register each end of `link` for exactly what it may do now."""
        if link not in self._links:
            return  # dropped meanwhile (e.g. the target refused at once)
        for end in link.ends():
            if end.sock is None:
                continue
            wanted = self._wanted_events(link, end)
            if wanted == end.events:
                continue
            if end.events == 0:
                self._selector.register(end.sock, wanted, self._handler(link, end))
            elif wanted == 0:
                self._selector.unregister(end.sock)
            else:
                self._selector.modify(end.sock, wanted, self._handler(link, end))
            end.events = wanted

    def _handler(self, link: _Link, end: _End) -> Callable[[int], None]:
        def on_ready(mask: int) -> None:
            # Events were selected before the earlier handlers of this round ran: one may have
            # dropped the link, or a command may have stalled it. Act on what still holds.
            mask &= end.events
            if mask and link in self._links:
                self._on_ready(link, end, mask)

        return on_ready

    def _on_ready(self, link: _Link, end: _End, mask: int) -> None:
        assert end.sock is not None
        if not link.connected:
            if end.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                self._drop(link)  # the target refused
                return
            link.connected = True
        else:
            try:
                if mask & selectors.EVENT_READ:
                    self._receive(link, end)
                if mask & selectors.EVENT_WRITE:
                    self._send(end)
                self._forward_eof(link)
            except (BlockingIOError, InterruptedError):
                pass
            except OSError:  # reset by the peer, broken pipe ...: pass the reset on
                self._drop(link)
                return
            if all(e.eof and e.shut and not e.outbox for e in link.ends()):
                self._finish(link)
                return
        self._update(link)

    def _receive(self, link: _Link, end: _End) -> None:
        assert end.sock is not None
        data = end.sock.recv(_CHUNK)
        if data:
            link.peer(end).outbox += data
        else:
            end.eof = True

    def _send(self, end: _End) -> None:
        assert end.sock is not None
        sent = end.sock.send(end.outbox)
        del end.outbox[:sent]

    def _forward_eof(self, link: _Link) -> None:
        """Once one side has said all it will say and it was delivered, close that direction."""
        for end in link.ends():
            peer = link.peer(end)
            if end.eof and not peer.shut and not peer.outbox and peer.sock is not None:
                peer.sock.shutdown(socket.SHUT_WR)
                peer.shut = True

    # -- closing connections -------------------------------------------------------------------

    def _forget(self, link: _Link) -> list[socket.socket]:
        self._links.discard(link)
        socks: list[socket.socket] = []
        for end in link.ends():
            if end.sock is not None:
                if end.events:
                    with contextlib.suppress(KeyError, ValueError):
                        self._selector.unregister(end.sock)
                    end.events = 0
                socks.append(end.sock)
                end.sock = None
        return socks

    def _drop(self, link: _Link) -> None:
        """Reset both sides of a connection."""
        for sock in self._forget(link):
            _abort(sock)

    def _finish(self, link: _Link) -> None:
        """Close a connection both sides have finished with."""
        for sock in self._forget(link):
            sock.close()

    def _abort_all(self) -> None:
        for link in list(self._links):
            self._drop(link)
