"""Ranged reads through the proxy: 206 with plaintext Content-Range, exactly the bytes asked for,
every one authenticated; 416 for what cannot be satisfied; boto3's concurrent ranged download."""

from __future__ import annotations

import hashlib
import os

import botocore.exceptions
import pytest

SIZE = 9 * 2**20 + 12345  # over boto3's 8 MiB threshold: download_file uses ranged GETs


@pytest.fixture(scope="module")
def obj(stack):
    via, backend, bucket = stack.via, stack.backend, stack.bucket
    data = os.urandom(SIZE)
    via.put_object(Bucket=bucket, Key="big object", Body=data)
    backend.client().put_object(Bucket=bucket, Key="legacy", Body=data[:200_000])
    return via, bucket, data


@pytest.mark.parametrize(
    ("header", "start", "end"),
    [
        ("bytes=0-0", 0, 0),
        ("bytes=0-99", 0, 99),
        ("bytes=65530-65545", 65530, 65545),
        ("bytes=4194304-4195327", 4194304, 4195327),
        ("bytes=9000000-", 9000000, SIZE - 1),
        ("bytes=-1", SIZE - 1, SIZE - 1),
        ("bytes=-70000", SIZE - 70000, SIZE - 1),
        (f"bytes={SIZE - 10}-{SIZE + 1000}", SIZE - 10, SIZE - 1),
        (f"bytes=-{SIZE + 5}", 0, SIZE - 1),
    ],
)
def test_single_ranges(obj, header, start, end):
    via, bucket, data = obj
    got = via.get_object(Bucket=bucket, Key="big object", Range=header)
    assert got["ResponseMetadata"]["HTTPStatusCode"] == 206
    assert got["ContentRange"] == f"bytes {start}-{end}/{SIZE}"
    assert got["ContentLength"] == end - start + 1
    assert got["Body"].read() == data[start : end + 1]


@pytest.mark.parametrize("header", [f"bytes={SIZE}-", f"bytes={SIZE + 100}-{SIZE + 200}"])
def test_unsatisfiable_ranges_get_416_with_the_plaintext_length(obj, header):
    via, bucket, _ = obj
    with pytest.raises(botocore.exceptions.ClientError) as e:
        via.get_object(Bucket=bucket, Key="big object", Range=header)
    r = e.value.response
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 416
    assert r["Error"]["Code"] == "InvalidRange"
    assert r["ResponseMetadata"]["HTTPHeaders"]["content-range"] == f"bytes */{SIZE}"


def test_ranges_of_objects_stored_before_the_proxy(obj):
    via, bucket, data = obj
    got = via.get_object(Bucket=bucket, Key="legacy", Range="bytes=100000-100009")
    assert got["ContentRange"] == "bytes 100000-100009/200000"
    assert got["Body"].read() == data[100000:100010]


def test_download_file_uses_concurrent_ranged_gets(obj, tmp_path):
    via, bucket, data = obj
    path = tmp_path / "download"
    via.download_file(bucket, "big object", str(path))
    assert hashlib.sha256(path.read_bytes()).digest() == hashlib.sha256(data).digest()


def test_part_number_one_of_a_single_part_object_is_the_object_or_refused(obj):
    """S3 answers partNumber=1 of a single-part object with the whole object. SeaweedFS answers
    with its first internal chunk: the proxy refuses that rather than serve part of it."""
    via, bucket, data = obj
    try:
        got = via.get_object(Bucket=bucket, Key="big object", PartNumber=1)
    except botocore.exceptions.ClientError as e:
        assert e.response["Error"]["Code"] == "NotImplemented"
        return
    assert got["Body"].read() == data
