"""Decoding ``Content-Encoding: aws-chunked`` request bodies, as SDKs send them.

    chunk   = hex-size [";chunk-signature=" sig] CRLF data CRLF
    last    = "0" [";chunk-signature=" sig] CRLF trailer* ["x-amz-trailer-signature:" sig CRLF] CRLF
    trailer = name ":" value CRLF

Variants (the request's x-amz-content-sha256):
- STREAMING-AWS4-HMAC-SHA256-PAYLOAD: every chunk signed, chained from the request's signature;
- STREAMING-UNSIGNED-PAYLOAD-TRAILER: no chunk signatures, a trailing checksum;
- STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER: both, and the trailer signed too.

The decoder streams: chunk data is handed on as it arrives (the proxy seals it and holds back the
last segment), and each chunk's signature is checked when the chunk ends — a bad one fails the
upload before it can complete. The framing itself is never stored.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass

from .s3errors import S3Error

SIGNED = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"
UNSIGNED_TRAILER = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
SIGNED_TRAILER = "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER"
VARIANTS = (SIGNED, UNSIGNED_TRAILER, SIGNED_TRAILER)
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
MAX_LINE = 4096
MAX_TRAILERS = 16 * 1024

_HEX_SIZE = re.compile(r"[0-9A-Fa-f]{1,16}")


def _incomplete(detail: str) -> S3Error:
    return S3Error("IncompleteBody", f"The aws-chunked request body is malformed: {detail}.", 400)


def _signature_error() -> S3Error:
    return S3Error(
        "SignatureDoesNotMatch",
        "The request signature we calculated does not match the signature you provided. "
        "Check your key and signing method.",
        403,
    )


@dataclass(frozen=True)
class ChunkSigning:
    """What chunk signatures chain from: the request's own signature and its signing key."""

    seed_signature: str
    signing_key: bytes
    amz_date: str
    scope: str


class ChunkedDecoder:
    def __init__(self, variant: str, signing: ChunkSigning | None):
        if variant not in VARIANTS:
            raise S3Error("InvalidArgument", f"Unsupported x-amz-content-sha256 {variant}.", 400)
        self._signed = variant in (SIGNED, SIGNED_TRAILER)
        self._trailer_allowed = variant in (UNSIGNED_TRAILER, SIGNED_TRAILER)
        # Signing material is None only when the proxy does not verify signatures at all.
        self._signing = signing if self._signed else None
        self._previous = signing.seed_signature if signing else ""
        self._buf = bytearray()
        self._state = "size"
        self._left = 0
        self._claimed = ""
        self._hash = hashlib.sha256()
        self._trailer_lines: list[tuple[str, str]] = []
        self._trailer_signature: str | None = None
        self._trailer_bytes = 0
        self.decoded = 0
        self.done = False

    @property
    def trailers(self) -> list[tuple[str, str]]:
        return list(self._trailer_lines)

    def _line(self) -> str | None:
        end = self._buf.find(b"\r\n")
        if end < 0:
            if len(self._buf) > MAX_LINE:
                raise _incomplete("a chunk header line is too long")
            return None
        line = bytes(self._buf[:end]).decode("latin-1")
        del self._buf[: end + 2]
        return line

    def _check(self, claimed: str, algorithm: str, *digests: str) -> str:
        """The signature chained from the previous one over ``digests``; raises unless it is
        the one claimed (compared in constant time)."""
        s = self._signing
        assert s is not None
        to_sign = "\n".join((algorithm, s.amz_date, s.scope, self._previous, *digests))
        expected = hmac.new(s.signing_key, to_sign.encode(), hashlib.sha256).hexdigest()
        # compare_digest refuses non-ASCII str (TypeError): compare bytes, in constant time.
        if not hmac.compare_digest(expected.encode(), claimed.encode("utf-8", "replace")):
            raise _signature_error()
        return expected

    def _chunk_signature_ok(self, claimed: str, digest: str) -> None:
        if self._signing is None:
            return
        self._previous = self._check(claimed, "AWS4-HMAC-SHA256-PAYLOAD", EMPTY_SHA256, digest)

    def _start_chunk(self, line: str) -> None:
        size_text, _, ext = line.partition(";")
        # Hex digits only: int(x, 16) would also take "-1", "+a", "0x10" and "1_0".
        if not _HEX_SIZE.fullmatch(size_text.strip()):
            raise _incomplete("a chunk size is not hexadecimal")
        size = int(size_text.strip(), 16)
        claimed = ""
        if ext:
            name, _, value = ext.partition("=")
            if name.strip() != "chunk-signature":
                raise _incomplete("unknown chunk extension")
            claimed = value.strip()
        if self._signed and self._signing is not None and not claimed:
            raise _incomplete("a chunk has no signature")
        self._claimed = claimed
        self._hash = hashlib.sha256()
        if size == 0:
            self._chunk_signature_ok(claimed, EMPTY_SHA256)
            self._state = "trailers"
        else:
            self._left = size
            self._state = "data"

    def feed(self, data: bytes) -> bytes:
        """Decoded payload bytes in ``data``; raises S3Error on bad framing or signatures."""
        if self.done:
            if data:
                raise _incomplete("data after the final chunk")
            return b""
        self._buf += data
        out: list[bytes] = []
        while True:
            if self._state == "size":
                line = self._line()
                if line is None:
                    break
                self._start_chunk(line)
            elif self._state == "data":
                if not self._buf:
                    break
                take = min(self._left, len(self._buf))
                piece = bytes(self._buf[:take])
                del self._buf[:take]
                self._hash.update(piece)
                self._left -= take
                self.decoded += take
                out.append(piece)
                if self._left == 0:
                    self._state = "data-end"
            elif self._state == "data-end":
                if len(self._buf) < 2:
                    break
                if self._buf[:2] != b"\r\n":
                    raise _incomplete("chunk data is longer than its size")
                del self._buf[:2]
                self._chunk_signature_ok(self._claimed, self._hash.hexdigest())
                self._state = "size"
            elif self._state == "trailers":
                line = self._line()
                if line is None:
                    break
                self._trailer_bytes += len(line) + 2
                if self._trailer_bytes > MAX_TRAILERS:
                    raise _incomplete("the trailers are too long")
                if line == "":
                    self._finish_trailers()
                    if self._buf:
                        raise _incomplete("data after the final chunk")
                    break
                name, sep, value = line.partition(":")
                if not sep:
                    raise _incomplete("a trailer line has no colon")
                if name.strip().lower() == "x-amz-trailer-signature":
                    self._trailer_signature = value.strip()
                elif not self._trailer_allowed:
                    raise _incomplete("trailers are not allowed for this content hash")
                else:
                    self._trailer_lines.append((name.strip().lower(), value.strip()))
        return b"".join(out)

    def _finish_trailers(self) -> None:
        if self._signed and self._trailer_allowed and self._signing is not None:
            if self._trailer_signature is None:
                raise _incomplete("the trailer is not signed")
            canonical = "".join(f"{n}:{v}\n" for n, v in self._trailer_lines)
            digest = hashlib.sha256(canonical.encode()).hexdigest()
            self._check(self._trailer_signature, "AWS4-HMAC-SHA256-TRAILER", digest)
        self.done = True

    def finish(self) -> None:
        """The body ended: it must have ended exactly after the final chunk."""
        if not self.done:
            raise _incomplete("the body ended before its final chunk")
