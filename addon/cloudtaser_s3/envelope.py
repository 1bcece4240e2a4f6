"""The encrypted object format, version 1 (docs/format.md): constants, size arithmetic, sealing.

Layout of a stored body::

    body    = part+                      a PutObject is exactly one part, numbered 0
    part    = header segment+
    header  = b"CTS1" | part_number u32 BE | plaintext_length u64 BE      (16 bytes)
    segment = nonce (12 random bytes) | AES-256-GCM ciphertext | tag (16 bytes)

Segment i of a part carries the associated data
``header | object salt | i (u32 BE) | object key (UTF-8)``, so segments cannot be reordered,
dropped, moved between parts or objects, or the object copied to another key unnoticed.

Everything here is pure: no I/O, no logging. The streaming classes take and give bytes.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

ALG = "AES-256-GCM-SEG64K-1"
MAGIC = b"CTS1"
HEADER = struct.Struct(">4sIQ")
HEADER_LEN = HEADER.size  # 16
SEGMENT_PLAIN = 65536
NONCE_LEN = 12
TAG_LEN = 16
SEGMENT_OVERHEAD = NONCE_LEN + TAG_LEN  # 28
SEGMENT_STORED = SEGMENT_PLAIN + SEGMENT_OVERHEAD  # 65564
DEK_LEN = 32
SALT_LEN = 12
MAX_PART_NUMBER = 0xFFFFFFFF

META_PREFIX = "x-amz-meta-cloudtaser-"
META_DEK = META_PREFIX + "dek"
META_KEY_VERSION = META_PREFIX + "key-version"
META_NONCE = META_PREFIX + "nonce"
META_KEY = META_PREFIX + "key"
META_ALG = META_PREFIX + "alg"


class FormatError(Exception):
    """Stored bytes are not a well-formed, authentic object of this format."""


def segment_count(plaintext_length: int) -> int:
    """Segments in a part: ceil(P / 64 KiB), and one empty segment for an empty part."""
    return max(1, -(-plaintext_length // SEGMENT_PLAIN))


def sealed_part_length(plaintext_length: int) -> int:
    """Stored length of one part (header included) for a plaintext length."""
    if plaintext_length < 0:
        raise ValueError("negative length")
    return HEADER_LEN + plaintext_length + SEGMENT_OVERHEAD * segment_count(plaintext_length)


def plaintext_part_length(stored_length: int) -> int:
    """Inverse of sealed_part_length; FormatError when no plaintext length maps to it."""
    body = stored_length - HEADER_LEN
    if body < SEGMENT_OVERHEAD:
        raise FormatError(f"stored length {stored_length} is too short for a part")
    n = -(-body // SEGMENT_STORED)
    plain = body - SEGMENT_OVERHEAD * n
    if plain < 0 or sealed_part_length(plain) != stored_length:
        raise FormatError(f"stored length {stored_length} is not a valid part length")
    return plain


def pack_header(part_number: int, plaintext_length: int) -> bytes:
    return HEADER.pack(MAGIC, part_number, plaintext_length)


def unpack_header(raw: bytes) -> tuple[int, int]:
    """(part_number, plaintext_length) of a part header; FormatError on a bad magic."""
    magic, part_number, length = HEADER.unpack(raw)
    if magic != MAGIC:
        raise FormatError("part header magic is not CTS1")
    return part_number, length


def segment_aad(header: bytes, salt: bytes, index: int, object_key: str) -> bytes:
    return b"".join((header, salt, struct.pack(">I", index), object_key.encode("utf-8")))


@dataclass(frozen=True)
class ObjectKeyMaterial:
    """What seals and opens one object (or one multipart upload): DEK, salt and object key."""

    dek: bytes
    salt: bytes
    object_key: str

    def __post_init__(self) -> None:
        if len(self.dek) != DEK_LEN:
            raise ValueError("DEK must be 32 bytes")
        if len(self.salt) != SALT_LEN:
            raise ValueError("object salt must be 12 bytes")

    def __repr__(self) -> str:  # never print the DEK
        return f"ObjectKeyMaterial(object_key={self.object_key!r})"

    def cipher(self) -> AESGCM:
        return AESGCM(self.dek)


def new_salt() -> bytes:
    return os.urandom(SALT_LEN)


class PartSealer:
    """Encrypts one part's plaintext as it streams in; ``feed`` then ``finish``.

    The caller states the plaintext length up front (it becomes the header and the upstream
    Content-Length); a body that turns out longer or shorter raises FormatError in feed/finish,
    so a wrong Content-Length can never produce a well-formed-looking object.
    """

    def __init__(
        self,
        material: ObjectKeyMaterial,
        part_number: int,
        plaintext_length: int,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ):
        if not 0 <= part_number <= MAX_PART_NUMBER:
            raise ValueError("part number out of range")
        if not 0 <= plaintext_length < 2**64:
            raise ValueError("plaintext length out of range")
        self._aead = material.cipher()
        self._salt = material.salt
        self._key = material.object_key
        self.header = pack_header(part_number, plaintext_length)
        self.plaintext_length = plaintext_length
        self.sealed_length = sealed_part_length(plaintext_length)
        self._seg = bytearray(SEGMENT_PLAIN)  # the segment being filled
        self._fill = 0
        self._index = 0
        self._seen = 0
        self._started = False
        self._finished = False
        self._random = random_bytes  # a seam for golden vectors; os.urandom in production

    def _seal(self, chunk: bytes | memoryview, out: list[bytes]) -> None:
        """Append the next segment (nonce, then ciphertext and tag) to ``out``: the caller
        joins once, rather than each segment being copied into a nonce + ciphertext first."""
        nonce = self._random(NONCE_LEN)
        if len(nonce) != NONCE_LEN:
            raise ValueError("nonce source returned the wrong length")
        aad = segment_aad(self.header, self._salt, self._index, self._key)
        self._index += 1
        out.append(nonce)
        out.append(self._aead.encrypt(nonce, chunk, aad))

    def feed(self, data: bytes) -> bytes:
        """Sealed bytes ready to send for this plaintext (whole segments only)."""
        self._seen += len(data)
        if self._seen > self.plaintext_length:
            raise FormatError("body is longer than its declared length")
        out = []
        if not self._started:
            self._started = True
            out.append(self.header)
        # The plaintext is copied once, into one reused segment buffer; a full segment is
        # sealed only when more data follows it: the part may end right there, and the last
        # segment is kept back until finish.
        seg, fill = self._seg, self._fill
        with memoryview(data) as view:
            pos, end = 0, len(view)
            while pos < end:
                if fill == SEGMENT_PLAIN:
                    self._seal(seg, out)
                    fill = 0
                take = min(SEGMENT_PLAIN - fill, end - pos)
                seg[fill : fill + take] = view[pos : pos + take]
                fill += take
                pos += take
        self._fill = fill
        return b"".join(out)

    def finish(self) -> bytes:
        """The final segment; FormatError if fewer bytes came than declared."""
        if self._finished:
            raise FormatError("part already finished")
        if self._seen != self.plaintext_length:
            raise FormatError("body is shorter than its declared length")
        out = [] if self._started else [self.header]
        self._started = True
        self._finished = True
        self._seal(bytes(self._seg[: self._fill]), out)
        self._seg = bytearray()
        return b"".join(out)


class BodyOpener:
    """Decrypts a stored body (one or more parts) as it streams in; ``feed`` then ``finish``.

    Only authenticated plaintext is ever returned. Checks, in order: the magic, part numbers
    strictly increasing, each segment's tag, and at the end that no part was cut short.
    """

    def __init__(
        self,
        material: ObjectKeyMaterial,
        first_part_min: int = 0,
        expected_plaintext: int | None = None,
    ):
        # expected_plaintext: the length the client was promised (its Content-Length). Part
        # headers that declare more are refused before any of their plaintext is released, so
        # a body cut short can never end exactly where the client expects it to.
        self._expected = expected_plaintext
        self._declared = 0
        self._aead = material.cipher()
        self._salt = material.salt
        self._key = material.object_key
        self._buf = bytearray()
        self._last_part = first_part_min - 1
        self._header: bytes | None = None
        self._remaining_plain = 0
        self._segments_left = 0
        self._index = 0
        self.parts_seen = 0
        self.plaintext_seen = 0

    def _open_segment(self, raw: memoryview) -> bytes:
        assert self._header is not None
        nonce, ct = raw[:NONCE_LEN], raw[NONCE_LEN:]
        aad = segment_aad(self._header, self._salt, self._index, self._key)
        try:
            plain = self._aead.decrypt(nonce, ct, aad)
        except InvalidTag:
            raise FormatError(f"segment {self._index} failed authentication") from None
        self._index += 1
        self._segments_left -= 1
        self._remaining_plain -= len(plain)
        if self._segments_left == 0:
            self._header = None
        return plain

    def _next_segment_stored(self) -> int:
        if self._segments_left == 1:
            return self._remaining_plain + SEGMENT_OVERHEAD
        return SEGMENT_STORED

    def feed(self, data: bytes) -> bytes:
        self._buf += data
        out: list[bytes] = []
        buf = self._buf
        with memoryview(buf) as view:  # segments go to decrypt() as views, not copies
            pos = self._open_available(view, out)
        del buf[:pos]
        plain = b"".join(out)
        self.plaintext_seen += len(plain)
        return plain

    def _open_available(self, buf: memoryview, out: list[bytes]) -> int:
        """Open every whole header and segment in ``buf``; how many bytes were used."""
        pos = 0
        while True:
            if self._header is None:
                if len(buf) - pos < HEADER_LEN:
                    break
                header = bytes(buf[pos : pos + HEADER_LEN])
                part_number, length = unpack_header(header)
                if part_number <= self._last_part:
                    raise FormatError("part numbers do not strictly increase")
                self._declared += length
                if self._expected is not None and self._declared > self._expected:
                    raise FormatError("part headers declare more plaintext than the object has")
                self._last_part = part_number
                self.parts_seen += 1
                self._header = header
                self._remaining_plain = length
                self._segments_left = segment_count(length)
                self._index = 0
                pos += HEADER_LEN
                continue
            need = self._next_segment_stored()
            if len(buf) - pos < need:
                break
            out.append(self._open_segment(buf[pos : pos + need]))
            pos += need
        return pos

    def finish(self) -> None:
        if self._header is not None or self._buf:
            raise FormatError("body ends inside a part")
        if self.parts_seen == 0:
            raise FormatError("body holds no part")
        if self._expected is not None and self._declared != self._expected:
            raise FormatError("part headers declare less plaintext than the object has")


def seal_part(
    material: ObjectKeyMaterial,
    part_number: int,
    plaintext: bytes,
    random_bytes: Callable[[int], bytes] = os.urandom,
) -> bytes:
    """One-shot sealing of a whole part (tests, small bodies)."""
    sealer = PartSealer(material, part_number, len(plaintext), random_bytes)
    return sealer.feed(plaintext) + sealer.finish()


def open_body(material: ObjectKeyMaterial, stored: bytes) -> bytes:
    """One-shot opening of a whole stored body (tests, tools)."""
    opener = BodyOpener(material)
    plain = opener.feed(stored)
    opener.finish()
    return plain


class SegmentRunOpener:
    """Decrypts a run of consecutive segments from the middle of a stored body.

    A range read starts at a segment boundary without the part header in hand; the caller
    supplies the layout it expects — ``parts`` as (part number, plaintext length) in order — and
    where the run starts and ends. A wrong header, index or length makes a segment fail
    authentication. Where the run crosses into the next part, that part's header must be exactly
    the expected one.
    """

    def __init__(
        self,
        material: ObjectKeyMaterial,
        parts: list[tuple[int, int]],
        first: tuple[int, int],
        last: tuple[int, int],
    ):
        self._aead = material.cipher()
        self._salt = material.salt
        self._key = material.object_key
        self._parts = parts
        (self._part, self._index), self._last = first, last
        if not (0 <= self._part <= last[0] < len(parts)):
            raise ValueError("segment run outside the layout")
        self._need_header = False
        self._done = False
        self._buf = bytearray()
        self._set_part(self._part)

    def _set_part(self, i: int) -> None:
        number, plain = self._parts[i]
        self._header = pack_header(number, plain)
        self._plain = plain
        self._total = segment_count(plain)

    def _stored_size(self) -> int:
        if self._index == self._total - 1:
            return self._plain - self._index * SEGMENT_PLAIN + SEGMENT_OVERHEAD
        return SEGMENT_STORED

    def _advance(self) -> None:
        if (self._part, self._index) == self._last:
            self._done = True
        elif self._index + 1 < self._total:
            self._index += 1
        else:
            self._part += 1
            self._index = 0
            self._set_part(self._part)
            self._need_header = True

    def feed(self, data: bytes) -> bytes:
        """Plaintext of every segment completed by ``data``; bytes past the run are ignored."""
        if self._done:
            return b""
        self._buf += data
        out = []
        pos = 0
        while not self._done:
            if self._need_header:
                if len(self._buf) - pos < HEADER_LEN:
                    break
                if bytes(self._buf[pos : pos + HEADER_LEN]) != self._header:
                    raise FormatError("a part header is not the expected one")
                pos += HEADER_LEN
                self._need_header = False
                continue
            need = self._stored_size()
            if len(self._buf) - pos < need:
                break
            aad = segment_aad(self._header, self._salt, self._index, self._key)
            try:
                with memoryview(self._buf) as view:  # decrypt() reads the views, no copies
                    plain = self._aead.decrypt(
                        view[pos : pos + NONCE_LEN], view[pos + NONCE_LEN : pos + need], aad
                    )
                out.append(plain)
            except InvalidTag:
                raise FormatError(f"segment {self._index} failed authentication") from None
            pos += need
            self._advance()
        del self._buf[:pos]
        if self._done:
            self._buf = bytearray()
        return b"".join(out)

    def finish(self) -> None:
        if not self._done:
            raise FormatError("stored range ends before the segments it should hold")
