"""A size limit on request heads, which mitmproxy's HTTP/1 server does not have.

``Http1Server.read_headers`` keeps buffering a head that has not ended ("FIXME: protect against
header size DoS" in mitmproxy 11 and 12): one connection can make the proxy hold as much memory
as it sends, and when it gives up, mitmproxy logs the whole buffer as one line. S3 itself takes
8 KiB of headers; a head that has not ended within ``MAX_REQUEST_HEAD`` bytes is answered 431
and the connection closed.

This wraps a mitmproxy internal (the same in 11.0 and 12.x; pyproject pins mitmproxy below 13):
tests/integration/test_protocol_abuse.py::test_an_endless_header_section_is_cut_off fails if a
release changes it.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import Any

from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import _http1

MAX_REQUEST_HEAD = 64 * 1024
_HEAD_END = re.compile(rb"\n\r?\n")
_original = _http1.Http1Server.read_headers


def _bounded_read_headers(self: _http1.Http1Server, event: events.Event) -> Generator[Any]:
    if (
        isinstance(event, events.DataReceived)
        and len(self.buf) > MAX_REQUEST_HEAD
        and not _HEAD_END.search(bytes(self.buf), 0, MAX_REQUEST_HEAD + 4)
    ):
        yield commands.SendData(
            self.conn, _http1.make_error_response(431, "Request header fields too large")
        )
        yield commands.CloseConnection(self.conn)
        self.state = self.done
        return
    yield from _original(self, event)


def install() -> None:
    """Idempotent: wrap mitmproxy's HTTP/1 request-head reader once."""
    if _http1.Http1Server.read_headers is not _bounded_read_headers:
        _http1.Http1Server.read_headers = _bounded_read_headers  # type: ignore[method-assign]
