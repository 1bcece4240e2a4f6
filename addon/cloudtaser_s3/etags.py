"""The ETags clients see.

A single-part object's ETag at the store is the MD5 of its *ciphertext*. Tools that compare it
with the MD5 of what they uploaded (rclone, s3cmd) would report every upload as corrupted. So the
proxy shows such ETags with a ``-0`` suffix: a value S3 itself never produces (multipart ETags end
in ``-<parts>``, parts >= 1), which those tools treat as "not an MD5" and skip. It is a function of
the ciphertext MD5 alone, so it reveals nothing about the plaintext, and it is the same on every
response that names the object (PUT, GET, HEAD, LIST), and accepted back wherever a client sends an
ETag (If-Match, If-None-Match, copy-source conditions, CompleteMultipartUpload's part list).
"""

from __future__ import annotations

import re

SUFFIX = "-0"
_MD5 = re.compile(r'(W/)?("?)([0-9a-fA-F]{32})("?)')
_SHOWN = re.compile(r'(W/)?("?)([0-9a-fA-F]{32})-0("?)')


def to_client(etag: str) -> str:
    """The store's ETag as the client sees it."""
    m = _MD5.fullmatch(etag.strip())
    if not m:
        return etag
    weak, q1, md5, q2 = m.groups()
    return f"{weak or ''}{q1}{md5}{SUFFIX}{q2}"


def to_store(etag: str) -> str:
    """An ETag a client sent, as the store knows it."""
    m = _SHOWN.fullmatch(etag.strip())
    if not m:
        return etag.strip()
    weak, q1, md5, q2 = m.groups()
    return f"{weak or ''}{q1}{md5}{q2}"


def list_to_store(value: str) -> str:
    """If-Match / If-None-Match values: a comma-separated list of ETags, or ``*``."""
    return ", ".join(to_store(v) for v in value.split(",") if v.strip())


CONDITION_HEADERS = (
    "if-match",
    "if-none-match",
    "x-amz-copy-source-if-match",
    "x-amz-copy-source-if-none-match",
)
