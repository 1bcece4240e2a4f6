"""``python -m cloudtaser_s3 migrate`` against a real OpenBao and both stores: a bucket of
objects stored before the proxy is encrypted in place — content headers, user metadata and tags
kept, large objects as multipart uploads — after which a proxy that refuses plaintext reads
every object; ciphertext that lost its metadata is reported and never touched.

The bulk test runs the operator tools on 1,000 objects: migrate, rotate the Transit key,
rewrap, retire the old key version, and read every object back through a refusing proxy.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import botocore.exceptions
import operator_helpers as oh
import pytest
from operator_helpers import MiB, Rig, cli, summary

from cloudtaser_s3 import bucketwalk, envelope, migrate
from cloudtaser_s3.localservers import OpenBao

# Small parts, so a 7 MiB object exercises the multipart path.
SMALL_PARTS = ["--multipart-threshold", "6Mi", "--part-size", "5Mi"]


def operator_policy_hcl(key: str, mount: str) -> str:
    """What docs/operator-tools.md asks for migrate (encrypt, read the key) and rewrap."""
    return (
        f'path "{mount}/encrypt/{key}" {{\n  capabilities = ["update"]\n}}\n'
        f'path "{mount}/rewrap/{key}" {{\n  capabilities = ["update"]\n}}\n'
        f'path "{mount}/keys/{key}" {{\n  capabilities = ["read"]\n}}\n'
    )


@pytest.fixture(scope="module", params=["moto", "seaweedfs"])
def rig(request: pytest.FixtureRequest, openbao: OpenBao, proxy_factory) -> Rig:
    return oh.new_rig(request, openbao, proxy_factory)


def keyed(rig: Rig) -> oh.Keyed:
    return oh.keyed(rig, operator_policy_hcl)


def refusing_proxy(rig: Rig, k: oh.Keyed) -> Any:
    """A client of a proxy with the test's key that refuses plaintext reads: what the bucket
    is switched to after migrating."""
    return oh.proxy_client(rig, k, CLOUDTASER_S3PROXY_PLAINTEXT_OBJECTS="refuse")


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


def test_a_concurrent_application_write_wins(rig: Rig) -> None:
    """The object is overwritten after the command's HEAD: its conditional reads and writes
    fail, it is reported as changed, and the application's write is what remains."""
    k = keyed(rig)
    b, s3 = rig.bucket, rig.direct
    s3.put_object(Bucket=b, Key="race/small", Body=b"old small")
    s3.put_object(Bucket=b, Key="race/big", Body=os.urandom(7 * MiB))

    h = oh.by_hand(rig, k, "race/")
    assert h.conditions.put_if_match
    ctx = migrate.Context(
        h.settings, h.access, h.transit, h.conditions, True, False, 5 * MiB, 6 * MiB
    )
    seen = {key: bucketwalk.head(h.access, key) for key in ("race/small", "race/big")}

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
    assert h.open_uploads("race/") == []


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

    k.rotate(mount)
    proc = cli(k.cli_env, "rewrap", f"s3://{b}/bulk/", "--concurrency", "32", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "rewrap (all listed): 100%" in proc.stderr and f"{count}/{count}" in proc.stderr
    assert counts(summary(proc)) == (count, count, 0, 0, 0)
    k.retire_below(2, mount)

    reader = refusing_proxy(rig, k)

    def read(key: str) -> bool:
        return reader.get_object(Bucket=b, Key=key)["Body"].read() == key.encode()

    with ThreadPoolExecutor(32) as pool:
        assert all(pool.map(read, keys))
