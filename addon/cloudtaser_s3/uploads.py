"""Multipart uploads that do not depend on proxy memory.

CreateMultipartUpload makes the upload's data key; every UploadPart needs it again, possibly on
another replica or after a restart. So the upload id the proxy hands the client carries what is
needed to get the key back — the store's own upload id, the Transit-wrapped DEK, the Transit key
name and the object salt — plus a MAC under the DEK, so a token that was altered is refused once
the DEK is unwrapped. Clients treat upload ids as opaque strings.

Token: ``ct1.`` + base64url(JSON fields) + ``.`` + base64url(HMAC-SHA256(DEK, JSON)).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from .envelope import SALT_LEN

PREFIX = "ct1."


@dataclass(frozen=True)
class UploadToken:
    upstream_id: str
    wrapped_dek: str
    key_name: str
    salt: bytes
    mac: bytes = b""

    def _fields(self) -> bytes:
        return json.dumps(
            {
                "u": self.upstream_id,
                "d": self.wrapped_dek,
                "k": self.key_name,
                "s": base64.b64encode(self.salt).decode(),
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()

    def encode(self, dek: bytes) -> str:
        fields = self._fields()
        mac = hmac.new(dek, b"cloudtaser-upload-id\x00" + fields, hashlib.sha256).digest()
        return PREFIX + _b64(fields) + "." + _b64(mac)

    def authentic(self, dek: bytes) -> bool:
        expected = hmac.new(
            dek, b"cloudtaser-upload-id\x00" + self._fields(), hashlib.sha256
        ).digest()
        return hmac.compare_digest(expected, self.mac)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def decode(upload_id: str) -> UploadToken | None:
    """The token inside a proxy-issued upload id; None for any other string (a raw store id)."""
    if not upload_id.startswith(PREFIX):
        return None
    try:
        body, mac = upload_id[len(PREFIX) :].split(".", 1)
        fields = json.loads(_unb64(body))
        salt = base64.b64decode(fields["s"], validate=True)
        token = UploadToken(str(fields["u"]), str(fields["d"]), str(fields["k"]), salt, _unb64(mac))
    except (ValueError, KeyError, TypeError):
        return None
    if len(token.salt) != SALT_LEN or not token.upstream_id:
        return None
    return token


def upstream_id(upload_id: str) -> str:
    """The store's upload id for a proxy-issued id, or the id itself."""
    token = decode(upload_id)
    return token.upstream_id if token else upload_id


class DekCache:
    """Unwrapped data keys by wrapped form, bounded in size and lifetime.

    Saves a Transit round trip for every part of an upload and every read of a hot object. The
    trade-off: a DEK stays in process memory up to ``ttl`` seconds after its last use.
    """

    def __init__(self, max_entries: int = 1024, ttl: float = 300.0):
        self._max = max_entries
        self._ttl = ttl
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str], tuple[bytes, float]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key_name: str, wrapped: str) -> bytes | None:
        now = time.monotonic()
        with self._lock:
            item = self._items.get((key_name, wrapped))
            if item is None or now - item[1] > self._ttl:
                if item is not None:
                    del self._items[(key_name, wrapped)]
                self.misses += 1
                return None
            self._items[(key_name, wrapped)] = (item[0], now)
            self._items.move_to_end((key_name, wrapped))
            self.hits += 1
            return item[0]

    def put(self, key_name: str, wrapped: str, dek: bytes) -> None:
        with self._lock:
            self._items[(key_name, wrapped)] = (dek, time.monotonic())
            self._items.move_to_end((key_name, wrapped))
            while len(self._items) > self._max:
                self._items.popitem(last=False)
