"""Fuzzing range reads: the Range header parser against S3's (and Python slicing's) meaning of
a byte range, and range plans over arbitrary layouts.

1. ``parse_range`` takes any header string and returns None (S3 ignores the header and serves
   the whole object) or one ``ByteRange``; a rendered range, with the spaces HTTP allows, parses
   back to itself.
2. ``ByteRange.resolve`` is Python slicing: ``bytes=a-b`` is ``data[a:b+1]``, ``a-`` is
   ``data[a:]``, ``-n`` is ``data[-n:]``, and a range that selects nothing (a first byte past
   the end, ``-0``, any range of an empty object) is unsatisfiable.
3. ``plan`` over random layouts — one part, or up to five irregular parts of any size up to
   5 GiB — asks the store for whole segments only, exactly the ones holding the range, and
   (sealed for real, on small layouts) opens to exactly the plaintext slice.
4. ``stored_range_header``, asked before the layout is known, covers the segments a
   single-part object needs and the same bytes of an object stored as plaintext.
5. ``parse_content_range`` takes any string.

A finding of this target was fixed (test at the end): a number of more than 4,300 digits made
``int()`` raise ValueError (CPython's integer string conversion limit) out of both parsers; now
a number of more than 20 digits (past any object) makes the header one S3 ignores.
"""

from __future__ import annotations

import functools
import random

import pytest
from fuzzkit import budget, pieces
from hypothesis import given
from hypothesis import strategies as st

from cloudtaser_s3 import envelope, ranges
from cloudtaser_s3.envelope import ObjectKeyMaterial
from cloudtaser_s3.layout import Layout
from cloudtaser_s3.ranges import ByteRange, parse_content_range, parse_range
from cloudtaser_s3.streams import RangeOpeningStream

SEG = 65536
SEG_STORED = SEG + 28
MATERIAL = ObjectKeyMaterial(bytes(32), bytes(12), "fuzz/ranges")
GiB = 2**30

RANGE_TEXT = st.text("bytes=0123456789-, \t\r\nBYTESitems;/٣", max_size=30)


@budget(0.25)
@given(value=st.one_of(RANGE_TEXT, st.text(max_size=30)))
def test_any_header_is_none_or_one_well_formed_range(value):
    r = parse_range(value)
    if r is None:
        return
    assert r.first is not None or r.last is not None
    assert r.first is None or r.first >= 0
    assert r.last is None or r.last >= 0
    if r.first is not None and r.last is not None:
        assert r.first <= r.last


SPACE = st.sampled_from(["", " ", "  ", "\t"])


@budget(0.15)
@given(
    form=st.sampled_from(["a-b", "a-", "-n"]),
    a=st.integers(0, 10**20 - 1),  # 20 digits at most: 2**64 has 20
    b=st.integers(0, 10**20 - 1),
    spaces=st.lists(SPACE, min_size=6, max_size=6),
)
def test_a_rendered_range_parses_back_to_itself(form, a, b, spaces):
    first, last = {"a-b": (min(a, b), max(a, b)), "a-": (a, None), "-n": (None, b)}[form]
    s = spaces
    text = f"{s[0]}bytes{s[1]}={s[2]}{'' if first is None else first}{s[3]}-{s[4]}"
    text += f"{'' if last is None else last}{s[5]}"
    assert parse_range(text) == ByteRange(first, last)
    assert parse_range(text + ",0-1") is None  # several ranges: S3 serves the whole object


@budget(0.15)
@given(
    form=st.sampled_from(["a-b", "a-", "-n"]),
    a=st.integers(0, 300),
    b=st.integers(0, 300),
    length=st.integers(0, 200),
)
def test_resolve_is_python_slicing(form, a, b, length):
    data = range(length)
    if form == "a-b":
        r, sliced = ByteRange(min(a, b), max(a, b)), data[min(a, b) : max(a, b) + 1]
    elif form == "a-":
        r, sliced = ByteRange(a, None), data[a:]
    else:
        r, sliced = ByteRange(None, b), data[-b:] if b else data[0:0]
    span = r.resolve(length)
    if not sliced:
        assert span is None  # 416 Range Not Satisfiable
    else:
        assert span == (sliced[0], sliced[-1])


# --------------------------------------------------------------------------------------------
# Plans
# --------------------------------------------------------------------------------------------

PART_PLAIN = st.one_of(
    st.integers(0, 3 * SEG),
    st.sampled_from([0, 1, SEG - 1, SEG, SEG + 1, 5 * 2**20, 5 * GiB]),
    st.integers(0, 5 * GiB),
)
LAYOUTS = st.one_of(
    st.tuples(PART_PLAIN).map(lambda p: [(0, p[0])]),
    st.lists(PART_PLAIN, min_size=1, max_size=5).map(
        lambda ps: [(n + 1, p) for n, p in enumerate(ps)]
    ),
)


def layout_of(parts: list[tuple[int, int]]) -> Layout:
    lengths = [(n, envelope.sealed_part_length(p)) for n, p in parts]
    return Layout.from_lengths('"e"', lengths)


def range_in(length: int, form: str, a: int, b: int) -> ByteRange:
    if form == "-n":
        return ByteRange(None, 1 + a % (length + 2))
    first = a % (length + 2)
    return ByteRange(first, None if form == "a-" else first + b % (length + 2))


def segment_starts(layout: Layout) -> dict[int, tuple[int, int, int]]:
    """Stored offset of every segment -> (part index, segment index, plaintext offset)."""
    out = {}
    for i, part in enumerate(layout.parts):
        for s in range(envelope.segment_count(part.plain_length)):
            at = part.stored_offset + 16 + s * SEG_STORED
            out[at] = (i, s, part.plain_offset + s * SEG)
    return out


@budget(0.25)
@given(
    parts=LAYOUTS,
    form=st.sampled_from(["a-b", "a-", "-n"]),
    a=st.integers(0, 2**64),
    b=st.integers(0, 2**64),
)
def test_a_plan_asks_for_exactly_the_whole_segments_holding_the_range(parts, form, a, b):
    layout = layout_of(parts)
    total = layout.plaintext_length
    r = range_in(total, form, a, b)
    plan = ranges.plan(r, layout)
    span = r.resolve(total)
    if plan is None:
        assert span is None
        return
    assert (plan.start, plan.end) == span
    assert plan.content_range == f"bytes {span[0]}-{span[1]}/{total}"
    assert plan.length == span[1] - span[0] + 1
    part0, part1 = layout.parts[plan.first[0]], layout.parts[plan.last[0]]
    # The first segment holds the first byte, the last one the last byte.
    first_plain = part0.plain_offset + plan.first[1] * SEG
    first_seg_plain = min(SEG, part0.plain_length - plan.first[1] * SEG)
    assert first_plain <= plan.start < first_plain + first_seg_plain
    assert plan.skip_plain == plan.start - first_plain
    last_plain = part1.plain_offset + plan.last[1] * SEG
    last_seg_plain = min(SEG, part1.plain_length - plan.last[1] * SEG)
    assert last_plain <= plan.end < last_plain + last_seg_plain
    # Stored bytes: from the start of the first segment to the end of the last one.
    assert plan.first_stored == part0.stored_offset + 16 + plan.first[1] * SEG_STORED
    assert plan.last_stored == part1.stored_offset + 16 + plan.last[1] * SEG_STORED + (
        last_seg_plain + 28 - 1
    )
    assert plan.stored_range == f"bytes={plan.first_stored}-{plan.last_stored}"
    assert 0 <= plan.first_stored <= plan.last_stored < layout.stored_length


SMALL_PLAIN = st.one_of(st.integers(0, 300), st.sampled_from([SEG - 1, SEG, SEG + 1, 2 * SEG]))
SMALL_LAYOUTS = st.one_of(
    SMALL_PLAIN.map(lambda p: ((0, p),)),
    st.lists(SMALL_PLAIN, min_size=1, max_size=4).map(
        lambda ps: tuple((n * 3 + 1, p) for n, p in enumerate(ps))
    ),
)


@functools.lru_cache(maxsize=32)
def sealed(parts: tuple[tuple[int, int], ...]) -> tuple[bytes, bytes]:
    rng = random.Random(repr(parts))
    plain = [rng.randbytes(p) for _, p in parts]
    body = b"".join(
        envelope.seal_part(MATERIAL, n, p) for (n, _), p in zip(parts, plain, strict=True)
    )
    return b"".join(plain), body


@budget(0.1)
@given(
    parts=SMALL_LAYOUTS,
    form=st.sampled_from(["a-b", "a-", "-n"]),
    a=st.integers(0, 2**20),
    b=st.integers(0, 2**20),
    read=st.integers(1, 70_000),
)
def test_a_plan_opens_to_exactly_the_plaintext_slice(parts, form, a, b, read):
    plaintext, body = sealed(parts)
    layout = layout_of(list(parts))
    r = range_in(len(plaintext), form, a, b)
    plan = ranges.plan(r, layout)
    if plan is None:
        assert r.resolve(len(plaintext)) is None
        return
    failures = []
    stream = RangeOpeningStream(plan, plan.opener(MATERIAL), failures.append)
    sent = body[plan.first_stored : plan.last_stored + 1]
    out = b"".join(stream(p) for p in pieces(sent, [read])) + stream(b"")
    assert not failures
    assert out == plaintext[plan.start : plan.end + 1]


@budget(0.05)
@given(
    plain_length=st.one_of(st.integers(0, 4 * SEG), st.integers(0, 5 * GiB)),
    form=st.sampled_from(["a-b", "a-", "-n"]),
    a=st.integers(0, 2**64),
    b=st.integers(0, 2**64),
)
def test_the_range_asked_before_the_layout_is_known_covers_what_is_needed(plain_length, form, a, b):
    r = range_in(plain_length, form, a, b)
    asked = parse_range(ranges.stored_range_header(r))
    assert asked is not None
    # An encrypted single-part object: the store's answer holds every segment the plan opens.
    layout = Layout.single('"e"', envelope.sealed_part_length(plain_length))
    plan = ranges.plan(r, layout)
    got = asked.resolve(layout.stored_length)
    if plan is not None:
        assert got is not None
        assert got[0] <= plan.first_stored and plan.last_stored <= got[1]
        assert ranges.plan(r, layout, got[0]) is not None  # the answer's offset is usable
    # The same object stored as plaintext: the answer holds the plaintext range.
    span = r.resolve(plain_length)
    got = asked.resolve(plain_length)
    if span is not None:
        assert got is not None and got[0] <= span[0] and span[1] <= got[1]


@budget(0.05)
@given(
    value=st.one_of(
        st.text("bytes 0123456789-/* \t", max_size=30),
        st.text(max_size=30),
        st.builds("bytes {}-{}/{}".format, st.integers(0), st.integers(0), st.integers(0)),
    )
)
def test_any_content_range_is_none_or_three_numbers(value):
    got = parse_content_range(value)
    assert got is None or (len(got) == 3 and all(isinstance(x, int) and x >= 0 for x in got))


# --------------------------------------------------------------------------------------------
# Fixed finding: numbers longer than CPython's int-from-string limit
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("digits", [21, 5000])
def test_a_number_of_more_than_20_digits_is_a_header_s3_ignores(digits):
    n = "9" * digits
    assert parse_range(f"bytes={n}-") is None
    assert parse_range(f"bytes=0-{n}") is None
    assert parse_content_range(f"bytes 0-1/{n}") is None
