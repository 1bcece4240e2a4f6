"""``python -m cloudtaser_s3 migrate s3://bucket/prefix``: encrypt, in place, the objects of a
bucket that were stored before the proxy (plaintext), so that afterwards the proxy can refuse
plaintext reads (``CLOUDTASER_S3PROXY_PLAINTEXT_OBJECTS=refuse``).

Each plaintext object is read from the store, sealed exactly as the proxy seals a PutObject (a
fresh DEK wrapped by Transit, a fresh salt, the same ``x-amz-meta-cloudtaser-*`` metadata) and
written back under the same key with its content headers, user metadata and tags. Objects too
large for one PUT go back as a multipart upload whose parts are format parts 1..N, as the proxy
writes a multipart upload. Bodies stream through in bounded memory.

What is never touched: objects already in our format (a rerun skips them: that is the resume),
objects whose metadata is ours but damaged or of an unknown format, and objects without our
metadata whose body starts with the format's magic ``CTS1`` — ciphertext that lost its
metadata, which only its owner can sort out.

Every write is conditional on the ETag the command read (``If-Match`` on the PUT or on
CompleteMultipartUpload), so an application writing the object meanwhile wins.
"""

from __future__ import annotations

import argparse
import base64
import http.client
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import hvac.exceptions

from . import bucketwalk, config, envelope
from .bucketwalk import (
    MAX_PART,
    MAX_SINGLE_WRITE,
    MIN_PART,
    Labels,
    Listed,
    ObjectAttributes,
    Outcome,
    Result,
    Runner,
    Seen,
    StoreAccess,
    StoreConditions,
    ToolError,
    add_common_arguments,
    changed_answer,
    connect,
    head,
    keys_for_prefix,
    object_tagging,
    parse_size_arg,
    plan_parts,
    rewrite_multipart,
    store_conditions,
    token_kept,
    unconditional_multipart,
    walk,
    walk_and_report,
)
from .envelope import ALG, MAGIC, META_ALG, ObjectKeyMaterial, PartSealer, sealed_part_length
from .transit import DataKey, Transit, VaultUnavailable

LABELS = Labels("migrate", "migrated", "would migrate", "not ours (skipped)")
READ_SIZE = 256 * 1024
DEFAULT_PART_SIZE = 512 * 2**20


# ----------------------------------------------------------------------------- decisions


def classify(seen: Seen) -> Result | None:
    """Why an object is left alone, or None when it is a plaintext object to migrate (if its
    body does not start with the magic: see :func:`lost_its_metadata`)."""
    alg = seen.headers.get(META_ALG)
    if alg == ALG:
        return Result(seen.key, Outcome.UP_TO_DATE, "already encrypted")
    if alg is not None:
        return Result(seen.key, Outcome.ATTENTION, f"unknown CloudTaser format {alg!r}")
    if seen.has_cloudtaser_metadata:
        return Result(
            seen.key,
            Outcome.ATTENTION,
            "CloudTaser metadata without a format id (damaged metadata); not touched",
        )
    return None


def lost_its_metadata(first_bytes: bytes) -> bool:
    """A body without our metadata that starts with the magic: ciphertext, never plaintext."""
    return first_bytes[: len(MAGIC)] == MAGIC


CIPHERTEXT_WITHOUT_METADATA = (
    "starts with the CloudTaser magic CTS1 but has no CloudTaser metadata: ciphertext that "
    "lost its metadata (copied outside the proxy?); not touched"
)


def cloudtaser_metadata(data_key: DataKey, salt: bytes) -> dict[str, str]:
    """Our metadata for a new object, as the proxy writes it (botocore Metadata names)."""
    full = {
        envelope.META_DEK: data_key.wrapped,
        envelope.META_KEY_VERSION: str(data_key.key_version),
        envelope.META_NONCE: base64.b64encode(salt).decode(),
        envelope.META_KEY: data_key.key_name,
        envelope.META_ALG: ALG,
    }
    return {name.removeprefix("x-amz-meta-"): value for name, value in full.items()}


def sealed_stream(
    first: bytes, source: http.client.HTTPResponse, sealer: PartSealer
) -> Iterator[bytes]:
    """The sealed part for a plaintext body as it is read; raises (cutting the upload short,
    so the store commits nothing) if the body is not exactly the declared length."""
    chunk = first
    while True:
        if chunk:
            out = sealer.feed(chunk)
            if out:
                yield out
        chunk = source.read(READ_SIZE)
        if not chunk:
            break
    yield sealer.finish()


def store_error_code(answer: bytes) -> str:
    m = re.search(rb"<Code>([^<]{1,100})</Code>", answer)
    return m.group(1).decode("utf-8", "replace") if m else ""


def check_sizes(part_size: int, threshold: int) -> None:
    """The flags must describe uploads S3 accepts."""
    if part_size < MIN_PART or sealed_part_length(part_size) > MAX_PART:
        raise ValueError("--part-size must be 5 MiB or more, and sealed at most 5 GiB")
    if threshold > MAX_SINGLE_WRITE:
        raise ValueError("--multipart-threshold must be at most 5 GiB (one PUT)")


# ----------------------------------------------------------------------------- per object


@dataclass
class Context:
    settings: config.Settings
    access: StoreAccess
    transit: Transit
    conditions: StoreConditions
    accept_race: bool
    dry_run: bool
    part_size: int
    threshold: int  # stored (sealed) size above which an object goes as a multipart upload


def _get(
    ctx: Context, seen: Seen, byte_range: tuple[int, int] | None = None
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    headers = {"if-match": seen.etag}
    if byte_range is not None:
        headers["range"] = f"bytes={byte_range[0]}-{byte_range[1]}"
    a = ctx.access
    return a.store.open_get(a.bucket, seen.key, "", headers, a.credentials)


def _first_bytes(ctx: Context, seen: Seen) -> bytes | None:
    """The first bytes of the object (a 4-byte range), or None when it changed meanwhile."""
    if seen.size < len(MAGIC):
        return b""
    conn, resp = _get(ctx, seen, (0, len(MAGIC) - 1))
    try:
        if resp.status in (404, 412):
            return None
        if resp.status not in (200, 206):
            raise ToolError(f"GET of its first bytes answered {resp.status}")
        return resp.read(len(MAGIC))
    finally:
        conn.close()


def still_the_same(access: StoreAccess, seen: Seen) -> bool:
    now = head(access, seen.key)
    return now is not None and now.etag == seen.etag


def migrate_one(ctx: Context, item: Listed) -> Result:
    seen = head(ctx.access, item.key)
    if seen is None:
        return Result(item.key, Outcome.CHANGED, "deleted meanwhile")
    verdict = classify(seen)
    if verdict is not None:
        return verdict
    multipart = sealed_part_length(seen.size) > ctx.threshold
    what = f"{seen.size} bytes" + (", multipart" if multipart else "")
    if ctx.dry_run:
        first = _first_bytes(ctx, seen)
        if first is None:
            return Result(seen.key, Outcome.CHANGED)
        if lost_its_metadata(first):
            return Result(seen.key, Outcome.ATTENTION, CIPHERTEXT_WITHOUT_METADATA)
        return Result(seen.key, Outcome.DONE, what)
    if multipart:
        return _migrate_multipart(ctx, seen, what)
    return _migrate_single(ctx, seen, what)


def _new_key(ctx: Context, seen: Seen) -> tuple[DataKey, ObjectKeyMaterial, dict[str, str]]:
    """A fresh DEK from the Transit key the proxy would use for this bucket/key."""
    key_name = config.transit_key_for(ctx.settings, ctx.access.bucket, seen.key)
    data_key = ctx.transit.new_data_key(key_name)
    salt = envelope.new_salt()
    material = ObjectKeyMaterial(data_key.plaintext, salt, seen.key)
    return data_key, material, cloudtaser_metadata(data_key, salt)


def verify_written(
    access: StoreAccess, key: str, etag: str, stored_length: int, what: str
) -> Result:
    """Migrated means readable in our format: the store answered 200, but does it hold what
    was written? (SeaweedFS, for one, keeps neither body nor metadata under a key ending in
    "/", which it takes for a directory.) A newer write by someone else is fine."""
    now = head(access, key)
    if now is None:
        return Result(key, Outcome.CHANGED, "deleted right after it was migrated")
    if etag and now.etag.strip('"') != etag.strip('"'):
        return Result(key, Outcome.DONE, what)
    if now.headers.get(META_ALG) != ALG or now.size != stored_length:
        return Result(
            key,
            Outcome.FAILED,
            "the store answered the write but did not keep the encrypted body and its "
            "metadata (a store that treats this key as a directory?)",
        )
    return Result(key, Outcome.DONE, what)


def _migrate_single(ctx: Context, seen: Seen, what: str) -> Result:
    """GET (If-Match) -> seal as part 0 -> PUT (If-Match), streamed."""
    access = ctx.access
    attrs = ObjectAttributes.of(seen)
    tags = object_tagging(access, seen.key)
    _, material, ours = _new_key(ctx, seen)
    headers = attrs.with_metadata({**attrs.without_ours(), **ours}).as_headers()
    if tags:
        headers["x-amz-tagging"] = tags
    headers["if-match"] = seen.etag
    if not ctx.conditions.put_if_match and not still_the_same(access, seen):
        return Result(seen.key, Outcome.CHANGED)
    conn, resp = _get(ctx, seen)
    try:
        if resp.status in (404, 412):
            return Result(seen.key, Outcome.CHANGED)
        if resp.status != 200:
            return Result(seen.key, Outcome.FAILED, f"GET answered {resp.status}")
        first = resp.read(READ_SIZE)
        if lost_its_metadata(first):
            return Result(seen.key, Outcome.ATTENTION, CIPHERTEXT_WITHOUT_METADATA)
        sealer = PartSealer(material, 0, seen.size)
        try:
            status, put_headers, answer = access.store.put_stream(
                access.bucket,
                seen.key,
                "",
                headers,
                sealed_stream(first, resp, sealer),
                sealer.sealed_length,
                access.credentials,
            )
        except OSError:
            # The store may hang up on a refused conditional PUT before the body is sent.
            if not still_the_same(access, seen):
                return Result(seen.key, Outcome.CHANGED)
            raise
    finally:
        conn.close()
    if status == 200:
        return verify_written(
            access, seen.key, put_headers.get("etag", ""), sealer.sealed_length, what
        )
    code = store_error_code(answer)
    if changed_answer(status, code):
        return Result(seen.key, Outcome.CHANGED)
    return Result(seen.key, Outcome.FAILED, f"PUT answered {status} {code}".strip())


def _migrate_multipart(ctx: Context, seen: Seen, what: str) -> Result:
    """CreateMultipartUpload with our metadata; each plaintext range GET (If-Match) -> sealed
    as format part N -> UploadPart; CompleteMultipartUpload (If-Match). Aborted on failure."""
    refused = unconditional_multipart(
        seen.key, ctx.conditions, ctx.accept_race, "needs a multipart upload"
    )
    if refused:
        return refused
    access = ctx.access
    first = _first_bytes(ctx, seen)
    if first is None:
        return Result(seen.key, Outcome.CHANGED)
    if lost_its_metadata(first):
        return Result(seen.key, Outcome.ATTENTION, CIPHERTEXT_WITHOUT_METADATA)
    attrs = ObjectAttributes.of(seen)
    kwargs = attrs.as_kwargs()
    _, material, ours = _new_key(ctx, seen)
    kwargs["Metadata"] = {**attrs.without_ours(), **ours}
    plan = plan_parts(seen.size, ctx.part_size)

    def upload_parts(upload_id: str) -> list[dict[str, Any]] | None:
        parts = []
        for n, offset, length in plan:
            etag = _upload_part(ctx, seen, upload_id, material, n, offset, length)
            if etag is None:
                return None
            parts.append({"PartNumber": n, "ETag": etag})
        return parts

    recheck = None if ctx.conditions.complete_if_match else lambda: still_the_same(access, seen)
    done = rewrite_multipart(access, seen, kwargs, upload_parts, recheck)
    if done is None:
        return Result(seen.key, Outcome.CHANGED)
    stored = sum(sealed_part_length(length) for _, _, length in plan)
    return verify_written(
        access, seen.key, done.get("ETag", ""), stored, f"{what}, {len(plan)} parts"
    )


def _upload_part(
    ctx: Context,
    seen: Seen,
    upload_id: str,
    material: ObjectKeyMaterial,
    number: int,
    offset: int,
    length: int,
) -> str | None:
    """One plaintext range sealed as format part ``number``; its ETag, or None if the object
    changed meanwhile."""
    access = ctx.access
    conn, resp = _get(ctx, seen, (offset, offset + length - 1))
    try:
        if resp.status in (404, 412):
            return None
        if resp.status != 206:
            raise ToolError(f"ranged GET of part {number} answered {resp.status}, not 206")
        sealer = PartSealer(material, number, length)
        query = f"partNumber={number}&uploadId={quote(upload_id, safe='')}"
        status, headers, answer = access.store.put_stream(
            access.bucket,
            seen.key,
            query,
            {},
            sealed_stream(b"", resp, sealer),
            sealer.sealed_length,
            access.credentials,
        )
    finally:
        conn.close()
    if status != 200 or "etag" not in headers:
        code = store_error_code(answer)
        raise ToolError(f"UploadPart {number} answered {status} {code}".strip())
    return headers["etag"]


# ----------------------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--part-size",
        type=parse_size_arg,
        default=DEFAULT_PART_SIZE,
        metavar="SIZE",
        help="plaintext per part of a multipart rewrite (default 512Mi)",
    )
    parser.add_argument(
        "--multipart-threshold",
        type=parse_size_arg,
        default=MAX_SINGLE_WRITE,
        metavar="SIZE",
        help="encrypted size above which an object goes back as a multipart upload "
        "(default 5Gi, the most one PUT takes)",
    )


def run(args: argparse.Namespace, settings: config.Settings, bucket: str, prefix: str) -> int:
    check_sizes(args.part_size, args.multipart_threshold)
    access = connect(settings, bucket, args.concurrency)
    transit = Transit(settings)
    keys = keys_for_prefix(settings, bucket, prefix)
    try:
        transit.login()
        for name in keys:
            transit.latest_version(name)  # the key exists and the token may read it
    except (VaultUnavailable, hvac.exceptions.VaultError) as e:
        raise ToolError(f"Vault: {e}") from None
    with token_kept(transit):
        return _run(args, settings, bucket, prefix, access, transit, keys)


def _run(
    args: argparse.Namespace,
    settings: config.Settings,
    bucket: str,
    prefix: str,
    access: StoreAccess,
    transit: Transit,
    keys: list[str],
) -> int:
    print(
        f"cloudtaser migrate: s3://{bucket}/{prefix}, encrypting plaintext objects with "
        f"Transit key {', '.join(keys)}"
        + (" - dry run, nothing is written" if args.dry_run else ""),
        file=sys.stderr,
    )
    conditions = store_conditions(access, prefix, args.dry_run, LABELS.command)
    if not conditions.put_if_match and not args.accept_race:
        raise ToolError(
            "the store ignores If-Match on PUT, so a migration could overwrite an "
            "application's concurrent write; stop writers or pass --accept-race "
            "(see docs/operator-tools.md)"
        )
    ctx = Context(
        settings,
        access,
        transit,
        conditions,
        args.accept_race,
        args.dry_run,
        args.part_size,
        args.multipart_threshold,
    )

    def feed(runner: Runner) -> None:
        for item in walk(access, prefix, args.start_after):
            if runner.report.stopped:
                break
            runner.listed(item.key)
            runner.submit(item.key, _guarded, ctx, runner, item)

    return walk_and_report(args, LABELS, access, prefix, feed, "the plaintext")


def _guarded(ctx: Context, runner: Runner, item: Listed) -> Result | None:
    """One object; Vault going away stops the run instead of failing every object after
    (those not attempted are not counted: a rerun picks them up)."""
    if runner.report.stopped:
        return None
    try:
        return migrate_one(ctx, item)
    except VaultUnavailable as e:
        runner.report.stopped = f"Vault: {e}"
        return Result(item.key, Outcome.FAILED, f"Vault: {e}")


def main(args: argparse.Namespace) -> int:
    """Entry from ``python -m cloudtaser_s3 migrate``: 0 all done, 1 something failed or
    needs attention, 2 the run could not start."""
    return bucketwalk.main(args, LABELS.command, run)
