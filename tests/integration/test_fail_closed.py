"""Fail closed, proven: when anything goes wrong the store holds no plaintext (and no partial
object), and the client sees an error — never success, never bytes that did not authenticate.

Faults are injected with a TCP forwarder in front of OpenBao or the backend (tests/faultproxy.py)
and with a test-only mitmproxy script that raises inside the encrypting stream
(tests/faults/raise_while_sealing.py). Everything else is real.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
import zlib
from pathlib import Path
from urllib.parse import urlsplit

import botocore.exceptions
import pytest
from botocore.config import Config
from conftest import http_status, no_retry_client, proxy_default_env
from faultproxy import FaultProxy

from cloudtaser_s3 import localservers as ls
from cloudtaser_s3.localservers import s3_client

FAULTS = Path(__file__).resolve().parent.parent / "faults"


def error_code(excinfo) -> tuple[str, int]:
    err = excinfo.value.response
    return err["Error"]["Code"], err["ResponseMetadata"]["HTTPStatusCode"]


def missing(direct, bucket, key) -> bool:
    try:
        direct.head_object(Bucket=bucket, Key=key)
    except botocore.exceptions.ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"] == 404
    return False


@pytest.fixture(scope="module")
def bucket(seaweedfs):
    name = f"fc-{uuid.uuid4().hex[:12]}"
    s3_client(seaweedfs.endpoint, seaweedfs.access_key, seaweedfs.secret_key).create_bucket(
        Bucket=name
    )
    return name


@pytest.fixture(scope="module")
def direct(seaweedfs):
    return s3_client(seaweedfs.endpoint, seaweedfs.access_key, seaweedfs.secret_key)


@pytest.fixture(scope="module")
def via(proxy_seaweedfs, seaweedfs):
    return no_retry_client(proxy_seaweedfs, seaweedfs)


# ------------------------------------------------------------------ client checksums


def test_wrong_content_md5_stores_nothing_and_answers_bad_digest(via, direct, bucket):
    wrong = base64.b64encode(hashlib.md5(b"something else").digest()).decode()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        via.put_object(Bucket=bucket, Key="md5", Body=os.urandom(300_000), ContentMD5=wrong)
    assert error_code(e) == ("BadDigest", 400)
    assert missing(direct, bucket, "md5")


def test_wrong_crc32_stores_nothing_and_answers_bad_digest(via, direct, bucket):
    wrong = base64.b64encode(zlib.crc32(b"other").to_bytes(4, "big")).decode()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        via.put_object(Bucket=bucket, Key="crc", Body=os.urandom(70_000), ChecksumCRC32=wrong)
    assert error_code(e) == ("BadDigest", 400)
    assert missing(direct, bucket, "crc")


def test_body_changed_after_signing_is_refused(proxy_seaweedfs, seaweedfs, direct, bucket):
    """x-amz-content-sha256 is the plaintext's hash: a body that differs must not be stored."""
    via = no_retry_client(proxy_seaweedfs, seaweedfs)

    def swap_body(request, **_):
        request.body = b"B" * len(request.body.getvalue())

    via.meta.events.register("before-send.s3.PutObject", swap_body)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        via.put_object(Bucket=bucket, Key="swapped", Body=b"A" * 100_000)
    assert error_code(e) == ("XAmzContentSHA256Mismatch", 400)
    assert missing(direct, bucket, "swapped")


def test_a_failed_upload_leaves_the_previous_version_intact(via, direct, bucket):
    via.put_object(Bucket=bucket, Key="keep", Body=b"version 1")
    wrong = base64.b64encode(hashlib.md5(b"x").digest()).decode()
    with pytest.raises(botocore.exceptions.ClientError):
        via.put_object(Bucket=bucket, Key="keep", Body=b"version 2" * 10_000, ContentMD5=wrong)
    assert via.get_object(Bucket=bucket, Key="keep")["Body"].read() == b"version 1"


# ------------------------------------------------------------------ limits and refusals


def test_bodies_over_max_object_size_are_refused_before_anything_goes_upstream(
    proxy_factory, seaweedfs, direct, bucket
):
    proxy = proxy_factory(seaweedfs, MAX_OBJECT_SIZE="1Mi")
    via = no_retry_client(proxy, seaweedfs)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        via.put_object(Bucket=bucket, Key="too-big", Body=os.urandom(2**20 + 1))
    assert error_code(e) == ("EntityTooLarge", 400)
    assert missing(direct, bucket, "too-big")
    via.put_object(Bucket=bucket, Key="just-fits", Body=os.urandom(2**20))
    assert proxy.is_running()


@pytest.mark.parametrize(
    ("name", "call"),
    [
        (
            "SelectObjectContent",
            lambda s3, b: s3.select_object_content(
                Bucket=b,
                Key="keep",
                Expression="select * from s3object",
                ExpressionType="SQL",
                InputSerialization={"CSV": {}},
                OutputSerialization={"CSV": {}},
            ),
        ),
    ],
)
def test_object_data_not_handled_yet_is_refused_not_forwarded(via, bucket, name, call):
    via.put_object(Bucket=bucket, Key="keep", Body=b"version 1")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call(via, bucket)
    assert error_code(e) == ("NotImplemented", 501)


def test_parts_of_an_upload_not_started_through_the_proxy_are_refused(via, direct, bucket):
    raw = direct.create_multipart_upload(Bucket=bucket, Key="outside")["UploadId"]
    with pytest.raises(botocore.exceptions.ClientError) as e:
        via.upload_part(
            Bucket=bucket, Key="outside", UploadId=raw, PartNumber=1, Body=os.urandom(100_000)
        )
    assert error_code(e) == ("NoSuchUpload", 404)
    assert direct.list_parts(Bucket=bucket, Key="outside", UploadId=raw).get("Parts", []) == []


def test_a_body_that_claims_aws_chunked_but_is_not_is_refused_never_stored(
    proxy_seaweedfs, seaweedfs, direct, bucket
):
    import boto3

    via = boto3.client(
        "s3",
        endpoint_url=proxy_seaweedfs.endpoint,
        aws_access_key_id=seaweedfs.access_key,
        aws_secret_access_key=seaweedfs.secret_key,
        region_name="us-east-1",
        config=Config(retries={"total_max_attempts": 1}, s3={"payload_signing_enabled": False}),
    )

    def claim_chunked(params, **_):
        params["headers"]["Content-Encoding"] = "aws-chunked"
        params["headers"]["X-Amz-Content-SHA256"] = "STREAMING-UNSIGNED-PAYLOAD-TRAILER"
        params["headers"]["x-amz-decoded-content-length"] = "5"

    via.meta.events.register("before-call.s3.PutObject", claim_chunked)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        via.put_object(Bucket=bucket, Key="chunked", Body=b"hello")
    assert error_code(e)[1] == 400
    assert missing(direct, bucket, "chunked")


# ------------------------------------------------------------------ Vault down or refusing


@pytest.fixture
def vault_behind_fault(proxy_factory, seaweedfs, openbao):
    vault = urlsplit(openbao.addr)
    fault = FaultProxy(vault.hostname, vault.port)
    # No DEK cache and no pool: every request needs Vault, so an outage refuses them all at
    # once (tests/integration/test_vault_lifecycle.py covers what the caches keep working).
    proxy = proxy_factory(
        seaweedfs,
        VAULT_ADDR=fault.url,
        CLOUDTASER_S3PROXY_DEK_CACHE_SIZE="0",
        CLOUDTASER_S3PROXY_DEK_POOL_SIZE="0",
    )
    yield proxy, fault
    fault.stop()


def test_vault_outage_refuses_writes_with_a_retryable_error(
    vault_behind_fault, seaweedfs, direct, bucket
):
    proxy, fault = vault_behind_fault
    via = no_retry_client(proxy, seaweedfs)
    via.put_object(Bucket=bucket, Key="before-outage", Body=b"ok")
    fault.refuse()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        via.put_object(Bucket=bucket, Key="during-outage", Body=os.urandom(100_000))
    assert error_code(e) == ("ServiceUnavailable", 503)
    assert missing(direct, bucket, "during-outage")
    with pytest.raises(botocore.exceptions.ClientError) as e:
        via.get_object(Bucket=bucket, Key="before-outage")
    assert error_code(e) == ("ServiceUnavailable", 503)
    fault.heal()
    via.put_object(Bucket=bucket, Key="after-outage", Body=b"back")
    assert via.get_object(Bucket=bucket, Key="after-outage")["Body"].read() == b"back"


def test_health_follows_vault(vault_behind_fault):
    import time

    proxy, fault = vault_behind_fault
    assert http_status(proxy.healthz) == 200
    assert http_status(proxy.readyz) == 200
    fault.refuse()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and http_status(proxy.readyz) != 503:
        time.sleep(0.5)
    assert http_status(proxy.readyz) == 503
    assert http_status(proxy.healthz) == 503
    fault.heal()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and http_status(proxy.readyz) != 200:
        time.sleep(0.5)
    assert http_status(proxy.readyz) == 200


def test_a_vault_that_refuses_the_token_stores_nothing(
    openbao, seaweedfs, direct, bucket, tmp_path
):
    """A token without the Transit policy: Vault answers, but says no."""
    weak = ls.create_policy_token(openbao.addr, openbao.root_token, policy="default")
    env = proxy_default_env(seaweedfs, openbao, weak)
    proxy = ls.start_proxy(env, tmp_path, wait_for="healthz")
    try:
        assert http_status(proxy.readyz) == 503
        via = no_retry_client(proxy, seaweedfs)
        with pytest.raises(botocore.exceptions.ClientError) as e:
            via.put_object(Bucket=bucket, Key="refused-by-vault", Body=b"secret")
        assert error_code(e) == ("ServiceUnavailable", 503)
        assert missing(direct, bucket, "refused-by-vault")
    finally:
        proxy.stop()


# ------------------------------------------------------------------ faults mid-body


def test_an_exception_inside_the_encrypting_stream_stores_nothing(
    openbao, openbao_token, seaweedfs, direct, bucket, tmp_path
):
    env = proxy_default_env(seaweedfs, openbao, openbao_token)
    proxy = ls.start_proxy(env, tmp_path, extra_args=["-s", str(FAULTS / "raise_while_sealing.py")])
    try:
        via = no_retry_client(proxy, seaweedfs)
        with pytest.raises(botocore.exceptions.ClientError) as e:
            via.put_object(Bucket=bucket, Key="explode-while-sealing", Body=os.urandom(3 * 2**20))
        assert error_code(e) == ("InternalError", 500)
        assert missing(direct, bucket, "explode-while-sealing")
        # The proxy stays up and keeps serving.
        via.put_object(Bucket=bucket, Key="fine", Body=b"fine")
        assert via.get_object(Bucket=bucket, Key="fine")["Body"].read() == b"fine"
    finally:
        proxy.stop()


def test_upstream_dropping_the_connection_mid_body(proxy_factory, seaweedfs, direct, bucket):
    backend = urlsplit(seaweedfs.endpoint)
    fault = FaultProxy(backend.hostname, backend.port)
    try:
        proxy = proxy_factory(seaweedfs, S3_ENDPOINT=fault.url)
        via = no_retry_client(proxy, seaweedfs)
        fault.cut_upstream_after(1_000_000)
        with pytest.raises((botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError)):
            via.put_object(Bucket=bucket, Key="dropped", Body=os.urandom(4 * 2**20))
        assert fault.cuts == 1
        assert missing(direct, bucket, "dropped")
        via.put_object(Bucket=bucket, Key="after-drop", Body=b"ok")
        assert via.get_object(Bucket=bucket, Key="after-drop")["Body"].read() == b"ok"
    finally:
        fault.stop()


def test_upstream_dropping_the_connection_mid_download(proxy_factory, seaweedfs, bucket):
    """The client gets an authenticated prefix and then an error, never a short 'success'."""
    backend = urlsplit(seaweedfs.endpoint)
    fault = FaultProxy(backend.hostname, backend.port)
    try:
        proxy = proxy_factory(seaweedfs, S3_ENDPOINT=fault.url)
        via = no_retry_client(proxy, seaweedfs)
        data = os.urandom(64 * 2**20)  # far more than socket buffers hold in flight
        via.put_object(Bucket=bucket, Key="download-drop", Body=data)
        received = bytearray()
        with pytest.raises(botocore.exceptions.BotoCoreError):
            body = via.get_object(Bucket=bucket, Key="download-drop")["Body"]
            for i, chunk in enumerate(body.iter_chunks(65536)):
                received += chunk
                if i == 0:
                    fault.refuse()  # cut the live upstream connection while the body streams
        assert len(received) < len(data)
        assert bytes(received) == data[: len(received)]
    finally:
        fault.stop()
