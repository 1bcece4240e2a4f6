"""The checksums a client sends with an upload body, verified against the plaintext.

A client's ``Content-MD5``, ``x-amz-checksum-<algorithm>`` (as a header or an aws-chunked
trailer) and hex ``x-amz-content-sha256`` all describe the plaintext it sent. Upstream only
ever sees ciphertext, so these values can never be forwarded: the proxy checks them itself,
while the body streams, and answers a mismatch with the error S3 would give, so the caller can
refuse to commit the upload.

Error codes and messages are the ones S3 returns (as recorded by S3-compatible servers whose
functional tests run against AWS, e.g. OpenStack Swift's s3api and Scality CloudServer).
Encodings are botocore's (``botocore/httpchecksum.py``): base64 of the digest, CRCs as
big-endian integers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import zlib
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple, Protocol

from awscrt import checksums as crt

from cloudtaser_s3.s3errors import S3Error

Buffer = bytes | bytearray | memoryview


class _Hasher(Protocol):
    def update(self, data: Buffer, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc:
    """A running CRC over an incremental ``f(data, previous) -> int`` function."""

    __slots__ = ("_fn", "_size", "_value")

    def __init__(self, fn: Callable[[Buffer, int], int], size: int) -> None:
        self._fn = fn
        self._size = size
        self._value = 0

    def update(self, data: Buffer) -> None:
        self._value = self._fn(data, self._value)

    def digest(self) -> bytes:
        # S3 and botocore show a CRC as the base64 of its big-endian integer.
        return self._value.to_bytes(self._size, "big")


class _XXHash:
    """awscrt's XXHash, which only takes read-only ``bytes`` (not memoryview/bytearray)."""

    __slots__ = ("_h",)

    def __init__(self, h: crt.XXHash) -> None:
        self._h = h

    def update(self, data: Buffer) -> None:
        self._h.update(data if isinstance(data, bytes) else bytes(data))

    def digest(self) -> bytes:
        return self._h.finalize()


class _Algorithm(NamedTuple):
    name: str  # as S3 spells it in error messages and x-amz-sdk-checksum-algorithm
    size: int  # digest length in bytes
    new: Callable[[], _Hasher]


# Keyed by the suffix of the x-amz-checksum-<suffix> header. The set is S3's ChecksumAlgorithm
# enum in botocore's S3 model (PutObject/UploadPart), so whatever an SDK may send is verified.
_ALGORITHMS: dict[str, _Algorithm] = {
    "crc32": _Algorithm("CRC32", 4, lambda: _Crc(zlib.crc32, 4)),
    "crc32c": _Algorithm("CRC32C", 4, lambda: _Crc(crt.crc32c, 4)),
    "crc64nvme": _Algorithm("CRC64NVME", 8, lambda: _Crc(crt.crc64nvme, 8)),
    "sha1": _Algorithm("SHA1", 20, hashlib.sha1),
    "sha256": _Algorithm("SHA256", 32, hashlib.sha256),
    "sha512": _Algorithm("SHA512", 64, hashlib.sha512),
    "md5": _Algorithm("MD5", 16, lambda: hashlib.md5(usedforsecurity=False)),
    "xxhash64": _Algorithm("XXHASH64", 8, lambda: _XXHash(crt.XXHash.new_xxhash64())),
    "xxhash3": _Algorithm("XXHASH3", 8, lambda: _XXHash(crt.XXHash.new_xxhash3_64())),
    "xxhash128": _Algorithm("XXHASH128", 16, lambda: _XXHash(crt.XXHash.new_xxhash3_128())),
}

SUPPORTED_ALGORITHMS: tuple[str, ...] = tuple(a.name for a in _ALGORITHMS.values())

CHECKSUM_PREFIX = "x-amz-checksum-"

# x-amz-checksum-* names that are not a checksum of this request's body: the multipart
# settings of CreateMultipartUpload/CompleteMultipartUpload and GetObject's checksum mode.
_NOT_A_VALUE = frozenset({"x-amz-checksum-algorithm", "x-amz-checksum-type", "x-amz-checksum-mode"})

#: Request headers that describe the plaintext (or how its checksum travels) and so must not
#: reach upstream, which sees ciphertext. ``x-amz-checksum-algorithm``/``-type`` are
#: CreateMultipartUpload's: left in, S3 demands a checksum of that type on every UploadPart
#: ("Checksum Type mismatch occurred, ..."). ``x-amz-content-sha256`` is in the set because the
#: re-signer sets its own (botocore's S3SigV4Auth always replaces it).
CLIENT_CHECKSUM_HEADERS: frozenset[str] = frozenset(
    {
        "content-md5",
        "x-amz-content-sha256",
        "x-amz-sdk-checksum-algorithm",
        "x-amz-trailer",
        *(CHECKSUM_PREFIX + suffix for suffix in _ALGORITHMS),
        *_NOT_A_VALUE,
    }
)

_STREAMING_PAYLOADS = frozenset(
    {
        "STREAMING-UNSIGNED-PAYLOAD-TRAILER",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD",
        "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER",
    }
)
_HEX_SHA256 = re.compile(r"[0-9a-fA-F]{64}")
# S3 ignores surrounding whitespace and control characters in header values.
_STRIP = "".join(map(chr, range(0x21)))


# --- S3's errors --------------------------------------------------------------------------------

MSG_BAD_CONTENT_SHA256 = (
    "x-amz-content-sha256 must be UNSIGNED-PAYLOAD, STREAMING-UNSIGNED-PAYLOAD-TRAILER, "
    "STREAMING-AWS4-HMAC-SHA256-PAYLOAD, STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER, "
    "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD, STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER "
    "or a valid sha256 value."
)
MSG_CONTENT_SHA256_MISMATCH = (
    "The provided 'x-amz-content-sha256' header does not match what was computed."
)
MSG_INVALID_MD5 = "The Content-MD5 you specified was invalid."
MSG_MD5_MISMATCH = "The Content-MD5 you specified did not match what we received."
MSG_UNKNOWN_ALGORITHM = "The algorithm type you specified in x-amz-checksum- header is invalid."
MSG_MULTIPLE = "Expecting a single x-amz-checksum- header. Multiple checksum Types are not allowed."
MSG_HEADER_AND_TRAILER = "Expecting a single x-amz-checksum- header"
MSG_BAD_TRAILER_HEADER = "The value specified in the x-amz-trailer header is not supported"
MSG_SDK_WITHOUT_CHECKSUM = (
    "x-amz-sdk-checksum-algorithm specified, but no corresponding x-amz-checksum-* or "
    "x-amz-trailer headers were found."
)
MSG_SDK_ALGORITHM = "Value for x-amz-sdk-checksum-algorithm header is invalid."
MSG_MALFORMED_TRAILER = (
    "The request contained trailing data that was not well-formed or did not conform to our "
    "published schema."
)


def _invalid_request(message: str) -> S3Error:
    return S3Error("InvalidRequest", message, 400)


def _mismatch_message(algorithm: str) -> str:
    return f"The {algorithm} you specified did not match the calculated checksum."


# --- helpers -------------------------------------------------------------------------------------


def s3_checksum_value(algorithm: str, data: Buffer) -> str:
    """``data``'s checksum as S3 shows it (``x-amz-checksum-*``; ``md5`` gives Content-MD5)."""
    try:
        hasher = _ALGORITHMS[algorithm.lower()].new()
    except KeyError:
        raise ValueError(f"unknown S3 checksum algorithm {algorithm!r}") from None
    hasher.update(data)
    return base64.b64encode(hasher.digest()).decode("ascii")


def checksum_headers(headers: Iterable[tuple[str, str]]) -> list[str]:
    """Names (as spelt, each spelling once) of the headers that must not go upstream.

    Any ``x-amz-checksum-*`` counts, known or not: a checksum upstream cannot match the
    ciphertext, and an unknown one could not have been verified.
    """
    names: list[str] = []
    for name, _value in headers:
        lower = name.lower()
        if (lower in CLIENT_CHECKSUM_HEADERS or lower.startswith(CHECKSUM_PREFIX)) and (
            name not in names
        ):
            names.append(name)
    return names


def _b64(value: str, size: int) -> bytes | None:
    """Strictly decoded base64 of exactly ``size`` bytes, else None."""
    try:
        raw = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        return None
    return raw if len(raw) == size else None


def _lowered(headers: Mapping[str, str]) -> dict[str, str]:
    """Lower-case names, stripped values; works for plain dicts as well as mitmproxy Headers."""
    grouped: dict[str, list[str]] = {}
    pairs = headers.items(multi=True) if hasattr(headers, "fields") else headers.items()
    for name, value in pairs:  # one pass: headers[name] would scan every header again
        grouped.setdefault(name.lower(), []).append(value)
    return {name: ", ".join(values).strip(_STRIP) for name, values in grouped.items()}


class _Check(NamedTuple):
    key: str  # which hasher
    expected: bytes
    code: str  # the S3Error raised on a mismatch (made afresh each time it is raised)
    message: str


# --- the verifier --------------------------------------------------------------------------------


class PlaintextDigests:
    """Runs the hashes a request's checksums ask for over the plaintext, then verifies them.

    Build with :meth:`from_headers` (which refuses malformed values as S3 would), feed every
    plaintext byte to :meth:`update`, hand any aws-chunked trailers to :meth:`apply_trailers`,
    then call :meth:`verify` before committing. Each algorithm runs once even when two
    checksums use it (Content-MD5 and x-amz-checksum-md5; hex x-amz-content-sha256 and
    x-amz-checksum-sha256).
    """

    __slots__ = ("_checks", "_hashers", "_trailer", "_trailer_check", "_updates")

    def __init__(self) -> None:
        self._hashers: dict[str, _Hasher] = {}
        self._updates: list[Callable[[Buffer], None]] = []
        self._checks: list[_Check] = []  # in the order S3 reports them
        self._trailer: str | None = None
        self._trailer_check: _Check | None = None

    @classmethod
    def from_headers(cls, headers: Mapping[str, str]) -> PlaintextDigests:
        """Parse the checksum headers; raise S3Error for the values S3 itself would refuse."""
        h = _lowered(headers)
        digests = cls()

        # x-amz-content-sha256 belongs to SigV4, which S3 checks before anything else.
        payload = h.get("x-amz-content-sha256", "")
        if payload and payload != "UNSIGNED-PAYLOAD" and payload not in _STREAMING_PAYLOADS:
            if not _HEX_SHA256.fullmatch(payload):
                raise S3Error("InvalidArgument", MSG_BAD_CONTENT_SHA256, 400)
            digests._expect(
                "sha256",
                bytes.fromhex(payload),
                "XAmzContentSHA256Mismatch",
                MSG_CONTENT_SHA256_MISMATCH,
            )

        md5 = h.get("content-md5", "")
        if md5:
            raw = _b64(md5, 16)
            if raw is None:
                raise S3Error("InvalidDigest", MSG_INVALID_MD5, 400)
            digests._expect("md5", raw, "BadDigest", MSG_MD5_MISMATCH)

        sent = [
            name[len(CHECKSUM_PREFIX) :]
            for name in h
            if name.startswith(CHECKSUM_PREFIX) and name not in _NOT_A_VALUE
        ]
        if any(suffix not in _ALGORITHMS for suffix in sent):
            raise _invalid_request(MSG_UNKNOWN_ALGORITHM)
        if len(sent) > 1:
            raise _invalid_request(MSG_MULTIPLE)

        trailer_value = h.get("x-amz-trailer", "").rstrip(",")
        trailers = [t.strip().lower() for t in trailer_value.split(",")] if trailer_value else []
        if any(
            not t.startswith(CHECKSUM_PREFIX) or t[len(CHECKSUM_PREFIX) :] not in _ALGORITHMS
            for t in trailers
        ):
            raise _invalid_request(MSG_BAD_TRAILER_HEADER)
        if len(trailers) > 1:
            raise _invalid_request(MSG_MULTIPLE)
        if sent and trailers:
            raise _invalid_request(MSG_HEADER_AND_TRAILER)

        used: str | None = None
        if sent:
            used = sent[0]
            algorithm = _ALGORITHMS[used]
            raw = _b64(h[CHECKSUM_PREFIX + used], algorithm.size)
            if raw is None:
                raise _invalid_request(f"Value for {CHECKSUM_PREFIX}{used} header is invalid.")
            digests._expect(used, raw, "BadDigest", _mismatch_message(algorithm.name))
        elif trailers:
            used = trailers[0][len(CHECKSUM_PREFIX) :]
            digests._trailer = trailers[0]
            digests._hasher(used)

        sdk = h.get("x-amz-sdk-checksum-algorithm")
        if sdk is not None:
            if used is None:
                raise _invalid_request(MSG_SDK_WITHOUT_CHECKSUM)
            if sdk.lower() != used:
                raise _invalid_request(MSG_SDK_ALGORITHM)
        return digests

    def _hasher(self, key: str) -> None:
        if key not in self._hashers:
            hasher = _ALGORITHMS[key].new()
            self._hashers[key] = hasher
            self._updates.append(hasher.update)

    def _expect(self, key: str, expected: bytes, code: str, message: str) -> None:
        self._hasher(key)
        self._checks.append(_Check(key, expected, code, message))

    @property
    def empty(self) -> bool:
        """Nothing to check: the caller may skip feeding the body."""
        return not self._hashers

    @property
    def trailer(self) -> str | None:
        """The lower-case ``x-amz-checksum-*`` trailer that ``x-amz-trailer`` announced, if any."""
        return self._trailer

    def update(self, data: Buffer) -> None:
        """Feed the next plaintext bytes (aws-chunked already decoded)."""
        for update in self._updates:
            update(data)

    def apply_trailers(self, trailers: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        """Take the trailers of an aws-chunked body: the announced checksum, nothing else.

        ``x-amz-trailer-signature`` is skipped (the caller checks it, if it checks signatures).
        """
        items = trailers.items() if isinstance(trailers, Mapping) else trailers
        for name, value in items:
            lower = name.strip().lower()
            if lower == "x-amz-trailer-signature":
                continue
            if lower != self._trailer or self._trailer_check is not None:
                raise S3Error("MalformedTrailerError", MSG_MALFORMED_TRAILER, 400)
            key = lower[len(CHECKSUM_PREFIX) :]
            algorithm = _ALGORITHMS[key]
            raw = _b64(value.strip(_STRIP), algorithm.size)
            if raw is None:
                raise _invalid_request(f"Value for {lower} trailing header is invalid.")
            self._trailer_check = _Check(key, raw, "BadDigest", _mismatch_message(algorithm.name))

    def verify(self) -> None:
        """Raise S3's error for the first checksum the plaintext does not match."""
        checks = list(self._checks)
        if self._trailer is not None:
            if self._trailer_check is None:
                raise S3Error("MalformedTrailerError", MSG_MALFORMED_TRAILER, 400)
            checks.append(self._trailer_check)
        digests: dict[str, bytes] = {}
        for check in checks:
            if check.key not in digests:
                digests[check.key] = self._hashers[check.key].digest()
            if digests[check.key] != check.expected:
                raise S3Error(check.code, check.message, 400)
