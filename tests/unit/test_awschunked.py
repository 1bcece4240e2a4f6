"""aws-chunked request bodies: AWS's published signed example, botocore's own trailer bodies,
and every way the framing or a signature can be wrong."""

from __future__ import annotations

import hashlib
import hmac
import io
import random

import pytest
from botocore.httpchecksum import AwsChunkedWrapper, Crc32Checksum

from cloudtaser_s3 import sigv4
from cloudtaser_s3.awschunked import (
    SIGNED,
    SIGNED_TRAILER,
    UNSIGNED_TRAILER,
    ChunkedDecoder,
    ChunkSigning,
)
from cloudtaser_s3.s3errors import S3Error

# https://docs.aws.amazon.com/AmazonS3/latest/API/sigv4-streaming.html
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
DATE = "20130524T000000Z"
SCOPE = "20130524/us-east-1/s3/aws4_request"
SEED = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9"
CHUNKS = [
    (65536, "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648"),
    (1024, "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497"),
    (0, "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9"),
]
SIGNING = ChunkSigning(SEED, sigv4.signing_key(SECRET, "20130524", "us-east-1"), DATE, SCOPE)


def aws_example(corrupt: bool = False) -> bytes:
    body = b""
    for size, signature in CHUNKS:
        data = bytearray(b"a" * size)
        if corrupt and size == 1024:
            data[10] = ord("b")
        body += f"{size:x};chunk-signature={signature}\r\n".encode() + bytes(data) + b"\r\n"
    return body


def decode(decoder: ChunkedDecoder, body: bytes, piece: int) -> bytes:
    out = b"".join(decoder.feed(body[i : i + piece]) for i in range(0, len(body), piece))
    decoder.finish()
    return out


@pytest.mark.parametrize("piece", [1, 7, 4096, 65536, 70000, 10**6])
def test_the_aws_published_example_decodes_with_every_signature_checked(piece):
    assert decode(ChunkedDecoder(SIGNED, SIGNING), aws_example(), piece) == b"a" * 66560


def test_a_changed_byte_fails_its_chunks_signature():
    with pytest.raises(S3Error) as e:
        decode(ChunkedDecoder(SIGNED, SIGNING), aws_example(corrupt=True), 8192)
    assert (e.value.code, e.value.status) == ("SignatureDoesNotMatch", 403)


def test_a_signature_from_another_seed_fails():
    other = ChunkSigning("0" * 64, SIGNING.signing_key, DATE, SCOPE)
    with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
        ChunkedDecoder(SIGNED, other).feed(aws_example())


def test_a_signed_body_must_carry_signatures():
    body = b"400\r\n" + b"a" * 1024 + b"\r\n0\r\n\r\n"
    with pytest.raises(S3Error, match="IncompleteBody"):
        ChunkedDecoder(SIGNED, SIGNING).feed(body)


def botocore_trailer_body(data: bytes, chunk_size: int = 8192) -> tuple[bytes, str]:
    checksum = Crc32Checksum()
    wrapper = AwsChunkedWrapper(
        io.BytesIO(data),
        checksum_cls=Crc32Checksum,
        checksum_name="x-amz-checksum-crc32",
        chunk_size=chunk_size,
    )
    checksum.update(data)
    return wrapper.read(), checksum.b64digest()


@pytest.mark.parametrize("size", [0, 1, 8191, 8192, 100_000])
def test_botocores_trailer_bodies_decode_with_their_checksum(size):
    data = random.Random(size).randbytes(size)
    body, crc = botocore_trailer_body(data)
    decoder = ChunkedDecoder(UNSIGNED_TRAILER, None)
    assert decode(decoder, body, 333) == data
    assert decoder.trailers == [("x-amz-checksum-crc32", crc)]


def sign(key: bytes, *lines: str) -> str:
    return hmac.new(key, "\n".join(lines).encode(), hashlib.sha256).hexdigest()


def signed_trailer_body(data: bytes, trailer: tuple[str, str]) -> bytes:
    """Built the way the Java/Go/JS SDKs build STREAMING-AWS4-HMAC-SHA256-PAYLOAD-TRAILER."""
    key, previous, out = SIGNING.signing_key, SEED, b""
    empty = hashlib.sha256(b"").hexdigest()
    for chunk in (data, b""):
        digest = hashlib.sha256(chunk).hexdigest()
        previous = sign(key, "AWS4-HMAC-SHA256-PAYLOAD", DATE, SCOPE, previous, empty, digest)
        out += f"{len(chunk):x};chunk-signature={previous}\r\n".encode() + chunk
        if chunk:
            out += b"\r\n"
    canonical = f"{trailer[0]}:{trailer[1]}\n".encode()
    trailer_sig = sign(
        key,
        "AWS4-HMAC-SHA256-TRAILER",
        DATE,
        SCOPE,
        previous,
        hashlib.sha256(canonical).hexdigest(),
    )
    out += f"{trailer[0]}:{trailer[1]}\r\nx-amz-trailer-signature:{trailer_sig}\r\n\r\n".encode()
    return out


def test_signed_trailer_bodies():
    body = signed_trailer_body(b"hello world", ("x-amz-checksum-crc32", "DUoRhQ=="))
    decoder = ChunkedDecoder(SIGNED_TRAILER, SIGNING)
    assert decode(decoder, body, 5) == b"hello world"
    assert decoder.trailers == [("x-amz-checksum-crc32", "DUoRhQ==")]
    forged = body.replace(b"DUoRhQ==", b"AAAAAA==")
    with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
        decode(ChunkedDecoder(SIGNED_TRAILER, SIGNING), forged, 5)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"zz\r\nab\r\n0\r\n\r\n", id="size not hex"),
        pytest.param(b"2\r\nabc\r\n0\r\n\r\n", id="data longer than its size"),
        pytest.param(b"2\r\nab\r\n0\r\n\r\nextra", id="data after the end"),
        pytest.param(b"2;foo=bar\r\nab\r\n0\r\n\r\n", id="unknown extension"),
        pytest.param(b"2\r\nab\r\n0\r\nno-colon\r\n\r\n", id="trailer without colon"),
        pytest.param(b"1" * 5000, id="endless size line"),
    ],
)
def test_malformed_framing_is_refused(body):
    with pytest.raises(S3Error) as e:
        decode(ChunkedDecoder(UNSIGNED_TRAILER, None), body, 3)
    assert e.value.status == 400


def test_a_body_that_stops_before_its_final_chunk_is_refused():
    decoder = ChunkedDecoder(UNSIGNED_TRAILER, None)
    decoder.feed(b"2\r\nab\r\n")
    with pytest.raises(S3Error, match="IncompleteBody"):
        decoder.finish()


def test_trailers_are_refused_where_the_variant_has_none():
    with pytest.raises(S3Error):
        decode(ChunkedDecoder(SIGNED, None), b"0\r\nx-amz-checksum-crc32:AAAAAA==\r\n\r\n", 100)
