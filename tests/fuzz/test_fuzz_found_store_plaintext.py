"""Findings of the classifier fuzzing, end to end, now fixed: requests that a client signs
correctly and that the proxy used to pass on unencrypted, which the store then saved as an
object — plaintext at rest (PUT ?attributes on moto and SeaweedFS, PUT /bucket%2Fkey on
SeaweedFS).

Each test sends one PUT through a real proxy (signed the way the proxy verifies it: the
canonical form of the path and query as sent), then reads what the store holds, bypassing the
proxy. The unit-level tests are in test_fuzz_classify.py.
"""

from __future__ import annotations

import http.client
import uuid
from datetime import UTC, datetime
from urllib.parse import urlsplit

import pytest

from cloudtaser_s3 import sigv4

REGION = "us-east-1"
SECRET_BODY = b"PLAINTEXT-THAT-MUST-NOT-BE-STORED"


def signed_put(proxy, backend, path: str, query: str, body: bytes) -> int:
    """A PUT signed over the canonical forms the proxy's verifier computes."""
    port = urlsplit(proxy.endpoint).port
    amz_date = datetime.now(UTC).strftime(sigv4.AMZ_DATE_FORMAT)
    headers = {
        "host": f"127.0.0.1:{port}",
        "x-amz-content-sha256": sigv4.UNSIGNED_PAYLOAD,
        "x-amz-date": amz_date,
    }
    names = sorted(headers)
    canonical_request = "\n".join(
        (
            "PUT",
            sigv4.canonical_uri(path),
            sigv4.canonical_query(query),
            "".join(f"{n}:{headers[n]}\n" for n in names),
            ";".join(names),
            sigv4.UNSIGNED_PAYLOAD,
        )
    )
    scope = f"{amz_date[:8]}/{REGION}/s3/aws4_request"
    key = sigv4.signing_key(backend.secret_key, amz_date[:8], REGION)
    signature = sigv4._sign(key, sigv4.string_to_sign(amz_date, scope, canonical_request))
    headers["authorization"] = (
        f"AWS4-HMAC-SHA256 Credential={backend.access_key}/{scope}, "
        f"SignedHeaders={';'.join(names)}, Signature={signature}"
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("PUT", path + (f"?{query}" if query else ""), body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def stored_objects(backend, bucket: str) -> dict[str, bytes]:
    direct = backend.client()
    listed = direct.list_objects_v2(Bucket=bucket).get("Contents", [])
    return {o["Key"]: direct.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


@pytest.fixture(params=["moto", "seaweedfs"])
def store_and_proxy(request):
    if request.param == "moto":
        return request.getfixturevalue("moto_s3"), request.getfixturevalue("proxy_moto")
    return request.getfixturevalue("seaweedfs"), request.getfixturevalue("proxy_seaweedfs")


def new_bucket(backend, proxy) -> str:
    bucket = f"fuzz-found-{uuid.uuid4().hex[:10]}"
    proxy.client(backend.access_key, backend.secret_key).create_bucket(Bucket=bucket)
    return bucket


def test_put_with_attributes_does_not_store_plaintext(store_and_proxy):
    backend, proxy = store_and_proxy
    bucket = new_bucket(backend, proxy)
    signed_put(proxy, backend, f"/{bucket}/report.txt", "attributes", SECRET_BODY)
    assert SECRET_BODY not in stored_objects(backend, bucket).values()


def test_an_encoded_slash_after_the_bucket_does_not_store_plaintext(seaweedfs, proxy_seaweedfs):
    bucket = new_bucket(seaweedfs, proxy_seaweedfs)
    signed_put(proxy_seaweedfs, seaweedfs, f"/{bucket}%2Freport.txt", "", SECRET_BODY)
    assert SECRET_BODY not in stored_objects(seaweedfs, bucket).values()
