"""The stream callables handed to mitmproxy: an empty chunk of a chunked body is its end, so a
stream that has nothing to pass on yet must hand back no chunks at all."""

from __future__ import annotations

import os

from cloudtaser_s3 import envelope
from cloudtaser_s3.envelope import BodyOpener, ObjectKeyMaterial
from cloudtaser_s3.streams import OpeningStream, chunk_safe

MATERIAL = ObjectKeyMaterial(os.urandom(32), os.urandom(12), "k")


def test_a_held_back_partial_segment_sends_no_chunk():
    data = os.urandom(70_000)
    stored = envelope.seal_part(MATERIAL, 0, data)
    failures = []
    stream = chunk_safe(OpeningStream(BodyOpener(MATERIAL), None, failures.append))
    sent = [stream(stored[i : i + 1000]) for i in range(0, len(stored), 1000)]
    sent.append(stream(b""))
    assert failures == []
    assert all(chunk != b"" for chunk in sent)  # b"" would be the chunked terminator
    assert b"".join(c for c in sent if c) == data
    assert sent[0] == []


def test_after_a_failure_nothing_more_is_sent():
    stored = bytearray(envelope.seal_part(MATERIAL, 0, os.urandom(1000)))
    stored[-1] ^= 1
    failures = []
    stream = chunk_safe(OpeningStream(BodyOpener(MATERIAL), None, failures.append))
    assert stream(bytes(stored)) == []
    assert stream(b"more") == []
    assert len(failures) == 1
