"""A TCP proxy the tests can cut: every connection dropped and new ones refused, as
clients see a database server restarting, without touching the server itself."""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
from collections.abc import Iterator


class CuttableProxy:
    def __init__(self, target_host: str, target_port: int) -> None:
        self._target = (target_host, target_port)
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(128)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        # A connection belongs to the generation it was accepted in; a cut starts a new
        # one, and nothing of an older generation is forwarded again.
        self._generation = 0
        self._cut = threading.Event()
        self._closed = threading.Event()
        self.dropped = 0
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def cut(self) -> None:
        """Drop every connection; refuse new ones until restore()."""
        with self._lock:
            self._cut.set()
            self._generation += 1
            for sock in self._open:
                _drop(sock)
            self.dropped += len(self._open) // 2
            self._open.clear()

    def restore(self) -> None:
        self._cut.clear()

    def close(self) -> None:
        self._closed.set()
        self.cut()
        with contextlib.suppress(OSError):
            self._listener.close()

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                # Registered at once: a cut while its upstream is being dialled drops it.
                generation = self._generation
                if self._cut.is_set():
                    self.refused += 1
                    _drop(client)
                    continue
                self._open.add(client)
            try:
                upstream = socket.create_connection(self._target, timeout=5)
            except OSError:
                with self._lock:
                    self._open.discard(client)
                _drop(client)
                continue
            upstream.settimeout(None)
            with self._lock:
                if generation != self._generation:  # cut meanwhile: the client was dropped
                    _drop(upstream)
                    continue
                self._open.add(upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b, generation), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket, generation: int) -> None:
        try:
            while data := source.recv(65536):
                if generation != self._generation:
                    break  # received across a cut: never forwarded
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._open -= {source, sink}
            _drop(source)
            _drop(sink)


def _drop(sock: socket.socket) -> None:
    """Reset the connection: the peer sees it go at once, whatever state it was in. A
    shutdown that fails (the peer half-closed first) must not leave the socket open, or
    a client waiting for an answer on it waits for ever, the proxy holding it alive."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()


@contextlib.contextmanager
def cuttable_proxy(host: str, port: int) -> Iterator[CuttableProxy]:
    proxy = CuttableProxy(host, port)
    try:
        yield proxy
    finally:
        proxy.close()
