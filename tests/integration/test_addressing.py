"""Path-style and virtual-hosted-style requests address the same objects. Virtual hosts are
``<bucket>.<domain>`` for the domains in CLOUDTASER_S3PROXY_VIRTUAL_HOST_DOMAINS (default
``localhost``); `bucket.localhost` does not resolve here, so the test connects to 127.0.0.1 and
sends the Host header a client would."""

from __future__ import annotations

import http.client
import uuid
from urllib.parse import urlsplit

from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


def virtual_hosted(proxy, backend, method, bucket, path, body=b""):
    port = urlsplit(proxy.endpoint).port
    url = f"http://{bucket}.localhost:{port}{path}"
    req = AWSRequest(method=method, url=url, data=body)
    S3SigV4Auth(Credentials(backend.access_key, backend.secret_key), "s3", "us-east-1").add_auth(
        req
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = dict(req.headers.items())
    headers["Host"] = f"{bucket}.localhost:{port}"
    conn.request(method, path, body=body or None, headers=headers)
    resp = conn.getresponse()
    return resp.status, resp.read()


def test_virtual_hosted_requests_reach_the_same_objects(proxy_moto, moto_s3):
    bucket = f"vh-{uuid.uuid4().hex[:12]}"
    s3 = proxy_moto.client(moto_s3.access_key, moto_s3.secret_key)
    s3.create_bucket(Bucket=bucket)
    status, _ = virtual_hosted(proxy_moto, moto_s3, "PUT", bucket, "/dir/a%20key", b"hello")
    assert status == 200
    assert s3.get_object(Bucket=bucket, Key="dir/a key")["Body"].read() == b"hello"
    status, body = virtual_hosted(proxy_moto, moto_s3, "GET", bucket, "/dir/a%20key")
    assert (status, body) == (200, b"hello")
    status, body = virtual_hosted(proxy_moto, moto_s3, "GET", bucket, "/?list-type=2")
    assert status == 200 and b"<Key>dir/a key</Key>" in body
    at_rest = moto_s3.client().get_object(Bucket=bucket, Key="dir/a key")["Body"].read()
    assert at_rest.startswith(b"CTS1")
