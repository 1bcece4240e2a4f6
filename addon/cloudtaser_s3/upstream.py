"""The proxy's own small requests to the store (HEAD of an object or one of its parts), signed
like forwarded requests. Blocking: call through ``asyncio.to_thread``."""

from __future__ import annotations

import http.client
import ssl
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
        self._region = region
        self._tls = ssl.create_default_context(cafile=cafile) if parts.scheme == "https" else None

    def head(
        self,
        bucket: str,
        key: str,
        credentials: Credentials,
        part_number: int | None = None,
        if_match: str | None = None,
    ) -> Head:
        path = "/" + quote(bucket, safe="") + "/" + quote(key, safe="/~")
        if part_number is not None:
            path += f"?partNumber={part_number}"
        headers = {"host": urlsplit(self._endpoint).netloc}
        if if_match:
            headers["if-match"] = if_match
        signed = sigv4.resign(
            "HEAD", self._endpoint + path, headers, credentials, self._region, EMPTY_SHA256
        )
        headers.update(signed)
        conn: http.client.HTTPConnection
        if self._tls is not None:
            conn = http.client.HTTPSConnection(
                self._host, self._port, timeout=TIMEOUT_SECONDS, context=self._tls
            )
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=TIMEOUT_SECONDS)
        try:
            conn.request("HEAD", path, headers=headers)
            resp = conn.getresponse()
            resp.read()
            return Head(resp.status, {k.lower(): v for k, v in resp.getheaders()})
        finally:
            conn.close()
