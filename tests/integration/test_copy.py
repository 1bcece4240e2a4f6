"""CopyObject and UploadPartCopy: the source is decrypted and re-encrypted under a new key for
the destination (a store-side copy could never be read: segments are bound to their key)."""

from __future__ import annotations

import hashlib
import os

import botocore.exceptions
import pytest
from boto3.s3.transfer import TransferConfig

from cloudtaser_s3 import envelope

MiB = 2**20


@pytest.fixture(scope="module")
def env(stack):
    return stack.via, stack.backend, stack.bucket


def at_rest(backend, bucket, key):
    obj = backend.client().get_object(Bucket=bucket, Key=key)
    return obj["Body"].read(), obj["Metadata"]


def test_copy_object_re_encrypts_under_a_new_key(env):
    via, backend, bucket = env
    data = os.urandom(300_000)
    via.put_object(Bucket=bucket, Key="src", Body=data, Metadata={"owner": "a"})
    result = via.copy_object(Bucket=bucket, Key="dst", CopySource={"Bucket": bucket, "Key": "src"})
    assert result["CopyObjectResult"]["ETag"] == via.head_object(Bucket=bucket, Key="dst")["ETag"]
    got = via.get_object(Bucket=bucket, Key="dst")
    assert got["Body"].read() == data
    assert got["Metadata"]["owner"] == "a"  # COPY directive: the source's user metadata
    (src_body, src_meta), (dst_body, dst_meta) = (
        at_rest(backend, bucket, "src"),
        at_rest(backend, bucket, "dst"),
    )
    assert dst_meta["cloudtaser-dek"] != src_meta["cloudtaser-dek"]
    assert dst_body != src_body and dst_body[:4] == envelope.MAGIC


def test_replace_directive_takes_the_requests_metadata(env):
    via, _, bucket = env
    via.put_object(Bucket=bucket, Key="m-src", Body=b"x", Metadata={"owner": "a"})
    via.copy_object(
        Bucket=bucket,
        Key="m-dst",
        CopySource={"Bucket": bucket, "Key": "m-src"},
        MetadataDirective="REPLACE",
        Metadata={"owner": "b", "cloudtaser-dek": "forged"},
        ContentType="text/plain",
    )
    got = via.get_object(Bucket=bucket, Key="m-dst")
    assert got["Metadata"]["owner"] == "b"
    assert got["Metadata"]["cloudtaser-dek"].startswith("vault:v")
    assert got["ContentType"] == "text/plain"
    assert got["Body"].read() == b"x"


def test_copy_source_conditions(env):
    via, _, bucket = env
    etag = via.put_object(Bucket=bucket, Key="c-src", Body=b"cond")["ETag"]
    src = {"Bucket": bucket, "Key": "c-src"}
    via.copy_object(Bucket=bucket, Key="c1", CopySource=src, CopySourceIfMatch=etag)
    with pytest.raises(botocore.exceptions.ClientError) as e:
        via.copy_object(Bucket=bucket, Key="c2", CopySource=src, CopySourceIfNoneMatch=etag)
    assert e.value.response["Error"]["Code"] == "PreconditionFailed"


def test_copy_of_a_missing_source(env):
    via, _, bucket = env
    with pytest.raises(botocore.exceptions.ClientError) as e:
        via.copy_object(Bucket=bucket, Key="x", CopySource={"Bucket": bucket, "Key": "nope"})
    assert e.value.response["Error"]["Code"] == "NoSuchKey"


def test_a_tampered_source_copies_nothing(env):
    via, backend, bucket = env
    via.put_object(Bucket=bucket, Key="t-src", Body=os.urandom(200_000))
    body, meta = at_rest(backend, bucket, "t-src")
    damaged = bytearray(body)
    damaged[100_000] ^= 1
    backend.client().put_object(Bucket=bucket, Key="t-src", Body=bytes(damaged), Metadata=meta)
    with pytest.raises(botocore.exceptions.ClientError):
        via.copy_object(Bucket=bucket, Key="t-dst", CopySource={"Bucket": bucket, "Key": "t-src"})
    with pytest.raises(botocore.exceptions.ClientError):
        backend.client().head_object(Bucket=bucket, Key="t-dst")


@pytest.mark.slow
def test_boto3_copy_of_100_mib_uses_upload_part_copy(env, tmp_path):
    via, _, bucket = env
    src = tmp_path / "src"
    block = os.urandom(MiB)
    with open(src, "wb") as f:
        for i in range(100):
            f.write(block[i:] + block[:i])
    via.upload_file(str(src), bucket, "big-src", Config=TransferConfig())
    calls = []
    via.meta.events.register("before-call.s3.UploadPartCopy", lambda **kw: calls.append(1))
    via.copy({"Bucket": bucket, "Key": "big-src"}, bucket, "big-dst")
    assert len(calls) > 1
    dst = tmp_path / "dst"
    via.download_file(bucket, "big-dst", str(dst))
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()


def test_copy_of_an_object_stored_before_the_proxy_encrypts_it(env):
    via, backend, bucket = env
    backend.client().put_object(Bucket=bucket, Key="legacy", Body=b"old plaintext")
    via.copy_object(Bucket=bucket, Key="migrated", CopySource={"Bucket": bucket, "Key": "legacy"})
    body, meta = at_rest(backend, bucket, "migrated")
    assert body[:4] == envelope.MAGIC and meta["cloudtaser-alg"] == envelope.ALG
    assert via.get_object(Bucket=bucket, Key="migrated")["Body"].read() == b"old plaintext"
