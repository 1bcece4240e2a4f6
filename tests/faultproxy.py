"""A small fault-injecting TCP forwarder for tests: put it between the proxy and a real server.

It forwards byte for byte on 127.0.0.1 until told otherwise:
- ``refuse()``: new connections are accepted and closed at once, open ones are cut (an outage);
- ``cut_upstream_after(n)``: after n more bytes towards the server, on whichever connection
  carries them, that connection is reset (a backend that drops the connection mid-body);
- ``cut_downstream_after(n)``: the same towards the client (a reset mid-response);
- ``stall_upstream_after(n)`` / ``stall_downstream_after(n)``: after n more bytes in that
  direction the connection carrying them goes silent both ways: nothing more is read or sent
  (TCP flow control pushes back on the sender), it is never closed by the forwarder — until
  ``heal()`` or the client side gives up;
- ``stall()``: every connection, open or new, goes silent that way (a server that hangs);
- ``answer_http(status, path=..., times=...)``: requests whose request line matches ``path`` (a
  regular expression; every request without it) are not forwarded but answered with ``status``
  and a Vault-style JSON error, then the connection is closed (a server that says 500/503);
  ``times`` limits how many are answered before forwarding resumes;
- ``heal()``: back to forwarding; stalled connections are reset.

Each ``*_after`` fault fires once, on the first connection to cross the count. Counters: ``cuts``,
``stalls`` (connections stalled by a ``*_after`` fault), ``answered`` (HTTP errors sent),
``abandoned`` (stalled connections the client side closed: the proxy gave up on them; a client
that closes with bytes still unsent is not seen, as its FIN waits behind them),
``upstream_bytes`` / ``downstream_bytes`` (forwarded so far). ``requests`` lists the request
lines ("GET /bucket/key HTTP/1.1") it has seen towards the server, to count round trips.
``clear_counts()`` zeroes all of them.
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
from dataclasses import dataclass, field
from http import HTTPStatus

_FORWARD, _CUT, _STALL = "forward", "cut", "stall"
_TCP_ESTABLISHED = 1


@dataclass(eq=False)
class _Conn:
    """One client connection and the server connection it is forwarded to."""

    client: socket.socket
    server: socket.socket
    stalled: bool = False
    eofs: int = 0  # directions that ended with a clean close
    ended: threading.Event = field(default_factory=threading.Event)


@dataclass
class _HttpFault:
    status: int
    path: re.Pattern[str] | None
    times: int | None


class FaultProxy:
    def __init__(self, target_host: str, target_port: int):
        self._target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._refusing = False
        self._stalling = False
        # Per direction ("up" towards the server, "down" towards the client): (kind, bytes left).
        self._armed: dict[str, tuple[str, int] | None] = {"up": None, "down": None}
        self._http: _HttpFault | None = None
        self._conns: set[_Conn] = set()
        self._stopped = False
        self.clear_counts()
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    # ---------------------------------------------------------------- faults

    def refuse(self) -> None:
        with self._lock:
            self._refusing = True
            open_now = list(self._conns)
        for conn in open_now:
            self._close(conn)

    def stall(self) -> None:
        with self._lock:
            self._stalling = True
            for conn in self._conns:
                conn.stalled = True

    def heal(self) -> None:
        with self._lock:
            self._refusing = self._stalling = False
            self._armed = {"up": None, "down": None}
            self._http = None
            stalled = [c for c in self._conns if c.stalled]
        for conn in stalled:
            self._close(conn)

    def clear_counts(self) -> None:
        """Zero the counters and forget the requests seen (one forwarder, many tests)."""
        with self._lock:
            self.cuts = self.stalls = self.answered = self.abandoned = 0
            self.upstream_bytes = self.downstream_bytes = 0
            self.requests: list[str] = []

    def cut_upstream_after(self, nbytes: int) -> None:
        self._arm("up", _CUT, nbytes)

    def cut_downstream_after(self, nbytes: int) -> None:
        self._arm("down", _CUT, nbytes)

    def stall_upstream_after(self, nbytes: int) -> None:
        self._arm("up", _STALL, nbytes)

    def stall_downstream_after(self, nbytes: int) -> None:
        self._arm("down", _STALL, nbytes)

    def answer_http(self, status: int, path: str | None = None, times: int | None = None) -> None:
        with self._lock:
            self._http = _HttpFault(status, re.compile(path) if path else None, times)

    def stop(self) -> None:
        self._stopped = True
        self.refuse()
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        self._listener.close()

    def _arm(self, direction: str, kind: str, nbytes: int) -> None:
        with self._lock:
            self._armed[direction] = (kind, nbytes)

    # ---------------------------------------------------------------- forwarding

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
            conn = _Conn(client, server)
            with self._lock:
                conn.stalled = self._stalling
                self._conns.add(conn)
            threading.Thread(target=self._pump, args=(conn, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(conn, False), daemon=True).start()

    def _decide(self, conn: _Conn, upstream: bool, n: int) -> tuple[str, int]:
        """What to do with n bytes in one direction: (verdict, how many of them to send)."""
        direction = "up" if upstream else "down"
        with self._lock:
            if conn.stalled or self._stalling:
                conn.stalled = True
                return _STALL, 0
            armed = self._armed[direction]
            if armed is not None:
                kind, left = armed
                if n < left:
                    self._armed[direction] = (kind, left - n)
                else:
                    self._armed[direction] = None
                    if kind == _CUT:
                        self.cuts += 1
                    else:
                        conn.stalled = True
                        self.stalls += 1
                    n = left
                    verdict = kind
                    self._count(upstream, n)
                    return verdict, n
            self._count(upstream, n)
            return _FORWARD, n

    def _count(self, upstream: bool, n: int) -> None:
        if upstream:
            self.upstream_bytes += n
        else:
            self.downstream_bytes += n

    def _note_requests(self, data: bytes) -> None:
        for line in _REQUEST_LINE.findall(data):
            with self._lock:
                self.requests.append(line.decode("latin-1"))

    def _answer(self, conn: _Conn, data: bytes) -> bool:
        """Answer the request that starts ``data`` with the armed HTTP error, if it matches."""
        line = _REQUEST_LINE.match(data)
        with self._lock:
            fault = self._http
            if fault is None or line is None:
                return False
            if fault.path is not None and not fault.path.search(line.group(0).decode("latin-1")):
                return False
            if fault.times is not None:
                fault.times -= 1
                if fault.times <= 0:
                    self._http = None
            self.answered += 1
        reason = HTTPStatus(fault.status).phrase
        body = json.dumps({"errors": [f"injected fault: {fault.status} {reason}"]}).encode()
        head = (
            f"HTTP/1.1 {fault.status} {reason}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        with contextlib.suppress(OSError):
            conn.client.sendall(head + body)
            conn.client.shutdown(socket.SHUT_WR)
            # Close only once the client has read the answer and closed its side: closing with
            # its request body unread would reset the connection and could lose the answer.
            conn.client.settimeout(5)
            while conn.client.recv(65536):
                pass
        return True

    def _hold(self, conn: _Conn) -> bool:
        """A stalled connection: wait until healed or the client side goes away (True)."""
        while not conn.ended.wait(0.1):
            if _peer_gone(conn.client):
                return True
        return False

    def _pump(self, conn: _Conn, upstream: bool) -> None:
        src, dst = (conn.client, conn.server) if upstream else (conn.server, conn.client)
        try:
            while True:
                try:
                    data = src.recv(65536)
                except OSError:  # src reset: so is dst
                    self._close(conn, client_gone=upstream)
                    return
                if not data:
                    self._end_of_stream(conn, dst, upstream)
                    return
                if upstream:
                    self._note_requests(data)
                    if self._answer(conn, data):
                        break
                verdict, allowed = self._decide(conn, upstream, len(data))
                if allowed:
                    dst.sendall(data[:allowed])
                if verdict == _CUT:
                    break
                if verdict == _STALL:
                    self._close(conn, client_gone=self._hold(conn))
                    return
        except OSError:
            pass
        self._close(conn)

    def _end_of_stream(self, conn: _Conn, dst: socket.socket, upstream: bool) -> None:
        """src closed its side cleanly: pass the close on once everything before it is sent,
        and let the other direction finish; a stalled connection is reset instead."""
        with self._lock:
            conn.eofs += 1
            both = conn.eofs == 2
            stalled = conn.stalled
        if stalled:
            self._close(conn, client_gone=upstream)
            return
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)
        if both:
            self._close(conn, graceful=True)

    def _close(self, conn: _Conn, client_gone: bool = False, graceful: bool = False) -> None:
        with self._lock:
            first = conn in self._conns
            self._conns.discard(conn)
            if first and client_gone and conn.stalled:
                self.abandoned += 1
        conn.ended.set()
        for s in (conn.client, conn.server):
            if graceful:
                with contextlib.suppress(OSError):
                    s.close()
            else:
                _reset(s)


_REQUEST_LINE = re.compile(rb"(?:GET|HEAD|PUT|POST|DELETE) /\S* HTTP/1\.[01](?=\r\n)")


def _peer_gone(s: socket.socket) -> bool:
    """The other end closed or reset the connection (Linux: TCP state is no longer ESTABLISHED)."""
    try:
        return s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0] != _TCP_ESTABLISHED
    except (OSError, AttributeError):
        return False


def _reset(s: socket.socket) -> None:
    """Close with RST, as a crashed peer or a dropped network would.

    ``shutdown(SHUT_RD)`` first wakes a thread blocked in ``recv`` on this socket (a plain close
    would not, and the socket would stay open until data arrived); the RST goes out when that
    thread lets go of it.
    """
    with contextlib.suppress(OSError):
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    with contextlib.suppress(OSError):
        s.shutdown(socket.SHUT_RD)
    with contextlib.suppress(OSError):
        s.close()
