"""``python -m cloudtaser_s3 rewrap s3://bucket/prefix``: move every object's wrapped data key to
the Transit key's latest version, without reading or re-encrypting any object data.

After a Transit key rotation, objects still carry DEKs wrapped by older key versions, so
``min_decryption_version`` cannot be raised (old versions retired) until each is rewrapped.
Transit ``rewrap`` re-encrypts a wrapped DEK under the latest version inside Vault — the DEK
itself never leaves Vault, so this command needs no decrypt permission — and the object gets
the new wrapped form by a server-side copy onto itself that replaces only its metadata.

Two store rules shape the copy:

* A copy with ``MetadataDirective=REPLACE`` keeps nothing that is not sent again, so the
  content headers, storage class, store-side encryption and user metadata are sent back as the
  HEAD showed them; only ``cloudtaser-dek`` and ``cloudtaser-key-version`` change.
* The proxy finds a multipart object's plaintext layout from the store's part boundaries, and
  each stored part holds one format part. A plain CopyObject would make it one part at the
  store and unreadable, so a multipart object is copied as a multipart upload whose parts are
  UploadPartCopy of exactly the original stored byte ranges. That also copies objects over the
  5 GiB limit of CopyObject.

Every copy is conditional on the ETag the HEAD saw (``x-amz-copy-source-if-match``, and
``If-Match`` on CompleteMultipartUpload), so an application writing the object meanwhile wins
and the object is reported as changed meanwhile: its new DEK is already wrapped by the latest
version.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import hvac.exceptions
from botocore.exceptions import ClientError

from . import bucketwalk, config
from .bucketwalk import (
    MAX_SINGLE_WRITE,
    Labels,
    Listed,
    ObjectAttributes,
    Outcome,
    Result,
    Runner,
    Seen,
    Stop,
    StoreAccess,
    StoreConditions,
    ToolError,
    add_common_arguments,
    chunked,
    connect,
    describe,
    head,
    is_changed,
    keys_for_prefix,
    part_extents,
    positive_int,
    rewrite_multipart,
    store_conditions,
    stored_part_lengths,
    token_kept,
    unconditional_multipart,
    walk,
    walk_and_report,
)
from .envelope import ALG, META_ALG, META_DEK, META_KEY, META_KEY_VERSION
from .layout import multipart_parts
from .transit import Transit, VaultUnavailable, WrappedKeyInvalid, key_version_of

LABELS = Labels("rewrap", "rewrapped", "would rewrap", "not encrypted (skipped)")
# Metadata names as botocore's Metadata parameter spells them (without x-amz-meta-).
DEK_NAME = META_DEK.removeprefix("x-amz-meta-")
VERSION_NAME = META_KEY_VERSION.removeprefix("x-amz-meta-")


# ----------------------------------------------------------------------------- decisions


@dataclass(frozen=True)
class Wrapped:
    """What an object's metadata says about its data key."""

    key_name: str
    wrapped: str
    version: int  # the N of vault:vN: in the wrapped DEK, which is what Transit goes by
    meta_version: str | None  # cloudtaser-key-version as stored


def classify(seen: Seen) -> Result | Wrapped:
    """An object's wrapped key, or why the command leaves the object alone."""
    alg = seen.headers.get(META_ALG)
    if alg is None:
        if seen.has_cloudtaser_metadata:
            return Result(
                seen.key,
                Outcome.ATTENTION,
                "CloudTaser metadata without a format id (damaged metadata); not touched",
            )
        return Result(seen.key, Outcome.NOT_OURS, "not encrypted")
    if alg != ALG:
        return Result(seen.key, Outcome.ATTENTION, f"unknown CloudTaser format {alg!r}")
    key_name = seen.headers.get(META_KEY, "")
    wrapped = seen.headers.get(META_DEK, "")
    if not key_name:
        return Result(seen.key, Outcome.ATTENTION, "no Transit key name in its metadata")
    try:
        version = key_version_of(wrapped)
    except WrappedKeyInvalid:
        return Result(
            seen.key, Outcome.ATTENTION, "its wrapped data key is not a Transit ciphertext"
        )
    return Wrapped(key_name, wrapped, version, seen.headers.get(META_KEY_VERSION))


def needs_rewrap(w: Wrapped, latest: int) -> bool:
    """Older than the key's latest version, or metadata that misstates the version."""
    return w.version < latest or w.meta_version != str(w.version)


def rewrapped_metadata(metadata: Mapping[str, str], new_wrapped: str) -> dict[str, str]:
    """The object's user metadata with only the wrapped DEK and its key version replaced."""
    out = dict(metadata)
    out[DEK_NAME] = new_wrapped
    out[VERSION_NAME] = str(key_version_of(new_wrapped))
    return out


@dataclass(frozen=True)
class Plan:
    """An object to rewrap, as seen by its HEAD."""

    seen: Seen
    wrapped: Wrapped
    latest: int


# ----------------------------------------------------------------------------- Vault


class LatestVersions:
    """Each Transit key's latest version, read once per run and key name met; a key that
    cannot be read is asked once, and every object naming it fails with the same reason."""

    def __init__(self, transit: Transit):
        self._transit = transit
        self._lock = threading.Lock()
        self._known: dict[str, int | Exception] = {}

    def get(self, key_name: str) -> int:
        with self._lock:
            known = self._known.get(key_name)
        if known is None:
            try:
                known = self._transit.latest_version(key_name)
            except (VaultUnavailable, hvac.exceptions.VaultError) as e:
                known = VaultUnavailable(f"cannot read Transit key {key_name!r}: {e}")
            with self._lock:
                self._known[key_name] = known
        if isinstance(known, Exception):
            raise known
        return known


def rewrap_batch(transit: Transit, key_name: str, wrapped: list[str]) -> list[str | Exception]:
    """New wrapped forms, one Transit call for the batch; when Transit refuses the batch
    (any entry it cannot rewrap fails the whole call), each entry on its own, so only the
    objects at fault fail. VaultUnavailable (Vault down after Transit's own retries, or the
    policy lacks rewrap) propagates."""
    try:
        return list(transit.rewrap(key_name, wrapped))
    except WrappedKeyInvalid as e:
        if len(wrapped) == 1:
            return [e]
    out: list[str | Exception] = []
    for w in wrapped:
        try:
            out.extend(transit.rewrap(key_name, [w]))
        except WrappedKeyInvalid as e:
            out.append(e)
    return out


# ----------------------------------------------------------------------------- per object


@dataclass
class Context:
    access: StoreAccess
    transit: Transit
    versions: LatestVersions
    conditions: StoreConditions
    accept_race: bool
    dry_run: bool


def inspect(ctx: Context, item: Listed) -> Result | Plan:
    seen = head(ctx.access, item.key)
    if seen is None:
        return Result(item.key, Outcome.CHANGED, "deleted meanwhile")
    verdict = classify(seen)
    if isinstance(verdict, Result):
        return verdict
    latest = ctx.versions.get(verdict.key_name)
    if not needs_rewrap(verdict, latest):
        return Result(item.key, Outcome.UP_TO_DATE, f"v{verdict.version}")
    return Plan(seen, verdict, latest)


def unchanged(access: StoreAccess, seen: Seen) -> bool:
    """The object is still the one we saw (the fallback for stores that ignore conditions)."""
    now = head(access, seen.key)
    return (
        now is not None
        and now.etag == seen.etag
        and now.headers.get(META_DEK) == seen.headers.get(META_DEK)
    )


def apply(ctx: Context, plan: Plan, new_wrapped: str) -> Result:
    """Give the object its rewrapped DEK by a server-side copy onto itself."""
    seen = plan.seen
    attrs = ObjectAttributes.of(seen)
    attrs = attrs.with_metadata(rewrapped_metadata(attrs.metadata, new_wrapped))
    change = f"v{plan.wrapped.version} -> v{key_version_of(new_wrapped)}"
    if seen.parts is None:
        if seen.size > MAX_SINGLE_WRITE:
            return Result(
                seen.key,
                Outcome.FAILED,
                "a single-part object over 5 GiB cannot be copied server-side; not changed",
            )
        # Without copy-source conditions the run needed --accept-race: check just before.
        if not ctx.conditions.copy_source_if_match and not unchanged(ctx.access, seen):
            return Result(seen.key, Outcome.CHANGED)
        return _copy_single(ctx, seen, attrs, change)
    return _copy_multipart(ctx, seen, attrs, change)


def _source(ctx: Context, seen: Seen) -> dict[str, str]:
    return {"Bucket": ctx.access.bucket, "Key": seen.key}


def _copy_single(ctx: Context, seen: Seen, attrs: ObjectAttributes, change: str) -> Result:
    try:
        ctx.access.client.copy_object(
            Bucket=ctx.access.bucket,
            Key=seen.key,
            CopySource=_source(ctx, seen),
            CopySourceIfMatch=seen.etag,
            MetadataDirective="REPLACE",
            **attrs.as_kwargs(),
        )
    except ClientError as e:
        if is_changed(e):
            return Result(seen.key, Outcome.CHANGED)
        raise
    return Result(seen.key, Outcome.DONE, change)


def _copy_multipart(ctx: Context, seen: Seen, attrs: ObjectAttributes, change: str) -> Result:
    """CreateMultipartUpload with the new metadata, UploadPartCopy of each stored part's exact
    byte range, CompleteMultipartUpload — all conditional on the ETag seen."""
    refused = unconditional_multipart(
        seen.key, ctx.conditions, ctx.accept_race, "a multipart object"
    )
    if refused:
        return refused
    access = ctx.access
    lengths = stored_part_lengths(access, seen)
    if lengths is None:
        return Result(seen.key, Outcome.CHANGED, "its parts changed meanwhile; skipped")

    def copy_parts(upload_id: str) -> list[dict[str, Any]]:
        parts = []
        for n, first, last in part_extents(lengths):
            resp = access.client.upload_part_copy(
                Bucket=access.bucket,
                Key=seen.key,
                UploadId=upload_id,
                PartNumber=n,
                CopySource=_source(ctx, seen),
                CopySourceRange=f"bytes={first}-{last}",
                CopySourceIfMatch=seen.etag,
            )
            parts.append({"PartNumber": n, "ETag": resp["CopyPartResult"]["ETag"]})
        return parts

    # A store that ignores a condition needed --accept-race: check just before completing.
    conditional = ctx.conditions.copy_source_if_match and ctx.conditions.complete_if_match
    recheck = None if conditional else lambda: unchanged(access, seen)
    done = rewrite_multipart(access, seen, attrs.as_kwargs(), copy_parts, recheck)
    if done is None:
        return Result(seen.key, Outcome.CHANGED)
    got = multipart_parts(done.get("ETag", ""))
    if got is not None and got != len(lengths):
        return Result(
            seen.key,
            Outcome.FAILED,
            f"the store completed the copy with {got} parts instead of {len(lengths)}; the "
            "proxy cannot read it in this layout",
        )
    return Result(seen.key, Outcome.DONE, f"{change}, {len(lengths)} parts")


# ----------------------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    parser.add_argument(
        "--batch-size",
        type=positive_int,
        default=100,
        metavar="N",
        help="wrapped keys per Transit rewrap call (default 100)",
    )


def run(args: argparse.Namespace, settings: config.Settings, bucket: str, prefix: str) -> int:
    access = connect(settings, bucket, args.concurrency)
    transit = Transit(settings)
    versions = LatestVersions(transit)
    try:
        transit.login()
        latest = {name: versions.get(name) for name in keys_for_prefix(settings, bucket, prefix)}
    except VaultUnavailable as e:
        raise ToolError(f"Vault: {e}") from None
    with token_kept(transit):
        return _run(args, bucket, prefix, access, transit, versions, latest)


def _run(
    args: argparse.Namespace,
    bucket: str,
    prefix: str,
    access: StoreAccess,
    transit: Transit,
    versions: LatestVersions,
    latest: dict[str, int],
) -> int:
    keys = ", ".join(f"{name} v{v}" for name, v in latest.items())
    print(
        f"cloudtaser rewrap: s3://{bucket}/{prefix} to the latest version of each object's "
        f"Transit key ({keys})" + (" - dry run, nothing is written" if args.dry_run else ""),
        file=sys.stderr,
    )
    conditions = store_conditions(access, prefix, args.dry_run, LABELS.command)
    if not conditions.copy_source_if_match and not args.accept_race:
        raise ToolError(
            "the store ignores x-amz-copy-source-if-match, so a copy could overwrite an "
            "application's concurrent write with an old key; stop writers or pass "
            "--accept-race (see docs/operator-tools.md)"
        )
    ctx = Context(access, transit, versions, conditions, args.accept_race, args.dry_run)

    def feed(runner: Runner) -> None:
        for chunk in chunked(walk(access, prefix, args.start_after), args.batch_size):
            _run_chunk(ctx, runner, chunk)

    return walk_and_report(args, LABELS, access, prefix, feed, "their old key versions")


def _run_chunk(ctx: Context, runner: Runner, chunk: list[Listed]) -> None:
    for item in chunk:
        runner.listed(item.key)
    plans: dict[str, list[Plan]] = {}
    for item, got in zip(chunk, runner.map(lambda item: inspect(ctx, item), chunk), strict=True):
        if isinstance(got, Plan):
            plans.setdefault(got.wrapped.key_name, []).append(got)
        elif isinstance(got, Result):
            runner.record(got)
        else:
            runner.record(Result(item.key, Outcome.FAILED, describe(got)))
    for key_name, group in plans.items():
        if ctx.dry_run:
            for plan in group:
                detail = f"v{plan.wrapped.version} -> v{plan.latest}"
                runner.record(Result(plan.seen.key, Outcome.DONE, detail))
            continue
        try:
            new = rewrap_batch(ctx.transit, key_name, [p.wrapped.wrapped for p in group])
        except VaultUnavailable as e:
            runner.report.stopped = f"Vault: {e}"
            for plan in group:
                runner.record(Result(plan.seen.key, Outcome.FAILED, f"Vault: {e}"))
            raise Stop from None
        for plan, wrapped in zip(group, new, strict=True):
            if isinstance(wrapped, Exception):
                runner.record(
                    Result(
                        plan.seen.key,
                        Outcome.FAILED,
                        f"Transit cannot rewrap its data key (key {key_name!r}, "
                        f"v{plan.wrapped.version}; below min_decryption_version?): {wrapped}",
                    )
                )
            else:
                runner.submit(plan.seen.key, apply, ctx, plan, wrapped)


def main(args: argparse.Namespace) -> int:
    """Entry from ``python -m cloudtaser_s3 rewrap``: 0 all done, 1 something failed or
    needs attention, 2 the run could not start."""
    return bucketwalk.main(args, LABELS.command, run)
