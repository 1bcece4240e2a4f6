"""Range reads: a plaintext byte range as a segment-aligned range of the stored object.

A client asks for plaintext bytes; the store holds segments of 64 KiB + 28 bytes after a 16-byte
part header. The proxy asks the store for whole segments only — the ones that cover the range —
authenticates each, and cuts the plaintext to the range. The part header is not fetched: for a
single-part object it is determined by the stored length (``CTS1 | 0 | P``), and a stored header
that differs makes every segment fail authentication, since the header is part of each segment's
associated data.

Pure arithmetic, no I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .envelope import (
    HEADER_LEN,
    SEGMENT_OVERHEAD,
    SEGMENT_PLAIN,
    SEGMENT_STORED,
    ObjectKeyMaterial,
    SegmentRunOpener,
)
from .layout import Layout

_RANGE = re.compile(r"\s*bytes\s*=\s*([0-9]*)\s*-\s*([0-9]*)\s*")

MAX_DIGITS = 20  # a byte position of more digits is past any object (2**64 has 20)


@dataclass(frozen=True)
class ByteRange:
    """One HTTP byte range as the client wrote it: ``first-last``, ``first-`` or ``-suffix``."""

    first: int | None
    last: int | None

    @property
    def is_suffix(self) -> bool:
        return self.first is None

    def resolve(self, length: int) -> tuple[int, int] | None:
        """Inclusive (start, end) within an object of ``length`` bytes; None if unsatisfiable."""
        if self.first is None:
            assert self.last is not None
            if self.last == 0 or length == 0:
                return None
            return max(0, length - self.last), length - 1
        if self.first >= length:
            return None
        end = length - 1 if self.last is None else min(self.last, length - 1)
        return self.first, end


def parse_range(value: str) -> ByteRange | None:
    """The one range of a Range header; None when S3 would ignore the header (multiple ranges,
    another unit, malformed) and serve the whole object."""
    if "," in value:
        return None
    m = _RANGE.fullmatch(value)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    if len(m.group(1)) > MAX_DIGITS or len(m.group(2)) > MAX_DIGITS:
        return None  # no object is that large; int() of thousands of digits would raise
    first = int(m.group(1)) if m.group(1) else None
    last = int(m.group(2)) if m.group(2) else None
    if first is not None and last is not None and last < first:
        return None
    return ByteRange(first, last)


def stored_range_header(r: ByteRange) -> str:
    """The Range to ask the store for, before the object's length — or whether it is encrypted
    at all — is known.

    ``first-[last]`` maps to the segments that hold those bytes. A suffix asks for enough stored
    bytes to hold the plaintext suffix from a segment boundary on, whatever the length turns out
    to be. Either way the range also covers the same bytes of an object stored as plaintext
    (written before the proxy), so one request serves both cases.
    """
    if r.first is None:
        assert r.last is not None
        segments = -(-r.last // SEGMENT_PLAIN) + 1
        return f"bytes=-{r.last + SEGMENT_OVERHEAD * segments + SEGMENT_PLAIN + HEADER_LEN}"
    start = min(r.first, HEADER_LEN + (r.first // SEGMENT_PLAIN) * SEGMENT_STORED)
    if r.last is None:
        return f"bytes={start}-"
    end = max(r.last, HEADER_LEN + (r.last // SEGMENT_PLAIN + 1) * SEGMENT_STORED - 1)
    return f"bytes={start}-{end}"


@dataclass(frozen=True)
class RangePlan:
    """What to do with the stored bytes that arrive for a plaintext range."""

    start: int  # plaintext range, inclusive
    end: int
    layout: Layout
    first: tuple[int, int]  # (part index, segment index) of the first segment to open
    last: tuple[int, int]  # ... and of the last
    first_stored: int  # stored offset of the first segment
    last_stored: int  # last stored byte of the last segment
    skip_stored: int  # stored bytes to drop before the first wanted segment
    skip_plain: int  # plaintext bytes to drop from the first opened segment

    @property
    def length(self) -> int:
        return self.end - self.start + 1

    @property
    def content_range(self) -> str:
        return f"bytes {self.start}-{self.end}/{self.layout.plaintext_length}"

    @property
    def stored_range(self) -> str:
        return f"bytes={self.first_stored}-{self.last_stored}"

    def opener(self, material: ObjectKeyMaterial) -> SegmentRunOpener:
        parts = [(p.number, p.plain_length) for p in self.layout.parts]
        return SegmentRunOpener(material, parts, self.first, self.last)


def plan(r: ByteRange, layout: Layout, stored_offset: int | None = None) -> RangePlan | None:
    """The plan for a range over an object of known layout. ``stored_offset`` is where the
    stored bytes that arrive start (the store's Content-Range); by default exactly at the first
    segment needed. None when unsatisfiable."""
    span = r.resolve(layout.plaintext_length)
    if span is None:
        return None
    start, end = span
    i0, s0, first_at = layout.segment_start(start)
    i1, s1, last_at = layout.segment_end(end)
    offset = first_at if stored_offset is None else stored_offset
    if offset > first_at:
        raise ValueError("the store's range starts after the first segment needed")
    part = layout.parts[i0]
    return RangePlan(
        start=start,
        end=end,
        layout=layout,
        first=(i0, s0),
        last=(i1, s1),
        first_stored=first_at,
        last_stored=last_at,
        skip_stored=first_at - offset,
        skip_plain=start - part.plain_offset - s0 * SEGMENT_PLAIN,
    )


_CONTENT_RANGE = re.compile(r"\s*bytes\s+([0-9]+)-([0-9]+)/([0-9]+)\s*")


def parse_content_range(value: str) -> tuple[int, int, int] | None:
    """(first, last, total) of ``bytes first-last/total``."""
    m = _CONTENT_RANGE.fullmatch(value)
    if not m or any(len(x) > MAX_DIGITS for x in m.groups()):
        return None
    first, last, total = (int(x) for x in m.groups())
    return first, last, total
