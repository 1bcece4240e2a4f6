"""The proxy's own small requests to the store (HEAD of an object or one of its parts), signed
like forwarded requests. Blocking: call through ``asyncio.to_thread``."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from botocore.credentials import Credentials

from . import sigv4

EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
TIMEOUT_SECONDS = 15


@dataclass(frozen=True)
class Head:
    status: int
    headers: dict[str, str]  # lower-case names

    @property
    def content_length(self) -> int | None:
        try:
            return int(self.headers["content-length"])
        except (KeyError, ValueError):
            return None


class Store:
    def __init__(self, endpoint: str, region: str, cafile: str | None = None):
        parts = urlsplit(endpoint)
        self._scheme = parts.scheme
        self._host = parts.hostname or ""
        self._port = parts.port or (443 if parts.scheme == "https" else 80)
        self._endpoint = endpoint
        self._netloc = parts.netloc
        self._region = region
        self._tls = ssl.create_default_context(cafile=cafile) if parts.scheme == "https" else None

    def _connect(self) -> http.client.HTTPConnection:
        if self._tls is not None:
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=TIMEOUT_SECONDS, context=self._tls
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=TIMEOUT_SECONDS)

    @staticmethod
    def object_path(bucket: str, key: str, query: str = "") -> str:
        path = "/" + quote(bucket, safe="") + "/" + quote(key, safe="/~")
        return path + ("?" + query if query else "")

    def _signed(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        credentials: Credentials,
        payload_hash: str,
    ) -> dict[str, str]:
        headers = {**headers, "host": self._netloc}
        headers.update(
            sigv4.resign(
                method, self._endpoint + path, headers, credentials, self._region, payload_hash
            )
        )
        return headers

    def head(
        self,
        bucket: str,
        key: str,
        credentials: Credentials,
        part_number: int | None = None,
        if_match: str | None = None,
    ) -> Head:
        query = f"partNumber={part_number}" if part_number is not None else ""
        path = self.object_path(bucket, key, query)
        headers = {"if-match": if_match} if if_match else {}
        conn = self._connect()
        try:
            conn.request(
                "HEAD", path, headers=self._signed("HEAD", path, headers, credentials, EMPTY_SHA256)
            )
            resp = conn.getresponse()
            resp.read()
            return Head(resp.status, {k.lower(): v for k, v in resp.getheaders()})
        finally:
            conn.close()

    def open_get(
        self, bucket: str, key: str, query: str, headers: dict[str, str], credentials: Credentials
    ) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        """A GET whose body the caller reads (and then closes the connection)."""
        path = self.object_path(bucket, key, query)
        conn = self._connect()
        try:
            conn.request(
                "GET", path, headers=self._signed("GET", path, headers, credentials, EMPTY_SHA256)
            )
            return conn, conn.getresponse()
        except BaseException:
            conn.close()
            raise

    def put_stream(
        self,
        bucket: str,
        key: str,
        query: str,
        headers: dict[str, str],
        body: Iterable[bytes],
        length: int,
        credentials: Credentials,
    ) -> tuple[int, dict[str, str], bytes]:
        """A PUT whose body is produced as it is sent. If producing it raises, the connection is
        dropped before the body is complete, so the store commits nothing."""
        path = self.object_path(bucket, key, query)
        headers = {**headers, "content-length": str(length)}
        conn = self._connect()
        try:
            signed = self._signed("PUT", path, headers, credentials, "UNSIGNED-PAYLOAD")
            conn.request("PUT", path, body=body, headers=signed)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()
