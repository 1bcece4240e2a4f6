"""One ETag per object on every response, never comparable with an MD5 of the plaintext, and
accepted back in conditional requests — which behave as on S3 (200, 304, 412)."""

from __future__ import annotations

import hashlib
import os
from datetime import UTC, datetime, timedelta

import botocore.exceptions
import pytest


@pytest.fixture(scope="module")
def env(stack):
    return stack.via, stack.bucket


def status_of(call) -> int:
    try:
        return call()["ResponseMetadata"]["HTTPStatusCode"]
    except botocore.exceptions.ClientError as e:
        return e.response["ResponseMetadata"]["HTTPStatusCode"]


def test_one_etag_everywhere_and_not_the_plaintext_md5(env):
    via, bucket = env
    data = os.urandom(100_000)
    put = via.put_object(Bucket=bucket, Key="e", Body=data)["ETag"]
    assert put.strip('"') != hashlib.md5(data).hexdigest()
    assert put.endswith('-0"')
    assert via.head_object(Bucket=bucket, Key="e")["ETag"] == put
    assert via.get_object(Bucket=bucket, Key="e")["ETag"] == put
    listed = via.list_objects_v2(Bucket=bucket, Prefix="e")["Contents"][0]["ETag"]
    assert listed == put


def test_conditional_gets(env):
    via, bucket = env
    etag = via.put_object(Bucket=bucket, Key="c", Body=b"conditional")["ETag"]
    other = '"0123456789abcdef0123456789abcdef-0"'
    assert status_of(lambda: via.get_object(Bucket=bucket, Key="c", IfMatch=etag)) == 200
    assert status_of(lambda: via.get_object(Bucket=bucket, Key="c", IfMatch=other)) == 412
    assert status_of(lambda: via.get_object(Bucket=bucket, Key="c", IfNoneMatch=etag)) == 304
    assert status_of(lambda: via.head_object(Bucket=bucket, Key="c", IfNoneMatch=etag)) == 304
    assert status_of(lambda: via.get_object(Bucket=bucket, Key="c", IfNoneMatch=other)) == 200
    later = datetime.now(UTC) + timedelta(days=1)
    earlier = datetime.now(UTC) - timedelta(days=1)
    assert status_of(lambda: via.get_object(Bucket=bucket, Key="c", IfModifiedSince=later)) == 304
    assert (
        status_of(lambda: via.get_object(Bucket=bucket, Key="c", IfUnmodifiedSince=earlier)) == 412
    )
    got = via.get_object(Bucket=bucket, Key="c", IfMatch=etag, Range="bytes=2-5")
    assert got["Body"].read() == b"ndit"


def test_multipart_part_etags_round_trip_through_complete(env):
    via, bucket = env
    up = via.create_multipart_upload(Bucket=bucket, Key="mp")
    part = via.upload_part(
        Bucket=bucket, Key="mp", UploadId=up["UploadId"], PartNumber=1, Body=b"p" * 1000
    )
    assert part["ETag"].endswith('-0"')
    listed = via.list_parts(Bucket=bucket, Key="mp", UploadId=up["UploadId"])["Parts"]
    assert listed[0]["ETag"] == part["ETag"]
    done = via.complete_multipart_upload(
        Bucket=bucket,
        Key="mp",
        UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
    )
    assert via.head_object(Bucket=bucket, Key="mp")["ETag"] == done["ETag"]
    assert via.get_object(Bucket=bucket, Key="mp", IfMatch=done["ETag"])["Body"].read() == (
        b"p" * 1000
    )
