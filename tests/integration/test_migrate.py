"""``python -m cloudtaser_s3 migrate`` against a real OpenBao and both stores: a bucket of
objects stored before the proxy is encrypted in place — content headers, user metadata and tags
kept, large objects as multipart uploads — after which a proxy that refuses plaintext reads
every object; ciphertext that lost its metadata is reported and never touched.

The bulk test runs the operator tools on 1,000 objects: migrate, rotate the Transit key,
rewrap, retire the old key version, and read every object back through a refusing proxy.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import botocore.exceptions
import botocore.session
import pytest
from conftest import proxy_default_env

from cloudtaser_s3 import bucketwalk, config, envelope, migrate
from cloudtaser_s3 import localservers as ls
from cloudtaser_s3.localservers import OpenBao, ProxyProcess, S3Server
from cloudtaser_s3.transit import Transit

MiB = 2**20
# Small parts, so a 7 MiB object exercises the multipart path.
SMALL_PARTS = ["--multipart-threshold", "6Mi", "--part-size", "5Mi"]


def operator_policy_hcl(key: str, mount: str) -> str:
    """What docs/operator-tools.md asks for migrate (encrypt, read the key) and rewrap."""
    return (
        f'path "{mount}/encrypt/{key}" {{\n  capabilities = ["update"]\n}}\n'
        f'path "{mount}/rewrap/{key}" {{\n  capabilities = ["update"]\n}}\n'
        f'path "{mount}/keys/{key}" {{\n  capabilities = ["read"]\n}}\n'
    )


@dataclass
class Rig:
    name: str
    backend: S3Server
    openbao: OpenBao
    make_proxy: Callable[..., ProxyProcess]
    bucket: str

    @property
    def direct(self) -> Any:
        return self.backend.client()


@pytest.fixture(scope="module", params=["moto", "seaweedfs"])
def rig(request: pytest.FixtureRequest, openbao: OpenBao, proxy_factory) -> Rig:
    backend = request.getfixturevalue("moto_s3" if request.param == "moto" else "seaweedfs")
    bucket = f"migrate-{uuid.uuid4().hex[:10]}"
    backend.client().create_bucket(Bucket=bucket)
    return Rig(request.param, backend, openbao, proxy_factory, bucket)


@dataclass
class Keyed:
    key: str
    proxy_token: str
    cli_env: dict[str, str]
    root: Any


def keyed(rig: Rig) -> Keyed:
    """A Transit key of one test, a token for its proxies and the operator's environment."""
    bao, mount = rig.openbao, rig.openbao.transit_mount
    key = f"migrate-{rig.name}-{uuid.uuid4().hex[:8]}"
    root = bao.client()
    root.secrets.transit.create_key(name=key, key_type="aes256-gcm96", mount_point=mount)
    root.sys.create_or_update_policy(f"proxy-{key}", ls.proxy_policy_hcl(key, mount))
    root.sys.create_or_update_policy(f"operator-{key}", operator_policy_hcl(key, mount))
    proxy_token = ls.create_policy_token(bao.addr, bao.root_token, f"proxy-{key}")
    operator_token = ls.create_policy_token(bao.addr, bao.root_token, f"operator-{key}")
    env = proxy_default_env(rig.backend, bao, operator_token)
    env["CLOUDTASER_S3PROXY_TRANSIT_KEY"] = key
    return Keyed(key, proxy_token, env, root)


def refusing_proxy(rig: Rig, k: Keyed) -> Any:
    """A client of a proxy with the test's key that refuses plaintext reads: what the bucket
    is switched to after migrating."""
    proxy = rig.make_proxy(
        rig.backend,
        CLOUDTASER_S3PROXY_TRANSIT_KEY=k.key,
        VAULT_TOKEN=k.proxy_token,
        CLOUDTASER_S3PROXY_PLAINTEXT_OBJECTS="refuse",
    )
    return proxy.client(rig.backend.access_key, rig.backend.secret_key)


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    full = ls.clean_env(
        {
            **env,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "cloudtaser_s3", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def summary(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


def counts(got: dict[str, Any]) -> tuple[int, ...]:
    return tuple(got[n] for n in ("scanned", "done", "up_to_date", "attention", "failed"))


def test_migrate_a_plaintext_bucket_in_place(rig: Rig) -> None:
    k = keyed(rig)
    b, p, s3 = rig.bucket, "old/", rig.direct
    plain: dict[str, bytes] = {}

    def put(key: str, body: bytes, **extra: Any) -> None:
        s3.put_object(Bucket=b, Key=p + key, Body=body, **extra)
        plain[p + key] = body

    put(
        "docs/report.txt",
        b"quarterly numbers",
        ContentType="text/x-report",
        Metadata={"author": "bob", "Dept": "finance"},
        CacheControl="no-cache",
        ContentDisposition="inline",
        ContentLanguage="fr",
        Tagging="class=internal&keep=yes",
    )
    put("empty", b"")
    # A directory marker: an object on S3 and moto, a directory on SeaweedFS, which keeps
    # neither a body nor metadata under it; the command must say so, not claim success.
    s3.put_object(Bucket=b, Key=p + "folder/", Body=b"")
    folder_kept = rig.name != "seaweedfs"
    if folder_kept:
        plain[p + "folder/"] = b""
    put("segments.bin", os.urandom(200 * 1024 + 7))
    put("weird key ü+%.bin", b"unicode and reserved characters in the key")
    big = os.urandom(7 * MiB + 3)
    put("big.bin", big, ContentType="application/x-big", Metadata={"size": "big"}, Tagging="t=1")

    # Refusing plaintext only concerns reads: this proxy writes, and later reads everything.
    proxy = refusing_proxy(rig, k)
    proxy.put_object(Bucket=b, Key=p + "already", Body=b"written through the proxy")
    # Ciphertext whose metadata was lost (copied outside the proxy): must never be touched.
    sealed = s3.get_object(Bucket=b, Key=p + "already")["Body"].read()
    s3.put_object(Bucket=b, Key=p + "lost-metadata", Body=sealed)
    lost_etag = s3.head_object(Bucket=b, Key=p + "lost-metadata")["ETag"]
    before = {key: s3.head_object(Bucket=b, Key=key)["ETag"] for key in plain}

    proc = cli(k.cli_env, "migrate", f"s3://{b}/{p}", "--dry-run", "--json", *SMALL_PARTS)
    assert proc.returncode == 1, proc.stderr  # the lost-metadata object needs attention
    assert counts(summary(proc)) == (8, 6, 1, 1, 0)
    assert "ATTENTION old/lost-metadata: starts with the CloudTaser magic" in proc.stderr
    assert {key: s3.head_object(Bucket=b, Key=key)["ETag"] for key in plain} == before

    if rig.name == "moto":
        # moto ignores If-Match on CompleteMultipartUpload: the big object is not migrated
        # without --accept-race, and says so; everything else is.
        proc = cli(k.cli_env, "migrate", f"s3://{b}/{p}", "--json", *SMALL_PARTS)
        assert proc.returncode == 1
        assert counts(summary(proc)) == (8, 5, 1, 1, 1)
        assert "FAILED old/big.bin: needs a multipart upload" in proc.stderr
        race = ["--accept-race"]
    else:
        race = []
    proc = cli(k.cli_env, "migrate", f"s3://{b}/{p}", "--json", "-v", *SMALL_PARTS, *race)
    assert proc.returncode == 1, proc.stderr
    if rig.name == "moto":
        assert counts(summary(proc)) == (8, 1, 6, 1, 0)
    else:
        assert counts(summary(proc)) == (8, 5, 1, 1, 1)
        assert "FAILED old/folder/: the store answered the write but did not keep" in proc.stderr
    assert "migrated old/big.bin (7340035 bytes, multipart, 2 parts)" in proc.stderr

    # At the store: our format, and everything an application had set is still there.
    for key in plain:
        head = s3.head_object(Bucket=b, Key=key)
        assert head["Metadata"].get("cloudtaser-alg") == envelope.ALG, (key, head)
        assert head["Metadata"]["cloudtaser-key"] == k.key
        body_start = s3.get_object(Bucket=b, Key=key, Range="bytes=0-3")["Body"].read()
        assert body_start == envelope.MAGIC
    report = s3.head_object(Bucket=b, Key=p + "docs/report.txt")
    assert {n: v for n, v in report["Metadata"].items() if "cloudtaser" not in n} == {
        "author": "bob",
        "dept": "finance",
    }
    assert report["ContentType"] == "text/x-report"
    assert (report["CacheControl"], report["ContentDisposition"]) == ("no-cache", "inline")
    assert report["ContentLanguage"] == "fr"
    tags = s3.get_object_tagging(Bucket=b, Key=p + "docs/report.txt")["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("class", "internal"), ("keep", "yes")]
    big_head = s3.head_object(Bucket=b, Key=p + "big.bin")
    assert big_head["ETag"].strip('"').endswith("-2")
    assert big_head["ContentType"] == "application/x-big"
    assert big_head["Metadata"]["size"] == "big"
    tags = s3.get_object_tagging(Bucket=b, Key=p + "big.bin")["TagSet"]
    assert [(t["Key"], t["Value"]) for t in tags] == [("t", "1")]
    assert s3.head_object(Bucket=b, Key=p + "lost-metadata")["ETag"] == lost_etag

    # Switched to refuse plaintext: every migrated object reads, whole, by range and by HEAD.
    reader = proxy
    for key, body in plain.items():
        assert reader.get_object(Bucket=b, Key=key)["Body"].read() == body, key
        assert reader.head_object(Bucket=b, Key=key)["ContentLength"] == len(body)
    for a, z in [(0, 9), (5 * MiB - 10, 5 * MiB + 10), (len(big) - 5, len(big) - 1)]:
        part = reader.get_object(Bucket=b, Key=p + "big.bin", Range=f"bytes={a}-{z}")
        assert part["Body"].read() == big[a : z + 1]
    listed = {o["Key"]: o["Size"] for o in reader.list_objects_v2(Bucket=b, Prefix=p)["Contents"]}
    assert all(listed[key] == len(body) for key, body in plain.items())
    with pytest.raises(botocore.exceptions.ClientError):
        reader.get_object(Bucket=b, Key=p + "lost-metadata")["Body"].read()

    # A rerun is the resume: nothing left but what needs a human.
    proc = cli(k.cli_env, "migrate", f"s3://{b}/{p}", "--json", *SMALL_PARTS, *race)
    assert counts(summary(proc)) == ((8, 0, 7, 1, 0) if folder_kept else (8, 0, 6, 1, 1))


def session_for(backend: S3Server) -> botocore.session.Session:
    session = botocore.session.Session()
    session.set_credentials(backend.access_key, backend.secret_key)
    return session


def test_a_concurrent_application_write_wins(rig: Rig) -> None:
    """The object is overwritten after the command's HEAD: its conditional reads and writes
    fail, it is reported as changed, and the application's write is what remains."""
    k = keyed(rig)
    b, s3 = rig.bucket, rig.direct
    s3.put_object(Bucket=b, Key="race/small", Body=b"old small")
    s3.put_object(Bucket=b, Key="race/big", Body=os.urandom(7 * MiB))

    settings = config.from_env({**k.cli_env})
    access = bucketwalk.connect(settings, b, 4, session_for(rig.backend))
    transit = Transit(settings)
    transit.login()
    conditions = bucketwalk.probe_conditions(access, "race/")
    assert conditions.put_if_match
    ctx = migrate.Context(settings, access, transit, conditions, True, False, 5 * MiB, 6 * MiB)
    seen = {key: bucketwalk.head(access, key) for key in ("race/small", "race/big")}

    proxy = refusing_proxy(rig, k)
    newest = {"race/small": b"the application's small", "race/big": b"the application's big"}
    for key, body in newest.items():
        proxy.put_object(Bucket=b, Key=key, Body=body)
    results = [
        migrate._migrate_single(ctx, seen["race/small"], ""),
        migrate._migrate_multipart(ctx, seen["race/big"], ""),
    ]
    assert [r.outcome for r in results] == [bucketwalk.Outcome.CHANGED] * 2, results
    for key, body in newest.items():
        assert proxy.get_object(Bucket=b, Key=key)["Body"].read() == body
    assert access.client.list_multipart_uploads(Bucket=b, Prefix="race/").get("Uploads", []) == []


def test_a_thousand_objects_migrated_rotated_rewrapped(rig: Rig) -> None:
    """The operator tools on a bucket of 1,000 objects, with progress shown: migrate, rotate
    the key, rewrap, retire the old version; every object reads through a refusing proxy."""
    if rig.name == "moto":
        pytest.skip("one store is enough for the bulk run; SeaweedFS checks signatures")
    count = 1000
    k = keyed(rig)
    mount = rig.openbao.transit_mount
    b, s3 = rig.bucket, rig.direct
    keys = [f"bulk/{i:05d}" for i in range(count)]
    with ThreadPoolExecutor(32) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=b, Key=key, Body=key.encode()), keys))

    proc = cli(k.cli_env, "migrate", f"s3://{b}/bulk/", "--concurrency", "32", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "migrate (all listed): 100%" in proc.stderr and f"{count}/{count}" in proc.stderr
    assert counts(summary(proc)) == (count, count, 0, 0, 0)

    k.root.secrets.transit.rotate_key(name=k.key, mount_point=mount)
    proc = cli(k.cli_env, "rewrap", f"s3://{b}/bulk/", "--concurrency", "32", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "rewrap (all listed): 100%" in proc.stderr and f"{count}/{count}" in proc.stderr
    assert counts(summary(proc)) == (count, count, 0, 0, 0)
    k.root.secrets.transit.update_key_configuration(
        name=k.key, min_decryption_version=2, mount_point=mount
    )

    reader = refusing_proxy(rig, k)

    def read(key: str) -> bool:
        return reader.get_object(Bucket=b, Key=key)["Body"].read() == key.encode()

    with ThreadPoolExecutor(32) as pool:
        assert all(pool.map(read, keys))
