"""Range reads: every single-range form, over encrypted and plaintext objects, against a store
that applies Range headers as S3 does. Only whole, authenticated segments are opened."""

from __future__ import annotations

import os
import random

import pytest

from cloudtaser_s3 import envelope, ranges
from cloudtaser_s3.envelope import ObjectKeyMaterial
from cloudtaser_s3.layout import Layout
from cloudtaser_s3.ranges import ByteRange, parse_range
from cloudtaser_s3.streams import PlainRangeStream, RangeOpeningStream

MATERIAL = ObjectKeyMaterial(os.urandom(32), os.urandom(12), "ranged/object")


def store_get(stored: bytes, range_header: str) -> tuple[int, bytes] | None:
    """What S3 returns for a Range: (offset, bytes), or None for 416."""
    r = parse_range(range_header)
    assert r is not None
    span = r.resolve(len(stored))
    if span is None:
        return None
    return span[0], stored[span[0] : span[1] + 1]


def read_encrypted(plaintext: bytes, r: ByteRange, chunk: int = 7000) -> bytes | None:
    stored = envelope.seal_part(MATERIAL, 0, plaintext)
    got = store_get(stored, ranges.stored_range_header(r))
    if got is None:
        assert r.resolve(len(plaintext)) is None
        return None
    offset, body = got
    plan = ranges.plan(r, Layout.single('"etag"', len(stored)), offset)
    if plan is None:
        return None
    errors = []
    stream = RangeOpeningStream(plan, plan.opener(MATERIAL), errors.append)
    out = b"".join(stream(body[i : i + chunk]) for i in range(0, len(body), chunk))
    out += stream(b"")
    assert not errors
    assert len(out) == plan.length
    return out


def read_plain(plaintext: bytes, r: ByteRange) -> bytes | None:
    got = store_get(plaintext, ranges.stored_range_header(r))
    span = r.resolve(len(plaintext))
    if got is None or span is None:
        return None
    offset, body = got
    stream = PlainRangeStream(span[0] - offset, span[1] - span[0] + 1, None)
    return stream(body) + stream(b"")


SIZES = [1, 100, 65535, 65536, 65537, 200_000]


def cases(size: int) -> list[ByteRange]:
    rng = random.Random(size)
    points = {0, 1, size - 1, size, size + 5, 65535, 65536, 65537, 131071, 131072}
    points |= {rng.randrange(0, size + 10) for _ in range(6)}
    out = [ByteRange(None, n) for n in (1, 5, 65536, 65537, size, size + 10)]
    for a in sorted(points):
        out.append(ByteRange(a, None))
        for b in sorted(points):
            if b >= a:
                out.append(ByteRange(a, b))
    return out


@pytest.mark.parametrize("size", SIZES)
def test_every_range_of_an_encrypted_object_reads_exactly_those_bytes(size):
    plaintext = os.urandom(size)
    for r in cases(size):
        span = r.resolve(size)
        expected = None if span is None else plaintext[span[0] : span[1] + 1]
        assert read_encrypted(plaintext, r) == expected, r


@pytest.mark.parametrize("size", SIZES)
def test_the_same_ranges_of_a_plaintext_object(size):
    plaintext = os.urandom(size)
    for r in cases(size):
        span = r.resolve(size)
        expected = None if span is None else plaintext[span[0] : span[1] + 1]
        assert read_plain(plaintext, r) == expected, r


def test_only_the_covering_segment_is_fetched_for_a_small_range():
    """1 KiB from the middle: one stored segment, plus the few bytes that would also cover the
    same range of an object stored as plaintext (28 per segment before it)."""
    header = ranges.stored_range_header(ByteRange(10 * 65536 + 5, 10 * 65536 + 1029))
    first, last = (int(x) for x in header.removeprefix("bytes=").split("-"))
    seg_start = 16 + 10 * envelope.SEGMENT_STORED
    assert first <= seg_start and last == seg_start + envelope.SEGMENT_STORED - 1
    assert last - first + 1 <= envelope.SEGMENT_STORED + 16 + 28 * 10


def test_a_tampered_segment_in_the_range_is_not_served():
    plaintext = os.urandom(300_000)
    stored = bytearray(envelope.seal_part(MATERIAL, 0, plaintext))
    stored[16 + 2 * envelope.SEGMENT_STORED + 100] ^= 1
    r = ByteRange(65536, 250_000)
    offset, body = store_get(bytes(stored), ranges.stored_range_header(r))
    plan = ranges.plan(r, Layout.single('"etag"', len(stored)), offset)
    errors = []
    stream = RangeOpeningStream(plan, plan.opener(MATERIAL), errors.append)
    out = stream(body) + stream(b"")
    assert errors and errors[0].code == "InternalError"
    assert out == b""  # the failure comes within the same chunk: nothing past it is released


def test_a_header_that_does_not_match_the_stored_length_fails_authentication():
    """Ranged reads do not fetch the header; they rebuild it from the stored length."""
    plaintext = os.urandom(200_000)
    stored = envelope.seal_part(MATERIAL, 0, plaintext)
    opener = envelope.SegmentRunOpener(MATERIAL, [(0, 199_999)], (0, 1), (0, 1))
    with pytest.raises(envelope.FormatError):
        opener.feed(stored[16 + envelope.SEGMENT_STORED : 16 + 2 * envelope.SEGMENT_STORED])


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-9", ByteRange(0, 9)),
        ("bytes=100-", ByteRange(100, None)),
        ("bytes=-500", ByteRange(None, 500)),
        (" bytes = 5 - 6 ", ByteRange(5, 6)),
        ("bytes=0-1,5-6", None),
        ("items=0-1", None),
        ("bytes=9-1", None),
        ("bytes=-", None),
        ("bytes=abc", None),
    ],
)
def test_range_header_parsing(header, expected):
    assert parse_range(header) == expected


def test_content_range_parsing():
    assert ranges.parse_content_range("bytes 16-65579/200128") == (16, 65579, 200128)
    assert ranges.parse_content_range("bytes */200") is None


def test_ranges_across_the_parts_of_a_multipart_object():
    """Parts 1..3 of 200_000, 70_000 and 5 bytes, sealed as UploadPart seals them."""
    sizes = [200_000, 70_000, 5]
    plains = [os.urandom(n) for n in sizes]
    sealed = [envelope.seal_part(MATERIAL, i + 1, p) for i, p in enumerate(plains)]
    stored = b"".join(sealed)
    plaintext = b"".join(plains)
    layout = Layout.from_lengths('"x-3"', [(i + 1, len(s)) for i, s in enumerate(sealed)])
    assert layout.plaintext_length == len(plaintext)
    for r in cases(len(plaintext)):
        p = ranges.plan(r, layout)
        span = r.resolve(len(plaintext))
        if p is None:
            assert span is None
            continue
        first, last = (int(x) for x in p.stored_range.removeprefix("bytes=").split("-"))
        errors = []
        stream = RangeOpeningStream(p, p.opener(MATERIAL), errors.append)
        body = stored[first : last + 1]
        out = b"".join(stream(body[i : i + 9999]) for i in range(0, len(body), 9999))
        out += stream(b"")
        assert not errors, r
        assert out == plaintext[span[0] : span[1] + 1], r


def test_a_layout_guess_that_does_not_add_up_is_not_used():
    from cloudtaser_s3.layout import guess_regular

    part = envelope.sealed_part_length(5 * 2**20)
    last = envelope.sealed_part_length(123)
    assert guess_regular('"e-3"', 2 * part + last, 3, part, last) is not None
    assert guess_regular('"e-3"', 2 * part + last + 44, 3, part, last) is None
