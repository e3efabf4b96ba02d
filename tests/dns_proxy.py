"""A TCP proxy in front of the tests' ``named`` that misbehaves on demand: it forwards, hangs
up on every connection once it has read the question (``hangup``), answers it with bytes that
are no DNS message (``garbage``), or holds each connection ``delay`` seconds before
forwarding it (a nameserver that answers slowly)."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

from harness import free_port


class Proxy:
    """Listens on a free port of 127.0.0.1 and forwards to ``127.0.0.1:upstream``."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.hangup = False
        self.garbage = False
        self.delay = 0.0
        self.connections = 0
        self.port = free_port()
        self._listener = socket.create_server(("127.0.0.1", self.port))
        self._listener.settimeout(0.2)
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._listener.close()

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            self.connections += 1
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        with client:
            if self.hangup or self.garbage:  # reads the question: no reset
                client.settimeout(5)
                with contextlib.suppress(OSError):
                    client.recv(65536)
                    if self.garbage:  # a length-prefixed message that is no DNS message
                        client.sendall(b"\x00\x05hello")
                return
            deadline = time.monotonic() + self.delay
            while time.monotonic() < deadline and not self._stopped.is_set():
                time.sleep(0.05)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
            except OSError:
                return
            with upstream:
                back = threading.Thread(target=_pipe, args=(upstream, client), daemon=True)
                back.start()
                _pipe(client, upstream)
                back.join(5)


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
        sink.shutdown(socket.SHUT_WR)
    except OSError:
        return
