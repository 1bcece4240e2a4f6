"""PlaintextDigests against what botocore really sends, and against S3's refusals.

The requests come from a real boto3 client: a ``before-send`` handler captures the prepared
request (headers and body, aws-chunked included) and answers 200 without any network.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import random
import zlib

import boto3
import pytest
from botocore import httpchecksum
from botocore.awsrequest import AWSResponse
from botocore.config import Config
from botocore.utils import calculate_md5
from mitmproxy.http import Headers

from cloudtaser_s3.checksums import (
    CLIENT_CHECKSUM_HEADERS,
    MSG_BAD_CONTENT_SHA256,
    MSG_CONTENT_SHA256_MISMATCH,
    MSG_HEADER_AND_TRAILER,
    MSG_INVALID_MD5,
    MSG_MALFORMED_TRAILER,
    MSG_MD5_MISMATCH,
    MSG_MULTIPLE,
    MSG_SDK_ALGORITHM,
    MSG_SDK_WITHOUT_CHECKSUM,
    MSG_UNKNOWN_ALGORITHM,
    SUPPORTED_ALGORITHMS,
    PlaintextDigests,
    checksum_headers,
    s3_checksum_value,
)
from cloudtaser_s3.s3errors import S3Error

# Every algorithm botocore itself can compute here (it needs awscrt for the CRT ones).
BOTOCORE_ALGORITHMS = sorted(a.upper() for a in httpchecksum._SUPPORTED_CHECKSUM_ALGORITHMS)
BODIES = {
    "empty": b"",
    "one": b"x",
    "text": b"The quick brown fox jumps over the lazy dog\n" * 37,
    "random": random.Random(7).randbytes(300_001),
}


class _Raw:
    def stream(self, **_kwargs: object):
        yield b""


def _before_send(request, **_kwargs):
    _captured["headers"] = {
        k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()
    }
    raw = request.body
    _captured["body"] = raw if isinstance(raw, bytes) else (raw.read() if raw else b"")
    return AWSResponse(request.url, 200, {}, _Raw())


_captured: dict = {}


@functools.cache
def _client(https: bool):
    """One client per scheme: making a client is what takes the time here."""
    client = boto3.session.Session().client(
        "s3",
        region_name="us-east-1",
        endpoint_url=f"{'https' if https else 'http'}://s3.test.invalid",
        aws_access_key_id="AKIDEXAMPLE",
        aws_secret_access_key="secret",
        config=Config(
            retries={"total_max_attempts": 1},
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_supported",
        ),
    )
    client.meta.events.register("before-send.s3", _before_send)
    return client


def botocore_put(body: bytes, https: bool = False, **params: object) -> tuple[dict, bytes]:
    """Headers (str values) and raw body botocore would send for this PutObject."""
    _captured.clear()
    _client(https).put_object(Bucket="bucket", Key="key", Body=body, **params)
    return _captured["headers"], _captured["body"]


def decode_aws_chunked(raw: bytes) -> tuple[bytes, list[tuple[str, str]]]:
    """Payload and trailers of an aws-chunked body (what the proxy's decoder will yield)."""
    payload = bytearray()
    pos = 0
    while True:
        end = raw.index(b"\r\n", pos)
        size = int(raw[pos:end].split(b";")[0], 16)
        pos = end + 2
        if size == 0:
            break
        payload += raw[pos : pos + size]
        assert raw[pos + size : pos + size + 2] == b"\r\n"
        pos += size + 2
    trailers = []
    while True:
        end = raw.index(b"\r\n", pos)
        line = raw[pos:end].decode()
        pos = end + 2
        if not line:
            break
        name, _, value = line.partition(":")
        trailers.append((name, value))
    assert pos == len(raw)
    return bytes(payload), trailers


def feed(digests: PlaintextDigests, body: bytes, seed: int = 1, kind: type = bytes) -> None:
    """Feed ``body`` in random-sized pieces (including empty ones) of the given buffer type."""
    rng = random.Random(seed)
    pos = 0
    while pos < len(body):
        n = rng.choice([0, 1, rng.randint(1, 100), rng.randint(1, 70_000)])
        piece = body[pos : pos + n]
        digests.update(memoryview(piece) if kind is memoryview else kind(piece))
        pos += n
    digests.update(kind(b""))


def flipped(body: bytes) -> bytes:
    if not body:
        return b"\x00"  # "one byte different" from nothing: one extra byte
    i = len(body) // 2
    return body[:i] + bytes([body[i] ^ 0x01]) + body[i + 1 :]


def expect_error(code: str, message: str, fn, *args) -> None:
    with pytest.raises(S3Error) as caught:
        fn(*args)
    assert (caught.value.code, caught.value.message, caught.value.status) == (code, message, 400)


def mismatch(algorithm: str) -> str:
    return f"The {algorithm} you specified did not match the calculated checksum."


# --- encodings -----------------------------------------------------------------------------------


def test_crc_check_values():
    """The published check values of each CRC over b"123456789", big-endian then base64."""

    def b64(n: int, size: int) -> str:
        return base64.b64encode(n.to_bytes(size, "big")).decode()

    assert s3_checksum_value("CRC32", b"123456789") == b64(0xCBF43926, 4)
    assert s3_checksum_value("crc32c", b"123456789") == b64(0xE3069283, 4)
    assert s3_checksum_value("CRC64NVME", b"123456789") == b64(0xAE8B14860A799888, 8)
    assert s3_checksum_value("CRC32", b"abc") == b64(zlib.crc32(b"abc"), 4)
    assert s3_checksum_value("XXHASH64", b"abc") == b64(0x44BC2CF5AD770999, 8)


def test_hash_values():
    for name in ("md5", "sha1", "sha256", "sha512"):
        want = base64.b64encode(hashlib.new(name, b"abc").digest()).decode()
        assert s3_checksum_value(name.upper(), b"abc") == want


@pytest.mark.parametrize("algorithm", BOTOCORE_ALGORITHMS)
def test_s3_checksum_value_is_botocores(algorithm):
    for body in BODIES.values():
        want = httpchecksum._CHECKSUM_CLS[algorithm.lower()]().handle(body)
        assert s3_checksum_value(algorithm, body) == want


def test_s3_checksum_value_unknown():
    with pytest.raises(ValueError):
        s3_checksum_value("crc16", b"")


def test_content_md5_is_botocores():
    for body in BODIES.values():
        assert s3_checksum_value("md5", body) == calculate_md5(body)


def test_algorithms_cover_the_s3_model():
    """Every ChecksumAlgorithm PutObject/UploadPart may name is one we can verify."""
    model = boto3.session.Session().client("s3", region_name="us-east-1").meta.service_model
    for operation in ("PutObject", "UploadPart"):
        shape = model.operation_model(operation).input_shape.members["ChecksumAlgorithm"]
        assert set(shape.enum) <= set(SUPPORTED_ALGORITHMS)


# --- botocore's headers verify, and catch one flipped byte ---------------------------------------


@pytest.mark.parametrize("body_name", BODIES)
@pytest.mark.parametrize("algorithm", BOTOCORE_ALGORITHMS)
def test_botocore_header_checksum(algorithm, body_name):
    body = BODIES[body_name]
    headers, sent = botocore_put(body, ChecksumAlgorithm=algorithm)
    assert sent == body
    header = f"x-amz-checksum-{algorithm.lower()}"
    assert headers[header] == s3_checksum_value(algorithm, body)
    # Over plain http botocore signs the payload: the hex sha256 is verified too.
    assert len(headers["x-amz-content-sha256"]) == 64

    for seed in range(3):
        digests = PlaintextDigests.from_headers(headers)
        assert not digests.empty and digests.trailer is None
        feed(digests, body, seed)
        digests.verify()
        digests.verify()  # idempotent

    digests = PlaintextDigests.from_headers(headers)
    feed(digests, flipped(body))
    expect_error("XAmzContentSHA256Mismatch", MSG_CONTENT_SHA256_MISMATCH, digests.verify)

    headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    digests = PlaintextDigests.from_headers(headers)
    feed(digests, flipped(body))
    expect_error("BadDigest", mismatch(algorithm), digests.verify)


@pytest.mark.parametrize("body_name", BODIES)
@pytest.mark.parametrize("algorithm", BOTOCORE_ALGORITHMS)
def test_botocore_trailer_checksum(algorithm, body_name):
    """Over https botocore sends aws-chunked with the checksum as a trailer."""
    body = BODIES[body_name]
    headers, raw = botocore_put(body, https=True, ChecksumAlgorithm=algorithm)
    assert headers["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    payload, trailers = decode_aws_chunked(raw)
    assert payload == body
    name = f"x-amz-checksum-{algorithm.lower()}"
    assert trailers == [(name, s3_checksum_value(algorithm, body))]

    digests = PlaintextDigests.from_headers(headers)
    assert digests.trailer == name and not digests.empty
    feed(digests, body, kind=memoryview)
    digests.apply_trailers(trailers)
    digests.verify()

    digests = PlaintextDigests.from_headers(headers)
    feed(digests, flipped(body))
    digests.apply_trailers(dict(trailers))
    expect_error("BadDigest", mismatch(algorithm), digests.verify)

    # The announced trailer never came.
    digests = PlaintextDigests.from_headers(headers)
    feed(digests, body)
    expect_error("MalformedTrailerError", MSG_MALFORMED_TRAILER, digests.verify)


@pytest.mark.parametrize("body_name", BODIES)
def test_default_put_and_content_md5(body_name):
    """boto3's default PutObject (CRC32) with the Content-MD5 an older SDK would add."""
    body = BODIES[body_name]
    headers, _ = botocore_put(body, ContentMD5=calculate_md5(body))
    assert headers["x-amz-checksum-crc32"] and headers["Content-MD5"]
    digests = PlaintextDigests.from_headers(headers)
    feed(digests, body, kind=bytearray)
    digests.verify()

    headers["x-amz-content-sha256"] = "UNSIGNED-PAYLOAD"
    digests = PlaintextDigests.from_headers(headers)
    feed(digests, flipped(body))
    # Content-MD5 is reported before the x-amz-checksum-* header, as S3 validates it first.
    expect_error("BadDigest", MSG_MD5_MISMATCH, digests.verify)

    del headers["x-amz-checksum-crc32"], headers["x-amz-sdk-checksum-algorithm"]
    digests = PlaintextDigests.from_headers(headers)
    feed(digests, body)
    digests.verify()


def test_chunk_boundaries_do_not_matter():
    body = BODIES["random"]
    headers = {
        "Content-MD5": s3_checksum_value("md5", body),
        "x-amz-checksum-crc64nvme": s3_checksum_value("crc64nvme", body),
        "x-amz-content-sha256": hashlib.sha256(body).hexdigest(),
    }
    for seed in range(20):
        for kind in (bytes, bytearray, memoryview):
            digests = PlaintextDigests.from_headers(headers)
            feed(digests, body, seed, kind)
            digests.verify()
    digests = PlaintextDigests.from_headers(headers)
    digests.update(body)
    digests.verify()


@pytest.mark.parametrize("algorithm", SUPPORTED_ALGORITHMS)
def test_every_algorithm_round_trip(algorithm):
    """Including those botocore cannot compute (MD5 as x-amz-checksum-md5)."""
    body = BODIES["text"]
    headers = {f"X-Amz-Checksum-{algorithm}": s3_checksum_value(algorithm, body)}
    digests = PlaintextDigests.from_headers(headers)
    feed(digests, body, kind=memoryview)
    digests.verify()
    digests = PlaintextDigests.from_headers(headers)
    feed(digests, body[:-1])
    expect_error("BadDigest", mismatch(algorithm), digests.verify)


def test_shared_hash_still_checks_both():
    """Content-MD5 and x-amz-checksum-md5 share one MD5; each is still compared."""
    body = b"payload"
    good = s3_checksum_value("md5", body)
    bad = s3_checksum_value("md5", b"other")
    digests = PlaintextDigests.from_headers({"Content-MD5": bad, "x-amz-checksum-md5": good})
    digests.update(body)
    expect_error("BadDigest", MSG_MD5_MISMATCH, digests.verify)
    digests = PlaintextDigests.from_headers({"Content-MD5": good, "x-amz-checksum-md5": bad})
    digests.update(body)
    expect_error("BadDigest", mismatch("MD5"), digests.verify)
    sha = hashlib.sha256(body)
    digests = PlaintextDigests.from_headers(
        {
            "x-amz-content-sha256": sha.hexdigest().upper(),
            "x-amz-checksum-sha256": base64.b64encode(sha.digest()).decode(),
        }
    )
    digests.update(body)
    digests.verify()


# --- nothing to check ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Content-Type": "text/plain", "x-amz-meta-a": "b"},
        {"x-amz-content-sha256": "UNSIGNED-PAYLOAD"},
        {"x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"},
        {"x-amz-content-sha256": "STREAMING-AWS4-ECDSA-P256-SHA256-PAYLOAD-TRAILER"},
        {"x-amz-content-sha256": ""},
        {"Content-MD5": "  "},
        # Multipart settings and GetObject's mode are not checksums of this body.
        {"x-amz-checksum-algorithm": "CRC32", "x-amz-checksum-type": "FULL_OBJECT"},
        {"x-amz-checksum-mode": "ENABLED"},
    ],
)
def test_empty(headers):
    digests = PlaintextDigests.from_headers(headers)
    assert digests.empty and digests.trailer is None
    digests.update(b"anything")
    digests.verify()


def test_empty_body_sha256():
    digests = PlaintextDigests.from_headers({"x-amz-content-sha256": hashlib.sha256().hexdigest()})
    assert not digests.empty
    digests.verify()
    digests = PlaintextDigests.from_headers({"x-amz-content-sha256": hashlib.sha256().hexdigest()})
    digests.update(b"\0")
    expect_error("XAmzContentSHA256Mismatch", MSG_CONTENT_SHA256_MISMATCH, digests.verify)


def test_mitmproxy_headers_and_whitespace():
    body = b"hello"
    headers = Headers(
        [
            (b"CONTENT-md5", f" {s3_checksum_value('md5', body)}\t".encode()),
            (b"X-AMZ-CHECKSUM-CRC32C", s3_checksum_value("crc32c", body).encode()),
            (b"X-Amz-Sdk-Checksum-Algorithm", b"crc32c"),
        ]
    )
    digests = PlaintextDigests.from_headers(headers)
    digests.update(body)
    digests.verify()


# --- malformed headers ---------------------------------------------------------------------------

MD5_OF_NOTHING = s3_checksum_value("md5", b"")
CRC32_OF_NOTHING = s3_checksum_value("crc32", b"")


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        "not base64!",
        base64.b64encode(bytes(15)).decode(),
        base64.b64encode(bytes(17)).decode(),
        hashlib.md5(b"").hexdigest(),  # hex, not base64
        MD5_OF_NOTHING.rstrip("="),  # padding is required
        MD5_OF_NOTHING + "AAAA",
    ],
)
def test_invalid_content_md5(value):
    expect_error(
        "InvalidDigest", MSG_INVALID_MD5, PlaintextDigests.from_headers, {"Content-MD5": value}
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "xyz",
        "AAAAAA=",
        base64.b64encode(bytes(5)).decode(),
        base64.b64encode(bytes(3)).decode(),
        s3_checksum_value("sha256", b""),  # right base64, wrong algorithm's length
        "00000000",
    ],
)
def test_invalid_checksum_value(value):
    expect_error(
        "InvalidRequest",
        "Value for x-amz-checksum-crc32 header is invalid.",
        PlaintextDigests.from_headers,
        {"X-Amz-Checksum-CRC32": value},
    )


@pytest.mark.parametrize(
    "value",
    [
        "abc",
        "0" * 63,
        "0" * 65,
        "g" * 64,
        "unsigned-payload",
        "STREAMING-FOO",
        "STREAMING-UNSIGNED-PAYLOAD",
    ],
)
def test_invalid_content_sha256(value):
    expect_error(
        "InvalidArgument",
        MSG_BAD_CONTENT_SHA256,
        PlaintextDigests.from_headers,
        {"x-amz-content-sha256": value},
    )


@pytest.mark.parametrize(
    ("headers", "message"),
    [
        (
            {"x-amz-checksum-crc32": CRC32_OF_NOTHING, "x-amz-checksum-crc32c": CRC32_OF_NOTHING},
            MSG_MULTIPLE,
        ),
        ({"x-amz-checksum-crc16": "AAA="}, MSG_UNKNOWN_ALGORITHM),
        ({"x-amz-checksum-": "AAA="}, MSG_UNKNOWN_ALGORITHM),
        # An unknown algorithm is reported even beside a second checksum.
        (
            {"x-amz-checksum-crc32": CRC32_OF_NOTHING, "x-amz-checksum-foo": "x"},
            MSG_UNKNOWN_ALGORITHM,
        ),
        ({"x-amz-sdk-checksum-algorithm": "CRC32"}, MSG_SDK_WITHOUT_CHECKSUM),
        (
            {"x-amz-sdk-checksum-algorithm": "CRC32C", "x-amz-checksum-crc32": CRC32_OF_NOTHING},
            MSG_SDK_ALGORITHM,
        ),
        (
            {"x-amz-sdk-checksum-algorithm": "BOGUS", "x-amz-checksum-crc32": CRC32_OF_NOTHING},
            MSG_SDK_ALGORITHM,
        ),
        (
            {"x-amz-sdk-checksum-algorithm": "SHA1", "x-amz-trailer": "x-amz-checksum-crc32"},
            MSG_SDK_ALGORITHM,
        ),
        (
            {"x-amz-trailer": "x-amz-checksum-crc32", "x-amz-checksum-crc32": CRC32_OF_NOTHING},
            MSG_HEADER_AND_TRAILER,
        ),
        (
            {"x-amz-trailer": "x-amz-checksum-crc32,x-amz-checksum-sha1"},
            MSG_MULTIPLE,
        ),
        (
            {"x-amz-trailer": "x-amz-checksum-crc16"},
            "The value specified in the x-amz-trailer header is not supported",
        ),
        (
            {"x-amz-trailer": "x-amz-meta-foo"},
            "The value specified in the x-amz-trailer header is not supported",
        ),
    ],
)
def test_invalid_request(headers, message):
    expect_error("InvalidRequest", message, PlaintextDigests.from_headers, headers)


def test_sdk_algorithm_case_and_trailer_list_forms():
    PlaintextDigests.from_headers(
        {"x-amz-sdk-checksum-algorithm": "crc32", "x-amz-checksum-crc32": CRC32_OF_NOTHING}
    ).verify()
    digests = PlaintextDigests.from_headers({"X-Amz-Trailer": " X-Amz-Checksum-SHA1 ,"})
    assert digests.trailer == "x-amz-checksum-sha1"


def test_bad_trailers():
    def fresh() -> PlaintextDigests:
        return PlaintextDigests.from_headers({"x-amz-trailer": "x-amz-checksum-crc32"})

    expect_error(
        "InvalidRequest",
        "Value for x-amz-checksum-crc32 trailing header is invalid.",
        fresh().apply_trailers,
        [("x-amz-checksum-crc32", "nope")],
    )
    for trailers in (
        [("x-amz-checksum-sha1", s3_checksum_value("sha1", b""))],  # not the announced one
        [("x-amz-meta-x", "y")],
        [("x-amz-checksum-crc32", CRC32_OF_NOTHING)] * 2,
    ):
        expect_error(
            "MalformedTrailerError", MSG_MALFORMED_TRAILER, fresh().apply_trailers, trailers
        )
    # No trailer announced, one arrives anyway.
    expect_error(
        "MalformedTrailerError",
        MSG_MALFORMED_TRAILER,
        PlaintextDigests.from_headers({}).apply_trailers,
        {"x-amz-checksum-crc32": CRC32_OF_NOTHING},
    )
    digests = fresh()
    digests.apply_trailers(
        [("X-Amz-Checksum-Crc32", f" {CRC32_OF_NOTHING}"), ("x-amz-trailer-signature", "ab")]
    )
    digests.verify()


def test_verify_order_sha256_then_md5_then_checksum():
    body = b"body"
    headers = {
        "x-amz-checksum-sha1": s3_checksum_value("sha1", b"x"),
        "Content-MD5": s3_checksum_value("md5", b"x"),
        "x-amz-content-sha256": hashlib.sha256(b"x").hexdigest(),
    }
    digests = PlaintextDigests.from_headers(headers)
    digests.update(body)
    expect_error("XAmzContentSHA256Mismatch", MSG_CONTENT_SHA256_MISMATCH, digests.verify)


def test_from_headers_order_sha256_then_md5_then_checksum():
    bad = {"x-amz-content-sha256": "x", "Content-MD5": "x", "x-amz-checksum-crc32": "x"}
    expect_error("InvalidArgument", MSG_BAD_CONTENT_SHA256, PlaintextDigests.from_headers, bad)
    del bad["x-amz-content-sha256"]
    expect_error("InvalidDigest", MSG_INVALID_MD5, PlaintextDigests.from_headers, bad)


# --- which headers stay home ---------------------------------------------------------------------


def test_checksum_headers():
    headers = [
        ("Host", "s3"),
        ("Content-Type", "text/plain"),
        ("Content-Length", "5"),
        ("Content-MD5", "x"),
        ("X-Amz-Checksum-CRC32", "x"),
        ("x-amz-checksum-crc32", "y"),
        ("x-amz-checksum-future", "z"),
        ("x-amz-sdk-checksum-algorithm", "CRC32"),
        ("X-Amz-Trailer", "x-amz-checksum-crc32"),
        ("x-amz-content-sha256", "UNSIGNED-PAYLOAD"),
        ("x-amz-decoded-content-length", "5"),
        ("Content-MD5", "again"),
        ("x-amz-meta-checksum", "kept"),
        ("x-amz-checksum-algorithm", "CRC32"),
        ("x-amz-checksum-type", "COMPOSITE"),
    ]
    assert checksum_headers(headers) == [
        "Content-MD5",
        "X-Amz-Checksum-CRC32",
        "x-amz-checksum-crc32",
        "x-amz-checksum-future",
        "x-amz-sdk-checksum-algorithm",
        "X-Amz-Trailer",
        "x-amz-content-sha256",
        "x-amz-checksum-algorithm",
        "x-amz-checksum-type",
    ]
    assert all(name == name.lower() for name in CLIENT_CHECKSUM_HEADERS)
    assert {f"x-amz-checksum-{a.lower()}" for a in SUPPORTED_ALGORITHMS} <= CLIENT_CHECKSUM_HEADERS


def test_checksum_headers_of_a_botocore_request():
    headers, _ = botocore_put(b"abc", https=True, ChecksumAlgorithm="SHA256")
    names = {n.lower() for n in checksum_headers(headers.items())}
    assert names == {"x-amz-sdk-checksum-algorithm", "x-amz-trailer", "x-amz-content-sha256"}
    headers, _ = botocore_put(b"abc", ChecksumAlgorithm="SHA256", ContentMD5=calculate_md5(b"abc"))
    names = {n.lower() for n in checksum_headers(headers.items())}
    assert names == {
        "x-amz-sdk-checksum-algorithm",
        "x-amz-checksum-sha256",
        "x-amz-content-sha256",
        "content-md5",
    }
