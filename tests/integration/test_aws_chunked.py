"""aws-chunked uploads through the proxy, as SDKs send them: boto3's unsigned bodies with a
trailing checksum (what it sends over HTTPS), and signed chunks (the Java/Go/JS SDKs' form).
The framing is never stored; a bad chunk signature or trailing checksum stores nothing."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import os
import uuid
from datetime import UTC, datetime
from urllib.parse import urlparse, urlsplit

import botocore.exceptions
import botocore.httpchecksum
import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from conftest import no_retry_client

from cloudtaser_s3 import envelope, sigv4

EMPTY = hashlib.sha256(b"").hexdigest()


@pytest.fixture
def trailers_over_http(monkeypatch):
    """boto3 sends trailing checksums only over TLS; make it believe the proxy URL is https."""

    def https_urlparse(url, *args, **kwargs):
        parsed = urlparse(url, *args, **kwargs)
        return parsed._replace(scheme="https") if parsed.scheme == "http" else parsed

    monkeypatch.setattr(botocore.httpchecksum, "urlparse", https_urlparse)


@pytest.fixture(scope="module")
def bucket(seaweedfs):
    name = f"chunk-{uuid.uuid4().hex[:12]}"
    seaweedfs.client().create_bucket(Bucket=name)
    return name


def stored(seaweedfs, bucket, key) -> bytes | None:
    try:
        return seaweedfs.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    except botocore.exceptions.ClientError:
        return None


@pytest.mark.parametrize("size", [0, 1, 70_000, 3 * 2**20 + 5])
@pytest.mark.parametrize("algorithm", ["CRC32", "CRC32C", "SHA256", "CRC64NVME"])
def test_boto3_trailing_checksum_uploads(
    trailers_over_http, proxy_seaweedfs, seaweedfs, bucket, size, algorithm
):
    s3 = no_retry_client(proxy_seaweedfs, seaweedfs, request_checksum_calculation="when_supported")
    seen = {}
    s3.meta.events.register(
        "before-send.s3.PutObject",
        lambda request, **_: seen.update(
            {
                k.lower(): v.decode() if isinstance(v, bytes) else v
                for k, v in request.headers.items()
            }
        ),
    )
    data = os.urandom(size)
    key = f"trailer-{algorithm}-{size}"
    s3.put_object(Bucket=bucket, Key=key, Body=data, ChecksumAlgorithm=algorithm)
    assert seen["x-amz-content-sha256"] == "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
    assert seen["content-encoding"] == "aws-chunked"
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    at_rest = stored(seaweedfs, bucket, key)
    assert at_rest is not None and len(at_rest) == envelope.sealed_part_length(size)


def test_a_wrong_trailing_checksum_stores_nothing(
    trailers_over_http, proxy_seaweedfs, seaweedfs, bucket
):
    s3 = no_retry_client(proxy_seaweedfs, seaweedfs)

    def corrupt(request, **_):
        """Same length, another CRC32 in the trailer."""
        body = request.body.read() if hasattr(request.body, "read") else request.body
        i = body.rfind(b"x-amz-checksum-crc32:") + len(b"x-amz-checksum-crc32:")
        request.body = body[:i] + b"AAAAAA==" + body[i + 8 :]

    s3.meta.events.register("before-send.s3.PutObject", corrupt)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=bucket, Key="bad-trailer", Body=os.urandom(200_000))
    assert e.value.response["Error"]["Code"] == "BadDigest"
    assert stored(seaweedfs, bucket, "bad-trailer") is None


class StreamingAuth(S3SigV4Auth):
    """botocore signs the headers; the payload hash names the streaming variant."""

    def payload(self, request):
        return "STREAMING-AWS4-HMAC-SHA256-PAYLOAD"


def signed_chunked_put(proxy, backend, bucket, key, data, chunk=65536, corrupt_chunk=None):
    """A STREAMING-AWS4-HMAC-SHA256-PAYLOAD PutObject, framed and signed as AWS documents."""
    url = f"{proxy.endpoint}/{bucket}/{key}"
    frames = [data[i : i + chunk] for i in range(0, len(data), chunk)] + [b""]
    encoded_len = sum(
        len(f"{len(f):x};chunk-signature=".encode()) + 64 + 2 + len(f) + 2 for f in frames
    )
    headers = {
        "Content-Encoding": "aws-chunked",
        "X-Amz-Content-SHA256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "x-amz-decoded-content-length": str(len(data)),
        "Content-Length": str(encoded_len),
    }
    req = AWSRequest(method="PUT", url=url, headers=headers)
    now = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    req.context["timestamp"] = now
    creds = Credentials(backend.access_key, backend.secret_key)
    StreamingAuth(creds, "s3", "us-east-1").add_auth(req)
    seed = req.headers["Authorization"].rsplit("Signature=", 1)[1]
    scope = f"{now[:8]}/us-east-1/s3/aws4_request"
    key_bytes = sigv4.signing_key(backend.secret_key, now[:8], "us-east-1")
    previous, body = seed, b""
    for i, frame in enumerate(frames):
        digest = hashlib.sha256(frame).hexdigest()
        to_sign = "\n".join(("AWS4-HMAC-SHA256-PAYLOAD", now, scope, previous, EMPTY, digest))
        previous = hmac.new(key_bytes, to_sign.encode(), hashlib.sha256).hexdigest()
        if i == corrupt_chunk:
            frame = b"X" + frame[1:]
        body += f"{len(frame):x};chunk-signature={previous}\r\n".encode() + frame + b"\r\n"
    assert len(body) == encoded_len
    target = urlsplit(url)
    conn = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
    conn.request("PUT", target.path, body=body, headers=dict(req.headers.items()))
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_signed_chunks_are_verified_and_decoded(proxy_seaweedfs, seaweedfs, bucket):
    data = os.urandom(300_000)
    status, _ = signed_chunked_put(proxy_seaweedfs, seaweedfs, bucket, "signed-chunks", data)
    assert status == 200, _
    s3 = no_retry_client(proxy_seaweedfs, seaweedfs)
    assert s3.get_object(Bucket=bucket, Key="signed-chunks")["Body"].read() == data
    at_rest = stored(seaweedfs, bucket, "signed-chunks")
    assert at_rest is not None and b";chunk-signature=" not in at_rest


def test_a_chunk_that_does_not_match_its_signature_stores_nothing(
    proxy_seaweedfs, seaweedfs, bucket
):
    data = os.urandom(300_000)
    status, body = signed_chunked_put(
        proxy_seaweedfs, seaweedfs, bucket, "tampered-chunk", data, corrupt_chunk=2
    )
    assert status == 403 and b"SignatureDoesNotMatch" in body
    assert stored(seaweedfs, bucket, "tampered-chunk") is None


def test_multipart_upload_file_with_trailing_checksums(
    trailers_over_http, proxy_seaweedfs, seaweedfs, bucket, tmp_path
):
    s3 = no_retry_client(proxy_seaweedfs, seaweedfs)
    src = tmp_path / "src"
    src.write_bytes(os.urandom(20 * 2**20))
    s3.upload_file(str(src), bucket, "chunked-multipart")
    dst = tmp_path / "dst"
    s3.download_file(bucket, "chunked-multipart", str(dst))
    assert dst.read_bytes() == src.read_bytes()
