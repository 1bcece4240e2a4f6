"""Test-only fault, loaded next to the addon: an exception inside the encrypting stream.

For object keys containing ``explode-while-sealing`` the sealer raises once 200 KB have gone
through — the proxy must then answer an error and the store must commit nothing.
"""

from cloudtaser_s3 import envelope

TRIGGER = "explode-while-sealing"
_feed = envelope.PartSealer.feed


def _exploding_feed(self, data):
    if TRIGGER in self._key and self._seen > 200_000:
        raise RuntimeError("injected fault while sealing")
    return _feed(self, data)


envelope.PartSealer.feed = _exploding_feed
