"""Multipart uploads through the proxy: one DEK and salt per upload, each part sealed on its own,
parts in any order and on any proxy process, and the completed object read whole, by range and
by HEAD with its plaintext size."""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import botocore.exceptions
import pytest
from boto3.s3.transfer import TransferConfig
from faultproxy import FaultProxy

from cloudtaser_s3 import envelope, uploads

MiB = 2**20


@pytest.fixture(scope="module")
def env(stack):
    return stack.via, stack.backend, stack.bucket, stack.name


def upload_parts(via, bucket, key, parts: list[bytes], order=None, clients=None):
    up = via.create_multipart_upload(Bucket=bucket, Key=key)
    upload_id = up["UploadId"]
    order = order or list(range(len(parts)))
    clients = clients or [via]
    etags = {}

    def send(i):
        c = clients[i % len(clients)]
        r = c.upload_part(
            Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=i + 1, Body=parts[i]
        )
        etags[i + 1] = r["ETag"]

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(send, order))
    via.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload_id,
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]},
    )
    return upload_id


def test_upload_id_carries_the_wrapped_key_not_the_key(env):
    via, _, bucket, _ = env
    up = via.create_multipart_upload(Bucket=bucket, Key="token")
    token = uploads.decode(up["UploadId"])
    assert token is not None
    assert token.wrapped_dek.startswith("vault:v1:")
    via.abort_multipart_upload(Bucket=bucket, Key="token", UploadId=up["UploadId"])


def test_parts_in_any_order_make_one_encrypted_object(env):
    via, backend, bucket, _ = env
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(123)]
    upload_parts(via, bucket, "ordered", parts, order=[2, 0, 1])
    data = b"".join(parts)
    assert via.head_object(Bucket=bucket, Key="ordered")["ContentLength"] == len(data)
    assert via.get_object(Bucket=bucket, Key="ordered")["Body"].read() == data
    got = via.get_object(Bucket=bucket, Key="ordered", Range="bytes=5242000-5243000")
    assert got["Body"].read() == data[5242000:5243001]

    stored = backend.client().get_object(Bucket=bucket, Key="ordered")
    assert stored["Metadata"]["cloudtaser-alg"] == envelope.ALG
    body = stored["Body"].read()
    assert body[:4] == envelope.MAGIC and parts[0][:64] not in body
    assert len(body) == sum(envelope.sealed_part_length(len(p)) for p in parts)


def test_irregular_part_sizes_are_exact(env):
    via, _, bucket, _ = env
    parts = [os.urandom(5 * MiB + 123), os.urandom(8 * MiB), os.urandom(5 * MiB), b"end"]
    upload_parts(via, bucket, "irregular", parts)
    data = b"".join(parts)
    assert via.head_object(Bucket=bucket, Key="irregular")["ContentLength"] == len(data)
    listed = via.list_objects_v2(Bucket=bucket, Prefix="irregular")["Contents"]
    assert listed[0]["Size"] == len(data)  # known once the proxy has learnt the layout
    assert via.get_object(Bucket=bucket, Key="irregular")["Body"].read() == data
    for a, b in [(0, 10), (5 * MiB + 100, 5 * MiB + 200), (len(data) - 5, len(data) - 1)]:
        got = via.get_object(Bucket=bucket, Key="irregular", Range=f"bytes={a}-{b}")
        assert got["Body"].read() == data[a : b + 1]


def test_a_part_uploaded_twice_gets_fresh_nonces(env):
    via, backend, bucket, _ = env
    up = via.create_multipart_upload(Bucket=bucket, Key="twice")
    body = os.urandom(5 * MiB)
    first = via.upload_part(
        Bucket=bucket, Key="twice", UploadId=up["UploadId"], PartNumber=1, Body=body
    )
    again = via.upload_part(
        Bucket=bucket, Key="twice", UploadId=up["UploadId"], PartNumber=1, Body=body
    )
    assert first["ETag"] != again["ETag"]  # same plaintext, different ciphertext
    via.complete_multipart_upload(
        Bucket=bucket,
        Key="twice",
        UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": again["ETag"]}]},
    )
    assert via.get_object(Bucket=bucket, Key="twice")["Body"].read() == body


def test_list_parts_shows_plaintext_sizes_and_the_clients_upload_id(env):
    via, _, bucket, _ = env
    up = via.create_multipart_upload(Bucket=bucket, Key="listed")
    via.upload_part(
        Bucket=bucket, Key="listed", UploadId=up["UploadId"], PartNumber=1, Body=b"x" * 1000
    )
    listed = via.list_parts(Bucket=bucket, Key="listed", UploadId=up["UploadId"])
    assert listed["UploadId"] == up["UploadId"]
    assert [p["Size"] for p in listed["Parts"]] == [1000]
    via.abort_multipart_upload(Bucket=bucket, Key="listed", UploadId=up["UploadId"])


def test_an_altered_upload_id_is_refused(env):
    via, _, bucket, _ = env
    up = via.create_multipart_upload(Bucket=bucket, Key="altered")
    token = uploads.decode(up["UploadId"])
    other_salt = bytes(12)
    forged = uploads.UploadToken(
        token.upstream_id, token.wrapped_dek, token.key_name, other_salt, token.mac
    )
    forged_id = (
        uploads.PREFIX
        + uploads._b64(forged._fields())
        + "."
        + uploads._b64(token.mac)  # the old MAC does not cover the new salt
    )
    with pytest.raises(botocore.exceptions.ClientError) as e:
        via.upload_part(Bucket=bucket, Key="altered", UploadId=forged_id, PartNumber=1, Body=b"x")
    assert e.value.response["Error"]["Code"] == "NoSuchUpload"


def test_parts_spread_over_proxy_processes_and_a_restart(env, proxy_factory, request):
    via, backend, bucket, name = env
    others = [proxy_factory(backend) for _ in range(2)]
    clients = [p.client(backend.access_key, backend.secret_key) for p in others]
    parts = [os.urandom(5 * MiB) for _ in range(3)] + [b"tail"]
    up = via.create_multipart_upload(Bucket=bucket, Key="spread")
    etags = {}
    for i, part in enumerate(parts[:2]):
        r = clients[i % 2].upload_part(
            Bucket=bucket, Key="spread", UploadId=up["UploadId"], PartNumber=i + 1, Body=part
        )
        etags[i + 1] = r["ETag"]
    others[0].stop()  # a replica goes away mid-upload; a new one knows nothing of it
    fresh = proxy_factory(backend).client(backend.access_key, backend.secret_key)
    for i in (2, 3):
        r = fresh.upload_part(
            Bucket=bucket, Key="spread", UploadId=up["UploadId"], PartNumber=i + 1, Body=parts[i]
        )
        etags[i + 1] = r["ETag"]
    clients[1].complete_multipart_upload(
        Bucket=bucket,
        Key="spread",
        UploadId=up["UploadId"],
        MultipartUpload={"Parts": [{"PartNumber": n, "ETag": e} for n, e in etags.items()]},
    )
    assert fresh.get_object(Bucket=bucket, Key="spread")["Body"].read() == b"".join(parts)


@pytest.mark.slow
def test_upload_file_and_download_file_of_100_mib(env, tmp_path):
    via, _, bucket, _ = env
    src = tmp_path / "src"
    block = os.urandom(MiB)
    with open(src, "wb") as f:
        for i in range(100):
            f.write(block[i:] + block[:i])
    via.upload_file(str(src), bucket, "big", Config=TransferConfig())
    head = via.head_object(Bucket=bucket, Key="big")
    assert head["ContentLength"] == 100 * MiB
    assert head["ETag"].strip('"').endswith("-13")  # 8 MiB parts: a real multipart upload
    dst = tmp_path / "dst"
    via.download_file(bucket, "big", str(dst))
    assert hashlib.sha256(dst.read_bytes()).digest() == hashlib.sha256(src.read_bytes()).digest()


def test_get_and_head_with_part_number(env):
    via, _, bucket, name = env
    if name == "moto":
        pytest.skip("moto answers partNumber GETs with 200 and no Content-Range, unlike S3")
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(1000)]
    upload_parts(via, bucket, "by-part", parts)
    data = b"".join(parts)
    offset = 0
    for n, part in enumerate(parts, 1):
        got = via.get_object(Bucket=bucket, Key="by-part", PartNumber=n)
        assert got["ContentLength"] == len(part)
        assert got["ContentRange"] == f"bytes {offset}-{offset + len(part) - 1}/{len(data)}"
        assert got["PartsCount"] == 3
        assert got["Body"].read() == part
        head = via.head_object(Bucket=bucket, Key="by-part", PartNumber=n)
        assert head["ContentLength"] == len(part)
        offset += len(part)


def test_a_whole_get_needs_no_request_besides_itself(env, proxy_factory):
    """The part headers in the body say where parts end: a proxy that has never seen the
    object streams it with its GET alone. Its plaintext length is known only at the end, so it
    goes out chunked; the proxy that completed the upload learnt the layout then and sends a
    Content-Length, as does any proxy set to ask first."""
    via, backend, bucket, _ = env
    parts = [os.urandom(5 * MiB), os.urandom(5 * MiB), os.urandom(77)]
    upload_parts(via, bucket, "unseen", parts)
    data = b"".join(parts)
    got = via.get_object(Bucket=bucket, Key="unseen")
    assert got["ContentLength"] == len(data)  # learnt while completing
    assert got["Body"].read() == data

    store = urlsplit(backend.endpoint)
    counting = FaultProxy(store.hostname, store.port)
    try:
        fresh = proxy_factory(backend, S3_ENDPOINT=counting.url)
        got = fresh.client(backend.access_key, backend.secret_key).get_object(
            Bucket=bucket, Key="unseen"
        )
        assert "ContentLength" not in got
        assert got["Body"].read() == data
        assert counting.requests == [f"GET /{bucket}/unseen HTTP/1.1"]
    finally:
        counting.stop()

    asking = proxy_factory(backend, CLOUDTASER_S3PROXY_MULTIPART_GET_LENGTH="always")
    got = asking.client(backend.access_key, backend.secret_key).get_object(
        Bucket=bucket, Key="unseen"
    )
    assert got["ContentLength"] == len(data)
    assert got["Body"].read() == data


def test_a_listing_learns_the_size_of_multipart_objects(env, proxy_factory):
    via, backend, bucket, _ = env
    parts = [os.urandom(5 * MiB), os.urandom(77)]
    upload_parts(via, bucket, "listed-mp", parts)
    other = proxy_factory(backend).client(backend.access_key, backend.secret_key)
    listed = other.list_objects_v2(Bucket=bucket, Prefix="listed-mp")["Contents"]
    assert listed[0]["Size"] == len(b"".join(parts))
    assert other.get_object(Bucket=bucket, Key="listed-mp")["ContentLength"] == listed[0]["Size"]
