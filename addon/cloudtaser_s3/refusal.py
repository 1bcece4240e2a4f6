"""Refusing a request that has a body, without buffering it and without touching the upstream.

When a hook sets ``flow.response`` before the body arrived, mitmproxy still reads the whole body
into memory before it answers — for a 5 GiB PutObject that is 5 GiB. Instead the refused flow is
sent to this responder on 127.0.0.1: it answers at once with the S3 error and closes, while the
flow's stream callable drops the client's body chunk by chunk. The real upstream never sees
the request.
"""

from __future__ import annotations

import asyncio
import logging
import secrets

from mitmproxy import http

from .interrupt import INJECTED, raw_error_response
from .s3errors import S3Error

log = logging.getLogger(__name__)

TOKEN_HEADER = "x-cloudtaser-refusal"
_MAX_HEAD = 64 * 1024


def _discard(_data: bytes) -> list[bytes]:
    return []  # no chunks at all: an empty chunk would end a chunked body


class RefusalResponder:
    def __init__(self) -> None:
        self._server: asyncio.base_events.Server | None = None
        self._pending: dict[str, bytes] = {}
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None

    def route(self, flow: http.HTTPFlow, error: S3Error, resource: str) -> None:
        """Answer ``flow`` with ``error``; its body is read and dropped, never forwarded."""
        if self._server is None:
            raise RuntimeError("refusal responder is not running")
        token = secrets.token_hex(16)
        self._pending[token] = raw_error_response(error, resource)
        req = flow.request
        # Nothing of the client's request is forwarded anywhere but to this local responder.
        req.headers.fields = ()  # Headers.clear() pops one name at a time: quadratic
        req.headers[TOKEN_HEADER] = token
        req.headers["content-length"] = "0"
        req.scheme, req.host, req.port = "http", "127.0.0.1", self.port
        req.stream = _discard
        flow.metadata[INJECTED] = error.code

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            token = ""
            for line in head.decode("latin-1").split("\r\n"):
                name, _, value = line.partition(":")
                if name.strip().lower() == TOKEN_HEADER:
                    token = value.strip()
            response = self._pending.pop(token, None)
            if response is None:
                response = raw_error_response(S3Error("InternalError", "Unknown refusal.", 500), "")
            writer.write(response)
            await writer.drain()
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()
