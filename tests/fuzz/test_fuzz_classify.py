"""Fuzzing the S3 request classifier: any method, path, query and headers give an S3Request
with an Action and never an exception; and the decisions that keep plaintext out of the store
hold for every request of their shape.

Security properties (what a request may carry into the store):

* a PUT that names an object and has no sub-resource is ENCRYPT, whatever else it carries
  (presigned-URL parameters, ``x-id``, any headers); with ``partNumber``/``uploadId`` it is
  UploadPart (ENCRYPT), or UploadPartCopy (COPY) with ``x-amz-copy-source``;
* a PUT on an object is never PASS, except for the sub-resources whose body S3 reads as
  metadata on PUT (acl, tagging, legal-hold, retention);
* POST on an object is never PASS but for ``restore``; unknown methods on an object are REFUSE;
* GET of an object with no sub-resource is DECRYPT and HEAD is HEAD;
* the bucket and key are the ones a store that decodes the path before it splits it would see,
  and a bucket segment that is not a bucket name (an encoded '/' above all) is refused.

Two findings of this target (bodies stored as plaintext at rest through the proxy) were fixed:
PUT ``?attributes`` was passed on, and so was ``PUT /bucket%2Fkey`` (a bucket operation to the
proxy, an object write to SeaweedFS). Their tests are at the end, and end to end in
test_fuzz_found_store_plaintext.py.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, quote, unquote

import pytest
from fuzzkit import budget
from hypothesis import given
from hypothesis import strategies as st
from mitmproxy import http

from cloudtaser_s3.s3request import Action, S3Request, classify, split_path, virtual_host_bucket

METHODS = ["GET", "PUT", "HEAD", "DELETE", "POST", "PATCH", "OPTIONS", "COPY", "put", "Get"]
SUBRESOURCES = [
    "acl",
    "tagging",
    "legal-hold",
    "retention",
    "attributes",
    "torrent",
    "uploads",
    "uploadId",
    "partNumber",
    "select",
    "restore",
    "delete",
    "versionId",
    "versioning",
    "list-type",
    "location",
    "x-id",
    "X-Amz-Signature",
    "X-Amz-Date",
    "ACL",
    "response-content-type",
]
TEXT = "aZ09-_.~ /+%&=?#;:é☃\x00"
PATH = st.one_of(
    st.text(TEXT, max_size=30),
    st.builds("/{}/{}".format, st.text(TEXT, max_size=8), st.text(TEXT, max_size=12)),
)
QUERY = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(SUBRESOURCES), st.text(TEXT, max_size=6)),
        st.text(TEXT, max_size=6),
    ),
    max_size=4,
).map(lambda pairs: "&".join(f"{n}={v}" if v else n for n, v in pairs))
HEADERS = st.lists(
    st.tuples(
        st.sampled_from(["x-amz-copy-source", "X-Amz-Copy-Source", "content-type", "range"]),
        st.text(TEXT, max_size=10),
    ),
    max_size=2,
)


def headers_of(pairs: list[tuple[str, str]]) -> http.Headers:
    """Case-insensitive, as the proxy passes mitmproxy's request headers."""
    return http.Headers([(n.encode(), v.encode("utf-8", "surrogateescape")) for n, v in pairs])


@budget(0.3)
@given(
    method=st.one_of(st.sampled_from(METHODS), st.text(max_size=8)),
    path=st.one_of(PATH, st.text(max_size=30)),
    query=st.one_of(QUERY, st.text(max_size=30)),
    headers=HEADERS,
)
def test_any_request_gets_an_action_and_never_an_exception(method, path, query, headers):
    request = classify(method, path, query, headers_of(headers))
    assert isinstance(request, S3Request)
    assert isinstance(request.action, Action)
    assert request.resource.startswith("/")


# --------------------------------------------------------------------------------------------
# What may reach the store
# --------------------------------------------------------------------------------------------

NAME = st.text("aZ09-_.~ +%é☃", min_size=1, max_size=8)
# S3 bucket names (with the legacy rules: upper case, underscores); the proxy refuses others.
BUCKET = st.builds("{}{}".format, st.sampled_from("abz09AZ"), st.text("abz09-._AZ", max_size=9))
# The sub-resources S3 reads a PUT body for, as object metadata.
PUT_METADATA = {"acl", "tagging", "legal-hold", "retention"}
# Query parameters that are not sub-resources: presigned-URL authentication and SDK labels.
NOT_SUBRESOURCES = st.lists(
    st.tuples(
        st.sampled_from(["X-Amz-Signature", "x-amz-date", "X-Amz-Credential", "x-id"]),
        st.text("aZ09", max_size=4),
    ),
    max_size=2,
)


def object_path(bucket: str, key: str) -> str:
    return "/" + quote(bucket, safe="") + "/" + quote(key.encode("utf-8"), safe="/")


def query_of(pairs: list[tuple[str, str]]) -> str:
    return "&".join(f"{n}={v}" for n, v in pairs)


@budget(0.2)
@given(
    bucket=BUCKET,
    key=NAME,
    labels=NOT_SUBRESOURCES,
    headers=st.lists(st.tuples(st.sampled_from(["content-type", "range", "x-amz-meta-a"]), NAME)),
    copy=st.booleans(),
    part=st.sampled_from(["", "partNumber=1&uploadId=u", "uploadId=u", "partNumber=2"]),
)
def test_a_put_of_an_object_is_encrypted_or_copied(bucket, key, labels, headers, copy, part):
    pairs = headers + ([("x-amz-copy-source", "src/k")] if copy else [])
    query = "&".join(q for q in (part, query_of(labels)) if q)
    request = classify("PUT", object_path(bucket, key), query, headers_of(pairs))
    assert (request.bucket, request.key) == (bucket, key)
    expected = {
        (False, False): ("PutObject", Action.ENCRYPT),
        (False, True): ("UploadPart", Action.ENCRYPT),
        (True, False): ("CopyObject", Action.COPY),
        (True, True): ("UploadPartCopy", Action.COPY),
    }[(copy, bool(part))]
    assert (request.operation, request.action) == expected


@budget(0.2)
@given(
    method=st.sampled_from(["PUT", "POST", "PATCH", "COPY", "MKCOL", "put"]),
    bucket=BUCKET,
    key=NAME,
    query=QUERY,
    headers=HEADERS,
)
def test_a_body_sent_to_an_object_is_never_passed_on_as_it_came(
    method, bucket, key, query, headers
):
    request = classify(method, object_path(bucket, key), query, headers_of(headers))
    if request.action is not Action.PASS:
        return
    names = {name for name, _ in parse_qsl(query, keep_blank_values=True)}
    # The only requests left unencrypted: metadata sub-resources on PUT, restore on POST.
    if method.upper() == "POST":
        assert "restore" in names
    else:
        assert method.upper() == "PUT" and names & PUT_METADATA, request


@budget(0.1)
@given(bucket=BUCKET, key=NAME, labels=NOT_SUBRESOURCES, head=st.booleans())
def test_a_read_of_an_object_is_decrypted(bucket, key, labels, head):
    method = "HEAD" if head else "GET"
    request = classify(method, object_path(bucket, key), query_of(labels), headers_of([]))
    assert request.action is (Action.HEAD if head else Action.DECRYPT)
    assert (request.bucket, request.key) == (bucket, key)


@budget(0.1)
@given(
    bucket=BUCKET,
    encoded=st.lists(st.booleans(), min_size=10, max_size=10),
    key=st.text("aZ09-_.~ /+%é", max_size=12),
    encode_slash=st.booleans(),
)
def test_bucket_and_key_are_what_a_decoding_store_sees(bucket, encoded, key, encode_slash):
    """Percent-encoding in the key (even of '/') is the key's business; in the bucket, any
    character may be percent-encoded and it names the same bucket. (A bucket name holds no
    '/'; an encoded one in the bucket segment is the finding pinned below.)"""
    raw_bucket = "".join(
        f"%{ord(c):02X}" if e else c for c, e in zip(bucket, encoded + [False] * 10, strict=False)
    )
    raw_key = quote(key.encode("utf-8"), safe="" if encode_slash else "/")
    store_bucket, _, store_key = unquote(f"{raw_bucket}/{raw_key}").partition("/")
    got_bucket, got_key = split_path(f"/{raw_bucket}/{raw_key}")
    assert got_bucket == store_bucket
    assert got_key == (unquote(raw_key) or None)
    if not encode_slash:
        assert got_key == (store_key or None)


@budget(0.1)
@given(
    host=st.one_of(
        st.text("abz09-.:[]", max_size=30),
        st.builds(
            "{}.{}{}".format,
            BUCKET,
            st.sampled_from(["localhost", "s3.example"]),
            st.sampled_from(["", ":8099", ":"]),
        ),
        st.text(max_size=20),
    ),
    domains=st.lists(st.sampled_from(["localhost", "s3.example", "example", ""]), max_size=2),
)
def test_a_virtual_host_is_a_bucket_under_a_configured_domain_or_none(host, domains):
    bucket = virtual_host_bucket(host, tuple(domains))
    if bucket is None:
        return
    name = host.strip().lower()
    name = name.rsplit(":", 1)[0] if ":" in name else name
    assert any(name == f"{bucket}.{d}" for d in domains)
    assert bucket


@budget(0.05)
@given(
    bucket=st.text(TEXT + "%2F", min_size=1, max_size=12),
    method=st.sampled_from(["PUT", "POST", "GET", "DELETE"]),
    query=QUERY,
)
def test_a_bucket_segment_that_is_no_bucket_name_is_refused(bucket, method, query):
    raw = "".join(c if c.isalnum() and c.isascii() else f"%{ord(c):02X}" for c in bucket)
    request = classify(method, f"/{raw}/key", query, headers_of([]))
    # A character S3 never allows in a bucket name ('/' decoded from %2F above all): refused,
    # whatever the method, before any store can read the path another way.
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", unquote(raw)):
        assert request.action is Action.REFUSE


# --------------------------------------------------------------------------------------------
# Fixed findings: requests whose body reached the store unencrypted
# --------------------------------------------------------------------------------------------


def test_put_attributes_is_not_passed_on_unencrypted():
    """There is no PUT ?attributes in S3: moto and SeaweedFS ran it as PutObject."""
    request = classify("PUT", "/bucket/key", "attributes", headers_of([]))
    assert request.action is not Action.PASS


@pytest.mark.parametrize("path", ["/bucket%2Fkey", "/bucket%2fdir%2Fkey"])
def test_an_encoded_slash_in_the_bucket_segment_is_not_a_bucket_operation(path):
    """SeaweedFS decodes the path before routing: this was an object write in 'bucket'."""
    request = classify("PUT", path, "", headers_of([]))
    assert request.action is Action.REFUSE
