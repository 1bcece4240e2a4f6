"""s3cmd (PyPI's ``s3cmd``) through the proxy, against moto and SeaweedFS.

A private .s3cfg: ``host_base`` and ``host_bucket`` both the proxy's host:port (no
``%(bucket)s``, so path-style), ``use_https = False``, ``signature_v2 = False`` (SigV4),
us-east-1, the backend's key pair. Multipart chunks are 5 MiB (s3cmd's smallest), so a
12 MiB file goes up in three parts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from clienttools import (
    MiB,
    assert_ciphertext_at_rest,
    assert_same_tree,
    base_env,
    new_bucket,
    run,
    s3cmd_config,
    venv_binary,
    write_random,
    write_random_tree,
)

CHUNK_MB = 5


@dataclass
class S3cmd:
    argv: list[str]
    env: dict[str, str]

    def __call__(self, *args: str | Path) -> str:
        return run([*self.argv, *args], self.env).stdout


@pytest.fixture
def s3cmd(stack, tmp_path: Path) -> S3cmd:
    config = s3cmd_config(stack, tmp_path / "s3cfg", multipart_chunk_size_mb=str(CHUNK_MB))
    argv = [venv_binary("s3cmd"), "--config", str(config), "--no-progress"]
    return S3cmd(argv, base_env(tmp_path / "home"))


def transfers(output: str) -> list[str]:
    return [ln for ln in output.splitlines() if re.match(r"^(upload|download):", ln)]


def test_put_and_get(s3cmd: S3cmd, stack, tmp_path: Path) -> None:
    bucket = new_bucket(stack, "s3cmd")
    files = {
        "small.bin": write_random(tmp_path / "up" / "small.bin", 300_000),
        "multi.bin": write_random(tmp_path / "up" / "multi.bin", 2 * CHUNK_MB * MiB + 12345),
    }
    for name in files:
        out = s3cmd("put", tmp_path / "up" / name, f"s3://{bucket}/{name}")
        assert transfers(out), out

    assert_ciphertext_at_rest(stack, bucket, "small.bin", files["small.bin"], single_part=True)
    assert_ciphertext_at_rest(stack, bucket, "multi.bin", size=len(files["multi.bin"]))
    etag = stack.direct.head_object(Bucket=bucket, Key="multi.bin")["ETag"]
    assert etag.endswith('-3"'), etag  # it did go up in parts

    for name, data in files.items():
        back = tmp_path / "down" / name
        back.parent.mkdir(exist_ok=True)
        s3cmd("get", f"s3://{bucket}/{name}", back)
        assert back.read_bytes() == data, name


def test_sync_twice_up_and_down(s3cmd: S3cmd, stack, tmp_path: Path) -> None:
    bucket = new_bucket(stack, "s3cmd-sync")
    src = tmp_path / "tree"
    tree = write_random_tree(src)
    tree["multi/part.bin"] = write_random(src / "multi" / "part.bin", 2 * CHUNK_MB * MiB + 1)
    url = f"s3://{bucket}/t/"

    first = s3cmd("sync", f"{src}/", url)
    assert len(transfers(first)) == len(tree), first
    for rel, data in tree.items():
        if len(data) > CHUNK_MB * MiB:
            assert_ciphertext_at_rest(stack, bucket, f"t/{rel}", size=len(data))
        else:
            assert_ciphertext_at_rest(stack, bucket, f"t/{rel}", data, single_part=True)
    second = s3cmd("sync", f"{src}/", url)
    assert transfers(second) == [], f"the second sync transferred again:\n{second}"

    down = tmp_path / "down"
    down.mkdir()
    first = s3cmd("sync", url, f"{down}/")
    assert len(transfers(first)) == len(tree), first
    assert_same_tree(tree, down)
    second = s3cmd("sync", url, f"{down}/")
    assert transfers(second) == [], f"the second sync transferred again:\n{second}"
    assert_same_tree(tree, down)
