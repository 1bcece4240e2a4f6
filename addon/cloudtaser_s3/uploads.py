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
    """Strict: only the one text _b64 writes (the decoder alone ignores the unused low bits of
    the last character, so four strings would decode to the same bytes)."""
    raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    if _b64(raw) != text:
        raise ValueError("not the canonical encoding")
    return raw


def decode(upload_id: str) -> UploadToken | None:
    """The token inside a proxy-issued upload id; None for any other string (a raw store id)."""
    if not upload_id.startswith(PREFIX):
        return None
    try:
        body, mac = upload_id[len(PREFIX) :].split(".", 1)
        fields = json.loads(_unb64(body))
        salt = base64.b64decode(fields["s"], validate=True)
        token = UploadToken(str(fields["u"]), str(fields["d"]), str(fields["k"]), salt, _unb64(mac))
    except (ValueError, KeyError, TypeError, RecursionError):  # json.loads of "[[[[..."
        return None
    if len(token.salt) != SALT_LEN or not token.upstream_id:
        return None
    return token


def upstream_id(upload_id: str) -> str:
    """The store's upload id for a proxy-issued id, or the id itself."""
    token = decode(upload_id)
    return token.upstream_id if token else upload_id
