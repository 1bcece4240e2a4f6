"""Which S3 operation a request is, on which bucket and key, and what the proxy does with it.

Dispatch follows S3 (and moto's responses.py): method + bucket/key presence + query
sub-resources + a few headers (x-amz-copy-source). Anything that could carry object data and
is not handled yet is classified REFUSE, so it can never be forwarded in plaintext.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, unquote


class Action(enum.Enum):
    ENCRYPT = "encrypt"  # the body is object data: seal it
    DECRYPT = "decrypt"  # the response body is object data: open it
    HEAD = "head"  # object metadata: report plaintext sizes
    CREATE_UPLOAD = "create-upload"  # a multipart upload starts: make its data key
    COMPLETE_UPLOAD = "complete-upload"  # the part list: translate the upload id
    UPLOAD_ID = "upload-id"  # names an upload (abort, list parts): translate the upload id
    COPY = "copy"  # CopyObject / UploadPartCopy: decrypt the source, re-encrypt it
    PASS = "pass"  # no object data either way
    REFUSE = "refuse"  # object data we do not handle yet: NotImplemented


@dataclass(frozen=True)
class S3Request:
    operation: str
    action: Action
    bucket: str | None
    key: str | None  # decoded, exactly as S3 names the object

    @property
    def resource(self) -> str:
        if self.bucket is None:
            return "/"
        return f"/{self.bucket}/{self.key}" if self.key is not None else f"/{self.bucket}"


def split_path(raw_path: str) -> tuple[str | None, str | None]:
    """Path-style ``/bucket/key``: (bucket, key), key decoded once; empty parts are None."""
    path = raw_path.split("?", 1)[0]
    if not path.startswith("/"):
        path = "/" + path
    rest = path[1:]
    if not rest:
        return None, None
    bucket_raw, sep, key_raw = rest.partition("/")
    bucket = unquote(bucket_raw) or None
    key = unquote(key_raw) if sep and key_raw else None
    return bucket, key


def virtual_host_bucket(host_header: str, domains: tuple[str, ...]) -> str | None:
    """The bucket of a virtual-hosted-style request (``<bucket>.<domain>[:port]``), else None."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return None
    host = host.rsplit(":", 1)[0] if ":" in host else host
    for domain in domains:
        if host.endswith("." + domain) and len(host) > len(domain) + 1:
            return host[: -len(domain) - 1]
    return None


def query_names(raw_query: str) -> dict[str, str]:
    """Query parameters that choose an operation: presigned-URL parameters (X-Amz-*) are
    authentication, and ``x-id`` (the Go and JS SDKs name the operation with it) is a label;
    neither is a sub-resource, so both are left out."""
    return {
        k: v
        for k, v in parse_qsl(raw_query, keep_blank_values=True)
        if not k.lower().startswith("x-amz-") and k != "x-id"
    }


# Object sub-resources that carry no object data in either direction. S3 has no PUT
# ?attributes: stores that do not know it run such a request as PutObject, so it is not here.
_OBJECT_META_PUT = {
    "acl": "ObjectAcl",
    "tagging": "ObjectTagging",
    "legal-hold": "ObjectLegalHold",
    "retention": "ObjectRetention",
}
_OBJECT_META_GET = {**_OBJECT_META_PUT, "attributes": "ObjectAttributes"}

# Bucket configuration a PUT may carry (XML or JSON documents, never object data). A PUT on a
# bucket with any other sub-resource is refused: what a store makes of an unknown one is its
# own business, and some run unknown requests as object writes.
_BUCKET_CONFIG = frozenset(
    {
        "accelerate",
        "acl",
        "analytics",
        "cors",
        "encryption",
        "intelligent-tiering",
        "inventory",
        "lifecycle",
        "logging",
        "metrics",
        "notification",
        "object-lock",
        "ownershipControls",
        "policy",
        "publicAccessBlock",
        "replication",
        "requestPayment",
        "tagging",
        "versioning",
        "website",
    }
)

# The characters S3 accepts in a bucket name (with the legacy us-east-1 rules: upper case,
# underscores); lengths are the store's to judge.
# A name with anything else — "/" decoded from %2F above all — is refused: stores that decode
# the path before routing would see another bucket and an object key in it.
_BUCKET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")


def classify(method: str, raw_path: str, raw_query: str, headers: Mapping[str, str]) -> S3Request:
    """Classify a path-style S3 request. ``headers`` must be case-insensitive."""
    bucket, key = split_path(raw_path)
    q = query_names(raw_query)
    m = method.upper()

    def req(op: str, action: Action) -> S3Request:
        return S3Request(op, action, bucket, key)

    if bucket is None:
        if m == "GET":
            return req("ListBuckets", Action.PASS)
        return req(f"{m} /", Action.REFUSE)
    if not _BUCKET_NAME.fullmatch(bucket):
        return req("InvalidBucketName", Action.REFUSE)

    if key is None:
        if m == "POST":
            if "delete" in q:
                return req("DeleteObjects", Action.PASS)
            # Browser form uploads (PostObject) carry object data in a multipart/form-data body.
            return req("PostObject", Action.REFUSE)
        if m == "GET":
            if "location" in q:
                return req("GetBucketLocation", Action.PASS)
            if q.get("list-type") == "2":
                return req("ListObjectsV2", Action.PASS)
            if "uploads" in q:
                return req("ListMultipartUploads", Action.PASS)
            if "versions" in q:
                return req("ListObjectVersions", Action.PASS)
            sub = next(iter(q), None)
            if sub is None or sub in ("prefix", "delimiter", "marker", "max-keys", "encoding-type"):
                return req("ListObjects", Action.PASS)
            return req(f"GetBucket:{sub}", Action.PASS)
        if m == "HEAD":
            return req("HeadBucket", Action.PASS)
        if m == "PUT":
            if not q:
                return req("CreateBucket", Action.PASS)
            sub = next(iter(q))
            if len(q) == 1 and sub in _BUCKET_CONFIG:
                return req(f"PutBucket:{sub}", Action.PASS)
            return req(f"PutBucket:{sub}", Action.REFUSE)
        if m == "DELETE":
            return req("DeleteBucket" if not q else f"DeleteBucket:{next(iter(q))}", Action.PASS)
        return req(f"{m} bucket", Action.REFUSE)

    copy_source = "x-amz-copy-source" in headers
    if m == "PUT":
        if "partNumber" in q or "uploadId" in q:
            if copy_source:
                return req("UploadPartCopy", Action.COPY)
            return req("UploadPart", Action.ENCRYPT)
        for sub, name in _OBJECT_META_PUT.items():
            if sub in q:
                return req(f"PutObject{name}", Action.PASS)
        if copy_source:
            return req("CopyObject", Action.COPY)
        if q:
            return req(f"PutObject:{next(iter(q))}", Action.REFUSE)
        return req("PutObject", Action.ENCRYPT)
    if m in ("GET", "HEAD"):
        if "uploadId" in q:
            return req("ListParts", Action.UPLOAD_ID)
        for sub, name in _OBJECT_META_GET.items():
            if sub in q:
                return req(f"GetObject{name}", Action.PASS)
        if "torrent" in q:
            return req("GetObjectTorrent", Action.REFUSE)
        if m == "HEAD":
            return req("HeadObject", Action.HEAD)
        return req("GetObject", Action.DECRYPT)
    if m == "DELETE":
        if "uploadId" in q:
            return req("AbortMultipartUpload", Action.UPLOAD_ID)
        if "tagging" in q:
            return req("DeleteObjectTagging", Action.PASS)
        return req("DeleteObject", Action.PASS)
    if m == "POST":
        if "uploads" in q:
            return req("CreateMultipartUpload", Action.CREATE_UPLOAD)
        if "uploadId" in q:
            return req("CompleteMultipartUpload", Action.COMPLETE_UPLOAD)
        if "select" in q:
            return req("SelectObjectContent", Action.REFUSE)
        if "restore" in q:
            return req("RestoreObject", Action.PASS)
        return req("POST object", Action.REFUSE)
    return req(f"{m} object", Action.REFUSE)
