"""Infrastructure a fault test owns and can break: a Redis server on a port of its own,
and a TCP path to PostgreSQL it can cut.  The machine's shared servers are never touched."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers import free_port


@dataclass
class RedisServer:
    """``redis-server`` in the foreground on its own port: killed and started at will.

    Without persistence (the default here) a restart comes back empty, as a broker whose
    messages were lost; ``appendonly`` keeps them across restarts.
    """

    folder: Path
    appendonly: bool = False
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--dir", str(self.folder),
        ]  # fmt: skip
        log = (self.folder / "redis.log").open("ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while not self._answers():
            if time.monotonic() > deadline:
                raise AssertionError(f"redis-server did not start on {self.port}")
            time.sleep(0.05)
        return self

    def kill(self) -> None:
        """SIGKILL: whatever it held in memory is gone."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=10)
            self.process = None

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False


@dataclass
class CuttableProxy:
    """A TCP proxy in front of ``upstream``: ``cut()`` drops every connection and refuses
    new ones (as a database failover or a network partition does) until ``restore()``."""

    upstream: tuple[str, int]
    port: int = field(default_factory=free_port)
    _cut: threading.Event = field(default_factory=threading.Event)
    _open: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _server: socket.socket | None = None

    def start(self) -> CuttableProxy:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(128)
        self._server = server
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def url_for(self, url: str) -> str:
        """``url`` (a database URL) pointed at the proxy instead of the server."""
        host, port = self.upstream
        return url.replace(f"@{host}:{port}/", f"@127.0.0.1:{self.port}/")

    def cut(self) -> None:
        self._cut.set()
        with self._lock:
            for sock in list(self._open):
                _close(sock)
            self._open.clear()

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self.cut()
        if self._server is not None:
            _close(self._server)

    def _accept(self) -> None:
        assert self._server is not None
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            if self._cut.is_set():
                _close(client)
                continue
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._open.update((client, upstream))
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                _close(sock)
                with self._lock:
                    self._open.discard(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
