"""The few edits the proxy makes to S3's small XML bodies (listings, part lists, upload ids).

Regular expressions over the text rather than a parser: the elements are flat, and the rest of
the document must reach the client exactly as the store wrote it.
"""

from __future__ import annotations

import html
import re
from collections.abc import Callable, Iterator
from xml.sax.saxutils import escape

_CHECKSUMS = re.compile(r"<(Checksum[A-Za-z0-9]*)>[^<]*</\1>")


def text_of(text: str, tag: str) -> str | None:
    """The first ``<tag>`` value, unescaped (html.unescape: stores write entities differently;
    Go's encoder writes &#34; for a quote)."""
    m = re.search(rf"<{tag}>([^<]*)</{tag}>", text)
    return html.unescape(m.group(1)) if m else None


_QUOTE = {'"': "&quot;"}


def _element(tag: str, value: str) -> str:
    return f"<{tag}>{escape(value, _QUOTE)}</{tag}>"


def replace_first(text: str, tag: str, value: str) -> str:
    new = _element(tag, value)
    return re.sub(rf"<{tag}>[^<]*</{tag}>", lambda _: new, text, count=1)


def map_all(text: str, tag: str, fn: Callable[[str], str]) -> str:
    """Every ``<tag>`` value passed through ``fn`` (unescaped in, escaped out)."""
    return re.sub(
        rf"<{tag}>([^<]*)</{tag}>", lambda m: _element(tag, fn(html.unescape(m.group(1)))), text
    )


def strip_checksums(text: str) -> str:
    """Checksum elements describe the other side's bytes (plaintext or ciphertext)."""
    return _CHECKSUMS.sub("", text)


_ENTRY_OPEN = re.compile(r"<(Contents|Version)>")


def entry_spans(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of every complete ``<Contents>`` or ``<Version>`` element of a listing, in
    order: what ``<(Contents|Version)>.*?</\\1>`` finds, in linear time (that regex rescans to the
    end of the text from every unclosed opening tag: a store could stall the proxy with one)."""
    closing: dict[str, int] = {}  # the next closing tag found, per name; -1: none left
    done = 0
    for m in _ENTRY_OPEN.finditer(text):
        if m.start() < done:
            continue  # inside the entry just found
        tag = m.group(1)
        close = closing.get(tag)
        if close is None or (close != -1 and close < m.end()):
            close = closing[tag] = text.find(f"</{tag}>", m.end())
        if close == -1:
            continue
        done = close + len(tag) + 3
        yield m.start(), done


def map_entries(text: str, fn: Callable[[str], str]) -> str:
    """Every listing entry (``entry_spans``) passed through ``fn``; the rest kept as it is."""
    pieces, last = [], 0
    for start, end in entry_spans(text):
        pieces += (text[last:start], fn(text[start:end]))
        last = end
    pieces.append(text[last:])
    return "".join(pieces)
