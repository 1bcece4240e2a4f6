"""The pure parts of the operator commands (rewrap, migrate): what they decide about an object,
what they write back, how they cut and seal a body, and how they report."""

from __future__ import annotations

import io
from datetime import datetime
from typing import Any

import pytest
from botocore.exceptions import ClientError

from cloudtaser_s3 import __main__ as cli
from cloudtaser_s3 import bucketwalk as bw
from cloudtaser_s3 import envelope, migrate, rewrap
from cloudtaser_s3.transit import DataKey, VaultUnavailable, WrappedKeyInvalid

WRAPPED_V1 = "vault:v1:" + "A" * 60
WRAPPED_V3 = "vault:v3:" + "B" * 60
OURS = {
    envelope.META_DEK: WRAPPED_V1,
    envelope.META_KEY_VERSION: "1",
    envelope.META_NONCE: "c2FsdHNhbHRzYWx0",
    envelope.META_KEY: "s3-dek-wrapper",
    envelope.META_ALG: envelope.ALG,
}


def seen(headers: dict[str, str], etag: str = '"0123456789abcdef0123456789abcdef"', size=10):
    return bw.Seen("k", etag, size, {"etag": etag, **headers})


def client_error(status: int, code: str) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": "m"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "Op",
    )


# ----------------------------------------------------------------------------- bucketwalk


@pytest.mark.parametrize(
    "url, expected",
    [
        ("s3://b", ("b", "")),
        ("s3://b/", ("b", "")),
        ("s3://b/p/q", ("b", "p/q")),
        ("s3://b/p ü", ("b", "p ü")),
    ],
)
def test_s3_urls(url: str, expected: tuple[str, str]) -> None:
    assert bw.parse_s3_url(url) == expected


@pytest.mark.parametrize("url", ["b/p", "s3://", "s3:///p", "https://b/p"])
def test_s3_urls_refused(url: str) -> None:
    with pytest.raises(ValueError):
        bw.parse_s3_url(url)


def test_attributes_kept_across_a_rewrite() -> None:
    s = seen(
        {
            "content-type": "text/plain",
            "content-encoding": "gzip, aws-chunked",
            "cache-control": "no-cache",
            "expires": "Wed, 21 Oct 2037 07:28:00 GMT",
            "x-amz-storage-class": "STANDARD_IA",
            "x-amz-server-side-encryption": "aws:kms",
            "x-amz-server-side-encryption-aws-kms-key-id": "arn:key",
            "x-amz-server-side-encryption-bucket-key-enabled": "true",
            "x-amz-meta-owner": "alice",
            "last-modified": "x",
            "content-length": "10",
            **OURS,
        }
    )
    attrs = bw.ObjectAttributes.of(s)
    assert attrs.headers["content-encoding"] == "gzip"
    assert "content-length" not in attrs.headers and "etag" not in attrs.headers
    assert attrs.metadata["owner"] == "alice"
    assert attrs.metadata["cloudtaser-alg"] == envelope.ALG
    assert attrs.without_ours() == {"owner": "alice"}
    kwargs = attrs.as_kwargs()
    assert kwargs["ContentType"] == "text/plain"
    assert kwargs["StorageClass"] == "STANDARD_IA"
    assert kwargs["SSEKMSKeyId"] == "arn:key" and kwargs["BucketKeyEnabled"] is True
    assert isinstance(kwargs["Expires"], datetime) and kwargs["Expires"].year == 2037
    assert kwargs["Metadata"]["owner"] == "alice"
    headers = attrs.as_headers()
    assert headers["x-amz-meta-owner"] == "alice"
    assert headers["expires"] == "Wed, 21 Oct 2037 07:28:00 GMT"


def test_attributes_drop_what_a_rewrite_must_not_send() -> None:
    attrs = bw.ObjectAttributes.of(
        seen(
            {
                "x-amz-storage-class": "STANDARD",
                "expires": "soon",
                "content-encoding": "aws-chunked",
            }
        )
    )
    assert attrs.headers == {"expires": "soon"}
    assert "Expires" not in attrs.as_kwargs()  # not a date: nothing a cache would keep
    assert attrs.as_headers() == {"expires": "soon"}


def test_part_extents_and_part_plans() -> None:
    assert bw.part_extents([3, 4, 5]) == [(1, 0, 2), (2, 3, 6), (3, 7, 11)]
    assert bw.plan_parts(0, 4) == [(1, 0, 0)]
    assert bw.plan_parts(10, 4) == [(1, 0, 4), (2, 4, 4), (3, 8, 2)]
    assert bw.plan_parts(8, 4) == [(1, 0, 4), (2, 4, 4)]
    many = bw.plan_parts(10000 * 4 + 1, 4)  # would need 10,001 parts: they grow instead
    assert len(many) <= bw.MAX_PARTS
    assert sum(length for _, _, length in many) == 10000 * 4 + 1


def test_multipart_etags() -> None:
    assert seen({}, etag='"0123456789abcdef0123456789abcdef-3"').parts == 3
    assert seen({}).parts is None


@pytest.mark.parametrize(
    "status, code, changed",
    [
        (412, "PreconditionFailed", True),
        (404, "NoSuchKey", True),
        (409, "ConditionalRequestConflict", True),
        (404, "NoSuchUpload", False),
        (403, "AccessDenied", False),
    ],
)
def test_what_counts_as_changed_meanwhile(status: int, code: str, changed: bool) -> None:
    assert bw.is_changed(client_error(status, code)) is changed


def test_descriptions_are_short() -> None:
    assert bw.describe(client_error(403, "AccessDenied")) == "AccessDenied: m"
    assert bw.describe(OSError("x" * 1000)).startswith("OSError: x")
    assert len(bw.describe(OSError("x" * 1000))) <= 300


def test_watermark_is_the_last_key_before_which_all_is_done() -> None:
    w = bw.Watermark()
    for key in "abcd":
        w.listed(key)
    w.finished("b")
    assert w.value is None
    w.finished("a")
    assert w.value == "b"
    w.finished("d")
    assert w.value == "b"
    w.finished("c")
    assert w.value == "d"


def test_report_counts_and_exit_codes() -> None:
    r = bw.Report(rewrap.LABELS, dry_run=True)
    r.counts[bw.Outcome.DONE] += 2
    r.counts[bw.Outcome.UP_TO_DATE] += 1
    assert r.exit_code() == 0
    text = r.render()
    assert "(dry run)" in text and "would rewrap" in text
    d = r.as_dict()
    assert (d["scanned"], d["done"], d["up_to_date"], d["exit_code"]) == (3, 2, 1, 0)
    r.counts[bw.Outcome.CHANGED] += 1
    assert r.exit_code() == 0  # someone else's newer write is not a failure
    r.counts[bw.Outcome.ATTENTION] += 1
    assert r.exit_code() == 1
    stopped = bw.Report(migrate.LABELS, dry_run=False, stopped="interrupted", resume_after="a b")
    assert stopped.exit_code() == 1
    assert "--start-after 'a b'" in stopped.render()


def test_progress_lines_for_logs() -> None:
    out = io.StringIO()
    lines = bw._Lines(out)
    lines.write("\rrewrap: 1/2\rrewrap: 2/2   \n")
    assert out.getvalue() == "rewrap: 1/2\nrewrap: 2/2\n"


def test_store_conditions_description() -> None:
    text = bw.StoreConditions(True, False, True).describe()
    assert "copy-source If-Match enforced" in text and "PUT If-Match IGNORED" in text


class FakeClient:
    """Records multipart calls; ``complete`` is what CompleteMultipartUpload does."""

    def __init__(self, complete: Any = None):
        self.calls: list[str] = []
        self._complete = complete

    def get_object_tagging(self, **kw: Any) -> dict[str, Any]:
        return {"TagSet": [{"Key": "t", "Value": "1"}]}

    def create_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(f"create Tagging={kw.get('Tagging')}")
        return {"UploadId": "u"}

    def complete_multipart_upload(self, **kw: Any) -> dict[str, Any]:
        self.calls.append(f"complete IfMatch={kw['IfMatch']}")
        if isinstance(self._complete, Exception):
            raise self._complete
        return {"ETag": '"e-1"'}

    def abort_multipart_upload(self, **kw: Any) -> None:
        self.calls.append("abort")


def rewrite(client: FakeClient, parts: Any, recheck: Any = None) -> Any:
    access: Any = bw.StoreAccess(client, None, None, "b")  # type: ignore[arg-type]
    return bw.rewrite_multipart(access, seen({}, etag='"x-1"'), {}, parts, recheck)


def one_part(upload_id: str) -> list[dict[str, Any]]:
    return [{"PartNumber": 1, "ETag": '"p"'}]


def test_a_multipart_rewrite_completes_on_the_etag_seen_and_keeps_tags() -> None:
    c = FakeClient()
    assert rewrite(c, one_part) == {"ETag": '"e-1"'}
    assert c.calls == ["create Tagging=t=1", 'complete IfMatch="x-1"']


def test_a_multipart_rewrite_is_aborted_on_any_failure() -> None:
    changed = FakeClient(complete=client_error(412, "PreconditionFailed"))
    assert rewrite(changed, one_part) is None and changed.calls[-1] == "abort"
    refused = FakeClient(complete=client_error(403, "AccessDenied"))
    with pytest.raises(ClientError):
        rewrite(refused, one_part)
    assert refused.calls[-1] == "abort"
    for parts, recheck in [(lambda upload_id: None, None), (one_part, lambda: False)]:
        c = FakeClient()
        assert rewrite(c, parts, recheck) is None and c.calls[-1] == "abort"

    def broken(upload_id: str) -> Any:
        raise KeyboardInterrupt

    c = FakeClient()
    with pytest.raises(KeyboardInterrupt):
        rewrite(c, broken)
    assert c.calls[-1] == "abort"


# ----------------------------------------------------------------------------- rewrap


def test_rewrap_leaves_alone_what_is_not_ours_or_damaged() -> None:
    assert rewrap.classify(seen({})).outcome is bw.Outcome.NOT_OURS
    damaged = rewrap.classify(seen({envelope.META_NONCE: "x"}))
    assert damaged.outcome is bw.Outcome.ATTENTION
    unknown = rewrap.classify(seen({**OURS, envelope.META_ALG: "AES-999"}))
    assert unknown.outcome is bw.Outcome.ATTENTION and "AES-999" in unknown.detail
    no_key = rewrap.classify(seen({**OURS, envelope.META_KEY: ""}))
    assert no_key.outcome is bw.Outcome.ATTENTION
    bad_dek = rewrap.classify(seen({**OURS, envelope.META_DEK: "plaintext?"}))
    assert bad_dek.outcome is bw.Outcome.ATTENTION


def test_rewrap_reads_the_version_from_the_wrapped_key() -> None:
    w = rewrap.classify(seen({**OURS, envelope.META_KEY_VERSION: "7"}))
    assert w == rewrap.Wrapped("s3-dek-wrapper", WRAPPED_V1, 1, "7")


@pytest.mark.parametrize(
    "version, meta, latest, needed",
    [(1, "1", 3, True), (3, "3", 3, False), (3, "1", 3, True), (4, "4", 3, False)],
)
def test_when_to_rewrap(version: int, meta: str, latest: int, needed: bool) -> None:
    assert rewrap.needs_rewrap(rewrap.Wrapped("k", "w", version, meta), latest) is needed


def test_rewrapped_metadata_changes_only_the_dek_and_its_version() -> None:
    before = {"owner": "alice", **{n.removeprefix("x-amz-meta-"): v for n, v in OURS.items()}}
    after = rewrap.rewrapped_metadata(before, WRAPPED_V3)
    changed = {n for n in before if before[n] != after[n]}
    assert changed == {"cloudtaser-dek", "cloudtaser-key-version"}
    assert (after["cloudtaser-dek"], after["cloudtaser-key-version"]) == (WRAPPED_V3, "3")


def test_a_huge_single_part_object_fails_loudly_without_a_request() -> None:
    big = seen(OURS, size=bw.MAX_SINGLE_WRITE + 1)
    plan = rewrap.Plan(big, rewrap.classify(big), 3)
    ctx: Any = rewrap.Context(None, None, None, bw.ALL_ENFORCED, False, False)  # type: ignore[arg-type]
    result = rewrap.apply(ctx, plan, WRAPPED_V3)
    assert result.outcome is bw.Outcome.FAILED and "5 GiB" in result.detail


class FakeTransit:
    """Refuses whole batches that hold a bad entry, as Transit does by default."""

    def __init__(self, bad: set[str], down: bool = False):
        self.bad, self.down, self.calls = bad, down, 0

    def rewrap(self, key_name: str, wrapped: list[str]) -> list[str]:
        self.calls += 1
        if self.down:
            raise VaultUnavailable("Vault is unavailable: ConnectionError")
        if any(w in self.bad for w in wrapped):
            raise WrappedKeyInvalid("Transit refused to rewrap the data keys")
        return [w.replace("vault:v1:", "vault:v3:") for w in wrapped]


def test_a_refused_batch_is_retried_entry_by_entry() -> None:
    bad = "vault:v1:" + "C" * 60
    transit: Any = FakeTransit({bad})
    out = rewrap.rewrap_batch(transit, "k", [WRAPPED_V1, bad, WRAPPED_V1])
    assert out[0] == out[2] == "vault:v3:" + "A" * 60
    assert isinstance(out[1], WrappedKeyInvalid)
    assert transit.calls == 4
    good: Any = FakeTransit(set())
    assert len(rewrap.rewrap_batch(good, "k", [WRAPPED_V1] * 50)) == 50 and good.calls == 1
    with pytest.raises(VaultUnavailable):
        rewrap.rewrap_batch(FakeTransit(set(), down=True), "k", [WRAPPED_V1])  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- migrate


def test_migrate_leaves_alone_what_is_ours_or_damaged() -> None:
    assert migrate.classify(seen(OURS)).outcome is bw.Outcome.UP_TO_DATE
    unknown = migrate.classify(seen({**OURS, envelope.META_ALG: "AES-999"}))
    assert unknown.outcome is bw.Outcome.ATTENTION
    damaged = migrate.classify(seen({envelope.META_DEK: WRAPPED_V1}))
    assert damaged.outcome is bw.Outcome.ATTENTION
    assert migrate.classify(seen({"x-amz-meta-owner": "alice"})) is None


def test_ciphertext_without_metadata_is_recognised() -> None:
    assert migrate.lost_its_metadata(envelope.MAGIC + b"\x00" * 12)
    assert not migrate.lost_its_metadata(b"CTS")
    assert not migrate.lost_its_metadata(b"")
    assert not migrate.lost_its_metadata(b"hello world")


def test_new_metadata_is_what_the_proxy_writes() -> None:
    dk = DataKey(b"\x01" * 32, WRAPPED_V3, 3, "tenant-key")
    meta = migrate.cloudtaser_metadata(dk, b"\x02" * 12)
    assert meta == {
        "cloudtaser-dek": WRAPPED_V3,
        "cloudtaser-key-version": "3",
        "cloudtaser-nonce": "AgICAgICAgICAgIC",
        "cloudtaser-key": "tenant-key",
        "cloudtaser-alg": envelope.ALG,
    }
    assert {"x-amz-meta-" + n for n in meta} == {
        envelope.META_DEK,
        envelope.META_KEY_VERSION,
        envelope.META_NONCE,
        envelope.META_KEY,
        envelope.META_ALG,
    }


MATERIAL = envelope.ObjectKeyMaterial(b"\x07" * 32, b"\x08" * 12, "dir/object key")


@pytest.mark.parametrize("size", [0, 5, 65536, 2 * 65536 + 3, 600_000])
@pytest.mark.parametrize("first", [0, 100])
def test_sealed_stream_is_one_readable_part(size: int, first: int) -> None:
    data = bytes(range(256)) * (size // 256) + bytes(size % 256)
    source: Any = io.BytesIO(data[first:])
    sealer = envelope.PartSealer(MATERIAL, 0, size)
    body = b"".join(migrate.sealed_stream(data[:first], source, sealer))
    assert len(body) == envelope.sealed_part_length(size)
    assert envelope.open_body(MATERIAL, body) == data


def test_sealed_stream_refuses_a_body_of_another_length() -> None:
    sealer = envelope.PartSealer(MATERIAL, 0, 10)
    with pytest.raises(envelope.FormatError):
        b"".join(migrate.sealed_stream(b"", io.BytesIO(b"short"), sealer))  # type: ignore[arg-type]


def test_multipart_migration_is_format_parts_one_to_n() -> None:
    """Parts sealed one by one, as the command uploads them, read back as one body."""
    data = bytes(range(256)) * 1000 + b"tail"
    body = b""
    for n, offset, length in bw.plan_parts(len(data), 100_000):
        sealer = envelope.PartSealer(MATERIAL, n, length)
        source: Any = io.BytesIO(data[offset : offset + length])
        body += b"".join(migrate.sealed_stream(b"", source, sealer))
    assert body[:4] == envelope.MAGIC
    assert envelope.open_body(MATERIAL, body) == data


def test_error_codes_from_store_answers() -> None:
    xml = b"<?xml version='1.0'?><Error><Code>PreconditionFailed</Code></Error>"
    assert migrate.store_error_code(xml) == "PreconditionFailed"
    assert migrate.store_error_code(b"") == ""


def test_part_sizes_s3_accepts() -> None:
    migrate.check_sizes(5 * 2**20, 5 * 2**30)
    with pytest.raises(ValueError):
        migrate.check_sizes(4 * 2**20, 2**30)
    with pytest.raises(ValueError):
        migrate.check_sizes(5 * 2**30, 2**30)  # sealed, a 5 GiB part is over the limit
    with pytest.raises(ValueError):
        migrate.check_sizes(8 * 2**20, 6 * 2**30)


# ----------------------------------------------------------------------------- command line


def test_command_line_flags() -> None:
    args = cli.parser().parse_args(
        ["rewrap", "s3://b/p", "--dry-run", "--concurrency", "4", "--batch-size", "10"]
        + ["--start-after", "p/k", "--accept-race", "--json", "-v", "--no-progress"]
    )
    assert (args.command, args.url, args.dry_run, args.concurrency) == (
        "rewrap",
        "s3://b/p",
        True,
        4,
    )
    assert (args.batch_size, args.start_after, args.accept_race) == (10, "p/k", True)
    args = cli.parser().parse_args(["migrate", "s3://b", "--part-size", "8Mi"])
    assert args.part_size == 8 * 2**20 and args.multipart_threshold == 5 * 2**30
    with pytest.raises(SystemExit):
        cli.parser().parse_args(["rewrap", "s3://b", "--concurrency", "0"])


def test_command_line_refuses_before_any_request(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["rewrap", "s3://b"]) == 2  # no VAULT_ADDR
    assert "VAULT_ADDR" in capsys.readouterr().err
    for name, value in {
        "VAULT_ADDR": "http://127.0.0.1:9",
        "VAULT_AUTH_METHOD": "token",
        "VAULT_TOKEN": "t",
        "CLOUDTASER_S3PROXY_TRANSIT_KEY": "k",
    }.items():
        monkeypatch.setenv(name, value)
    assert cli.main(["migrate", "bucket/prefix"]) == 2
    assert "is not an s3://bucket[/prefix] URL" in capsys.readouterr().err
    assert cli.main(["migrate", "s3://b", "--part-size", "1Mi"]) == 2
    assert "--part-size" in capsys.readouterr().err


def test_transit_keys_a_prefix_uses() -> None:
    from cloudtaser_s3 import config

    settings = config.from_env(
        {
            "VAULT_ADDR": "http://127.0.0.1:9",
            "VAULT_AUTH_METHOD": "token",
            "VAULT_TOKEN": "t",
            "CLOUDTASER_S3PROXY_TRANSIT_KEY": "default-key",
            "CLOUDTASER_S3PROXY_TRANSIT_KEYS": "bkt/tenant-a/=key-a,bkt=key-b,other=key-c",
        }
    )
    assert bw.keys_for_prefix(settings, "bkt", "") == ["key-b", "key-a"]
    assert bw.keys_for_prefix(settings, "bkt", "tenant-a/x") == ["key-a"]
    assert bw.keys_for_prefix(settings, "bkt", "tenant-b/") == ["key-b"]
    assert bw.keys_for_prefix(settings, "zzz", "") == ["default-key"]
