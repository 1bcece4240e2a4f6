"""S3-style errors: what the proxy answers when it refuses a request.

Clients (boto3, the AWS CLI, rclone, ...) parse S3's XML error body to decide whether to retry
and what to tell the user, so a refusal must look exactly like S3's own: the right code, the
right HTTP status, an XML body, and a request id.
"""

from __future__ import annotations

import secrets
from xml.sax.saxutils import escape


class S3Error(Exception):
    """A refusal with S3's code, message and HTTP status. Messages never carry secrets."""

    def __init__(self, code: str, message: str, status: int, headers: dict[str, str] | None = None):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status
        self.headers = headers or {}  # extra response headers, e.g. Content-Range on a 416

    def __repr__(self) -> str:
        return f"S3Error({self.code!r}, {self.message!r}, {self.status})"


def not_implemented(what: str) -> S3Error:
    return S3Error(
        "NotImplemented",
        f"{what} is not supported by the CloudTaser encryption proxy yet; "
        "it was refused rather than forwarded unencrypted.",
        501,
    )


def service_unavailable(message: str) -> S3Error:
    return S3Error("ServiceUnavailable", message, 503)


def internal_error() -> S3Error:
    return S3Error("InternalError", "We encountered an internal error. Please try again.", 500)


def new_request_id() -> str:
    return secrets.token_hex(8).upper()


def error_xml(error: S3Error, resource: str = "", request_id: str = "") -> bytes:
    """The XML body S3 sends with an error."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{escape(error.code)}</Code>"
        f"<Message>{escape(error.message)}</Message>"
        f"<Resource>{escape(resource)}</Resource>"
        f"<RequestId>{escape(request_id)}</RequestId></Error>"
    ).encode()


def error_headers(request_id: str, body_length: int) -> dict[str, str]:
    return {
        "Content-Type": "application/xml",
        "Content-Length": str(body_length),
        "x-amz-request-id": request_id,
        "Server": "CloudTaser",
    }
