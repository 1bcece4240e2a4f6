"""Who may use the proxy: SigV4 is checked before anything goes upstream, then the request is
re-signed for the upstream — as the client (client identity) or as the proxy (proxy identity).
SeaweedFS checks the re-signed signatures, so a wrong re-signature fails these tests too."""

from __future__ import annotations

import urllib.request
import uuid

import boto3
import botocore.exceptions
import pytest
from botocore import UNSIGNED
from botocore.config import Config

from cloudtaser_s3.localservers import s3_client

NO_RETRY = Config(retries={"total_max_attempts": 1})


def client(endpoint, access_key, secret_key, region="us-east-1", **config):
    return boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=NO_RETRY.merge(Config(**config)) if config else NO_RETRY,
    )


def refused(call) -> tuple[str, int]:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    r = e.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"]


@pytest.fixture(scope="module")
def bucket(seaweedfs):
    name = f"auth-{uuid.uuid4().hex[:12]}"
    seaweedfs.client().create_bucket(Bucket=name)
    return name


def stored(seaweedfs, bucket, key) -> bool:
    try:
        seaweedfs.client().head_object(Bucket=bucket, Key=key)
        return True
    except botocore.exceptions.ClientError:
        return False


def test_a_wrong_secret_is_refused_before_anything_goes_upstream(
    proxy_seaweedfs, seaweedfs, bucket
):
    bad = client(proxy_seaweedfs.endpoint, seaweedfs.access_key, "not-the-secret")
    code = refused(lambda: bad.put_object(Bucket=bucket, Key="wrong-secret", Body=b"x"))
    assert code == ("SignatureDoesNotMatch", 403)
    assert not stored(seaweedfs, bucket, "wrong-secret")


def test_an_unknown_access_key_is_refused(proxy_seaweedfs, seaweedfs, bucket):
    bad = client(proxy_seaweedfs.endpoint, "AKIAUNKNOWNKEY000000", seaweedfs.secret_key)
    assert refused(lambda: bad.list_objects_v2(Bucket=bucket)) == ("InvalidAccessKeyId", 403)


def test_anonymous_requests_are_refused(proxy_seaweedfs, bucket):
    anon = boto3.client(
        "s3",
        endpoint_url=proxy_seaweedfs.endpoint,
        region_name="us-east-1",
        config=Config(signature_version=UNSIGNED, retries={"total_max_attempts": 1}),
    )
    assert refused(lambda: anon.get_object(Bucket=bucket, Key="x")) == ("AccessDenied", 403)


def test_a_signature_for_another_region_is_refused(proxy_seaweedfs, seaweedfs, bucket):
    other = client(
        proxy_seaweedfs.endpoint, seaweedfs.access_key, seaweedfs.secret_key, "eu-central-1"
    )
    code = refused(lambda: other.list_objects_v2(Bucket=bucket))
    assert code == ("AuthorizationHeaderMalformed", 400)


def test_presigned_get_and_put_work_through_the_proxy(proxy_seaweedfs, seaweedfs, bucket):
    s3 = client(
        proxy_seaweedfs.endpoint,
        seaweedfs.access_key,
        seaweedfs.secret_key,
        signature_version="s3v4",
    )
    put_url = s3.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "presigned"}, ExpiresIn=300
    )
    req = urllib.request.Request(put_url, data=b"uploaded with a presigned URL", method="PUT")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200
    get_url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "presigned"}, ExpiresIn=300
    )
    with urllib.request.urlopen(get_url, timeout=30) as r:
        assert r.read() == b"uploaded with a presigned URL"
    at_rest = seaweedfs.client().get_object(Bucket=bucket, Key="presigned")
    assert at_rest["Body"].read(4) == b"CTS1"


def test_presigned_urls_work_with_curl(proxy_seaweedfs, seaweedfs, bucket, tmp_path):
    import shutil
    import subprocess

    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl is not installed")
    s3 = client(
        proxy_seaweedfs.endpoint,
        seaweedfs.access_key,
        seaweedfs.secret_key,
        signature_version="s3v4",
    )
    src = tmp_path / "up"
    src.write_bytes(b"curl upload " * 1000)
    put = s3.generate_presigned_url(
        "put_object", Params={"Bucket": bucket, "Key": "curl"}, ExpiresIn=300
    )
    subprocess.run([curl, "-sSf", "-T", str(src), put], check=True, timeout=60)
    get = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "curl"}, ExpiresIn=300
    )
    out = subprocess.run([curl, "-sSf", get], check=True, capture_output=True, timeout=60)
    assert out.stdout == src.read_bytes()


def test_a_tampered_presigned_url_is_refused(proxy_seaweedfs, seaweedfs, bucket):
    s3 = client(
        proxy_seaweedfs.endpoint,
        seaweedfs.access_key,
        seaweedfs.secret_key,
        signature_version="s3v4",
    )
    url = s3.generate_presigned_url(
        "get_object", Params={"Bucket": bucket, "Key": "a"}, ExpiresIn=300
    )
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url.replace("/a?", "/b?"), timeout=30)
    assert e.value.code == 403
    assert b"SignatureDoesNotMatch" in e.value.read()


def test_proxy_identity_with_proxy_local_client_keys(proxy_factory, seaweedfs, bucket, tmp_path):
    """Clients hold keys only the proxy knows; the store sees the proxy's own identity."""
    creds = tmp_path / "clients"
    creds.write_text("# app keys\nAPPKEY0000000000001:app-secret-1\nAPPKEY0000000000002:s2\n")
    proxy = proxy_factory(
        seaweedfs,
        CLOUDTASER_S3PROXY_CLIENT_CREDENTIALS_FILE=str(creds),
        CLOUDTASER_S3PROXY_UPSTREAM_IDENTITY="proxy",
    )
    app = client(proxy.endpoint, "APPKEY0000000000001", "app-secret-1")
    app.put_object(Bucket=bucket, Key="as-proxy", Body=b"hello")
    assert app.get_object(Bucket=bucket, Key="as-proxy")["Body"].read() == b"hello"
    # The backend's own keys are not client keys of this proxy.
    real = client(proxy.endpoint, seaweedfs.access_key, seaweedfs.secret_key)
    assert refused(lambda: real.list_objects_v2(Bucket=bucket)) == ("InvalidAccessKeyId", 403)


def test_client_identity_forwards_the_clients_own_keys(proxy_factory, seaweedfs, bucket, tmp_path):
    """With client identity the store sees the client: keys it does not know fail upstream."""
    creds = tmp_path / "clients"
    creds.write_text(
        f"{seaweedfs.access_key}:{seaweedfs.secret_key}\nAPPKEYNOTATBACKEND01:local-only\n"
    )
    proxy = proxy_factory(
        seaweedfs,
        CLOUDTASER_S3PROXY_CLIENT_CREDENTIALS_FILE=str(creds),
        CLOUDTASER_S3PROXY_UPSTREAM_IDENTITY="client",
        AWS_ACCESS_KEY_ID=None,
        AWS_SECRET_ACCESS_KEY=None,
    )
    ok = client(proxy.endpoint, seaweedfs.access_key, seaweedfs.secret_key)
    ok.put_object(Bucket=bucket, Key="as-client", Body=b"hi")
    assert ok.get_object(Bucket=bucket, Key="as-client")["Body"].read() == b"hi"
    local = client(proxy.endpoint, "APPKEYNOTATBACKEND01", "local-only")
    code, status = refused(lambda: local.list_objects_v2(Bucket=bucket))
    assert status == 403  # the proxy accepted it; SeaweedFS does not know that key


def test_verification_off_on_a_loopback_sidecar(proxy_factory, seaweedfs, bucket):
    proxy = proxy_factory(seaweedfs, CLOUDTASER_S3PROXY_VERIFY_SIGNATURES="false")
    anyone = client(proxy.endpoint, "whatever", "whatever")
    anyone.put_object(Bucket=bucket, Key="sidecar", Body=b"trusted pod")
    assert anyone.get_object(Bucket=bucket, Key="sidecar")["Body"].read() == b"trusted pod"
    direct = s3_client(seaweedfs.endpoint, seaweedfs.access_key, seaweedfs.secret_key)
    assert direct.get_object(Bucket=bucket, Key="sidecar")["Body"].read(4) == b"CTS1"
    # A presigned URL works there too: its query signature is dropped and the request re-signed.
    url = anyone.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": "sidecar"})
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.read() == b"trusted pod"
