"""Someone with write access to the bucket changes what is stored: the proxy must never hand the
client bytes that did not authenticate — it cuts the response instead, or refuses up front.

A client reading through the proxy gets at most a prefix of genuine plaintext (segments that
verified) followed by a broken connection; never a complete-looking wrong object."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import boto3
import botocore.exceptions
import pytest
from botocore.config import Config

from cloudtaser_s3 import envelope

SEG = envelope.SEGMENT_STORED
HDR = envelope.HEADER_LEN


@dataclass
class Env:
    """Unpacks as (client through the proxy, client to moto, bucket); ``fresh()`` makes another
    proxy client with a connection pool of its own."""

    fresh: Callable[[], object]
    direct: object
    bucket: str

    def __post_init__(self) -> None:
        self.via = self.fresh()

    def __iter__(self):
        return iter((self.via, self.direct, self.bucket))


@pytest.fixture(scope="module")
def env(proxy_moto, moto_s3):
    def fresh():
        return boto3.client(
            "s3",
            endpoint_url=proxy_moto.endpoint,
            aws_access_key_id=moto_s3.access_key,
            aws_secret_access_key=moto_s3.secret_key,
            region_name="us-east-1",
            config=Config(retries={"total_max_attempts": 1}, read_timeout=20),
        )

    direct = moto_s3.client()
    bucket = f"rest-{uuid.uuid4().hex[:12]}"
    direct.create_bucket(Bucket=bucket)
    return Env(fresh, direct, bucket)


def put_encrypted(env, key, size=3 * 65536 + 100):
    via, direct, bucket = env
    data = os.urandom(size)
    via.put_object(Bucket=bucket, Key=key, Body=data)
    obj = direct.get_object(Bucket=bucket, Key=key)
    return data, obj["Body"].read(), obj["Metadata"]


def rewrite(env, key, body, metadata):
    _, direct, bucket = env
    direct.put_object(Bucket=bucket, Key=key, Body=body, Metadata=metadata)


def read_via_proxy(env, key):
    """(bytes received, error or None). A fresh client each time: the proxy resets connections
    that carried a damaged object, and a pooled one could be reused before the reset arrives."""
    via, bucket = env.fresh(), env.bucket
    got = bytearray()
    try:
        body = via.get_object(Bucket=bucket, Key=key)["Body"]
        for chunk in body.iter_chunks(8192):
            got += chunk
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as e:
        return bytes(got), e
    return bytes(got), None


def assert_only_an_authentic_prefix(data, got, error):
    assert error is not None, "a damaged object was served as if whole"
    assert got == data[: len(got)]
    assert len(got) < len(data)


@pytest.mark.parametrize(
    "where",
    [
        pytest.param(1, id="header"),
        pytest.param(HDR + 3, id="first-nonce"),
        pytest.param(HDR + 100, id="first-segment-ciphertext"),
        pytest.param(HDR + SEG - 1, id="first-segment-tag"),
        pytest.param(HDR + 2 * SEG + 5000, id="third-segment"),
        pytest.param(-1, id="last-byte"),
    ],
)
def test_a_flipped_bit_is_never_served(env, where):
    data, stored, meta = put_encrypted(env, f"flip-{where}")
    damaged = bytearray(stored)
    damaged[where] ^= 0x01
    rewrite(env, f"flip-{where}", bytes(damaged), meta)
    got, error = read_via_proxy(env, f"flip-{where}")
    assert_only_an_authentic_prefix(data, got, error)
    if where > HDR + 2 * SEG:
        assert len(got) == 2 * 65536  # the two segments before the damage did verify


def test_a_truncated_object_is_refused(env):
    data, stored, meta = put_encrypted(env, "truncated")
    rewrite(env, "truncated", stored[: HDR + 2 * SEG], meta)  # drop the last segments
    got, error = read_via_proxy(env, "truncated")
    assert error is not None
    assert got == b""  # its stored length is not one a real object can have


def test_reordered_segments_are_refused(env):
    data, stored, meta = put_encrypted(env, "reordered")
    s1, s2 = stored[HDR : HDR + SEG], stored[HDR + SEG : HDR + 2 * SEG]
    swapped = stored[:HDR] + s2 + s1 + stored[HDR + 2 * SEG :]
    rewrite(env, "reordered", swapped, meta)
    got, error = read_via_proxy(env, "reordered")
    assert_only_an_authentic_prefix(data, got, error)
    assert got == b""


def test_an_object_copied_to_another_key_outside_the_proxy_is_refused(env):
    via, direct, bucket = env
    data, _, _ = put_encrypted(env, "original")
    direct.copy_object(Bucket=bucket, Key="copy", CopySource={"Bucket": bucket, "Key": "original"})
    got, error = read_via_proxy(env, "copy")
    assert_only_an_authentic_prefix(data, got, error)
    assert got == b""
    assert read_via_proxy(env, "original") == (data, None)


def test_another_objects_salt_is_refused(env):
    data, stored, meta = put_encrypted(env, "salted")
    _, _, other_meta = put_encrypted(env, "other-salt")
    rewrite(env, "salted", stored, {**meta, "cloudtaser-nonce": other_meta["cloudtaser-nonce"]})
    got, error = read_via_proxy(env, "salted")
    assert (got, error is not None) == (b"", True)


def test_an_unknown_format_is_refused_not_served(env):
    _, stored, meta = put_encrypted(env, "future")
    rewrite(env, "future", stored, {**meta, "cloudtaser-alg": "AES-256-GCM-SEG64K-99"})
    got, error = read_via_proxy(env, "future")
    assert got == b""
    assert isinstance(error, botocore.exceptions.ClientError)
    assert error.response["Error"]["Code"] == "InvalidObjectState"


def test_damaged_metadata_is_refused(env):
    _, stored, meta = put_encrypted(env, "bad-meta")
    rewrite(env, "bad-meta", stored, {**meta, "cloudtaser-nonce": "not base64!"})
    got, error = read_via_proxy(env, "bad-meta")
    assert got == b""
    assert error.response["Error"]["Code"] == "InternalError"


def test_ciphertext_that_lost_its_metadata_is_never_served_as_plaintext(env):
    _, stored, _ = put_encrypted(env, "stripped")
    rewrite(env, "stripped", stored, {})
    got, error = read_via_proxy(env, "stripped")
    assert error is not None
    assert got == b""


def test_plaintext_objects_are_served_as_stored_by_default(env):
    via, direct, bucket = env
    direct.put_object(Bucket=bucket, Key="legacy", Body=b"written before the proxy")
    assert read_via_proxy(env, "legacy") == (b"written before the proxy", None)
    assert via.head_object(Bucket=bucket, Key="legacy")["ContentLength"] == 24


def test_plaintext_objects_can_be_refused(proxy_factory, moto_s3, env):
    _, direct, bucket = env
    direct.put_object(Bucket=bucket, Key="legacy-2", Body=b"plaintext")
    proxy = proxy_factory(moto_s3, CLOUDTASER_S3PROXY_PLAINTEXT_OBJECTS="refuse")
    strict = boto3.client(
        "s3",
        endpoint_url=proxy.endpoint,
        aws_access_key_id=moto_s3.access_key,
        aws_secret_access_key=moto_s3.secret_key,
        region_name="us-east-1",
    )
    with pytest.raises(botocore.exceptions.ClientError) as e:
        strict.get_object(Bucket=bucket, Key="legacy-2")
    assert e.value.response["Error"]["Code"] == "AccessDenied"
    strict.put_object(Bucket=bucket, Key="new", Body=b"encrypted")
    assert strict.get_object(Bucket=bucket, Key="new")["Body"].read() == b"encrypted"


def rewrite_multipart(env, key, parts: list[bytes], metadata):
    """Store ``parts`` as a multipart object with a new ETag, so no proxy knows its layout and a
    whole GET streams it chunked, guided only by the part headers."""
    _, direct, bucket = env
    up = direct.create_multipart_upload(Bucket=bucket, Key=key, Metadata=metadata)
    done = [
        {
            "PartNumber": n,
            "ETag": direct.upload_part(
                Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=n, Body=body
            )["ETag"],
        }
        for n, body in enumerate(parts, 1)
    ]
    direct.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=up["UploadId"], MultipartUpload={"Parts": done}
    )


@pytest.mark.parametrize("damage", ["flip-in-last-part", "last-part-cut-short", "extra-part"])
def test_a_damaged_multipart_object_streamed_without_a_length_is_cut(env, damage):
    via, direct, bucket = env
    key = f"mp-{damage}"
    plain = [os.urandom(5 * 2**20), os.urandom(3 * 65536 + 7)]
    up = via.create_multipart_upload(Bucket=bucket, Key=key)
    done = [
        {
            "PartNumber": n,
            "ETag": via.upload_part(
                Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=n, Body=body
            )["ETag"],
        }
        for n, body in enumerate(plain, 1)
    ]
    via.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=up["UploadId"], MultipartUpload={"Parts": done}
    )
    stored = direct.get_object(Bucket=bucket, Key=key)
    body, meta = stored["Body"].read(), stored["Metadata"]
    cut = envelope.sealed_part_length(len(plain[0]))
    first, last = body[:cut], body[cut:]
    if damage == "flip-in-last-part":
        last = last[:-100] + bytes([last[-100] ^ 1]) + last[-99:]
        parts = [first, last]
    elif damage == "last-part-cut-short":
        parts = [first, last[: HDR + SEG]]  # a whole segment missing from its end
    else:
        parts = [first, first, last]  # part 1 again: part numbers must strictly increase
    rewrite_multipart(env, key, parts, meta)
    got, error = read_via_proxy(env, key)
    assert error is not None, "a damaged object was served as if whole"
    assert got == b"".join(plain)[: len(got)]
