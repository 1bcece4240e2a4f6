"""Where the parts of a stored object are: needed for plaintext sizes and ranges of multipart
objects, whose stored length alone does not say how long the plaintext is.

A layout is the list of (part number, stored length) of an object, learnt from the store (HEAD
with partNumber) and cached per object and ETag — an ETag names one content, so a cached layout
never goes stale, it only stops matching.
"""

from __future__ import annotations

import re
import threading
from collections import OrderedDict
from dataclasses import dataclass

from .envelope import (
    HEADER_LEN,
    SEGMENT_PLAIN,
    SEGMENT_STORED,
    FormatError,
    plaintext_part_length,
)

_MULTIPART_ETAG = re.compile(r'^"?[0-9a-fA-F]{32}-([0-9]{1,5})"?$')


def multipart_parts(etag: str | None) -> int | None:
    """N for a multipart ETag (``"<md5>-N"``), None for a single-part object."""
    if not etag:
        return None
    m = _MULTIPART_ETAG.match(etag.strip())
    return int(m.group(1)) if m else None


@dataclass(frozen=True)
class Part:
    number: int
    stored_offset: int
    stored_length: int
    plain_offset: int
    plain_length: int


@dataclass(frozen=True)
class Layout:
    etag: str
    parts: tuple[Part, ...]

    @classmethod
    def from_lengths(cls, etag: str, lengths: list[tuple[int, int]]) -> Layout:
        """From (part number, stored length) pairs in order; FormatError if any is impossible."""
        parts = []
        stored = plain = 0
        for number, length in lengths:
            p = plaintext_part_length(length)
            parts.append(Part(number, stored, length, plain, p))
            stored += length
            plain += p
        return cls(etag, tuple(parts))

    @classmethod
    def single(cls, etag: str, stored_length: int, part_number: int = 0) -> Layout:
        return cls.from_lengths(etag, [(part_number, stored_length)])

    @property
    def plaintext_length(self) -> int:
        last = self.parts[-1]
        return last.plain_offset + last.plain_length

    @property
    def stored_length(self) -> int:
        last = self.parts[-1]
        return last.stored_offset + last.stored_length

    def part_at(self, plain_offset: int) -> int:
        """Index of the part holding a plaintext offset (the last part for the end)."""
        for i, part in enumerate(self.parts):
            if plain_offset < part.plain_offset + part.plain_length:
                return i
        return len(self.parts) - 1

    def segment_start(self, plain_offset: int) -> tuple[int, int, int]:
        """(part index, segment index, stored offset of that segment) for a plaintext offset."""
        i = self.part_at(plain_offset)
        part = self.parts[i]
        seg = (plain_offset - part.plain_offset) // SEGMENT_PLAIN
        return i, seg, part.stored_offset + HEADER_LEN + seg * SEGMENT_STORED

    def segment_end(self, plain_offset: int) -> tuple[int, int, int]:
        """(part index, segment index, last stored byte of that segment) for a plaintext offset."""
        i = self.part_at(plain_offset)
        part = self.parts[i]
        seg = (plain_offset - part.plain_offset) // SEGMENT_PLAIN
        segments_in_part = max(1, -(-part.plain_length // SEGMENT_PLAIN))
        if seg == segments_in_part - 1:
            end = part.stored_offset + part.stored_length - 1
        else:
            end = part.stored_offset + HEADER_LEN + (seg + 1) * SEGMENT_STORED - 1
        return i, seg, end


def guess_regular(etag: str, total: int, count: int, first: int, last: int) -> Layout | None:
    """The layout every mainstream SDK uploads: equal parts but the last. None if the lengths
    do not add up that way (then each part has to be asked for)."""
    if count < 1 or (count - 1) * first + last != total:
        return None
    lengths = [(n, first) for n in range(1, count)] + [(count, last)]
    try:
        return Layout.from_lengths(etag, lengths)
    except FormatError:
        return None


class LayoutCache:
    """Layouts by (bucket, key), valid while the object's ETag is the cached one."""

    def __init__(self, max_entries: int = 4096):
        self._max = max_entries
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str], Layout] = OrderedDict()

    def get(self, bucket: str, key: str, etag: str | None = None) -> Layout | None:
        with self._lock:
            layout = self._items.get((bucket, key))
            if layout is None or (etag is not None and layout.etag != etag):
                return None
            self._items.move_to_end((bucket, key))
            return layout

    def put(self, bucket: str, key: str, layout: Layout) -> None:
        with self._lock:
            self._items[(bucket, key)] = layout
            self._items.move_to_end((bucket, key))
            while len(self._items) > self._max:
                self._items.popitem(last=False)

    def forget(self, bucket: str, key: str) -> None:
        with self._lock:
            self._items.pop((bucket, key), None)
