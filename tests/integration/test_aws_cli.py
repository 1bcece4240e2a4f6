"""The README's promise: store and read back a file through the proxy with the AWS CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from cloudtaser_s3 import envelope
from cloudtaser_s3.localservers import s3_client

AWS = shutil.which("aws", path=str(Path(sys.executable).parent))


def aws(proxy, backend, tmp_path, *args: str) -> str:
    env = {
        "PATH": os.environ.get("PATH", ""),
        "HOME": str(tmp_path),
        "AWS_ENDPOINT_URL": proxy.endpoint,
        "AWS_ACCESS_KEY_ID": backend.access_key,
        "AWS_SECRET_ACCESS_KEY": backend.secret_key,
        "AWS_REGION": "us-east-1",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    done = subprocess.run(
        [AWS, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(AWS is None, reason="the awscli package is a test dependency")
def test_aws_cli_copies_a_file_up_and_back(proxy_seaweedfs, seaweedfs, tmp_path):
    bucket = f"cli-{uuid.uuid4().hex[:12]}"
    src = tmp_path / "report.bin"
    src.write_bytes(os.urandom(3 * 2**20))
    aws(proxy_seaweedfs, seaweedfs, tmp_path, "s3", "mb", f"s3://{bucket}")
    aws(proxy_seaweedfs, seaweedfs, tmp_path, "s3", "cp", str(src), f"s3://{bucket}/report.bin")
    back = tmp_path / "back.bin"
    aws(proxy_seaweedfs, seaweedfs, tmp_path, "s3", "cp", f"s3://{bucket}/report.bin", str(back))
    assert back.read_bytes() == src.read_bytes()
    listing = aws(proxy_seaweedfs, seaweedfs, tmp_path, "s3", "ls", f"s3://{bucket}/")
    assert "report.bin" in listing

    direct = s3_client(seaweedfs.endpoint, seaweedfs.access_key, seaweedfs.secret_key)
    at_rest = direct.get_object(Bucket=bucket, Key="report.bin")
    assert at_rest["Metadata"]["cloudtaser-alg"] == envelope.ALG
    assert at_rest["Body"].read(4) == envelope.MAGIC
