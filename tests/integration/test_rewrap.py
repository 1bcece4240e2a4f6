"""``python -m cloudtaser_s3 rewrap`` against a real OpenBao and both stores: objects written
through the proxy under several Transit key versions are rewrapped to the latest one by
metadata-only server-side copies, after which ``min_decryption_version`` is raised and every
object — multipart ones read whole, by range and by HEAD — still reads through a fresh proxy.

Each test gets its own Transit key (it rotates it and retires old versions), a proxy that
writes with it, and an operator token that can only rewrap and read the key — never decrypt.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import botocore.exceptions
import hvac.exceptions
import operator_helpers as oh
import pytest
from operator_helpers import MiB, Rig, cli, summary

from cloudtaser_s3 import bucketwalk, rewrap
from cloudtaser_s3 import localservers as ls
from cloudtaser_s3.localservers import OpenBao


def operator_policy_hcl(key: str, mount: str) -> str:
    """What docs/operator-tools.md asks for the rewrap command: rewrap, and read the key."""
    return (
        f'path "{mount}/rewrap/{key}" {{\n  capabilities = ["update"]\n}}\n'
        f'path "{mount}/keys/{key}" {{\n  capabilities = ["read"]\n}}\n'
    )


@pytest.fixture(scope="module", params=["moto", "seaweedfs"])
def rig(request: pytest.FixtureRequest, openbao: OpenBao, proxy_factory) -> Rig:
    return oh.new_rig(request, openbao, proxy_factory)


def keyed(rig: Rig) -> tuple[oh.Keyed, Any]:
    """The test's key and operator environment, and a client of a proxy writing with it."""
    k = oh.keyed(rig, operator_policy_hcl)
    return k, oh.proxy_client(rig, k)


def fresh_reader(rig: Rig, k: oh.Keyed) -> Any:
    """A new proxy (no cached keys or layouts) that reads with the key's current policy."""
    token = ls.create_policy_token(rig.openbao.addr, rig.openbao.root_token, f"proxy-{k.key}")
    return oh.proxy_client(rig, k, VAULT_TOKEN=token)


def race_flags(rig: Rig) -> list[str]:
    # moto ignores x-amz-copy-source-if-match and If-Match on CompleteMultipartUpload.
    return ["--accept-race"] if rig.name == "moto" else []


def upload_parts(via: Any, bucket: str, key: str, parts: list[bytes], **extra: Any) -> None:
    up = via.create_multipart_upload(Bucket=bucket, Key=key, **extra)
    etags = []
    for n, body in enumerate(parts, 1):
        r = via.upload_part(
            Bucket=bucket, Key=key, UploadId=up["UploadId"], PartNumber=n, Body=body
        )
        etags.append({"PartNumber": n, "ETag": r["ETag"]})
    via.complete_multipart_upload(
        Bucket=bucket, Key=key, UploadId=up["UploadId"], MultipartUpload={"Parts": etags}
    )


def stored(rig: Rig, key: str) -> dict[str, Any]:
    return rig.direct.head_object(Bucket=rig.bucket, Key=key)


def part_lengths(rig: Rig, key: str, count: int) -> list[int]:
    return [
        rig.direct.head_object(Bucket=rig.bucket, Key=key, PartNumber=n)["ContentLength"]
        for n in range(1, count + 1)
    ]


def stored_digest(rig: Rig, key: str) -> str:
    body = rig.direct.get_object(Bucket=rig.bucket, Key=key)["Body"].read()
    return hashlib.sha256(body).hexdigest()


def test_rotate_rewrap_then_retire_old_versions(rig: Rig) -> None:
    k, via = keyed(rig)
    mount = rig.openbao.transit_mount
    b, p = rig.bucket, "main/"
    data: dict[str, bytes] = {}

    def put(key: str, body: bytes, **extra: Any) -> None:
        via.put_object(Bucket=b, Key=p + key, Body=body, **extra)
        data[p + key] = body

    put(
        "v1/doc.txt",
        b"version one",
        ContentType="text/x-one",
        Metadata={"owner": "alice", "Project": "x"},
        CacheControl="max-age=60",
        ContentDisposition='attachment; filename="doc.txt"',
        ContentLanguage="de",
        Tagging="team=blue&tier=1",
    )
    put("v1/empty", b"")
    put("v1/seg", os.urandom(3 * 65536 + 5))
    mp_parts = [os.urandom(5 * MiB + 123), os.urandom(5 * MiB), os.urandom(777)]
    upload_parts(
        via,
        b,
        p + "v1/multi",
        mp_parts,
        ContentType="video/x-test",
        Metadata={"m": "1"},
        Tagging="kind=video",
    )
    data[p + "v1/multi"] = b"".join(mp_parts)
    k.rotate(mount)
    put("v2/doc", b"version two", Metadata={"v": "2"})
    k.rotate(mount)
    put("v3/doc", b"version three")
    rig.direct.put_object(Bucket=b, Key=p + "plain", Body=b"never encrypted")

    before = {key: stored(rig, key) for key in data}
    multi = p + "v1/multi"
    assert before[multi]["ETag"].strip('"').endswith("-3")
    lengths_before = part_lengths(rig, multi, 3)
    digests_before = {key: stored_digest(rig, key) for key in data}
    assert before[p + "v1/doc.txt"]["Metadata"]["cloudtaser-key-version"] == "1"
    plain_etag = stored(rig, p + "plain")["ETag"]

    # Dry run: says what it would do, changes nothing.
    proc = cli(k.cli_env, "rewrap", f"s3://{b}/{p}", "--dry-run", "--json")
    assert proc.returncode == 0, proc.stderr
    got = summary(proc)
    assert (got["scanned"], got["done"], got["up_to_date"], got["not_ours"]) == (7, 5, 1, 1)
    assert {key: stored(rig, key)["Metadata"] for key in data} == {
        key: h["Metadata"] for key, h in before.items()
    }

    if rig.name == "moto":  # a store that ignores copy conditions is refused unless accepted
        refused = cli(k.cli_env, "rewrap", f"s3://{b}/{p}", "--json")
        assert refused.returncode == 2
        assert "ignores x-amz-copy-source-if-match" in refused.stderr

    proc = cli(k.cli_env, "rewrap", f"s3://{b}/{p}", "--json", "-v", *race_flags(rig))
    assert proc.returncode == 0, proc.stderr
    got = summary(proc)
    assert (got["scanned"], got["done"], got["up_to_date"], got["not_ours"]) == (7, 5, 1, 1)
    assert got["failed"] == got["changed"] == got["attention"] == 0
    assert "rewrapped main/v1/multi (v1 -> v3, 3 parts)" in proc.stderr

    # At the store: only the wrapped DEK and its version changed; data, layout and
    # everything else an application set are as they were.
    for key, old in before.items():
        new = stored(rig, key)
        assert new["Metadata"]["cloudtaser-key-version"] == "3", key
        assert new["Metadata"]["cloudtaser-dek"].startswith("vault:v3:"), key
        for name in ("cloudtaser-nonce", "cloudtaser-key", "cloudtaser-alg"):
            assert new["Metadata"][name] == old["Metadata"][name]
        expected = {**old["Metadata"], "cloudtaser-key-version": "3"}
        expected["cloudtaser-dek"] = new["Metadata"]["cloudtaser-dek"]
        assert new["Metadata"] == expected, key
        assert new["ContentType"] == old["ContentType"]
        assert new["ContentLength"] == old["ContentLength"]
        assert stored_digest(rig, key) == digests_before[key], key
    doc = stored(rig, p + "v1/doc.txt")
    assert doc["Metadata"]["owner"] == "alice"
    assert (doc["CacheControl"], doc["ContentLanguage"]) == ("max-age=60", "de")
    assert doc["ContentDisposition"] == 'attachment; filename="doc.txt"'
    tags = rig.direct.get_object_tagging(Bucket=b, Key=p + "v1/doc.txt")["TagSet"]
    assert sorted((t["Key"], t["Value"]) for t in tags) == [("team", "blue"), ("tier", "1")]
    assert stored(rig, multi)["ETag"].strip('"').endswith("-3")
    tags = rig.direct.get_object_tagging(Bucket=b, Key=multi)["TagSet"]
    assert [(t["Key"], t["Value"]) for t in tags] == [("kind", "video")]
    assert part_lengths(rig, multi, 3) == lengths_before
    assert stored(rig, p + "plain")["ETag"] == plain_etag

    # Retire v1 and v2: the old wrapped forms no longer open, every object still reads.
    k.retire_below(3, mount)
    with pytest.raises(hvac.exceptions.InvalidRequest):
        k.root.secrets.transit.decrypt_data(
            name=k.key,
            ciphertext=before[p + "v1/seg"]["Metadata"]["cloudtaser-dek"],
            mount_point=mount,
        )
    reader = fresh_reader(rig, k)
    for key, body in data.items():
        assert reader.get_object(Bucket=b, Key=key)["Body"].read() == body, key
        assert reader.head_object(Bucket=b, Key=key)["ContentLength"] == len(body)
    whole = data[multi]
    for a, z in [(0, 9), (5 * MiB + 100, 5 * MiB + 200), (len(whole) - 900, len(whole) - 1)]:
        got_range = reader.get_object(Bucket=b, Key=multi, Range=f"bytes={a}-{z}")
        assert got_range["Body"].read() == whole[a : z + 1]
    listed = reader.list_objects_v2(Bucket=b, Prefix=p + "v1/multi")["Contents"]
    assert listed[0]["Size"] == len(whole)

    # A rerun is the resume: nothing left to do.
    proc = cli(k.cli_env, "rewrap", f"s3://{b}/{p}", "--json", *race_flags(rig))
    assert proc.returncode == 0, proc.stderr
    got = summary(proc)
    assert (got["done"], got["up_to_date"], got["not_ours"]) == (0, 6, 1)


def test_a_concurrent_application_write_wins(rig: Rig) -> None:
    """The object is overwritten between the command's HEAD and its copy: the copy is refused
    by its ETag condition (or, on moto, by the re-check), reported as changed, and the
    application's write is what remains."""
    k, via = keyed(rig)
    mount = rig.openbao.transit_mount
    b = rig.bucket
    via.put_object(Bucket=b, Key="race/single", Body=b"old single")
    upload_parts(via, b, "race/multi", [os.urandom(5 * MiB), b"old tail"])
    k.rotate(mount)

    h = oh.by_hand(rig, k, "race/")
    assert h.conditions.copy_source_if_match == (rig.name != "moto")
    ctx = rewrap.Context(
        h.access, h.transit, rewrap.LatestVersions(h.transit), h.conditions, True, dry_run=False
    )
    plans = {}
    for key in ("race/single", "race/multi"):
        plan = rewrap.inspect(ctx, bucketwalk.Listed(key, 0, ""))
        assert isinstance(plan, rewrap.Plan)
        plans[key] = plan
    new = rewrap.rewrap_batch(h.transit, k.key, [pl.wrapped.wrapped for pl in plans.values()])

    via.put_object(Bucket=b, Key="race/single", Body=b"the application's new single")
    upload_parts(via, b, "race/multi", [os.urandom(5 * MiB), b"the application's new tail"])
    newest = {key: via.get_object(Bucket=b, Key=key)["Body"].read() for key in plans}

    for (key, plan), wrapped in zip(plans.items(), new, strict=True):
        result = rewrap.apply(ctx, plan, wrapped)
        assert result.outcome is bucketwalk.Outcome.CHANGED, (key, result)
    reader = via  # its DEK cache is keyed by wrapped form: no help here
    for key, body in newest.items():
        assert reader.get_object(Bucket=b, Key=key)["Body"].read() == body
    assert h.open_uploads("race/") == []


def test_resume_after_a_key_and_failures_are_reported(rig: Rig) -> None:
    """--start-after skips what an interrupted run finished; an object whose key Transit can
    no longer rewrap fails on its own, without stopping the others, and the exit is 1; a
    token without the rewrap policy stops the run at the first batch."""
    if rig.name == "moto":
        pytest.skip("command-line behaviour: one store is enough")
    k, via = keyed(rig)
    mount = rig.openbao.transit_mount
    b = rig.bucket
    for name in ("a", "b", "c", "d"):
        via.put_object(Bucket=b, Key=f"resume/{name}", Body=name.encode())
    k.rotate(mount)
    proc = cli(
        k.cli_env,
        "rewrap",
        f"s3://{b}/resume/",
        "--start-after",
        "resume/b",
        "--json",
        *race_flags(rig),
    )
    assert proc.returncode == 0, proc.stderr
    assert (summary(proc)["scanned"], summary(proc)["done"]) == (2, 2)
    versions = {n: stored(rig, f"resume/{n}")["Metadata"]["cloudtaser-key-version"] for n in "abcd"}
    assert versions == {"a": "1", "b": "1", "c": "2", "d": "2"}

    # The proxy's own token may encrypt, decrypt and read the key, but not rewrap.
    proc = cli({**k.cli_env, "VAULT_TOKEN": k.proxy_token}, "rewrap", f"s3://{b}/resume/")
    assert proc.returncode == 1
    assert "stopped: Vault: Vault refused the request" in proc.stdout
    assert "permission denied" in proc.stdout
    assert "resume: run again" in proc.stdout

    # Objects below min_decryption_version cannot be rewrapped any more: reported, exit 1.
    k.rotate(mount)
    k.retire_below(2, mount)
    proc = cli(k.cli_env, "rewrap", f"s3://{b}/resume/", "--json", *race_flags(rig))
    assert proc.returncode == 1
    got = summary(proc)
    assert (got["failed"], got["done"]) == (2, 2)
    assert "FAILED resume/a: Transit cannot rewrap its data key" in proc.stderr
    with pytest.raises(botocore.exceptions.ClientError):
        via.get_object(Bucket=b, Key="resume/a")
