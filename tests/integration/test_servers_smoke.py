"""The server fixtures work, without any proxy: if these fail, proxy tests cannot mean anything."""

from __future__ import annotations

import base64
import uuid

import hvac
import pytest
from botocore.exceptions import ClientError

from cloudtaser_s3.localservers import OpenBao, S3Server, s3_client


def _bucket() -> str:
    return f"smoke-{uuid.uuid4().hex[:12]}"


def test_openbao_transit_datakey_with_policy_token(openbao: OpenBao, openbao_token: str) -> None:
    client = openbao.client(openbao_token)
    key = openbao.transit_key
    data_key = client.secrets.transit.generate_data_key(key, key_type="plaintext", bits=256)["data"]
    assert len(base64.b64decode(data_key["plaintext"])) == 32
    assert data_key["ciphertext"].startswith("vault:v1:")
    unwrapped = client.secrets.transit.decrypt_data(key, data_key["ciphertext"])["data"]
    assert unwrapped["plaintext"] == data_key["plaintext"]

    info = client.secrets.transit.read_key(key)["data"]
    assert info["type"] == "aes256-gcm96"
    assert info["exportable"] is False
    assert info["allow_plaintext_backup"] is False

    # The policy token is confined to the key's paths: no other key, no admin endpoints.
    with pytest.raises(hvac.exceptions.Forbidden):
        client.secrets.transit.create_key("another-key")
    with pytest.raises(hvac.exceptions.Forbidden):
        client.sys.list_mounted_secrets_engines()
    assert "s3-proxy-policy" in client.auth.token.lookup_self()["data"]["policies"]


def test_seaweedfs_verifies_signatures(seaweedfs: S3Server) -> None:
    wrong = s3_client(seaweedfs.endpoint, seaweedfs.access_key, "x" * 40, seaweedfs.region)
    with pytest.raises(ClientError) as err:
        wrong.list_buckets()
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    assert err.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403

    unknown = s3_client(seaweedfs.endpoint, "AKIDUNKNOWN000000000", "x" * 40, seaweedfs.region)
    with pytest.raises(ClientError) as err:
        unknown.list_buckets()
    assert err.value.response["Error"]["Code"] == "InvalidAccessKeyId"

    right = seaweedfs.client()
    bucket = _bucket()
    right.create_bucket(Bucket=bucket)
    right.put_object(Bucket=bucket, Key="k", Body=b"signed")
    assert right.get_object(Bucket=bucket, Key="k")["Body"].read() == b"signed"
    with pytest.raises(ClientError) as err:
        wrong.put_object(Bucket=bucket, Key="k2", Body=b"unsigned")
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"


def test_moto_put_get(moto_s3: S3Server) -> None:
    client = s3_client(moto_s3.endpoint, moto_s3.access_key, moto_s3.secret_key, moto_s3.region)
    bucket = _bucket()
    client.create_bucket(Bucket=bucket)
    body = bytes(range(256)) * 1024
    client.put_object(Bucket=bucket, Key="dir/object.bin", Body=body)
    got = client.get_object(Bucket=bucket, Key="dir/object.bin")
    assert got["Body"].read() == body
    assert got["ContentLength"] == len(body)
