"""A single-node etcd on 127.0.0.1 high ports: the DCS of the test bed's Patroni clusters."""

from __future__ import annotations

import json
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path

from qdbpool.testing._child import ChildProcess
from qdbpool.testing._process import (
    LOOPBACK,
    ServerUnavailable,
    find_binary,
    free_port,
    log_tail,
    wait_until,
)


def find_etcd() -> str:
    """The path of the etcd server binary; ServerUnavailable if it is not installed."""
    try:
        return find_binary("etcd", "/usr/bin", "/usr/local/bin")
    except ServerUnavailable as exc:
        raise ServerUnavailable(f"{exc}; install it, e.g. `apt-get install etcd-server`") from None


class Etcd:
    """One etcd member alone in its cluster, its data in `directory`; stopped by its own pid."""

    host = LOOPBACK

    def __init__(self, directory: Path, pick_port: Callable[[], int] = free_port) -> None:
        self.binary = find_etcd()
        self.pick_port = pick_port
        self.directory = directory
        self.log_path = directory.parent / "etcd.log"
        self.client_port = 0
        self.peer_port = 0
        self._proc: ChildProcess | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.client_port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.running() else None

    def log_tail(self, lines: int = 30) -> str:
        return log_tail(self.log_path, lines)

    def launch(self) -> None:
        """Start etcd without waiting for it (Patroni members start beside it)."""
        self.client_port = self.pick_port()
        self.peer_port = self.pick_port()
        peer = f"http://{self.host}:{self.peer_port}"
        argv = [
            self.binary,
            "--name", "qdbpool",
            "--data-dir", str(self.directory),
            "--listen-client-urls", self.url,
            "--advertise-client-urls", self.url,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"qdbpool={peer}",
            "--initial-cluster-state", "new",
            "--initial-cluster-token", self.directory.parent.name,
            "--logger", "zap",
            "--log-level", "warn",
        ]  # fmt: skip
        self._proc = ChildProcess(argv, log_path=self.log_path)

    def await_started(self, timeout: float) -> None:
        def outcome() -> str | None:
            if self._proc is None or not self._proc.running():
                return "exited"
            with urllib.request.urlopen(self.url + "/health", timeout=1) as response:
                healthy = json.loads(response.read()).get("health") == "true"
            return "healthy" if healthy else None

        try:
            result = wait_until(outcome, timeout=timeout, interval=0.02, what="etcd healthy")
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\n{self.log_tail()}") from None
        if result == "exited":
            raise RuntimeError(f"etcd exited:\n{self.log_tail()}")

    def stop(self, timeout: float = 10.0) -> None:
        if self._proc is not None:
            self._proc.stop(signal.SIGTERM, timeout=timeout)
