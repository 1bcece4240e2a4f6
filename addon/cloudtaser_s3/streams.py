"""Stream callables for mitmproxy: seal request bodies, open response bodies.

mitmproxy calls ``flow.request.stream(chunk)`` / ``flow.response.stream(chunk)`` for every chunk
and once more with ``b""`` at the end. A callable must never raise (an exception there crashes the
connection handler and leaves both sides hanging), so every failure is turned into a call of
``on_failure`` and from then on the callable swallows everything.

Fail-closed rules these classes keep:
- upload: the last segment is held back until every plaintext checksum has matched, so an upstream
  never receives a complete body for an upload that should be refused;
- download: only plaintext of segments whose tag verified is ever returned.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from mitmproxy import http

from .awschunked import ChunkedDecoder
from .checksums import PlaintextDigests
from .envelope import MAGIC, BodyOpener, FormatError, PartSealer, SegmentRunOpener
from .ranges import RangePlan
from .s3errors import S3Error, internal_error

log = logging.getLogger(__name__)

Failure = Callable[[S3Error], None]


Stream = Callable[[bytes], bytes]


def chunk_safe(
    stream: Stream,
    count_in: Callable[[int], None] | None = None,
    count_out: Callable[[int], None] | None = None,
) -> Callable[[bytes], bytes | list[bytes]]:
    """mitmproxy sends what a stream returns as one chunk, and an empty chunk of a chunked body
    is its end: a stream with nothing to pass on yet must return no chunks at all, or a client
    would take a body cut at a held-back segment for a complete one. ``count_in``/``count_out``
    see the bytes going through (for the request's log line and metrics)."""

    def call(data: bytes) -> bytes | list[bytes]:
        out = stream(data)
        if count_in is not None and data:
            count_in(len(data))
        if count_out is not None and out:
            count_out(len(out))
        return out or []

    return call


def set_length(message: http.Message, length: int) -> None:
    """The body is sent with this Content-Length, never chunked (framing follows the headers)."""
    message.headers.pop("transfer-encoding", None)
    message.headers["content-length"] = str(length)


def set_chunked(message: http.Message) -> None:
    """The body's length is not known before it ends: it is sent chunked."""
    message.headers.pop("content-length", None)
    message.headers["transfer-encoding"] = "chunked"


class SealingStream:
    """Encrypts one part as it streams upstream, checking the client's digests on the way.

    With a ``decoder`` the body is aws-chunked: it is decoded first, its chunk signatures are
    checked as chunks end, and its trailing checksum joins the client's digests.
    """

    def __init__(
        self,
        sealer: PartSealer,
        digests: PlaintextDigests,
        on_failure: Failure,
        decoder: ChunkedDecoder | None = None,
    ):
        self._sealer = sealer
        self._digests = digests
        self._on_failure = on_failure
        self._decoder = decoder
        self.failed = False
        self.finished = False
        self.received = 0

    def _fail(self, error: S3Error) -> bytes:
        self.failed = True
        self._on_failure(error)
        return b""

    def __call__(self, data: bytes) -> bytes:
        if self.failed:
            return b""
        try:
            if data:
                self.received += len(data)
                if self._decoder is not None:
                    data = self._decoder.feed(data)
                    if not data:
                        return b""
                self._digests.update(data)
                return self._sealer.feed(data)
            return self.finish()
        except S3Error as e:
            return self._fail(e)
        except FormatError as e:
            return self._fail(
                S3Error("IncompleteBody", f"The request body does not match its length: {e}", 400)
            )
        except Exception:
            log.exception("encrypting stream failed")
            return self._fail(internal_error())

    def finish(self) -> bytes:
        """Verify the digests, then release the held-back final segment."""
        if self.finished:
            return b""
        if self._decoder is not None:
            self._decoder.finish()
            self._digests.apply_trailers(self._decoder.trailers)
        self._digests.verify()
        tail = self._sealer.finish()
        self.finished = True
        return tail


class _Opening:
    """What decrypting streams share: the first failure is reported once, then all is dropped."""

    def __init__(self, on_failure: Failure):
        self._on_failure = on_failure
        self.failed = False

    def _fail(self, reason: str) -> bytes:
        self.failed = True
        log.error("refusing to serve object data: %s", reason)
        self._on_failure(S3Error("InternalError", reason, 500))
        return b""


class OpeningStream(_Opening):
    """Decrypts a stored body as it streams to the client; aborts on the first bad byte."""

    def __init__(self, opener: BodyOpener, expected_plaintext: int | None, on_failure: Failure):
        super().__init__(on_failure)
        self._opener = opener
        self._expected = expected_plaintext
        self.ended = False

    def __call__(self, data: bytes) -> bytes:
        if self.failed:
            return b""
        try:
            if data:
                return self._opener.feed(data)
            self._opener.finish()
            self.ended = True
            if self._expected is not None and self._opener.plaintext_seen != self._expected:
                return self._fail("decrypted length differs from the announced length")
            return b""
        except FormatError as e:
            return self._fail(f"stored object failed authentication: {e}")
        except Exception:
            log.exception("decrypting stream failed")
            return self._fail("decryption failed")


class PlaintextGuard:
    """Passes an object stored without our metadata, unless it starts like our ciphertext.

    Ciphertext whose metadata was lost (copied or rewritten outside the proxy) begins with the
    magic; it must never be served as if it were the object's content.
    """

    def __init__(self, on_failure: Failure):
        self._head = b""
        self._on_failure = on_failure
        self.decided = False
        self.failed = False

    def __call__(self, data: bytes) -> bytes:
        if self.failed:
            return b""
        if self.decided:
            return data
        self._head += data
        if len(self._head) < len(MAGIC) and data:
            return b""
        self.decided = True
        if self._head.startswith(MAGIC):
            self.failed = True
            self._on_failure(
                S3Error(
                    "InvalidObjectState",
                    "The object is CloudTaser ciphertext without its key metadata; "
                    "it cannot be decrypted and is not served.",
                    409,
                )
            )
            return b""
        head, self._head = self._head, b""
        return head


class RangeOpeningStream(_Opening):
    """Opens the segments that cover a plaintext range and passes on exactly that range."""

    def __init__(self, plan: RangePlan, opener: SegmentRunOpener, on_failure: Failure):
        super().__init__(on_failure)
        self._opener = opener
        self._skip_stored = plan.skip_stored
        self._skip_plain = plan.skip_plain
        self._left = plan.length

    def __call__(self, data: bytes) -> bytes:
        if self.failed:
            return b""
        try:
            if not data:
                self._opener.finish()
                if self._left:
                    return self._fail("stored range ended early")
                return b""
            if self._skip_stored:
                cut = min(self._skip_stored, len(data))
                self._skip_stored -= cut
                data = data[cut:]
                if not data:
                    return b""
            plain = self._opener.feed(data)
            if self._skip_plain and plain:
                cut = min(self._skip_plain, len(plain))
                self._skip_plain -= cut
                plain = plain[cut:]
            out = plain[: self._left]
            self._left -= len(out)
            return out
        except FormatError as e:
            return self._fail(f"stored object failed authentication: {e}")
        except Exception:
            log.exception("decrypting a range failed")
            return self._fail("decryption failed")


class PlainRangeStream:
    """A range of an object stored as plaintext: drop ``skip`` bytes, pass ``length``.

    With a ``guard`` (the range starts at byte 0) the first bytes are also checked for the magic
    of ciphertext that lost its metadata.
    """

    def __init__(self, skip: int, length: int, guard: PlaintextGuard | None):
        self._skip = skip
        self._left = length
        self._guard = guard

    def __call__(self, data: bytes) -> bytes:
        if self._guard is not None:
            data = self._guard(data)
            if self._guard.failed:
                return b""
        if self._skip and data:
            cut = min(self._skip, len(data))
            self._skip -= cut
            data = data[cut:]
        out = data[: self._left]
        self._left -= len(out)
        return out
