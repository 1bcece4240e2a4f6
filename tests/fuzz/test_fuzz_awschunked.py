"""Fuzzing the aws-chunked decoder: valid bodies of every variant decode to their payload in
any read sizes; changed bodies fail with S3Error, or — where nothing is signed — decode to
bytes that the body's own trailing checksum then refuses; nothing ever hangs.

Bodies are built here from the grammar in awschunked.py's docstring and AWS's
"sigv4-streaming" description (chunk signatures chained from the request's signature, the
trailer signed last), with random chunk sizes, random payloads and the trailing checksums SDKs
send. Mutations: bit flips, truncation, insertion, deletion, a chunk-size line rewritten in the
forms a lenient parser might accept, a line duplicated.

Two findings of this target were fixed (tests at the end): a negative chunk size was accepted
(``int(text, 16)`` takes a sign) and framed the body by the read sizes, and a chunk or trailer
signature with a non-ASCII character raised TypeError instead of S3Error.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import random
import re
import zlib

import pytest
from fuzzkit import budget, chunk_sizes, pieces, within
from hypothesis import event, given
from hypothesis import strategies as st

from cloudtaser_s3 import sigv4
from cloudtaser_s3.awschunked import (
    SIGNED,
    SIGNED_TRAILER,
    UNSIGNED_TRAILER,
    ChunkedDecoder,
    ChunkSigning,
)
from cloudtaser_s3.checksums import PlaintextDigests
from cloudtaser_s3.s3errors import S3Error

DATE = "20260301T120000Z"
SCOPE = "20260301/eu-west-1/s3/aws4_request"
SEED = "a" * 64  # the request's own signature, which the chunk signatures chain from
SIGNING = ChunkSigning(SEED, sigv4.signing_key("fuzz/secret", "20260301", "eu-west-1"), DATE, SCOPE)
EMPTY = hashlib.sha256(b"").hexdigest()


def _sign(*lines: str) -> str:
    return hmac.new(SIGNING.signing_key, "\n".join(lines).encode(), hashlib.sha256).hexdigest()


def crc32_b64(data: bytes) -> str:
    return base64.b64encode(zlib.crc32(data).to_bytes(4, "big")).decode()


def encode(payload: bytes, sizes: list[int], variant: str, trailer: bool) -> bytes:
    """An aws-chunked body as SDKs write it: chunks of ``sizes`` (in a cycle), the final empty
    chunk, and for the trailer variants an ``x-amz-checksum-crc32`` trailer (if ``trailer``)."""
    signed = variant in (SIGNED, SIGNED_TRAILER)
    previous, out = SEED, []
    chunks = [*pieces(payload, sizes), b""]
    for chunk in chunks:
        ext = ""
        if signed:
            digest = hashlib.sha256(chunk).hexdigest()
            previous = _sign("AWS4-HMAC-SHA256-PAYLOAD", DATE, SCOPE, previous, EMPTY, digest)
            ext = f";chunk-signature={previous}"
        out.append(f"{len(chunk):x}{ext}\r\n".encode() + chunk + (b"\r\n" if chunk else b""))
    trailers = [("x-amz-checksum-crc32", crc32_b64(payload))] if trailer else []
    for name, value in trailers:
        out.append(f"{name}:{value}\r\n".encode())
    if variant == SIGNED_TRAILER:
        canonical = "".join(f"{n}:{v}\n" for n, v in trailers)
        digest = hashlib.sha256(canonical.encode()).hexdigest()
        signature = _sign("AWS4-HMAC-SHA256-TRAILER", DATE, SCOPE, previous, digest)
        out.append(f"x-amz-trailer-signature:{signature}\r\n".encode())
    out.append(b"\r\n")
    return b"".join(out)


def decode(
    body: bytes, sizes: list[int], variant: str, signing: ChunkSigning | None
) -> tuple[bytes, list[tuple[str, str]]] | S3Error:
    """(payload, trailers) or the S3Error; any other exception fails the test."""
    decoder = ChunkedDecoder(variant, signing)
    out = []
    try:
        for piece in pieces(body, sizes):
            out.append(decoder.feed(piece))
        decoder.finish()
    except S3Error as e:
        return e
    return b"".join(out), decoder.trailers


VARIANTS = st.sampled_from([SIGNED, UNSIGNED_TRAILER, SIGNED_TRAILER])
PAYLOAD_LENGTH = st.one_of(st.integers(0, 300), st.integers(0, 140_000))
CHUNK = st.lists(st.one_of(st.integers(1, 100), st.integers(1, 70_000)), min_size=1, max_size=4)


def payload_of(seed: int, length: int) -> bytes:
    return random.Random(seed).randbytes(length)


@budget(0.2)
@given(
    variant=VARIANTS,
    seed=st.integers(0, 2**32),
    length=PAYLOAD_LENGTH,
    chunks=CHUNK,
    trailer=st.booleans(),
    verify=st.booleans(),
    sizes=chunk_sizes,
)
def test_a_valid_body_decodes_to_its_payload_in_any_read_sizes(
    variant, seed, length, chunks, trailer, verify, sizes
):
    payload = payload_of(seed, length)
    trailer = trailer and variant != SIGNED
    body = encode(payload, chunks, variant, trailer)
    # Signing material is None only when the proxy does not verify signatures at all.
    got = decode(body, sizes, variant, SIGNING if verify or variant == UNSIGNED_TRAILER else None)
    assert not isinstance(got, S3Error), got
    assert got[0] == payload
    assert got[1] == ([("x-amz-checksum-crc32", crc32_b64(payload))] if trailer else [])


# --------------------------------------------------------------------------------------------
# Mutations
# --------------------------------------------------------------------------------------------

WORD = st.integers(0, 2**32 - 1)
# Size lines a lenient parser might take (int(x, 16) accepts a sign, "0x", "_" and spaces).
ODD_SIZES = [
    "-2",
    "+2",
    "0x2",
    "2_0",
    " 2 ",
    "02",
    "2 ",
    "ffffffffffffffffffff",
    "",
    "g",
    "٢",
    "2;",
]
KINDS = ["flip", "truncate", "insert", "delete", "size-line", "duplicate-line"]
MUTATION = st.tuples(st.sampled_from(KINDS), WORD, WORD, st.binary(min_size=1, max_size=12))
MUTATIONS = st.lists(MUTATION, min_size=1, max_size=2)


def mutate(body: bytes, mutation: tuple[str, int, int, bytes]) -> bytes:
    kind, a, b, blob = mutation
    n = len(body)
    if kind == "flip":
        pos = a % n
        return body[:pos] + bytes([body[pos] ^ (b % 255 + 1)]) + body[pos + 1 :]
    if kind == "truncate":
        return body[: a % n]
    if kind == "insert":
        pos = a % (n + 1)
        return body[:pos] + (blob if b % 3 else b"\r\n") + body[pos:]
    if kind == "delete":
        pos = a % n
        return body[:pos] + body[pos + 1 + b % 8 :]
    lines = [m.start() for m in re.finditer(rb"(?:^|(?<=\r\n))[0-9a-f]+(?=[;\r])", body)]
    if not lines:
        return body
    start = lines[a % len(lines)]
    end = body.find(b"\r\n", start)
    end = len(body) if end < 0 else end
    if kind == "size-line":
        size_end = body.find(b";", start, end)
        size_end = end if size_end < 0 else size_end
        return body[:start] + ODD_SIZES[b % len(ODD_SIZES)].encode() + body[size_end:]
    return body[:start] + body[start : end + 2] + body[start:]  # duplicate-line


@budget(0.55)
@given(
    variant=VARIANTS,
    seed=st.integers(0, 2**32),
    length=st.integers(0, 600),
    chunks=CHUNK,
    mutations=MUTATIONS,
    sizes=chunk_sizes,
    other_sizes=chunk_sizes,
)
def test_a_changed_body_fails_or_decodes_the_same_whatever_the_read_sizes(
    variant, seed, length, chunks, mutations, sizes, other_sizes
):
    payload = payload_of(seed, length)
    trailer = variant != SIGNED
    body = encode(payload, chunks, variant, trailer)
    for mutation in mutations:
        if body:
            body = mutate(body, mutation)
            event(f"mutation: {mutation[0]}")
    with within(5, "decoding a 1 KB body"):
        got = decode(body, sizes, variant, SIGNING)
    again = decode(body, other_sizes, variant, SIGNING)
    # The outcome depends on the bytes, not on how they arrived.
    assert isinstance(got, S3Error) == isinstance(again, S3Error)
    if not isinstance(got, S3Error):
        assert got == again

    if isinstance(got, S3Error):
        assert got.code in ("IncompleteBody", "SignatureDoesNotMatch"), got
        return
    decoded, trailers = got
    if variant in (SIGNED, SIGNED_TRAILER):
        # Every chunk and the trailer are signed: a body that decodes is the one signed.
        assert decoded == payload
        assert trailers == ([("x-amz-checksum-crc32", crc32_b64(payload))] if trailer else [])
        return
    # Nothing is signed: the trailing checksum is what catches a change, as the proxy does it.
    digests = PlaintextDigests.from_headers({"x-amz-trailer": "x-amz-checksum-crc32"})
    try:
        digests.update(decoded)
        digests.apply_trailers(trailers)
        digests.verify()
    except S3Error:
        return
    assert decoded == payload


@budget(0.25)
@given(
    body=st.one_of(
        st.binary(max_size=300),
        st.lists(
            st.one_of(
                st.sampled_from([b"\r\n", b"0", b"1", b"a", b";chunk-signature=", b":", b"-"]),
                st.binary(max_size=8),
            ),
            max_size=40,
        ).map(b"".join),
    ),
    variant=VARIANTS,
    verify=st.booleans(),
    sizes=chunk_sizes,
)
def test_arbitrary_bytes_fail_with_s3error_only_and_quickly(body, variant, verify, sizes):
    with within(5, "decoding 300 bytes"):
        decode(body, sizes, variant, SIGNING if verify else None)


@budget(0.1)
@given(
    headers=st.dictionaries(
        st.one_of(
            st.sampled_from(
                [
                    "x-amz-content-sha256",
                    "content-md5",
                    "x-amz-trailer",
                    "x-amz-sdk-checksum-algorithm",
                    "x-amz-checksum-crc32",
                    "x-amz-checksum-crc32c",
                    "x-amz-checksum-sha256",
                    "x-amz-checksum-crc64nvme",
                    "x-amz-checksum-type",
                    "X-Amz-Checksum-Foo",
                ]
            ),
            st.text(max_size=20),
        ),
        st.one_of(
            st.text(max_size=60),
            st.sampled_from(["AAAAAA==", "1B2M2Y8AsgTpgAmY7PhCfg==", "x-amz-checksum-crc32"]),
        ),
        max_size=4,
    ),
    trailers=st.lists(st.tuples(st.text(max_size=30), st.text(max_size=60)), max_size=3),
    data=st.binary(max_size=100),
)
def test_checksum_headers_and_trailers_fail_with_s3error_only(headers, trailers, data):
    """PlaintextDigests reads the client's checksum headers and aws-chunked trailers (a
    secondary target: a tenth of a parser's examples, on top of the decoder's)."""
    try:
        digests = PlaintextDigests.from_headers(headers)
        digests.update(data)
        digests.apply_trailers(trailers)
        digests.verify()
    except S3Error:
        pass


# --------------------------------------------------------------------------------------------
# Fixed findings
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["-2", "+2", "0x2", "2_0", "٢"])
def test_a_chunk_size_is_hex_digits_only(size):
    """int(text, 16) took '-2', which framed the body by how it was read."""
    decoder = ChunkedDecoder(UNSIGNED_TRAILER, None)
    with pytest.raises(S3Error, match="IncompleteBody"):
        decoder.feed(f"{size}\r\nabcdef\r\n".encode())
        decoder.feed(b"0\r\n\r\n")
        decoder.finish()


@pytest.mark.parametrize("where", ["chunk", "trailer"])
def test_a_signature_with_a_non_ascii_character_is_signature_does_not_match(where):
    """hmac.compare_digest(str, str) raised TypeError for it."""
    body = encode(b"", [1], SIGNED_TRAILER, trailer=True)
    marker = b"chunk-signature=" if where == "chunk" else b"x-amz-trailer-signature:"
    at = body.index(marker) + len(marker)
    body = body[:at] + b"\xe4" + body[at + 1 :]
    decoder = ChunkedDecoder(SIGNED_TRAILER, SIGNING)
    with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
        decoder.feed(body)
        decoder.finish()
