"""Generate tests/vectors/format-v1.json, the golden vectors of the encrypted object format v1.

Run only to ADD a vector; never to change existing ones.

The vectors are data, not a test fixture: once committed they are the compatibility contract
(docs/format.md, "Golden vectors"). Every later release must seal them to the same bytes and open
them to the same plaintext; tests/unit/test_envelope.py checks that and never regenerates them.

Usage (from the repository root)::

    .venv/bin/python tests/vectors/generate_format_v1.py          # check only, writes nothing
    .venv/bin/python tests/vectors/generate_format_v1.py --write  # append the NEW vectors

Both modes regenerate every vector in SPECS and compare it with the file: a vector that is already
in the file and comes out differently is a format break, and the script stops without writing.
To add a vector, append a new entry (with a new, unique name) to the end of SPECS and run it with
--write; never edit or reorder existing entries. Existing vectors are copied over unchanged.

Everything is deterministic: the DEK and salt come from SHA-256 of the vector name, and the
segment nonces (random in production) come from HMAC-SHA256 of (name, part number, segment index)
through the ``random_bytes`` seam of ``PartSealer``. The nonces are recorded in the file, so a
reader does not need this derivation to replay a vector.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import sys
from pathlib import Path

from cloudtaser_s3.envelope import (
    ALG,
    HEADER_LEN,
    META_ALG,
    META_NONCE,
    NONCE_LEN,
    SEGMENT_OVERHEAD,
    SEGMENT_PLAIN,
    SEGMENT_STORED,
    TAG_LEN,
    ObjectKeyMaterial,
    open_body,
    seal_part,
    sealed_part_length,
    segment_count,
)

VECTORS_FILE = Path(__file__).with_name("format-v1.json")

# Stored bodies (and plaintexts given as hex) up to this size are written out in hex; larger ones
# are recorded by length and SHA-256 so that the file stays small.
INLINE_LIMIT = 4096

# The only plaintext generator the file uses. Readers must not eval it: they match the string.
PATTERN_MOD251 = "bytes(i % 251 for i in range(n))"


def pattern_mod251(n: int) -> bytes:
    return bytes(i % 251 for i in range(n))


def _derive(label: str, name: str, length: int) -> bytes:
    return hashlib.sha256(f"cloudtaser format-v1 golden {label}|{name}".encode()).digest()[:length]


def _nonce_source(name: str, part_number: int):
    """A deterministic stand-in for os.urandom: the i-th call gives the nonce of segment i."""
    key = b"cloudtaser format-v1 golden nonces"
    index = 0

    def random_bytes(n: int) -> bytes:
        nonlocal index
        assert n == NONCE_LEN, n
        msg = f"{name}|{part_number}|{index}".encode()
        index += 1
        return hmac.new(key, msg, hashlib.sha256).digest()[:n]

    return random_bytes


# name, description, object key, [(part_number, plaintext spec)]
# A plaintext spec is either bytes (recorded as hex) or an int n (recorded as PATTERN_MOD251, n).
# APPEND ONLY.
SPECS: list[tuple[str, str, str, list[tuple[int, bytes | int]]]] = [
    (
        "empty",
        "Empty PutObject: one part numbered 0 holding one empty segment; 16 + 28 = 44 bytes.",
        "empty object.txt",
        [(0, b"")],
    ),
    (
        "one-byte",
        "One-byte PutObject; object key with non-ASCII letters (NFC), a BMP symbol and an emoji "
        "outside the BMP (4-byte UTF-8).",
        "donn\u00e9es/\u00e9t\u00e9 \u2603 \u6771\u4eac \U0001f389.txt",
        [(0, b"\x2a")],
    ),
    (
        "short-text",
        "A short text PutObject; the object key holds '+' and spaces, which are different "
        "characters once the URL is decoded ('+' is not a space in an S3 path).",
        "a+b = c/notes+2025 v1.txt",
        [(0, b"The quick brown fox jumps over the lazy dog.\n")],
    ),
    (
        "one-below-segment",
        "65,535 bytes: one segment, one byte short of full.",
        "100% sure/50%off.bin",
        [(0, 65535)],
    ),
    (
        "exactly-one-segment",
        "65,536 bytes: exactly one full segment, no empty trailing segment. The key holds a "
        "literal '%2F' (the decoded key; it is bound as these three characters, not as '/').",
        "reports/q1%2Fq2 final.pdf",
        [(0, 65536)],
    ),
    (
        "one-past-segment",
        "65,537 bytes: a full segment and a 1-byte segment. The key holds '//'.",
        "logs//2025//app.log",
        [(0, 65537)],
    ),
    (
        "exactly-two-segments",
        "131,072 bytes: exactly two full segments. The key holds a decomposed (NFD) 'e' + U+0301: "
        "keys are bound as the exact UTF-8 bytes, never Unicode-normalised.",
        "cafe\u0301/menu.txt",
        [(0, 131072)],
    ),
    (
        "four-segments",
        "200,000 bytes: three full segments and one of 3,392 bytes.",
        "backups/db 2025-01-01+full (copy).tar.gz",
        [(0, 200000)],
    ),
    (
        "part-7",
        "One uploaded part of a multipart upload, part number 7, as UploadPart stores it.",
        "uploads/part seven+%.bin",
        [(7, b"seventh part of a multipart upload")],
    ),
    (
        "part-10000",
        "Part number 10000, the largest S3 allows.",
        "uploads/last part 10000",
        [(10000, b"part ten thousand")],
    ),
    (
        "multipart-1-2-3",
        "A completed multipart object: parts 1, 2 and 3 concatenated, each sealed with its own "
        "part number and the same DEK, salt and key. Part 1 has two segments, part 2 one, and "
        "part 3 is empty (one empty segment).",
        "videos//2025/holiday film+extra 100%.mp4",
        [(1, 65537), (2, b"the second part, short"), (3, b"")],
    ),
]


def _plaintext(spec: bytes | int) -> tuple[bytes, dict]:
    if isinstance(spec, int):
        return pattern_mod251(spec), {"pattern": PATTERN_MOD251, "length": spec}
    assert len(spec) <= INLINE_LIMIT
    return spec, {"hex": spec.hex()}


def _bytes_record(data: bytes) -> dict:
    if len(data) <= INLINE_LIMIT:
        return {"length": len(data), "hex": data.hex()}
    return {"length": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _segment_tags(sealed: bytes, plaintext_length: int) -> list[str]:
    """The 16-byte tag of every segment, to tell which segment differs when a SHA-256 does not."""
    tags, pos, left = [], HEADER_LEN, plaintext_length
    for _ in range(segment_count(plaintext_length)):
        size = min(left, SEGMENT_PLAIN) + SEGMENT_OVERHEAD
        tags.append(sealed[pos + size - TAG_LEN : pos + size].hex())
        pos, left = pos + size, left - min(left, SEGMENT_PLAIN)
    assert pos == len(sealed)
    return tags


def build(name: str, description: str, object_key: str, parts: list) -> dict:
    dek, salt = _derive("DEK", name, 32), _derive("salt", name, 12)
    material = ObjectKeyMaterial(dek, salt, object_key)
    part_records, body, plain_all = [], [], []
    for part_number, spec in parts:
        plaintext, plaintext_record = _plaintext(spec)
        nonces: list[bytes] = []
        source = _nonce_source(name, part_number)

        def recording(n: int, source=source, nonces=nonces) -> bytes:
            nonce = source(n)
            nonces.append(nonce)
            return nonce

        sealed = seal_part(material, part_number, plaintext, random_bytes=recording)
        assert len(sealed) == sealed_part_length(len(plaintext))
        assert len(nonces) == segment_count(len(plaintext))
        assert all(len(n) == NONCE_LEN for n in nonces)
        part_records.append(
            {
                "part_number": part_number,
                "plaintext": plaintext_record,
                "nonces": [n.hex() for n in nonces],
                "sealed": _bytes_record(sealed),
                "segment_tags": _segment_tags(sealed, len(plaintext)),
            }
        )
        body.append(sealed)
        plain_all.append(plaintext)
    stored = b"".join(body)
    assert open_body(material, stored) == b"".join(plain_all)
    return {
        "name": name,
        "description": description,
        "dek": dek.hex(),
        "salt": salt.hex(),
        "object_key": object_key,
        "object_key_utf8_hex": object_key.encode("utf-8").hex(),
        "metadata": {
            META_ALG: ALG,
            META_NONCE: base64.b64encode(salt).decode("ascii"),
        },
        "parts": part_records,
        "body": _bytes_record(stored),
    }


def document(vectors: list[dict]) -> dict:
    return {
        "format": ALG,
        "spec": "docs/format.md",
        "about": (
            "Golden vectors of the encrypted object format, version 1. Committed data: never "
            "regenerate or edit; tests/vectors/generate_format_v1.py only appends new vectors."
        ),
        "constants": {
            "header_length": HEADER_LEN,
            "segment_plaintext": SEGMENT_PLAIN,
            "segment_overhead": SEGMENT_OVERHEAD,
            "segment_stored": SEGMENT_STORED,
        },
        "plaintext_patterns": {PATTERN_MOD251: "byte i of the plaintext is i mod 251, n = length"},
        "inline_limit": INLINE_LIMIT,
        "vectors": vectors,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="append new vectors to the file")
    args = parser.parse_args(argv)

    existing: list[dict] = []
    if VECTORS_FILE.exists():
        existing = json.loads(VECTORS_FILE.read_text(encoding="utf-8"))["vectors"]
    by_name = {v["name"]: v for v in existing}
    names = [s[0] for s in SPECS]
    if len(set(names)) != len(names):
        print("duplicate vector names in SPECS", file=sys.stderr)
        return 2
    missing = [n for n in by_name if n not in names]
    if missing:
        print(
            f"vectors in the file but not in SPECS (never delete one): {missing}", file=sys.stderr
        )
        return 2

    added, broken = [], []
    for spec in SPECS:
        vector = build(*spec)
        old = by_name.get(vector["name"])
        if old is None:
            added.append(vector)
        elif old != vector:
            broken.append(vector["name"])
    if broken:
        print(
            f"FORMAT BREAK: these committed vectors come out differently now: {broken}. "
            "Fix the code, not the vectors.",
            file=sys.stderr,
        )
        return 1
    new_names = [v["name"] for v in added]
    print(f"{len(existing)} existing vectors unchanged; {len(added)} new: {new_names}")
    if added and args.write:
        text = json.dumps(document(existing + added), indent=1, ensure_ascii=True) + "\n"
        VECTORS_FILE.write_text(text, encoding="utf-8")
        print(f"wrote {VECTORS_FILE}")
    elif added:
        print("nothing written (check only); run with --write to append them")
    return 0


if __name__ == "__main__":
    sys.exit(main())
