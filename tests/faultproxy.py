"""A small fault-injecting TCP forwarder for tests: put it between the proxy and a real server.

It forwards byte for byte on 127.0.0.1 until told otherwise:
- ``refuse()``: new connections are accepted and closed at once, open ones are cut (an outage);
- ``cut_upstream_after(n)``: after n more bytes towards the server, on whichever connection
  carries them, that connection is reset (a backend that drops the connection mid-body);
- ``heal()``: back to forwarding.

``requests`` lists the request lines ("GET /bucket/key HTTP/1.1") it has passed on, to count
the round trips a proxy makes.
"""

from __future__ import annotations

import contextlib
import re
import socket
import threading


class FaultProxy:
    def __init__(self, target_host: str, target_port: int):
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._refusing = False
        self._cut_after: int | None = None
        self._open: set[socket.socket] = set()
        self._stopped = False
        self.cuts = 0
        self.requests: list[str] = []
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def refuse(self) -> None:
        with self._lock:
            self._refusing = True
            for s in list(self._open):
                _reset(s)

    def heal(self) -> None:
        with self._lock:
            self._refusing = False
            self._cut_after = None

    def cut_upstream_after(self, nbytes: int) -> None:
        with self._lock:
            self._cut_after = nbytes

    def stop(self) -> None:
        self._stopped = True
        self.refuse()
        self._listener.close()

    def _accept_loop(self) -> None:
        while not self._stopped:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refusing = self._refusing
            if refusing:
                _reset(client)
                continue
            try:
                server = socket.create_connection(self._target, timeout=5)
            except OSError:
                _reset(client)
                continue
            server.settimeout(None)
            with self._lock:
                self._open.update((client, server))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _take(self, n: int) -> int | None:
        """How much of n upstream bytes may pass before a cut, or None for all of them."""
        with self._lock:
            if self._cut_after is None:
                return None
            if n < self._cut_after:
                self._cut_after -= n
                return None
            allowed, self._cut_after = self._cut_after, None
            self.cuts += 1
            return allowed

    def _note_requests(self, data: bytes) -> None:
        for line in _REQUEST_LINE.findall(data):
            with self._lock:
                self.requests.append(line.decode("latin-1"))

    def _pump(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if upstream:
                    self._note_requests(data)
                allowed = self._take(len(data)) if upstream else None
                if allowed is not None:
                    dst.sendall(data[:allowed])
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                _reset(s)
            with self._lock:
                self._open.discard(src)
                self._open.discard(dst)


_REQUEST_LINE = re.compile(rb"(?:GET|HEAD|PUT|POST|DELETE) /\S* HTTP/1\.[01](?=\r\n)")


def _reset(s: socket.socket) -> None:
    """Close with RST, as a crashed peer or a dropped network would."""
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        s.close()
