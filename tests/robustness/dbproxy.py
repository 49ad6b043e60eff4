"""A TCP proxy on 127.0.0.1 in front of the test PostgreSQL, which a test can cut and restore.

Cutting closes the listener and every open connection, which is what the server sees when the database pod
dies: established connections break and new ones are refused. Restoring listens again on the same port.
The shared session database keeps running, so other tests are unaffected.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import psycopg

from robustness.harness import HOST


@dataclass
class DbProxy:
    target: str | tuple[str, int]
    """A Unix socket path, or (host, port)."""
    port: int = 0
    _listener: socket.socket | None = None
    _conns: set[socket.socket] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def up(self) -> bool:
        return self._listener is not None

    def dsn(self, database_dsn: str) -> str:
        """`database_dsn` (for its user, database and password) routed through this proxy."""
        info = psycopg.conninfo.conninfo_to_dict(database_dsn)
        info.update(host=HOST, port=str(self.port))
        info.pop("hostaddr", None)
        return psycopg.conninfo.make_conninfo("", **{k: str(v) for k, v in info.items() if v is not None})

    def start(self) -> DbProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((HOST, self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def cut(self) -> None:
        """Refuse new connections and break every open one."""
        listener, self._listener = self._listener, None
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.shutdown(socket.SHUT_RDWR)
            listener.close()
        with self._lock:
            conns, self._conns = set(self._conns), set()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    def restore(self) -> None:
        if self._listener is None:
            self.start()

    def _connect_target(self) -> socket.socket:
        if isinstance(self.target, str):
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        else:
            upstream = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        upstream.connect(self.target)
        return upstream

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = self._connect_target()
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._conns.update((client, upstream))
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, sink):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


def target_of(dsn: str) -> str | tuple[str, int]:
    """Where `dsn` points: the Unix socket file, or (host, port)."""
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    host = str(info.get("host") or "/tmp")
    port = int(info.get("port") or 5432)
    if host.startswith("/"):
        return f"{host}/.s.PGSQL.{port}"
    return (host, port)


@contextlib.contextmanager
def proxy_for(dsn: str, *, start: bool = True) -> Iterator[DbProxy]:
    proxy = DbProxy(target_of(dsn))
    if start:
        proxy.start()
    else:
        # Reserve a port now so the server can be pointed at it before the "database" appears.
        proxy.start()
        proxy.cut()
    try:
        yield proxy
    finally:
        proxy.cut()
