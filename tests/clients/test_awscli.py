"""The AWS CLI through the proxy, both major versions, against moto and SeaweedFS.

v2 is Debian's ``awscli`` package, called as /usr/bin/aws because the venv's v1 (PyPI's
``awscli``, a test dependency) comes first on PATH. Each command gets ``--endpoint-url``, and a
private config file sets path-style addressing and us-east-1; the key pair is the backend's.
Every download is compared byte for byte (sha256 for 100 MiB) and every object stored is
checked at the backend to be CloudTaser ciphertext.
"""

from __future__ import annotations

import json
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from clienttools import (
    MiB,
    age,
    assert_ciphertext_at_rest,
    assert_same_tree,
    aws_env,
    new_bucket,
    require_binary,
    run,
    seed_files,
    sha256_file,
    venv_binary,
    write_random,
    write_random_tree,
)

AWS_V2 = "/usr/bin/aws"  # Debian's awscli; installed by tests/clients/install.sh
# The CLI's default multipart threshold and chunk size: files above it go up in 8 MiB parts.
CLI_CHUNK = 8 * MiB


@pytest.fixture(scope="module", params=["v1", "v2"])
def aws_binary(request) -> str:
    binary = venv_binary("aws") if request.param == "v1" else require_binary(AWS_V2, "AWS CLI v2")
    version = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, timeout=60, check=False
    )
    text = (version.stdout + version.stderr).strip()
    assert text.startswith(f"aws-cli/{request.param[1]}."), f"{binary}: {text}"
    return binary


@dataclass
class Aws:
    binary: str
    env: dict[str, str]
    endpoint: str

    def __call__(self, *args: str | Path, timeout: float = 300) -> str:
        argv = [self.binary, "--endpoint-url", self.endpoint, *map(str, args)]
        return run(argv, self.env, timeout=timeout).stdout


@pytest.fixture
def aws(aws_binary: str, stack, tmp_path: Path) -> Aws:
    return Aws(aws_binary, aws_env(stack, tmp_path / "home"), stack.proxy.endpoint)


def transfers(output: str) -> list[str]:
    """The ``upload:``/``download:``/``copy:`` lines of an ``aws s3`` command's output."""
    return [ln for ln in output.splitlines() if re.match(r"^(upload|download|copy):", ln)]


def listed_sizes(aws: Aws, url: str) -> dict[str, int]:
    """``aws s3 ls --recursive``: key -> size as the proxy lists it."""
    sizes = {}
    for line in aws("s3", "ls", "--recursive", url).splitlines():
        # "2026-11-28 00:54:51       3000 t/a.txt" (keys may contain spaces)
        m = re.match(r"^\S+ \S+\s+(\d+) (.+)$", line)
        if m:
            sizes[m.group(2)] = int(m.group(1))
    return sizes


def get_range(aws: Aws, bucket: str, key: str, spec: str, out: Path) -> tuple[bytes, dict]:
    meta = json.loads(
        aws("s3api", "get-object", "--bucket", bucket, "--key", key, "--range", spec, out)
    )
    return out.read_bytes(), meta


def expected_range(data: bytes, spec: str) -> tuple[bytes, str]:
    """The bytes and Content-Range S3 answers for a single ``bytes=`` range."""
    first, last = spec.removeprefix("bytes=").split("-")
    size = len(data)
    if first == "":
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    return data[start : end + 1], f"bytes {start}-{end}/{size}"


def test_cp_small_file_up_and_down(aws: Aws, stack, tmp_path: Path) -> None:
    bucket = new_bucket(stack, "cli")
    data = write_random(tmp_path / "report.bin", 300_000)  # five 64 KiB segments
    out = aws("s3", "cp", "--no-progress", tmp_path / "report.bin", f"s3://{bucket}/report.bin")
    assert transfers(out), out
    assert_ciphertext_at_rest(stack, bucket, "report.bin", data, single_part=True)

    assert listed_sizes(aws, f"s3://{bucket}") == {"report.bin": len(data)}

    back = tmp_path / "back.bin"
    aws("s3", "cp", "--no-progress", f"s3://{bucket}/report.bin", back)
    assert back.read_bytes() == data


# One CLI on each backend: the large cases are what takes time.
@pytest.mark.slow
@pytest.mark.parametrize(
    ("aws_binary", "stack"), [("v1", "moto"), ("v2", "seaweedfs")], indirect=True
)
def test_cp_100_mib_up_and_down_and_ranges_across_parts(aws: Aws, stack, tmp_path: Path) -> None:
    bucket = new_bucket(stack, "cli-big")
    src = tmp_path / "big.bin"
    data = write_random(src, 100 * MiB)
    aws("s3", "cp", "--only-show-errors", src, f"s3://{bucket}/big.bin")
    assert_ciphertext_at_rest(stack, bucket, "big.bin", size=len(data))
    # The CLI uploads it in 8 MiB parts: the store has a multipart object.
    etag = stack.direct.head_object(Bucket=bucket, Key="big.bin")["ETag"]
    assert etag.strip('"').endswith(f"-{-(-len(data) // CLI_CHUNK)}"), etag

    back = tmp_path / "back.bin"
    aws("s3", "cp", "--only-show-errors", f"s3://{bucket}/big.bin", back)
    assert back.stat().st_size == len(data)
    assert sha256_file(back) == sha256_file(src)

    # Across the boundary of parts 1 and 2, inside the last part, and a suffix range.
    for spec in (
        f"bytes={CLI_CHUNK - 100}-{CLI_CHUNK + 99}",
        "bytes=100000000-100000999",
        "bytes=-70000",
    ):
        got, meta = get_range(aws, bucket, "big.bin", spec, tmp_path / "range.bin")
        want, content_range = expected_range(data, spec)
        assert got == want, spec
        assert meta["ContentRange"] == content_range
        assert meta["ContentLength"] == len(want)


def test_sync_twice_up_and_down(aws: Aws, stack, tmp_path: Path) -> None:
    bucket = new_bucket(stack, "cli-sync")
    tree = write_random_tree(tmp_path / "tree")
    url = f"s3://{bucket}/t"

    first = aws("s3", "sync", "--no-progress", tmp_path / "tree", url)
    assert len(transfers(first)) == len(tree), first
    for rel, data in tree.items():
        assert_ciphertext_at_rest(stack, bucket, f"t/{rel}", data, single_part=True)
    second = aws("s3", "sync", "--no-progress", tmp_path / "tree", url)
    assert transfers(second) == [], f"the second sync transferred again:\n{second}"

    down = tmp_path / "down"
    first = aws("s3", "sync", "--no-progress", url, down)
    assert len(transfers(first)) == len(tree), first
    assert_same_tree(tree, down)
    second = aws("s3", "sync", "--no-progress", url, down)
    assert transfers(second) == [], f"the second sync transferred again:\n{second}"
    assert_same_tree(tree, down)


# A property of the proxy's listings, not of a CLI or a backend: one combination is enough.
@pytest.mark.parametrize(("aws_binary", "stack"), [("v2", "seaweedfs")], indirect=True)
def test_sync_twice_with_a_multipart_file(aws: Aws, stack, tmp_path: Path) -> None:
    bucket = new_bucket(stack, "cli-sync-mp")
    tree = {
        "small.txt": write_random(tmp_path / "tree" / "small.txt", 1000),
        "mp.bin": write_random(tmp_path / "tree" / "mp.bin", CLI_CHUNK + MiB),  # two parts
    }
    age(tmp_path / "tree")
    url = f"s3://{bucket}/t"
    first = aws("s3", "sync", "--no-progress", tmp_path / "tree", url)
    assert len(transfers(first)) == len(tree), first
    assert_ciphertext_at_rest(stack, bucket, "t/mp.bin", size=len(tree["mp.bin"]))

    # What sync decides on: the listed sizes. This is where it goes wrong today.
    assert listed_sizes(aws, url + "/") == {f"t/{k}": len(v) for k, v in tree.items()}
    second = aws("s3", "sync", "--no-progress", tmp_path / "tree", url)
    assert transfers(second) == [], f"the second sync transferred again:\n{second}"


def test_cp_s3_to_s3(aws: Aws, stack, tmp_path: Path) -> None:
    bucket = new_bucket(stack, "cli-copy")
    other = new_bucket(stack, "cli-copy-dst")
    files = {
        "small.bin": write_random(tmp_path / "up" / "small.bin", 150_000),
        # Above the CLI's multipart threshold: copied part by part with UploadPartCopy.
        "mp.bin": write_random(tmp_path / "up" / "mp.bin", CLI_CHUNK + 3 * MiB),
    }
    seed_files(stack, bucket, {name: tmp_path / "up" / name for name in files})

    # One object within its bucket, then both to another bucket.
    out = aws("s3", "cp", "--no-progress", f"s3://{bucket}/small.bin", f"s3://{bucket}/copy.bin")
    assert transfers(out) == [f"copy: s3://{bucket}/small.bin to s3://{bucket}/copy.bin"], out
    out = aws("s3", "cp", "--recursive", "--no-progress", f"s3://{bucket}/", f"s3://{other}/")
    assert len(transfers(out)) == 3, out

    copies = {("small.bin", bucket, "copy.bin")}
    copies |= {(name, other, name) for name in files}
    direct = stack.direct
    for name, dst_bucket, dst_key in copies:
        data = files[name]
        if len(data) < MiB:
            assert_ciphertext_at_rest(stack, dst_bucket, dst_key, data, single_part=True)
        else:
            assert_ciphertext_at_rest(stack, dst_bucket, dst_key, size=len(data))
        # Re-encrypted under a data key of its own, not a store-side copy of the ciphertext.
        src_dek = direct.head_object(Bucket=bucket, Key=name)["Metadata"]["cloudtaser-dek"]
        dst_dek = direct.head_object(Bucket=dst_bucket, Key=dst_key)["Metadata"]["cloudtaser-dek"]
        assert src_dek != dst_dek

    aws("s3", "cp", "--recursive", "--only-show-errors", f"s3://{other}/", tmp_path / "down")
    assert_same_tree({**files, "copy.bin": files["small.bin"]}, tmp_path / "down")


def test_s3api_get_object_range(aws: Aws, stack, tmp_path: Path) -> None:
    bucket = new_bucket(stack, "cli-range")
    data = write_random(tmp_path / "obj.bin", 300_000)
    seed_files(stack, bucket, {"obj.bin": tmp_path / "obj.bin"})

    # Across a 64 KiB segment boundary, a suffix, and one running past the end.
    for spec in ("bytes=65530-131080", "bytes=-100", "bytes=299000-400000"):
        got, meta = get_range(aws, bucket, "obj.bin", spec, tmp_path / "range.bin")
        want, content_range = expected_range(data, spec)
        assert got == want, spec
        assert meta["ContentRange"] == content_range, spec
        assert meta["ContentLength"] == len(want), spec
