"""Fuzzing the upload-id tokens (uploads.decode): any string is a token or None, never an
exception; a token altered anywhere is refused, unless the change is in the encoding only and
the fields and MAC it decodes to are exactly the original ones.

Two findings of this suite are fixed and tested at the end: base64url decoding ignored the
unused low bits of a final character, so a few different strings decoded to the same token
(harmless, the fields stayed authenticated; decoding is strict now), and a deeply nested JSON
body raised RecursionError (a 500) instead of being no token.
"""

from __future__ import annotations

import base64
import json

from fuzzkit import budget
from hypothesis import event, given
from hypothesis import strategies as st

from cloudtaser_s3 import uploads
from cloudtaser_s3.uploads import UploadToken

DEK = bytes(range(32))
B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

TOKENS = st.builds(
    UploadToken,
    upstream_id=st.text(min_size=1, max_size=40),
    wrapped_dek=st.text(max_size=40),
    key_name=st.text(max_size=20),
    salt=st.binary(min_size=12, max_size=12),
)


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def fields_json(fields: object) -> str:
    return b64(json.dumps(fields).encode())


ANY_JSON = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(max_size=10),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
UPLOAD_IDS = st.one_of(
    st.text(max_size=80),
    st.text(B64URL + ".=+/!", max_size=120).map(lambda s: "ct1." + s),
    st.builds(
        "ct1.{}.{}".format,
        st.one_of(
            ANY_JSON.map(fields_json),
            st.fixed_dictionaries(
                {"u": ANY_JSON, "d": ANY_JSON, "k": ANY_JSON, "s": st.one_of(ANY_JSON, st.text())}
            ).map(fields_json),
        ),
        st.binary(max_size=40).map(b64),
    ),
)


@budget(0.4)
@given(upload_id=UPLOAD_IDS)
def test_any_string_is_a_token_or_none(upload_id):
    token = uploads.decode(upload_id)
    if token is None:
        assert uploads.upstream_id(upload_id) == upload_id
        return
    assert upload_id.startswith("ct1.")
    assert len(token.salt) == 12 and token.upstream_id
    assert not token.authentic(DEK)  # forging a MAC under the DEK is not within reach


@budget(0.2)
@given(token=TOKENS)
def test_a_token_decodes_to_itself_and_authenticates(token):
    text = token.encode(DEK)
    decoded = uploads.decode(text)
    assert decoded is not None and decoded.authentic(DEK)
    assert (decoded.upstream_id, decoded.wrapped_dek, decoded.key_name, decoded.salt) == (
        token.upstream_id,
        token.wrapped_dek,
        token.key_name,
        token.salt,
    )
    assert not decoded.authentic(bytes(32))


@budget(0.4)
@given(
    token=TOKENS,
    kind=st.sampled_from(["replace", "insert", "delete"]),
    at=st.integers(0, 2**16),
    char=st.one_of(st.sampled_from(B64URL + ".=!"), st.characters()),
)
def test_an_altered_token_is_refused_unless_it_decodes_to_the_same_token(token, kind, at, char):
    text = token.encode(DEK)
    pos = at % len(text)
    if kind == "replace":
        altered = text[:pos] + char + text[pos + 1 :]
    elif kind == "insert":
        altered = text[:pos] + char + text[pos:]
    else:
        altered = text[:pos] + text[pos + 1 :]
    if altered == text:
        return
    decoded = uploads.decode(altered)
    if decoded is None or not decoded.authentic(DEK):
        event(f"altered token refused ({kind})")
        return
    # Accepted: only the encoding changed (finding below); the content is the original's.
    event(f"altered encoding of the same token accepted ({kind})")
    assert decoded == uploads.decode(text)


# --------------------------------------------------------------------------------------------
# Findings
# --------------------------------------------------------------------------------------------


def test_a_token_with_its_last_character_changed_is_refused():
    text = UploadToken("up-1", "vault:v1:abc", "k", bytes(12)).encode(bytes(32))
    last = B64URL.index(text[-1])
    altered = text[:-1] + B64URL[last ^ 1]  # the MAC's 32 bytes leave 2 bits of it unused
    token = uploads.decode(altered)
    assert token is None or not token.authentic(bytes(32))


def test_a_deeply_nested_token_body_is_not_a_token():
    upload_id = "ct1." + b64(b"[" * 50_000) + ".AAAA"
    assert uploads.decode(upload_id) is None
