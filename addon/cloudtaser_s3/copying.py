"""CopyObject and UploadPartCopy: the source is decrypted and re-encrypted under the
destination's key, as it streams from one request to the other.

A server-side copy of ciphertext would not do: every segment is bound to its object key, so a
copy made by the store could never be read back (see docs/format.md). The proxy therefore reads
the source, opens it segment by segment, seals it anew and writes it, all in bounded memory. If
anything fails midway the write is cut off before its body is complete, so the store commits
nothing.
"""

from __future__ import annotations

import http.client
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qsl, unquote
from xml.sax.saxutils import escape

from .envelope import META_PREFIX, PartSealer
from .s3errors import S3Error

READ_SIZE = 256 * 1024

# Headers that describe an object and travel with it on COPY, or come from the request on
# REPLACE (S3's x-amz-metadata-directive).
_DESCRIPTIVE = (
    "content-type",
    "content-encoding",
    "content-disposition",
    "content-language",
    "cache-control",
    "expires",
    "x-amz-website-redirect-location",
)
# Headers of the copy request that always apply to the destination.
_DESTINATION = (
    "x-amz-storage-class",
    "x-amz-acl",
    "x-amz-grant-full-control",
    "x-amz-grant-read",
    "x-amz-grant-read-acp",
    "x-amz-grant-write-acp",
    "x-amz-object-lock-mode",
    "x-amz-object-lock-retain-until-date",
    "x-amz-object-lock-legal-hold",
    "x-amz-tagging",
)
_CONDITIONS = {
    "x-amz-copy-source-if-match": "if-match",
    "x-amz-copy-source-if-none-match": "if-none-match",
    "x-amz-copy-source-if-modified-since": "if-modified-since",
    "x-amz-copy-source-if-unmodified-since": "if-unmodified-since",
}


@dataclass(frozen=True)
class CopySource:
    bucket: str
    key: str
    version_id: str | None = None

    @property
    def query(self) -> str:
        return f"versionId={self.version_id}" if self.version_id else ""


def parse_copy_source(value: str) -> CopySource:
    """``[/]bucket/key[?versionId=v]``, URL-encoded as clients send it."""
    raw, _, query = value.strip().partition("?")
    bucket, sep, key = unquote(raw).lstrip("/").partition("/")
    if not bucket or not sep or not key:
        raise S3Error("InvalidArgument", "Copy Source must mention the source bucket and key.", 400)
    version = dict(parse_qsl(query)).get("versionId")
    return CopySource(bucket, key, version)


def source_conditions(headers: Mapping[str, str], to_store: Callable[[str], str]) -> dict[str, str]:
    """The copy-source conditions as the If-* headers of the GET of the source."""
    out = {}
    for name, target in _CONDITIONS.items():
        if name in headers:
            value = headers[name]
            out[target] = to_store(value) if "match" in name else value
    return out


def destination_headers(
    request: Mapping[str, str], source: Mapping[str, str], replace: bool
) -> dict[str, str]:
    """The destination's headers: descriptive ones and user metadata from the source (COPY) or
    from the request (REPLACE); never the proxy's own metadata from either."""
    origin = request if replace else source
    out = {}
    for name in _DESCRIPTIVE:
        if name in origin:
            out[name] = origin[name]
    for name, value in origin.items():
        lower = name.lower()
        if lower.startswith("x-amz-meta-") and not lower.startswith(META_PREFIX):
            out[lower] = value
    for name in _DESTINATION:
        if name in request:
            out[name] = request[name]
    return out


def reencrypt(
    source: http.client.HTTPResponse,
    open_chunk: Callable[[bytes], bytes],
    finish_open: Callable[[], None],
    sealer: PartSealer,
) -> Iterator[bytes]:
    """The destination body: source bytes opened, then sealed; raises on any bad byte, which
    cuts the destination's body short."""
    while True:
        chunk = source.read(READ_SIZE)
        if not chunk:
            break
        plain = open_chunk(chunk)
        if plain:
            sealed = sealer.feed(plain)
            if sealed:
                yield sealed
    finish_open()
    yield sealer.finish()


def result_xml(etag: str, part: bool = False) -> bytes:
    tag = "CopyPartResult" if part else "CopyObjectResult"
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<{tag} xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<LastModified>{now}</LastModified><ETag>{escape(etag)}</ETag></{tag}>"
    ).encode()
