"""Failing a request or response after mitmproxy has started streaming it.

Once a body streams, mitmproxy offers an addon no way to answer with an error ("Can't set a
response and enable streaming at the same time"), and ``flow.kill()`` is not looked at again
mid-body. Two moves remain, and both go through the live connection handler:

- a streamed *request* that must not complete (a checksum mismatch at the very end, a failure
  while sealing): the held-back tail is never sent, and an S3 error response is fed to mitmproxy
  as if the upstream had sent it, with ``Connection: close``. mitmproxy then answers the client
  with that error and closes the upstream connection, whose body stays incomplete — so the
  store commits nothing;
- a streamed *response* that turns out bad (a segment that does not authenticate): both
  connections are closed. The client sees a body shorter than its Content-Length — an error, never
  unauthenticated bytes.

If mitmproxy's internals ever change shape, the fallback is to close both connections: the
client sees an error and the upstream an incomplete body.
"""

from __future__ import annotations

import asyncio
import logging

from mitmproxy import ctx, http
from mitmproxy.proxy import events

from .s3errors import S3Error, error_xml, new_request_id

log = logging.getLogger(__name__)

INJECTED = "cloudtaser.injected_error"


def _handler(flow: http.HTTPFlow):
    try:
        proxyserver = ctx.master.addons.get("proxyserver")
        return proxyserver.connections.get(flow.client_conn.id)
    except Exception:  # pragma: no cover - only if mitmproxy's layout changes
        return None


def raw_error_response(error: S3Error, resource: str) -> bytes:
    request_id = new_request_id()
    body = error_xml(error, resource, request_id)
    head = (
        f"HTTP/1.1 {error.status} {error.code}\r\n"
        "Content-Type: application/xml\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"x-amz-request-id: {request_id}\r\n"
        "Connection: close\r\n\r\n"
    )
    return head.encode() + body


def fail_streamed_request(flow: http.HTTPFlow, error: S3Error, resource: str) -> None:
    """Answer a request whose body is streaming with ``error``; the upstream commits nothing."""
    flow.metadata[INJECTED] = error.code
    handler = _handler(flow)
    if handler is None or flow.server_conn is None or flow.response is not None:
        close_both(flow)
        return
    event = events.DataReceived(flow.server_conn, raw_error_response(error, resource))
    task = asyncio.get_running_loop().create_task(handler.server_event(event))
    task.add_done_callback(_log_task_error)


def close_both(flow: http.HTTPFlow) -> None:
    """Drop the client and upstream connections of a flow (fail closed)."""
    handler = _handler(flow)
    if handler is None:
        log.error("cannot reach the connection handler; killing the flow")
        if flow.killable:
            flow.kill()
        return
    for conn in (flow.server_conn, flow.client_conn):
        io = handler.transports.get(conn) if conn is not None else None
        if io is None:
            continue
        transport = getattr(io.writer, "transport", None)
        if transport is not None:
            # An immediate reset: nothing still buffered goes out, and the reader sees it at once.
            transport.abort()
        else:  # pragma: no cover - non-TCP transports
            handler.close_connection(conn)


def _log_task_error(task: asyncio.Task) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("failed to deliver an error response: %r", task.exception())


def abort_leftovers(flow: http.HTTPFlow, client_delay: float = 1.0) -> None:
    """After a flow failed, make sure its connections really close.

    mitmproxy closes them gracefully, which never completes for a store that stopped reading
    (asyncio waits to flush the unsent bytes), and it skips the client's close altogether when
    the client's handler is cancelled while it waits for the event lock (a store reset mid-upload
    races with the body): the client, still sending, blocks until its own timeout. The store's
    connection is reset now; an HTTP/1 client's a moment later, once mitmproxy's own answer (a
    502) has gone out - a no-op if mitmproxy closed it meanwhile. HTTP/2 clients are left alone:
    their connection carries other requests.
    """
    handler = _handler(flow)
    if handler is None:
        return
    loop = asyncio.get_running_loop()
    client = flow.client_conn if flow.request.http_version.startswith("HTTP/1") else None
    for conn, delay in ((flow.server_conn, 0.0), (client, client_delay)):
        io = handler.transports.get(conn) if conn is not None else None
        transport = getattr(getattr(io, "writer", None), "transport", None)
        if transport is not None:
            loop.call_later(delay, transport.abort)
