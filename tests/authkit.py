"""Hand-made SigV4 requests for authentication-attack tests.

botocore's own signers sign them — ``S3SigV4Auth`` for the Authorization header,
``S3SigV4QueryAuth`` for presigned URLs — at whatever instant the test picks, in whatever region
and for whatever service. ``http.client`` then sends exactly the headers the test decides, so a
header can be changed, dropped or added after signing, the Host rewritten, the method swapped.
"""

from __future__ import annotations

import http.client
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from unittest import mock
from urllib.parse import urlsplit
from xml.etree import ElementTree

from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


class WrongS3Error(AssertionError):
    """The proxy refused, but not with the code, status or message S3 would have used."""


@dataclass(frozen=True)
class Answer:
    """What came back: the HTTP status and, for an S3 error body, its Code and Message."""

    status: int
    code: str | None
    message: str | None
    body: bytes


def expect_error(answer: Answer, code: str, status: int, message: str | None = None) -> None:
    """Raise WrongS3Error unless ``answer`` is the S3 error (code, status[, exact message])."""
    got = (answer.code, answer.status) + ((answer.message,) if message is not None else ())
    want = (code, status) + ((message,) if message is not None else ())
    if got != want:
        raise WrongS3Error(f"expected {want}, got {got}: {answer.body[:300]!r}")


def _error_fields(body: bytes) -> tuple[str | None, str | None]:
    try:
        root = ElementTree.fromstring(body)
    except ElementTree.ParseError:
        return None, None
    if root.tag != "Error":
        return None, None
    return root.findtext("Code"), root.findtext("Message")


@dataclass(frozen=True)
class Raw:
    """One request exactly as it goes on the wire: nothing is added but Content-Length."""

    method: str
    target: str  # path and query, as sent
    headers: tuple[tuple[str, str], ...]
    body: bytes = b""

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]

    def header(self, name: str) -> str:
        return next(v for n, v in self.headers if n.lower() == name.lower())

    def without(self, name: str) -> Raw:
        return replace(
            self, headers=tuple((n, v) for n, v in self.headers if n.lower() != name.lower())
        )

    def with_headers(self, *pairs: tuple[str, str]) -> Raw:
        return replace(self, headers=self.headers + pairs)

    def replacing(self, name: str, value: str) -> Raw:
        return self.without(name).with_headers((name, value))

    def send(self, endpoint: str, timeout: float = 30.0) -> Answer:
        """Send to ``endpoint`` (``http://host:port``) over a fresh connection."""
        parts = urlsplit(endpoint)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        try:
            conn.putrequest(self.method, self.target, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers:
                conn.putheader(name, value)
            names = {name.lower() for name, _ in self.headers}
            if (self.body or self.method in ("PUT", "POST")) and "content-length" not in names:
                conn.putheader("Content-Length", str(len(self.body)))
            conn.endheaders(self.body or None)
            response = conn.getresponse()
            body = response.read()
        finally:
            conn.close()
        return Answer(response.status, *_error_fields(body), body)


@contextmanager
def signing_clock(at: datetime) -> Iterator[None]:
    """botocore's pure Python signers sign at ``at`` instead of now."""
    naive_utc = at.astimezone(UTC).replace(tzinfo=None)

    def clock(remove_tzinfo: bool = True) -> datetime:
        return naive_utc if remove_tzinfo else naive_utc.replace(tzinfo=UTC)

    with mock.patch("botocore.auth.get_current_datetime", clock):
        yield


def _leaving_out(names: Iterable[str]) -> type[S3SigV4Auth]:
    """S3SigV4Auth that leaves ``names`` out of SignedHeaders (still sending them)."""
    dropped = {name.lower() for name in names}

    class LeavesHeadersOut(S3SigV4Auth):
        def headers_to_sign(self, request: AWSRequest):  # noqa: ANN201 - botocore's HTTPHeaders
            headers = super().headers_to_sign(request)
            for name in dropped:
                if name in headers:
                    del headers[name]
            return headers

    return LeavesHeadersOut


def _text(value: str | bytes) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else value


@dataclass(frozen=True)
class Signer:
    """Who signs, for which endpoint, region and service."""

    endpoint: str  # where requests are sent, http://host:port
    access_key: str
    secret_key: str
    region: str = "us-east-1"
    service: str = "s3"

    @property
    def netloc(self) -> str:
        return urlsplit(self.endpoint).netloc

    def _credentials(self) -> Credentials:
        return Credentials(self.access_key, self.secret_key)

    def header_signed(
        self,
        method: str,
        target: str,
        *,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        at: datetime | None = None,
        unsigned: Iterable[str] = (),
        host: str | None = None,
    ) -> Raw:
        """``target`` (path and optional query, already encoded) signed in the Authorization
        header at ``at`` (default now). The body's SHA-256 is signed, as botocore does over
        plain HTTP. ``unsigned`` names headers sent but left out of SignedHeaders; ``host`` is
        the Host signed and sent (default the endpoint's)."""
        host = host or self.netloc
        request = AWSRequest(
            method=method, url=f"http://{host}{target}", headers=dict(headers or {}), data=body
        )
        signer_class = _leaving_out(unsigned) if unsigned else S3SigV4Auth
        with signing_clock(at or datetime.now(UTC)):
            signer_class(self._credentials(), self.service, self.region).add_auth(request)
        sent = [(_text(n), _text(v)) for n, v in request.headers.items()]
        return Raw(method, target, (("Host", host), *sent), body)

    def presigned(
        self,
        method: str,
        target: str,
        *,
        expires: int = 300,
        at: datetime | None = None,
        headers: Mapping[str, str] | None = None,
        host: str | None = None,
        body: bytes = b"",
    ) -> Raw:
        """A presigned URL for ``method`` on ``target``, made at ``at`` (default now) and good
        for ``expires`` seconds, sent with ``body`` (which the URL does not cover)."""
        host = host or self.netloc
        request = AWSRequest(
            method=method, url=f"http://{host}{target}", headers=dict(headers or {})
        )
        signer = S3SigV4QueryAuth(self._credentials(), self.service, self.region, expires=expires)
        with signing_clock(at or datetime.now(UTC)):
            signer.add_auth(request)
        url = urlsplit(request.url)
        sent = [(_text(n), _text(v)) for n, v in request.headers.items()]
        return Raw(method, f"{url.path}?{url.query}", (("Host", host), *sent), body)
