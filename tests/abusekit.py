"""Hand-framed HTTP for protocol-abuse tests: SigV4-signed requests put on a raw socket byte by
byte as the test wants them (two Content-Lengths, a smuggled second request, a body that stops
half-way), their answers read back one by one, and a small HTTP/2 client on the ``h2`` package.

Signatures come from botocore's ``SigV4Auth``, never from the proxy's own code, so a request the
proxy accepts is one a real SDK could have sent.
"""

from __future__ import annotations

import hashlib
import http.client
import select
import socket
import ssl
import struct
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

REGION = "us-east-1"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
Headers = list[tuple[str, str]]


@dataclass(frozen=True)
class Signer:
    """Signs requests for one endpoint (the proxy) with one key pair."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str = REGION

    @property
    def hostport(self) -> tuple[str, int]:
        parts = urlsplit(self.endpoint)
        assert parts.hostname is not None and parts.port is not None
        return parts.hostname, parts.port

    def headers(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        payload_hash: str | None = None,
        extra: Sequence[tuple[str, str]] = (),
        signed_late: Sequence[tuple[str, str]] = (),
        content_length: int | None = None,
    ) -> Headers:
        """The headers of a signed request, Host first, in the order they go on the wire.

        ``payload_hash`` defaults to the SHA-256 of ``body`` (or UNSIGNED-PAYLOAD without one).
        ``extra`` headers are signed as given; a name given twice is sent (and signed) twice,
        Host included. ``signed_late`` headers are added after botocore has set its own
        X-Amz-Date, so a second X-Amz-Date can be signed too. ``content_length`` adds a
        Content-Length header (unsigned, as SDKs send it).
        """
        if payload_hash is None:
            payload_hash = (
                hashlib.sha256(body).hexdigest() if body is not None else UNSIGNED_PAYLOAD
            )
        request = AWSRequest(method, self.endpoint + path)
        request.headers["Host"] = urlsplit(self.endpoint).netloc
        request.headers["x-amz-content-sha256"] = payload_hash
        for name, value in extra:
            request.headers[name] = value  # botocore's headers append: repeats are kept
        credentials = Credentials(self.access_key, self.secret_key)
        _LateHeaders(credentials, "s3", self.region, signed_late).add_auth(request)
        out: Headers = list(request.headers.items())
        if content_length is not None:
            out.append(("Content-Length", str(content_length)))
        return out

    def h2_headers(self, method: str, path: str, scheme: str = "https", **kwargs: Any) -> Headers:
        """The same signed request as HTTP/2 sends it: Host becomes ``:authority``."""
        signed = self.headers(method, path, **kwargs)
        authority = next(v for n, v in signed if n.lower() == "host")
        pseudo = [(":method", method), (":scheme", scheme), (":authority", authority)]
        rest = [(n.lower(), v) for n, v in signed if n.lower() != "host"]
        return [*pseudo, (":path", path), *rest]


class _LateHeaders(SigV4Auth):
    """SigV4Auth that adds some headers after it has set X-Amz-Date, and signs them too."""

    def __init__(
        self, credentials: Credentials, service: str, region: str, late: Sequence[tuple[str, str]]
    ) -> None:
        super().__init__(credentials, service, region)
        self._late = late

    def _modify_request_before_signing(self, request: AWSRequest) -> None:
        super()._modify_request_before_signing(request)
        for name, value in self._late:
            request.headers[name] = value


def request_head(method: str, path: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """An HTTP/1.1 request line and header block, exactly as given."""
    lines = [f"{method} {path} HTTP/1.1", *(f"{n}: {v}" for n, v in headers), "", ""]
    return "\r\n".join(lines).encode("latin-1")


def chunked(body: bytes, size: int = 8192) -> bytes:
    """``body`` in HTTP/1.1 chunked transfer coding, with the last chunk."""
    out = bytearray()
    for i in range(0, len(body), size):
        piece = body[i : i + size]
        out += f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    return bytes(out + b"0\r\n\r\n")


# --------------------------------------------------------------------------- HTTP/1.1 answers


@dataclass
class Reply:
    status: int
    headers: Headers
    body: bytes

    def header(self, name: str) -> str | None:
        return next((v for n, v in self.headers if n.lower() == name.lower()), None)

    @property
    def s3_code(self) -> str | None:
        """The <Code> of an S3 error body, if it is one."""
        text = self.body.decode("utf-8", "replace")
        start, end = text.find("<Code>"), text.find("</Code>")
        return text[start + 6 : end] if "<Error>" in text and 0 <= start < end else None


class _KeepOpen:
    """The connection's read buffer, which http.client may not close after each answer."""

    def __init__(self, f: Any) -> None:
        self._f = f

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)

    def close(self) -> None:
        pass

    def flush(self) -> None:
        pass


class _Wire:
    def __init__(self, f: Any) -> None:
        self._f = _KeepOpen(f)

    def makefile(self, *_args: object, **_kwargs: object) -> Any:
        return self._f


class Connection:
    """One client connection to the proxy, written to raw and read answer by answer."""

    def __init__(
        self,
        signer: Signer,
        timeout: float = 30,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        sock = socket.create_connection(signer.hostport, timeout=timeout)
        if tls is not None:
            sock = tls.wrap_socket(sock, server_hostname="localhost")
        self.sock: socket.socket = sock
        self._rfile = self.sock.makefile("rb")
        self.closed_by_peer = False

    @property
    def alpn(self) -> str | None:
        """The protocol TLS negotiated (``h2``, ``http/1.1``), None without TLS or ALPN."""
        if isinstance(self.sock, ssl.SSLSocket):
            return self.sock.selected_alpn_protocol()
        return None

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def trickle(self, data: bytes, pieces: int, seconds: float) -> None:
        """Send ``data`` in ``pieces`` roughly equal writes spread over ``seconds``."""
        step = max(1, -(-len(data) // pieces))
        for i in range(0, len(data), step):
            self.sock.sendall(data[i : i + step])
            time.sleep(seconds / pieces)

    def silent_for(self, seconds: float) -> bool:
        """True if the proxy sent nothing (and did not close) for ``seconds``."""
        readable, _, _ = select.select([self.sock], [], [], seconds)
        return not readable

    def reply(self, method: str = "GET") -> Reply | None:
        """The next answer, or None once the proxy has closed the connection."""
        resp = http.client.HTTPResponse(_Wire(self._rfile), method=method)  # type: ignore[arg-type]
        try:
            resp.begin()
            body = resp.read()
        except (
            http.client.RemoteDisconnected,
            http.client.IncompleteRead,
            ConnectionError,
            ssl.SSLError,
        ):
            self.closed_by_peer = True
            return None
        return Reply(resp.status, list(resp.getheaders()), body)

    def replies_until_closed(self, limit: int = 5) -> list[Reply]:
        """Every answer until the proxy closes the connection (at most ``limit``); a
        connection still open at the socket timeout ends the list as well."""
        out: list[Reply] = []
        while len(out) < limit:
            try:
                got = self.reply()
            except TimeoutError:
                break
            if got is None:
                break
            out.append(got)
        return out

    def abort(self) -> None:
        """Drop the connection with a reset, as a crashed client or a cut network does."""
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()

    def close(self) -> None:
        self._rfile.close()
        self.sock.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------- HTTP/2


@dataclass
class H2Answer:
    """What one HTTP/2 stream ended with: a response, a reset, or the connection going away."""

    status: int | None = None
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    reset: int | None = None  # the RST_STREAM error code
    ended: bool = False


def h2_exchange(
    sock: socket.socket | ssl.SSLSocket,
    requests: Sequence[tuple[Headers, bytes]],
    timeout: float = 30,
) -> tuple[list[H2Answer], bool]:
    """Send each (headers incl. pseudo-headers, body) on its own stream of one HTTP/2
    connection; return the answers and whether the peer ended the connection (GOAWAY or close).
    Bodies are sent as flow control allows."""
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(
        h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
    )
    conn.initiate_connection()
    answers: dict[int, H2Answer] = {}
    pending: dict[int, bytes] = {}
    for headers, body in requests:
        stream = conn.get_next_available_stream_id()
        answers[stream] = H2Answer()
        conn.send_headers(stream, headers, end_stream=not body)
        if body:
            pending[stream] = body

    def send_what_fits() -> None:
        for stream, rest in list(pending.items()):
            if answers[stream].ended:
                del pending[stream]
                continue
            while rest:
                window = min(conn.local_flow_control_window(stream), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                piece, rest = rest[:window], rest[window:]
                conn.send_data(stream, piece, end_stream=not rest)
            if rest:
                pending[stream] = rest
            else:
                del pending[stream]

    send_what_fits()
    sock.sendall(conn.data_to_send())
    sock.settimeout(timeout)
    gone = False
    deadline = time.monotonic() + timeout
    while not all(a.ended for a in answers.values()) and time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except (ConnectionError, ssl.SSLError, TimeoutError):
            data = b""
        if not data:
            gone = True
            break
        for event in conn.receive_data(data):
            answer = answers.get(getattr(event, "stream_id", 0) or 0)
            if isinstance(event, h2.events.ResponseReceived) and answer:
                answer.headers = [(str(n), str(v)) for n, v in event.headers]
                answer.status = int(dict(answer.headers)[":status"])
            elif isinstance(event, h2.events.DataReceived) and answer:
                answer.body += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded) and answer:
                answer.ended = True
            elif isinstance(event, h2.events.StreamReset) and answer:
                answer.reset, answer.ended = int(event.error_code), True
            elif isinstance(event, h2.events.ConnectionTerminated):
                gone = True
        send_what_fits()
        sock.sendall(conn.data_to_send())
        if gone:
            break
    return list(answers.values()), gone
