"""The AWS SDK for JavaScript v3 (Node.js) through the proxy, against moto and SeaweedFS.

``node/s3driver.mjs`` runs the SDK: an S3Client with the proxy as endpoint, ``forcePathStyle``,
us-east-1 and the backend's key pair, and records the headers it sent. The packages come from
``node/package-lock.json`` (``npm ci`` in tests/clients/install.sh).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from clienttools import (
    HERE,
    INSTALL_HINT,
    MiB,
    assert_ciphertext_at_rest,
    base_env,
    new_bucket,
    run,
    seed_files,
    write_random,
)

NODE_DIR = HERE / "node"
DRIVER = NODE_DIR / "s3driver.mjs"
PART = 5 * MiB


@pytest.fixture(scope="module")
def node() -> str:
    binary = shutil.which("node")
    if binary is None:
        pytest.fail(f"node is not installed: {INSTALL_HINT}")
    for package in ("client-s3", "lib-storage"):
        if not (NODE_DIR / "node_modules" / "@aws-sdk" / package / "package.json").is_file():
            pytest.fail(f"@aws-sdk/{package} is not installed in {NODE_DIR}: {INSTALL_HINT}")
    return binary


@pytest.fixture
def sdk(node: str, stack, tmp_path: Path):
    env = base_env(
        tmp_path / "home",
        CT_ENDPOINT=stack.proxy.endpoint,
        CT_ACCESS_KEY=stack.backend.access_key,
        CT_SECRET_KEY=stack.backend.secret_key,
        CT_REGION="us-east-1",
        NODE_NO_WARNINGS="1",  # the SDK's notice about future Node.js versions
    )

    def steps(*todo: dict[str, Any]) -> list[dict[str, Any]]:
        done = run([node, DRIVER, json.dumps(list(todo))], env, timeout=300)
        return json.loads(done.stdout.strip().splitlines()[-1])["results"]

    return steps


def check_range(result: dict[str, Any], out: Path, data: bytes, first: int, last: int) -> None:
    assert result["status"] == 206
    assert result["contentRange"] == f"bytes {first}-{last}/{len(data)}"
    assert result["contentLength"] == last - first + 1
    assert out.read_bytes() == data[first : last + 1]


def test_put_object_with_a_stream_body(sdk, stack, tmp_path: Path) -> None:
    """A stream Body goes aws-chunked, unsigned, with a trailing CRC32: the proxy decodes the
    framing, checks the trailer against the plaintext and stores only ciphertext."""
    bucket = new_bucket(stack, "node-put")
    data = write_random(tmp_path / "obj.bin", 300_000)
    put, get, ranged = sdk(
        {"op": "put-stream", "bucket": bucket, "key": "obj.bin", "file": str(tmp_path / "obj.bin")},
        {"op": "get", "bucket": bucket, "key": "obj.bin", "file": str(tmp_path / "back.bin")},
        {
            "op": "get",
            "bucket": bucket,
            "key": "obj.bin",
            "file": str(tmp_path / "range.bin"),
            "range": "bytes=65530-131080",
        },
    )
    [sent] = put["sent"]
    headers = sent["headers"]
    assert "aws-chunked" in headers.get("content-encoding", ""), headers
    assert headers.get("x-amz-content-sha256", "").startswith("STREAMING-"), headers
    assert headers.get("x-amz-trailer", "").startswith("x-amz-checksum-"), headers
    assert headers.get("x-amz-decoded-content-length") == str(len(data)), headers

    assert_ciphertext_at_rest(stack, bucket, "obj.bin", data, single_part=True)
    assert (tmp_path / "back.bin").read_bytes() == data
    assert get["contentLength"] == len(data)
    check_range(ranged, tmp_path / "range.bin", data, 65530, 131080)


def test_upload_helper_multipart(sdk, stack, tmp_path: Path) -> None:
    """lib-storage's Upload: CreateMultipartUpload, parts with checksums, Complete."""
    bucket = new_bucket(stack, "node-upload")
    data = write_random(tmp_path / "big.bin", 2 * PART + 123_457)
    [upload] = sdk(
        {
            "op": "upload",
            "bucket": bucket,
            "key": "big.bin",
            "file": str(tmp_path / "big.bin"),
            "partSize": PART,
            "queueSize": 2,
        }
    )
    parts = [s for s in upload["sent"] if "partNumber" in s["query"]]
    assert sorted(int(s["query"]["partNumber"]) for s in parts) == [1, 2, 3], upload["sent"]
    assert upload["etag"].endswith('-3"'), upload["etag"]
    assert_ciphertext_at_rest(stack, bucket, "big.bin", size=len(data))

    boundary = PART - 1000
    whole, across, suffix = sdk(
        {"op": "get", "bucket": bucket, "key": "big.bin", "file": str(tmp_path / "back.bin")},
        {
            "op": "get",
            "bucket": bucket,
            "key": "big.bin",
            "file": str(tmp_path / "across.bin"),
            "range": f"bytes={boundary}-{boundary + PART + 1999}",  # parts 1, 2 and 3
        },
        {
            "op": "get",
            "bucket": bucket,
            "key": "big.bin",
            "file": str(tmp_path / "suffix.bin"),
            "range": "bytes=-1000",
        },
    )
    assert whole["contentLength"] == len(data)
    assert (tmp_path / "back.bin").read_bytes() == data
    check_range(across, tmp_path / "across.bin", data, boundary, boundary + PART + 1999)
    check_range(suffix, tmp_path / "suffix.bin", data, len(data) - 1000, len(data) - 1)


def test_ranged_get_object(sdk, stack, tmp_path: Path) -> None:
    """Ranged GetObject on objects another client stored (boto3, through the proxy)."""
    bucket = new_bucket(stack, "node-range")
    files = {
        "single.bin": write_random(tmp_path / "single.bin", 300_000),
        "multi.bin": write_random(tmp_path / "multi.bin", 8 * MiB + 70_000),  # boto3: 2 parts
    }
    seed_files(stack, bucket, {name: tmp_path / name for name in files})
    cases = [
        ("single.bin", 0, 0),
        ("single.bin", 131_000, 200_000),
        ("multi.bin", 8 * MiB - 10, 8 * MiB + 69_999),  # across the part boundary to the end
    ]
    results = sdk(
        *(
            {
                "op": "get",
                "bucket": bucket,
                "key": name,
                "file": str(tmp_path / f"r{i}.bin"),
                "range": f"bytes={first}-{last}",
            }
            for i, (name, first, last) in enumerate(cases)
        )
    )
    for i, ((name, first, last), result) in enumerate(zip(cases, results, strict=True)):
        check_range(result, tmp_path / f"r{i}.bin", files[name], first, last)
