"""PutObject, GetObject and HeadObject through a real mitmdump proxy, against real backends.

boto3 with default settings talks to the proxy; a second client talks to the backend directly to
look at what is really stored.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid

import pytest

from cloudtaser_s3 import envelope

SIZES = [0, 1, 65535, 65536, 65537, 3 * 2**20 + 17]


@pytest.fixture(scope="module")
def env(stack):
    """(proxy client, direct client, bucket) for one backend."""
    return stack.via, stack.direct, stack.bucket


def stored(direct, bucket, key):
    obj = direct.get_object(Bucket=bucket, Key=key)
    return obj["Body"].read(), obj["Metadata"]


@pytest.mark.parametrize("size", SIZES)
def test_round_trip_and_ciphertext_at_rest(env, size):
    via, direct, bucket = env
    data = os.urandom(size)
    key = f"objects/size {size}"
    via.put_object(Bucket=bucket, Key=key, Body=data)

    assert via.get_object(Bucket=bucket, Key=key)["Body"].read() == data
    assert via.head_object(Bucket=bucket, Key=key)["ContentLength"] == size

    body, meta = stored(direct, bucket, key)
    assert len(body) == envelope.sealed_part_length(size)
    assert body[:4] == envelope.MAGIC
    if size >= 16:
        assert data[:16] not in body
    assert meta["cloudtaser-alg"] == envelope.ALG
    assert meta["cloudtaser-key"] == "s3-dek-wrapper"
    assert meta["cloudtaser-dek"].startswith("vault:v1:")
    assert meta["cloudtaser-key-version"] == "1"
    assert len(base64.b64decode(meta["cloudtaser-nonce"])) == envelope.SALT_LEN


@pytest.mark.slow
def test_a_100_mib_object_round_trips(env, tmp_path):
    via, direct, bucket = env
    size = 100 * 2**20
    path = tmp_path / "big"
    block = os.urandom(2**20)
    digest = hashlib.sha256()
    with open(path, "wb") as f:
        for i in range(100):
            chunk = block[i:] + block[:i]
            f.write(chunk)
            digest.update(chunk)
    with open(path, "rb") as f:
        via.put_object(Bucket=bucket, Key="big", Body=f)
    got = hashlib.sha256()
    n = 0
    for chunk in via.get_object(Bucket=bucket, Key="big")["Body"].iter_chunks(2**20):
        got.update(chunk)
        n += len(chunk)
    assert (n, got.hexdigest()) == (size, digest.hexdigest())
    assert direct.head_object(Bucket=bucket, Key="big")["ContentLength"] == (
        envelope.sealed_part_length(size)
    )


@pytest.mark.parametrize(
    "key", ["with space", "plus+sign", "unicode-€-ü", "percent%20literal", "dir//double/slash"]
)
def test_awkward_keys_round_trip(env, key):
    via, _, bucket = env
    via.put_object(Bucket=bucket, Key=key, Body=b"payload " + key.encode())
    assert via.get_object(Bucket=bucket, Key=key)["Body"].read() == b"payload " + key.encode()


def test_client_cannot_set_the_proxys_metadata(env):
    via, direct, bucket = env
    via.put_object(
        Bucket=bucket,
        Key="forged",
        Body=b"x",
        Metadata={"cloudtaser-dek": "vault:v1:AAAA", "cloudtaser-alg": "none", "owner": "me"},
    )
    _, meta = stored(direct, bucket, "forged")
    assert meta["cloudtaser-alg"] == envelope.ALG
    assert meta["cloudtaser-dek"] != "vault:v1:AAAA"
    assert meta["owner"] == "me"
    assert via.get_object(Bucket=bucket, Key="forged")["Body"].read() == b"x"


def test_head_object_shows_the_cloudtaser_headers(env):
    via, _, bucket = env
    via.put_object(Bucket=bucket, Key="h", Body=b"hello")
    head = via.head_object(Bucket=bucket, Key="h")
    assert head["ContentLength"] == 5
    assert head["Metadata"]["cloudtaser-alg"] == envelope.ALG
    assert head["Metadata"]["cloudtaser-key"] == "s3-dek-wrapper"


def test_each_object_gets_its_own_data_key(env):
    via, direct, bucket = env
    via.put_object(Bucket=bucket, Key="a", Body=b"same")
    via.put_object(Bucket=bucket, Key="b", Body=b"same")
    (body_a, meta_a), (body_b, meta_b) = stored(direct, bucket, "a"), stored(direct, bucket, "b")
    assert meta_a["cloudtaser-dek"] != meta_b["cloudtaser-dek"]
    assert meta_a["cloudtaser-nonce"] != meta_b["cloudtaser-nonce"]
    assert body_a != body_b


def test_user_metadata_and_content_type_survive(env):
    via, _, bucket = env
    via.put_object(
        Bucket=bucket, Key="m", Body=b"{}", ContentType="application/json", Metadata={"a": "1"}
    )
    got = via.get_object(Bucket=bucket, Key="m")
    assert got["ContentType"] == "application/json"
    assert got["Metadata"]["a"] == "1"
    assert got["Body"].read() == b"{}"


def test_pass_through_operations(env):
    via, _, bucket = env
    via.put_object(Bucket=bucket, Key="p/1", Body=b"1")
    via.put_object(Bucket=bucket, Key="p/2", Body=b"22")
    assert bucket in [b["Name"] for b in via.list_buckets()["Buckets"]]
    via.head_bucket(Bucket=bucket)
    via.get_bucket_location(Bucket=bucket)
    listed = via.list_objects_v2(Bucket=bucket, Prefix="p/")["Contents"]
    assert [(o["Key"], o["Size"]) for o in listed] == [("p/1", 1), ("p/2", 2)]
    keys_v1 = [o["Key"] for o in via.list_objects(Bucket=bucket, Prefix="p/")["Contents"]]
    assert keys_v1 == ["p/1", "p/2"]
    via.delete_object(Bucket=bucket, Key="p/1")
    deleted = via.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": "p/2"}]})
    assert [d["Key"] for d in deleted["Deleted"]] == ["p/2"]
    assert via.list_objects_v2(Bucket=bucket, Prefix="p/")["KeyCount"] == 0


def test_create_and_delete_bucket(env):
    via, direct, _ = env
    name = f"tmp-{uuid.uuid4().hex[:12]}"
    via.create_bucket(Bucket=name)
    direct.head_bucket(Bucket=name)
    via.delete_bucket(Bucket=name)
    assert name not in [b["Name"] for b in direct.list_buckets()["Buckets"]]


def test_bucket_and_object_configuration_passes_through_re_signed(env):
    via, _, bucket = env
    via.put_object(Bucket=bucket, Key="tagged", Body=b"t")
    via.put_object_tagging(
        Bucket=bucket, Key="tagged", Tagging={"TagSet": [{"Key": "team", "Value": "a"}]}
    )
    tags = via.get_object_tagging(Bucket=bucket, Key="tagged")["TagSet"]
    assert tags == [{"Key": "team", "Value": "a"}]
    via.put_bucket_tagging(Bucket=bucket, Tagging={"TagSet": [{"Key": "env", "Value": "test"}]})
    assert via.get_bucket_tagging(Bucket=bucket)["TagSet"] == [{"Key": "env", "Value": "test"}]
    via.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    assert via.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    via.put_object(Bucket=bucket, Key="versioned", Body=b"v1")
    via.put_object(Bucket=bucket, Key="versioned", Body=b"v2")
    versions = via.list_object_versions(Bucket=bucket, Prefix="versioned")["Versions"]
    assert len(versions) == 2 and {v["Size"] for v in versions} == {2}
    oldest = next(v for v in versions if not v["IsLatest"])["VersionId"]
    got = via.get_object(Bucket=bucket, Key="versioned", VersionId=oldest)["Body"].read()
    assert got == b"v1"
