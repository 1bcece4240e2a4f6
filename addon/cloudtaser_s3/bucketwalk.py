"""What the operator commands (``rewrap``, ``migrate``) share: walking a bucket prefix, talking to
the store with the upstream credentials, keeping an object's attributes across a rewrite,
rewriting a multipart object in place, learning which conditional requests the store enforces,
and running the walk with progress, a summary and an exit code.

The commands talk to the store directly, never through the proxy: rewrap changes only metadata
(a server-side copy, no object data moves) and migrate writes our format itself. Both rewrite
objects in place while applications may be writing them, so every write is conditional on the
ETag the command saw; :func:`probe_conditions` finds out whether the store honours that.
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import io
import json
import math
import os
import shlex
import sys
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import botocore.session
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from . import config
from .envelope import META_PREFIX
from .layout import multipart_parts
from .upstream import Store

if TYPE_CHECKING:
    from .transit import Transit

MiB = 2**20
GiB = 2**30
#: S3's limits: a single PUT or CopyObject, and one part (also of UploadPartCopy).
MAX_SINGLE_WRITE = 5 * GiB
MAX_PART = 5 * GiB
MIN_PART = 5 * MiB
MAX_PARTS = 10000
#: A probe object the commands write (and delete) to learn what the store enforces.
PROBE_MARK = ".cloudtaser-probe-"
#: An ETag no object has: conditions carrying it must fail on a store that checks them.
IMPOSSIBLE_ETAG = '"00000000000000000000000000000000"'


class ToolError(Exception):
    """The command cannot start or go on; str() is the one line shown to the operator."""


# ----------------------------------------------------------------------------- arguments


def parse_s3_url(text: str) -> tuple[str, str]:
    """``s3://bucket`` or ``s3://bucket/prefix`` to (bucket, prefix); ValueError otherwise."""
    if not text.startswith("s3://"):
        raise ValueError(f"{text!r} is not an s3://bucket[/prefix] URL")
    bucket, _, prefix = text[len("s3://") :].partition("/")
    if not bucket or "?" in bucket or "#" in bucket:
        raise ValueError(f"{text!r} names no bucket")
    return bucket, prefix


def parse_size_arg(text: str) -> int:
    """A size flag: bytes, or with Ki/Mi/Gi/Ti or K/M/G/T as MAX_OBJECT_SIZE takes it."""
    try:
        return config.parse_size("size", text)
    except config.ConfigError as e:
        raise ValueError(e.problem) from None


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be at least 1")
    return value


def add_common_arguments(parser: Any) -> None:
    """The flags both commands take (argparse)."""
    parser.add_argument("url", metavar="s3://BUCKET[/PREFIX]", help="what to walk")
    parser.add_argument(
        "--dry-run", action="store_true", help="report what would change; write nothing"
    )
    parser.add_argument(
        "--concurrency",
        type=positive_int,
        default=16,
        metavar="N",
        help="objects worked on at once (default 16)",
    )
    parser.add_argument(
        "--start-after",
        metavar="KEY",
        default=None,
        help="skip keys up to and including KEY (resume an interrupted run)",
    )
    parser.add_argument(
        "--accept-race",
        action="store_true",
        help="run even when the store ignores conditional writes (If-Match): the ETag is "
        "re-checked just before each write instead, which leaves a short window in which a "
        "concurrent application write can be lost; see docs/operator-tools.md",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="one line per object changed")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON on stdout")


def keys_for_prefix(settings: config.Settings, bucket: str, prefix: str) -> list[str]:
    """The Transit keys the proxy wraps new objects under ``bucket/prefix`` with: the key for
    the prefix itself, and those of CLOUDTASER_S3PROXY_TRANSIT_KEYS routes nested below it."""
    names = [config.transit_key_for(settings, bucket, prefix)]
    for route in settings.transit_key_map:
        if route.bucket == bucket and route.prefix.startswith(prefix) and route.key not in names:
            names.append(route.key)
    return names


def chunked(items: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


# ----------------------------------------------------------------------------- the store


@dataclass
class StoreAccess:
    """The store, reached with the upstream credentials (botocore's standard chain).

    ``client`` (botocore, thread-safe) for listings, HEADs, copies and multipart calls;
    ``store`` for the streamed GETs and PUTs of migrate, which botocore cannot send in bounded
    memory over plain HTTP (it would hash the whole body to sign it).
    """

    client: Any
    store: Store
    credentials: Any
    bucket: str


def connect(
    settings: config.Settings,
    bucket: str,
    concurrency: int,
    session: botocore.session.Session | None = None,
) -> StoreAccess:
    """Clients for the store at S3_ENDPOINT; ``session`` defaults to botocore's (the standard
    credential chain)."""
    session = session or botocore.session.get_session()
    credentials = session.get_credentials()
    if credentials is None:
        raise ToolError(
            "no upstream credentials found (botocore's chain: AWS_ACCESS_KEY_ID/"
            "AWS_SECRET_ACCESS_KEY, shared files, web identity, instance metadata)"
        )
    client = session.create_client(
        "s3",
        endpoint_url=settings.s3_endpoint,
        region_name=settings.s3_region,
        config=Config(
            # Path style, as the proxy's own requests to the store.
            s3={"addressing_style": "path"},
            max_pool_connections=concurrency + 4,
            retries={"mode": "standard", "max_attempts": 5},
            connect_timeout=10,
            read_timeout=120,
            # No checksums of our own on writes: copies have no body, and stores that predate
            # the 2025 defaults refuse the trailers.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    )
    store = Store(settings.s3_endpoint, settings.s3_region, os.environ.get("AWS_CA_BUNDLE"))
    return StoreAccess(client, store, credentials, bucket)


@dataclass(frozen=True)
class Listed:
    key: str
    size: int
    etag: str


def walk(access: StoreAccess, prefix: str, start_after: str | None = None) -> Iterator[Listed]:
    """Every object under ``prefix`` in key order, from after ``start_after``."""
    kwargs: dict[str, Any] = {"Bucket": access.bucket, "Prefix": prefix}
    if start_after:
        kwargs["StartAfter"] = start_after
    for page in access.client.get_paginator("list_objects_v2").paginate(**kwargs):
        for item in page.get("Contents", []):
            if PROBE_MARK in item["Key"]:
                continue  # a probe of ours, maybe left by a run that was killed
            yield Listed(item["Key"], int(item.get("Size", 0)), item.get("ETag", ""))


@dataclass(frozen=True)
class Seen:
    """One object as one HEAD saw it: what every later write is conditional on."""

    key: str
    etag: str
    size: int
    headers: Mapping[str, str]  # lower-case names, values as the store sent them

    @property
    def parts(self) -> int | None:
        """The part count of a multipart object, None for a single-part one."""
        return multipart_parts(self.etag)

    def cloudtaser(self, name: str) -> str | None:
        return self.headers.get(name)

    @property
    def has_cloudtaser_metadata(self) -> bool:
        return any(name.startswith(META_PREFIX) for name in self.headers)


def error_code(e: ClientError) -> str:
    err = e.response.get("Error", {})
    return str(err.get("Code") or e.response.get("ResponseMetadata", {}).get("HTTPStatusCode"))


def http_status(e: ClientError) -> int:
    return int(e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)


def changed_answer(status: int, code: str) -> bool:
    """The store's answer says the object is no longer the one we saw: a condition failed, or
    it is gone (botocore's errors and the raw answers of migrate's streamed PUTs alike)."""
    return status == 412 or code in (
        "PreconditionFailed",
        "NoSuchKey",
        "ConditionalRequestConflict",
    )


def is_changed(e: ClientError) -> bool:
    return changed_answer(http_status(e), error_code(e))


def one_line(text: str) -> str:
    """Vault's and the stores' messages span lines; reports show one line per object."""
    return " ".join(text.split())


def describe(e: BaseException) -> str:
    """A short, secret-free reason for one object's failure."""
    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        message = str(err.get("Message") or "").strip()
        return f"{error_code(e)}: {message}"[:300] if message else error_code(e)
    text = str(e).strip()
    return f"{type(e).__name__}: {text}"[:300] if text else type(e).__name__


def head(access: StoreAccess, key: str, part_number: int | None = None) -> Seen | None:
    """HEAD an object (or one part of it); None when it does not exist (any more)."""
    kwargs: dict[str, Any] = {"Bucket": access.bucket, "Key": key}
    if part_number is not None:
        kwargs["PartNumber"] = part_number
    try:
        resp = access.client.head_object(**kwargs)
    except ClientError as e:
        if http_status(e) == 404:
            return None
        raise
    headers = {k.lower(): v for k, v in resp["ResponseMetadata"]["HTTPHeaders"].items()}
    return Seen(key, headers.get("etag", ""), int(resp.get("ContentLength", 0)), headers)


def object_tagging(access: StoreAccess, key: str) -> str | None:
    """The object's tags as an ``x-amz-tagging`` value, None when it has none. A PUT or a
    multipart upload starts without tags, so a rewrite has to carry them itself."""
    try:
        resp = access.client.get_object_tagging(Bucket=access.bucket, Key=key)
    except ClientError as e:
        if error_code(e) in ("NotImplemented", "NoSuchTagSet") or http_status(e) == 501:
            return None
        raise
    tags = [(t["Key"], t["Value"]) for t in resp.get("TagSet", [])]
    return urlencode(tags, quote_via=quote) if tags else None


# ----------------------------------------------------------------------------- attributes

# What an object's HEAD says about it that a rewrite must keep: header, botocore parameter.
_KEPT = (
    ("content-type", "ContentType"),
    ("content-encoding", "ContentEncoding"),
    ("content-disposition", "ContentDisposition"),
    ("content-language", "ContentLanguage"),
    ("cache-control", "CacheControl"),
    ("expires", "Expires"),
    ("x-amz-website-redirect-location", "WebsiteRedirectLocation"),
    ("x-amz-storage-class", "StorageClass"),
    ("x-amz-server-side-encryption", "ServerSideEncryption"),
    ("x-amz-server-side-encryption-aws-kms-key-id", "SSEKMSKeyId"),
    ("x-amz-server-side-encryption-bucket-key-enabled", "BucketKeyEnabled"),
)
_USER_META = "x-amz-meta-"


@dataclass(frozen=True)
class ObjectAttributes:
    """Content headers, storage class, store-side encryption and user metadata of an object.

    A copy with ``MetadataDirective=REPLACE``, a PUT and a new multipart upload all start from
    nothing: whatever is not sent again is lost (and the storage class falls back to STANDARD).
    ``metadata`` holds every ``x-amz-meta-*`` value by its name without the prefix, ours too.
    """

    headers: Mapping[str, str]
    metadata: Mapping[str, str]

    @classmethod
    def of(cls, seen: Seen) -> ObjectAttributes:
        headers = {name: seen.headers[name] for name, _ in _KEPT if name in seen.headers}
        encodings = [
            e.strip()
            for e in headers.get("content-encoding", "").split(",")
            if e.strip() and e.strip().lower() != "aws-chunked"
        ]
        if encodings:
            headers["content-encoding"] = ", ".join(encodings)
        else:
            headers.pop("content-encoding", None)
        if headers.get("x-amz-storage-class", "").upper() == "STANDARD":
            del headers["x-amz-storage-class"]
        metadata = {
            name[len(_USER_META) :]: value
            for name, value in seen.headers.items()
            if name.startswith(_USER_META)
        }
        return cls(headers, metadata)

    def with_metadata(self, metadata: Mapping[str, str]) -> ObjectAttributes:
        return ObjectAttributes(self.headers, dict(metadata))

    def without_ours(self) -> dict[str, str]:
        """User metadata without any ``cloudtaser-*`` entry."""
        ours = META_PREFIX[len(_USER_META) :]
        return {k: v for k, v in self.metadata.items() if not k.startswith(ours)}

    def as_headers(self) -> dict[str, str]:
        """As request headers (raw values), for a PUT the command sends itself."""
        out = dict(self.headers)
        out.update({_USER_META + k: v for k, v in self.metadata.items()})
        return out

    def as_kwargs(self) -> dict[str, Any]:
        """As botocore parameters, for CopyObject and CreateMultipartUpload."""
        out: dict[str, Any] = {}
        for name, param in _KEPT:
            if name not in self.headers:
                continue
            value: Any = self.headers[name]
            if param == "Expires":
                value = _http_date(value)
                if value is None:
                    continue  # not a date: caches treat it as expired anyway
            elif param == "BucketKeyEnabled":
                value = value.strip().lower() == "true"
            out[param] = value
        out["Metadata"] = dict(self.metadata)
        return out


def _http_date(value: str) -> datetime | None:
    try:
        return parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None


# ----------------------------------------------------------------------------- multipart


def part_extents(lengths: list[int]) -> list[tuple[int, int, int]]:
    """(part number, first byte, last byte) of each stored part, from their lengths."""
    out = []
    offset = 0
    for n, length in enumerate(lengths, 1):
        out.append((n, offset, offset + length - 1))
        offset += length
    return out


def stored_part_lengths(access: StoreAccess, seen: Seen) -> list[int] | None:
    """Each part's stored length (HEAD with partNumber, as the proxy learns a layout), or None
    when the object changed meanwhile (the lengths do not add up, or another ETag shows)."""
    count = seen.parts
    assert count is not None
    lengths = []
    offset = 0
    for n in range(1, count + 1):
        # No If-Match here: moto answers a part HEAD with the part's own ETag.
        part = head(access, seen.key, part_number=n)
        if part is None:
            return None
        shown = multipart_parts(part.etag)
        if shown is not None and part.etag != seen.etag:
            return None
        content_range = part.headers.get("content-range", "")
        if content_range:
            start = content_range.removeprefix("bytes ").partition("-")[0]
            if start.strip() != str(offset):
                return None
        lengths.append(part.size)
        offset += part.size
    return lengths if offset == seen.size else None


def abort_upload(access: StoreAccess, key: str, upload_id: str) -> None:
    # On failure, the store's lifecycle rule for incomplete uploads is the backstop.
    with contextlib.suppress(ClientError, BotoCoreError):
        access.client.abort_multipart_upload(Bucket=access.bucket, Key=key, UploadId=upload_id)


def unconditional_multipart(
    key: str, conditions: StoreConditions, accept_race: bool, what: str
) -> Result | None:
    """Refuse a multipart rewrite whose completion cannot be conditional, unless the operator
    accepted the race: ``what`` (the object) is left as it was."""
    if conditions.complete_if_match or accept_race:
        return None
    return Result(
        key,
        Outcome.FAILED,
        f"{what}, and the store ignores If-Match on CompleteMultipartUpload; not changed "
        "(see --accept-race)",
    )


def rewrite_multipart(
    access: StoreAccess,
    seen: Seen,
    kwargs: dict[str, Any],
    upload_parts: Callable[[str], list[dict[str, Any]] | None],
    recheck: Callable[[], bool] | None,
) -> dict[str, Any] | None:
    """Rewrite ``seen`` in place as a multipart upload: create it with ``kwargs`` and the
    object's tags (a new upload starts without them), send the parts by ``upload_parts(upload
    id)``, complete it on the condition of the ETag seen. CompleteMultipartUpload's answer, or
    None when the object changed meanwhile: a refused condition, ``upload_parts`` returning
    None, or ``recheck()`` false (set for stores that ignore a condition). Any failure aborts
    the upload, so no half-written upload is left to the lifecycle rule."""
    tags = object_tagging(access, seen.key)
    if tags:
        kwargs["Tagging"] = tags
    upload_id = access.client.create_multipart_upload(Bucket=access.bucket, Key=seen.key, **kwargs)[
        "UploadId"
    ]
    try:
        parts = upload_parts(upload_id)
        if parts is None or (recheck is not None and not recheck()):
            abort_upload(access, seen.key, upload_id)
            return None
        return access.client.complete_multipart_upload(
            Bucket=access.bucket,
            Key=seen.key,
            UploadId=upload_id,
            MultipartUpload={"Parts": parts},
            IfMatch=seen.etag,
        )
    except ClientError as e:
        abort_upload(access, seen.key, upload_id)
        if is_changed(e):
            return None
        raise
    except BaseException:
        abort_upload(access, seen.key, upload_id)
        raise


# ----------------------------------------------------------------------------- conditions


@dataclass(frozen=True)
class StoreConditions:
    """Which conditional requests the store enforces (found by :func:`probe_conditions`)."""

    copy_source_if_match: bool
    put_if_match: bool
    complete_if_match: bool

    def describe(self) -> str:
        def yn(v: bool) -> str:
            return "enforced" if v else "IGNORED"

        return (
            f"copy-source If-Match {yn(self.copy_source_if_match)}, "
            f"PUT If-Match {yn(self.put_if_match)}, "
            f"CompleteMultipartUpload If-Match {yn(self.complete_if_match)}"
        )


ALL_ENFORCED = StoreConditions(True, True, True)


def _refused(call: Callable[[], Any]) -> bool:
    """True when the store refuses a request whose condition cannot hold."""
    try:
        call()
    except ClientError as e:
        if http_status(e) in (412, 404) or error_code(e) == "PreconditionFailed":
            return True
        if http_status(e) in (400, 501) and error_code(e) in ("NotImplemented", "InvalidArgument"):
            return False
        raise
    return False


def probe_conditions(access: StoreAccess, prefix: str) -> StoreConditions:
    """Ask the store, with a probe object of our own under ``prefix``, which conditions it
    enforces: some S3 implementations silently ignore them, and an unconditional in-place
    rewrite can lose an application's concurrent write. The probe is deleted afterwards."""
    key = f"{prefix}{PROBE_MARK}{uuid.uuid4().hex}"
    c, b = access.client, access.bucket
    c.put_object(Bucket=b, Key=key, Body=b"cloudtaser conditional-write probe")
    try:
        copy = _refused(
            lambda: c.copy_object(
                Bucket=b,
                Key=key,
                CopySource={"Bucket": b, "Key": key},
                MetadataDirective="REPLACE",
                Metadata={"probe": "copy"},
                CopySourceIfMatch=IMPOSSIBLE_ETAG,
            )
        )
        put = _refused(
            lambda: c.put_object(Bucket=b, Key=key, Body=b"probe", IfMatch=IMPOSSIBLE_ETAG)
        )
        upload_id = c.create_multipart_upload(Bucket=b, Key=key)["UploadId"]
        try:
            part = c.upload_part(Bucket=b, Key=key, UploadId=upload_id, PartNumber=1, Body=b"p")
            complete = _refused(
                lambda: c.complete_multipart_upload(
                    Bucket=b,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": part["ETag"]}]},
                    IfMatch=IMPOSSIBLE_ETAG,
                )
            )
        finally:
            abort_upload(access, key, upload_id)
    finally:
        try:
            c.delete_object(Bucket=b, Key=key)
        except ClientError as e:
            print(
                f"cloudtaser: could not delete the probe object {key}: {describe(e)}",
                file=sys.stderr,
            )
    return StoreConditions(copy, put, complete)


def store_warnings(access: StoreAccess, prefix: str, since: float, what: str) -> list[str]:
    """Things about the bucket an operator must know after a run (best effort)."""
    notes = []
    try:
        status = access.client.get_bucket_versioning(Bucket=access.bucket).get("Status")
        if status in ("Enabled", "Suspended"):
            notes.append(
                f"versioning is {status.lower()} on this bucket: noncurrent versions keep "
                f"{what} (see docs/operator-tools.md)"
            )
    except (ClientError, BotoCoreError):
        pass
    try:
        started = 0
        pages = access.client.get_paginator("list_multipart_uploads").paginate(
            Bucket=access.bucket, Prefix=prefix
        )
        for page in pages:
            for up in page.get("Uploads", []):
                initiated = up.get("Initiated")
                if isinstance(initiated, datetime) and initiated.timestamp() < since:
                    started += 1
        if started:
            notes.append(
                f"{started} multipart upload(s) under the prefix were in progress before this "
                "run; objects they complete carry the key version of their start: run again "
                "once they are done (or abort them)"
            )
    except (ClientError, BotoCoreError):
        pass
    return notes


# ----------------------------------------------------------------------------- reporting


class Outcome(enum.Enum):
    UP_TO_DATE = "up_to_date"
    DONE = "done"
    NOT_OURS = "not_ours"
    CHANGED = "changed"
    ATTENTION = "attention"
    FAILED = "failed"


@dataclass(frozen=True)
class Result:
    key: str
    outcome: Outcome
    detail: str = ""


@dataclass(frozen=True)
class Labels:
    """How one command names its outcomes."""

    command: str
    done: str  # "rewrapped"
    would: str  # "would rewrap"
    not_ours: str  # "not encrypted (skipped)"


@dataclass
class Report:
    labels: Labels
    dry_run: bool
    started: float = field(default_factory=time.monotonic)
    counts: Counter[Outcome] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    resume_after: str | None = None
    stopped: str | None = None  # why the run ended early

    @property
    def scanned(self) -> int:
        return sum(self.counts.values())

    def exit_code(self) -> int:
        bad = self.counts[Outcome.FAILED] + self.counts[Outcome.ATTENTION]
        return 1 if bad or self.stopped else 0

    def rows(self) -> list[tuple[str, str, int]]:
        done = self.labels.would if self.dry_run else self.labels.done
        return [
            ("scanned", "scanned", self.scanned),
            ("up_to_date", "up to date", self.counts[Outcome.UP_TO_DATE]),
            ("done", done, self.counts[Outcome.DONE]),
            ("not_ours", self.labels.not_ours, self.counts[Outcome.NOT_OURS]),
            ("changed", "skipped, changed meanwhile", self.counts[Outcome.CHANGED]),
            ("attention", "need attention (not touched)", self.counts[Outcome.ATTENTION]),
            ("failed", "failed", self.counts[Outcome.FAILED]),
        ]

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"command": self.labels.command, "dry_run": self.dry_run}
        out.update({name: n for name, _, n in self.rows()})
        out["seconds"] = round(time.monotonic() - self.started, 3)
        out["notes"] = list(self.notes)
        out["stopped"] = one_line(self.stopped) if self.stopped else None
        out["resume_after"] = self.resume_after
        out["exit_code"] = self.exit_code()
        return out

    def render(self) -> str:
        seconds = time.monotonic() - self.started
        head = f"cloudtaser {self.labels.command}{' (dry run)' if self.dry_run else ''}"
        lines = [f"{head}: {'stopped' if self.stopped else 'finished'} in {seconds:.1f} s"]
        width = max(len(label) for _, label, _ in self.rows())
        lines += [f"  {label:<{width}}  {n:>9}" for _, label, n in self.rows()]
        if self.stopped:
            lines.append(f"stopped: {one_line(self.stopped)}")
        for note in self.notes:
            lines.append(f"note: {note}")
        if self.counts[Outcome.CHANGED]:
            lines.append(
                "note: objects changed meanwhile were written by someone else during "
                "the run; run again to check them"
            )
        if self.counts[Outcome.FAILED] or self.counts[Outcome.ATTENTION]:
            lines.append("note: see the FAILED/ATTENTION lines above for each object")
        if self.resume_after:
            lines.append(
                "resume: run again (finished objects are skipped), or add "
                f"--start-after {shell_quote(self.resume_after)}"
            )
        elif self.stopped:
            lines.append("resume: run again (finished objects are skipped)")
        return "\n".join(lines)


def shell_quote(text: str) -> str:
    return shlex.quote(text)


class _Lines(io.TextIOBase):
    """tqdm's carriage-return redraws as separate lines, for logs that are not a terminal
    (a Kubernetes Job's log would otherwise get one endless line)."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, s: str) -> int:
        for piece in s.replace("\r", "\n").split("\n"):
            if piece.strip():
                self._stream.write(piece.rstrip() + "\n")
        self._stream.flush()
        return len(s)

    def flush(self) -> None:
        self._stream.flush()


class Progress:
    """A tqdm bar over the objects listed so far (the total grows while the listing goes on),
    with the outcome counts as a postfix. Per-object lines go above the bar."""

    def __init__(self, desc: str, enabled: bool, verbose: bool, labels: Labels, dry_run: bool):
        from tqdm import tqdm

        stream = sys.stderr
        tty = stream.isatty()
        self._out = stream if tty else _Lines(stream)
        self._verbose = verbose
        self._labels = labels
        self._dry = dry_run
        self._lock = threading.Lock()
        self._counts: Counter[Outcome] = Counter()
        self._bar = tqdm(
            total=0,
            desc=desc,
            unit="obj",
            file=self._out,
            disable=not enabled,
            mininterval=0.2 if tty else 2.0,
            dynamic_ncols=tty,
            ncols=None if tty else 100,
            leave=True,
        )

    def listed(self, n: int = 1) -> None:
        with self._lock:
            self._bar.total += n  # shown at the next redraw: no line per object listed

    def listing_done(self) -> None:
        with self._lock:
            self._bar.set_description_str(self._bar.desc.rstrip(" .") + " (all listed)")

    def record(self, result: Result) -> None:
        with self._lock:
            self._counts[result.outcome] += 1
            line = self._line(result)
            if line:
                self._bar.write(line, file=self._out)
            short = {
                Outcome.DONE: "would" if self._dry else self._labels.done,
                Outcome.UP_TO_DATE: "current",
                Outcome.CHANGED: "changed",
                Outcome.FAILED: "failed",
                Outcome.ATTENTION: "attention",
                Outcome.NOT_OURS: "skipped",
            }
            self._bar.set_postfix_str(
                ", ".join(f"{short[o]}={n}" for o, n in self._counts.items() if n), refresh=False
            )
            self._bar.update(1)

    def _line(self, r: Result) -> str | None:
        r = Result(r.key, r.outcome, one_line(r.detail))
        if r.outcome is Outcome.FAILED:
            return f"FAILED {r.key}: {r.detail}"
        if r.outcome is Outcome.ATTENTION:
            return f"ATTENTION {r.key}: {r.detail}"
        if r.outcome is Outcome.CHANGED:
            return f"CHANGED {r.key}: {r.detail or 'written by someone else meanwhile; skipped'}"
        if self._verbose and r.outcome is Outcome.DONE:
            verb = self._labels.would if self._dry else self._labels.done
            return f"{verb} {r.key}" + (f" ({r.detail})" if r.detail else "")
        return None

    def note(self, text: str) -> None:
        with self._lock:
            self._bar.write(text, file=self._out)

    def close(self) -> None:
        with self._lock:
            self._bar.close()


class Watermark:
    """The last key before which every listed object is finished: where a rerun with
    ``--start-after`` may begin after an interruption (work runs out of order)."""

    def __init__(self) -> None:
        self._order: deque[str] = deque()
        self._finished: set[str] = set()
        self.value: str | None = None

    def listed(self, key: str) -> None:
        self._order.append(key)

    def finished(self, key: str) -> None:
        self._finished.add(key)
        while self._order and self._order[0] in self._finished:
            self.value = self._order.popleft()
            self._finished.discard(self.value)


class Runner:
    """Per-object work on a thread pool: bounded in flight, every result recorded once (report,
    progress, resume mark), and an exception becomes that object's failure, never the run's."""

    def __init__(self, concurrency: int, report: Report, progress: Progress):
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="cloudtaser-op")
        self._slots = threading.BoundedSemaphore(concurrency * 4)
        self._lock = threading.Lock()
        self.report = report
        self.progress = progress
        self.watermark = Watermark()

    def listed(self, key: str) -> None:
        with self._lock:
            self.watermark.listed(key)
        self.progress.listed()

    def record(self, result: Result) -> None:
        with self._lock:
            self.report.counts[result.outcome] += 1
            self.watermark.finished(result.key)
        self.progress.record(result)

    def submit(self, key: str, fn: Callable[..., Result | None], *args: Any) -> None:
        """Run ``fn(*args)`` for one object; a None result means not attempted (not counted)."""
        self._slots.acquire()

        def done(f: Future[Result | None]) -> None:
            self._slots.release()
            if f.cancelled():
                return
            exc = f.exception()
            result = f.result() if exc is None else Result(key, Outcome.FAILED, describe(exc))
            if result is not None:
                self.record(result)

        self.pool.submit(fn, *args).add_done_callback(done)

    def map(self, fn: Callable[[Any], Any], items: list[Any]) -> list[Any]:
        """``fn`` over ``items`` on the pool, results in order; an exception is returned as
        the item's result for the caller to record."""

        def safe(item: Any) -> Any:
            try:
                return fn(item)
            except Exception as e:  # reported per object by the caller
                return e

        return list(self.pool.map(safe, items))

    def finish(self, interrupted: bool = False) -> None:
        """Wait for the work in flight (cancelling what has not started when interrupted)."""
        self.pool.shutdown(wait=True, cancel_futures=interrupted)
        self.progress.close()
        if interrupted or self.report.stopped:
            self.report.resume_after = self.watermark.value


# ----------------------------------------------------------------------------- a run


class Stop(Exception):
    """Vault went away (``report.stopped`` says so): stop scheduling, report what is done."""


def store_conditions(
    access: StoreAccess, prefix: str, dry_run: bool, command: str
) -> StoreConditions:
    """What the store enforces, probed and told on stderr; a dry run writes nothing, probes
    included, and assumes all."""
    if dry_run:
        return ALL_ENFORCED
    conditions = probe_conditions(access, prefix)
    print(f"cloudtaser {command}: the store has {conditions.describe()}", file=sys.stderr)
    return conditions


@contextlib.contextmanager
def token_kept(transit: Transit) -> Iterator[None]:
    """The Vault token renewed in the background meanwhile: a long run outlives a Kubernetes
    login's token."""
    transit.start_keeper()
    try:
        yield
    finally:
        transit.stop_keeper()


def walk_and_report(
    args: argparse.Namespace,
    labels: Labels,
    access: StoreAccess,
    prefix: str,
    feed: Callable[[Runner], None],
    left_behind: str,
) -> int:
    """A run: ``feed`` lists the prefix and submits the work; Ctrl-C, a failed listing or
    :class:`Stop` end it early with what is done reported and where to resume. Prints the
    report (with ``left_behind``, what noncurrent versions keep) and returns the exit code."""
    report = Report(labels, args.dry_run)
    progress = Progress(labels.command, not args.no_progress, args.verbose, labels, args.dry_run)
    runner = Runner(args.concurrency, report, progress)
    since = time.time()
    interrupted = False
    try:
        feed(runner)
        progress.listing_done()
    except KeyboardInterrupt:
        interrupted = True
        report.stopped = "interrupted"
    except Stop:
        pass  # report.stopped says why
    except (ClientError, BotoCoreError) as e:
        report.stopped = f"listing failed: {describe(e)}"
    finally:
        runner.finish(interrupted)
    if not args.dry_run:
        report.notes += store_warnings(access, prefix, since, left_behind)
    print(json.dumps(report.as_dict(), indent=2) if args.json else report.render())
    return report.exit_code()


def main(
    args: argparse.Namespace,
    command: str,
    run: Callable[[argparse.Namespace, config.Settings, str, str], int],
) -> int:
    """Entry of ``python -m cloudtaser_s3 COMMAND``: ``run(args, settings, bucket, prefix)``;
    0 all done, 1 something failed or needs attention, 2 the run could not start."""
    try:
        settings = config.from_env(os.environ)
    except config.ConfigError as e:
        print(f"cloudtaser: configuration error: {e}", file=sys.stderr)
        return 2
    try:
        bucket, prefix = parse_s3_url(args.url)
        return run(args, settings, bucket, prefix)
    except (ToolError, ValueError) as e:
        print(f"cloudtaser {command}: {e}", file=sys.stderr)
        return 2
    except (ClientError, BotoCoreError) as e:
        print(f"cloudtaser {command}: the store refused: {describe(e)}", file=sys.stderr)
        return 2


def plan_parts(size: int, part_size: int) -> list[tuple[int, int, int]]:
    """(part number, plaintext offset, plaintext length) of a multipart rewrite: parts of
    ``part_size`` (grown when 10,000 would not hold the object), the last one shorter."""
    if size <= 0:
        return [(1, 0, 0)]
    part = max(part_size, math.ceil(size / MAX_PARTS))
    count = math.ceil(size / part)
    return [(n, (n - 1) * part, min(part, size - (n - 1) * part)) for n in range(1, count + 1)]
