"""Soak under load: many clients through one proxy for minutes, every byte checked against a model.

What one run does, against a real proxy (a mitmdump process) in front of SeaweedFS with OpenBao
Transit:

* ``clients`` threads, each with its own boto3 client (default settings but one attempt per call,
  so every error is seen as the proxy gave it), run a random mix of PutObject (0 B to 4 MiB,
  many at and one byte either side of 64 KiB segment boundaries), whole GETs, ranged GETs
  (``a-b``, ``a-``, suffix ``-n``, some past the end, some unsatisfiable), HEAD,
  ListObjectsV2 under the client's prefix (one or two keys a page), multipart uploads (2-4
  parts of at least 5 MiB but the last, parts sent out of order, one sometimes sent first
  with other bytes and then again, some uploads aborted), CopyObject and DeleteObject.
* Each client owns its keys (``<run>/wNN/...``), so the model of what each key holds is exact
  without locks. A write that fails leaves its key *uncertain* (old or new content); the next
  whole read settles which, and everything else checks against both.
* Every read is compared byte for byte with the model; sizes (Content-Length, Content-Range,
  listing sizes) must be plaintext sizes; the ETag a write returned must be the one HEAD, GET
  and LIST show.
* At the end: a whole GET of every key through the proxy, then a walk of the bucket *at the
  store* (the store's own credentials, no proxy): every object carries
  ``x-amz-meta-cloudtaser-alg``, its stored size is the sealed size of the model's plaintext
  (``envelope.sealed_part_length`` per part), its first 16 bytes are the part header for it, no
  other object exists, and no multipart upload is left open.
* A thread samples the proxy's RSS (VmRSS of /proc/<pid>/status) every second. "Flat": the RSS
  at the end of the load is at most ``rss_growth_bound_mib`` above the RSS after the warm-up
  (the first ``warmup_fraction`` of the run), and the peak stays under ``rss_peak_bound_mib``.

Errors are counted by class. Expected outcomes (NoSuchKey for a deleted key, 416 for an
unsatisfiable range) are counted apart. A 503 SlowDown *from the store* (any message but the
proxy's own) is tolerated and reported; every other error is unexpected and fails the run.

Library use: :func:`run_soak` (tests/soak/test_soak.py runs a short one with the session
fixtures). As a program it starts its own OpenBao, SeaweedFS and proxy and exits non-zero if a
check fails::

    .venv/bin/python tests/soak/soak.py --minutes 10 --clients 16
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import botocore.exceptions
from botocore.config import Config

from cloudtaser_s3 import envelope
from cloudtaser_s3 import localservers as ls

KiB = 2**10
MiB = 2**20
SEG = envelope.SEGMENT_PLAIN
REGION = "us-east-1"

#: Operations and their weights in the mix. Multipart uploads move 10-20 MiB each, so they are
#: rare; reads are the most common, as in most applications.
OPS: dict[str, int] = {
    "put": 20,
    "get": 20,
    "get_range": 20,
    "head": 10,
    "list": 6,
    "copy": 6,
    "delete": 5,
    "multipart": 3,
}

#: Object names under each client's prefix: plain, nested, and names whose URL and XML forms
#: differ from the key (space, '+', '%', non-ASCII), since the key is bound into every segment.
KEY_NAMES = ("a", "dir/b.bin", "c d+e.txt", "ünï côdé/f", "pct%41g", "h")

#: Messages of the 503s the proxy itself answers (a concurrent write, a store that did not
#: answer). Keys are owned by one client each, so none of them may appear: unexpected.
PROXY_503_MESSAGES = (
    "The copy source changed. Please retry.",
    "The object changed while it was read. Please retry.",
    "The store did not answer. Retry.",
)


# --------------------------------------------------------------------------------------------
# The model


@dataclass(frozen=True)
class Content:
    """What a key holds: ``size`` bytes from ``seed``; ``parts`` are the plaintext part sizes of
    a multipart object (empty for a PutObject or CopyObject, stored as one part numbered 0)."""

    seed: int
    size: int
    parts: tuple[int, ...] = ()

    def data(self) -> bytes:
        return random.Random(self.seed).randbytes(self.size)

    def stored_size(self) -> int:
        """The stored length in our format (docs/format.md, "Sizes")."""
        if not self.parts:
            return envelope.sealed_part_length(self.size)
        return sum(envelope.sealed_part_length(p) for p in self.parts)

    def first_header(self) -> bytes:
        """The part header the stored object starts with."""
        if not self.parts:
            return envelope.pack_header(0, self.size)
        return envelope.pack_header(1, self.parts[0])


@dataclass(frozen=True)
class Entry:
    """One possible state of a key: its content (None: no object) and the ETag the write that
    made it returned (None: not known, e.g. the write failed)."""

    content: Content | None
    etag: str | None = None


ABSENT = Entry(None)


@dataclass
class Model:
    """Per key, the states it may be in: one normally, two after a write whose outcome the
    client could not see (an error), until a whole read settles it."""

    keys: dict[str, list[Entry]] = field(default_factory=dict)
    #: Keys whose present state a whole read has confirmed since it was last written.
    verified: set[str] = field(default_factory=set)

    def set(self, key: str, entry: Entry) -> None:
        self.keys[key] = [entry]
        self.verified.discard(key)

    def uncertain(self, key: str, new: Entry) -> None:
        self.keys[key] = [*self.keys[key], new]
        self.verified.discard(key)

    def certain(self, key: str) -> Entry | None:
        states = self.keys[key]
        return states[0] if len(states) == 1 else None

    def settle(self, key: str, entry: Entry) -> None:
        """A whole read showed ``entry``."""
        self.keys[key] = [entry]
        self.verified.add(key)


# --------------------------------------------------------------------------------------------
# Results


@dataclass
class Stats:
    """Counters of one client (merged at the end)."""

    ops: Counter[str] = field(default_factory=Counter)
    bytes_up: Counter[str] = field(default_factory=Counter)
    bytes_down: Counter[str] = field(default_factory=Counter)
    expected: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)  # unexpected, by "op: class"
    throttled: Counter[str] = field(default_factory=Counter)  # the store's 503 SlowDown
    wrong_reads: Counter[str] = field(default_factory=Counter)
    etag_mismatches: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def note(self, counter: Counter[str], what: str, detail: str) -> None:
        counter[what] += 1
        if len(self.examples) < 20:
            self.examples.append(f"{what}: {detail}")

    def merge(self, other: Stats) -> None:
        for name in (
            "ops",
            "bytes_up",
            "bytes_down",
            "expected",
            "errors",
            "throttled",
            "wrong_reads",
            "etag_mismatches",
        ):
            getattr(self, name).update(getattr(other, name))
        self.examples.extend(other.examples[: max(0, 40 - len(self.examples))])


@dataclass
class RssReport:
    samples: list[tuple[float, int]]  # (seconds since the load began, VmRSS in KiB)
    warmup_s: float

    def _after(self, t: float) -> list[tuple[float, int]]:
        return [s for s in self.samples if s[0] >= t]

    @property
    def start_kib(self) -> int:
        after = self._after(self.warmup_s)
        return after[0][1] if after else 0

    @property
    def peak_kib(self) -> int:
        return max((s[1] for s in self.samples), default=0)

    @property
    def end_kib(self) -> int:
        return self.samples[-1][1] if self.samples else 0

    def slope_mib_per_min(self) -> float:
        """Least-squares slope of RSS after the warm-up (informative, not a check)."""
        pts = self._after(self.warmup_s)
        if len(pts) < 2:
            return 0.0
        n = len(pts)
        mt = sum(t for t, _ in pts) / n
        mr = sum(r for _, r in pts) / n
        var = sum((t - mt) ** 2 for t, _ in pts)
        if var == 0:
            return 0.0
        cov = sum((t - mt) * (r - mr) for t, r in pts)
        return cov / var * 60 / KiB


@dataclass
class SoakResult:
    config: SoakConfig
    stats: Stats
    elapsed_s: float
    rss: RssReport
    at_rest_objects: int = 0
    at_rest_problems: list[str] = field(default_factory=list)
    final_read_keys: int = 0
    final_read_problems: list[str] = field(default_factory=list)
    open_uploads: int = 0
    proxy_alive: bool = True
    proxy_log_problems: list[str] = field(default_factory=list)

    def checks(self) -> list[tuple[str, bool, str]]:
        """(check, passed, detail) for every check of the run."""
        s, cfg, rss = self.stats, self.config, self.rss
        growth = (rss.end_kib - rss.start_kib) / KiB
        return [
            ("every operation type ran", all(s.ops[op] for op in OPS), _fmt_counter(s.ops)),
            ("zero wrong reads", not s.wrong_reads, _fmt_counter(s.wrong_reads) or "0"),
            ("ETags agree", not s.etag_mismatches, _fmt_counter(s.etag_mismatches) or "0"),
            ("zero unexpected errors", not s.errors, _fmt_counter(s.errors) or "0"),
            (
                "final whole reads",
                not self.final_read_problems,
                "; ".join(self.final_read_problems[:5]) or f"{self.final_read_keys} keys read",
            ),
            (
                "every object at rest in our format",
                not self.at_rest_problems and self.at_rest_objects > 0,
                f"{self.at_rest_objects} objects; "
                + ("; ".join(self.at_rest_problems[:5]) or "alg, size and header as modelled"),
            ),
            ("no multipart upload left open", self.open_uploads == 0, str(self.open_uploads)),
            ("proxy still running", self.proxy_alive, ""),
            (
                "no addon errors in the proxy log",
                not self.proxy_log_problems,
                "; ".join(self.proxy_log_problems[:3]) or "none",
            ),
            (
                f"RSS end <= start + {cfg.rss_growth_bound_mib} MiB",
                bool(rss.samples) and growth <= cfg.rss_growth_bound_mib,
                f"{growth:+.1f} MiB",
            ),
            (
                f"RSS peak < {cfg.rss_peak_bound_mib} MiB",
                bool(rss.samples) and rss.peak_kib / KiB < cfg.rss_peak_bound_mib,
                f"{rss.peak_kib / KiB:.1f} MiB",
            ),
        ]

    def failures(self) -> list[str]:
        return [f"{name}: {detail}" for name, ok, detail in self.checks() if not ok]

    def summary(self) -> str:
        s, rss = self.stats, self.rss
        total = sum(s.ops.values())
        lines = [
            f"soak: {self.config.clients} clients, {self.elapsed_s:.0f} s of load, "
            f"seed {self.config.seed}",
            f"  {'operation':<12}{'count':>8}{'MiB up':>10}{'MiB down':>10}",
        ]
        for op in OPS:
            lines.append(
                f"  {op:<12}{s.ops[op]:>8}{s.bytes_up[op] / MiB:>10.1f}"
                f"{s.bytes_down[op] / MiB:>10.1f}"
            )
        up, down = sum(s.bytes_up.values()), sum(s.bytes_down.values())
        lines += [
            f"  {'total':<12}{total:>8}{up / MiB:>10.1f}{down / MiB:>10.1f}",
            f"  {total / max(self.elapsed_s, 1e-9):.1f} ops/s, "
            f"{(up + down) / MiB / max(self.elapsed_s, 1e-9):.1f} MiB/s (plaintext, both ways)",
            f"  expected outcomes: {_fmt_counter(s.expected) or 'none'}",
            f"  unexpected errors: {_fmt_counter(s.errors) or 'none'}",
            f"  store throttling (503 SlowDown from the store): "
            f"{_fmt_counter(s.throttled) or 'none'}",
            f"  wrong reads: {sum(s.wrong_reads.values())}; "
            f"ETag mismatches: {sum(s.etag_mismatches.values())}",
            f"  at rest: {self.at_rest_objects} objects walked at the store, "
            f"{len(self.at_rest_problems)} problems; {self.open_uploads} uploads left open",
            f"  proxy RSS: start {rss.start_kib / KiB:.1f} MiB (after {rss.warmup_s:.0f} s of "
            f"warm-up), peak {rss.peak_kib / KiB:.1f} MiB, end {rss.end_kib / KiB:.1f} MiB; "
            f"slope after warm-up {rss.slope_mib_per_min():+.2f} MiB/min; "
            f"{len(rss.samples)} samples",
        ]
        if s.examples:
            lines.append("  first problems:")
            lines += [f"    {e}" for e in s.examples[:20]]
        lines.append("  checks:")
        for name, ok, detail in self.checks():
            lines.append(f"    {'PASS' if ok else 'FAIL'}  {name}  ({detail})")
        return "\n".join(lines)

    def as_json(self) -> dict[str, Any]:
        s = self.stats
        return {
            "clients": self.config.clients,
            "seconds": round(self.elapsed_s, 1),
            "seed": self.config.seed,
            "ops": dict(s.ops),
            "bytes_up": dict(s.bytes_up),
            "bytes_down": dict(s.bytes_down),
            "expected": dict(s.expected),
            "errors": dict(s.errors),
            "throttled": dict(s.throttled),
            "wrong_reads": dict(s.wrong_reads),
            "etag_mismatches": dict(s.etag_mismatches),
            "at_rest_objects": self.at_rest_objects,
            "at_rest_problems": self.at_rest_problems,
            "rss_kib": {
                "start": self.rss.start_kib,
                "peak": self.rss.peak_kib,
                "end": self.rss.end_kib,
                "slope_mib_per_min": round(self.rss.slope_mib_per_min(), 3),
                "samples": [(round(t, 1), kib) for t, kib in self.rss.samples],
            },
            "checks": [{"check": n, "passed": ok, "detail": d} for n, ok, d in self.checks()],
        }


def _fmt_counter(c: Counter[str]) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(c.items()))


# --------------------------------------------------------------------------------------------
# Configuration


@dataclass
class SoakConfig:
    duration_s: float = 600.0
    clients: int = 16
    seed: int = 0
    warmup_fraction: float = 0.1
    #: Memory bounds of the proxy process. The bench streams 1 GiB at a 95 MiB peak (one
    #: stream); the proxy holds at most a few 256 KiB buffers per request in flight, so 16
    #: clients add tens of MiB, not hundreds. Growth after warm-up: 40 MiB is far above what
    #: allocator noise and caches (DEK cache, layout cache; both bounded) explain, and far
    #: below what a per-request leak over thousands of requests would add.
    rss_growth_bound_mib: float = 40.0
    rss_peak_bound_mib: float = 150.0
    #: After the load, read every key whole (True) or only those no whole read has confirmed
    #: since their last write (False: the CI run, where it saves tens of seconds).
    final_read_all: bool = True


def client_config() -> Config:
    """botocore defaults (checksums, aws-chunked uploads) but one attempt per call: every
    error is counted as the proxy answered it, none hidden by a retry."""
    return Config(
        retries={"total_max_attempts": 1},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=4,
    )


# --------------------------------------------------------------------------------------------
# Sizes and ranges


def put_size(rng: random.Random) -> int:
    """0 B to 4 MiB; a third exactly at, or one byte either side of, a segment boundary."""
    pick = rng.random()
    if pick < 0.15:
        return rng.choice([0, 1, rng.randrange(2, 4 * KiB)])
    if pick < 0.50:
        k = rng.randrange(1, 33)
        return k * SEG + rng.choice([-1, 0, 0, 1])
    if pick < 0.80:
        return rng.randrange(0, 512 * KiB)
    return rng.randrange(512 * KiB, 4 * MiB + 1)


def part_sizes(rng: random.Random) -> tuple[int, ...]:
    """2-4 parts: 5 MiB (+ 0, 1, a segment or some KiB) each but the last, which is 1 B to
    5 MiB (some at segment boundaries)."""
    n = rng.randrange(2, 5)
    head = [5 * MiB + rng.choice([0, 0, 1, SEG, rng.randrange(1, 300 * KiB)]) for _ in range(n - 1)]
    last = rng.choice([1, SEG - 1, SEG, SEG + 1, rng.randrange(1, 2 * MiB), 5 * MiB])
    return (*head, last)


def random_range(rng: random.Random, size: int) -> str:
    """A Range header: mostly satisfiable (inside, across segment boundaries, past the end,
    suffix), sometimes not (starting at or past the end)."""
    pick = rng.random()
    if size == 0 or pick < 0.05:
        if rng.random() < 0.5:
            return f"bytes={size + rng.randrange(0, 100)}-"
        return f"bytes={size + rng.randrange(0, 100)}-{size + rng.randrange(100, 200)}"
    if pick < 0.25:  # suffix, possibly longer than the object
        return f"bytes=-{rng.randrange(1, size + 100)}"
    if pick < 0.40:  # open-ended
        return f"bytes={rng.randrange(size)}-"
    if pick < 0.65 and size > SEG:  # around a segment boundary
        b = SEG * rng.randrange(1, -(-size // SEG))
        first = max(0, b - rng.randrange(0, 40))
        return f"bytes={first}-{b + rng.randrange(0, 40)}"
    first = rng.randrange(size)
    return f"bytes={first}-{first + rng.randrange(0, 3 * SEG)}"


def expected_range(header: str, size: int) -> tuple[int, int] | None:
    """Inclusive (first, last) that the Range header selects of ``size`` bytes (RFC 9110),
    None if unsatisfiable. Written here, not taken from the proxy, to be an independent oracle."""
    spec = header.removeprefix("bytes=")
    a, _, b = spec.partition("-")
    if a == "":
        n = int(b)
        return (max(0, size - n), size - 1) if n > 0 and size > 0 else None
    first = int(a)
    if first >= size:
        return None
    last = size - 1 if b == "" else min(int(b), size - 1)
    return first, last


# --------------------------------------------------------------------------------------------
# Errors


def status_code_message(e: BaseException) -> tuple[int | None, str | None, str]:
    """(HTTP status, S3 error code, message) of a ClientError; (None, None, "") otherwise."""
    if not isinstance(e, botocore.exceptions.ClientError):
        return None, None, ""
    err = e.response.get("Error", {})
    status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return status, err.get("Code"), str(err.get("Message", ""))


def error_class(e: BaseException) -> tuple[str, str]:
    """("status Code" or exception name, message) of a failed call."""
    status, code, message = status_code_message(e)
    if status is None:
        return type(e).__name__, str(e)
    return f"{status} {code}", message


def is_store_throttling(e: BaseException) -> bool:
    """A 503 SlowDown (or 503 without a body, as on HEAD) that the proxy did not make up."""
    status, code, message = status_code_message(e)
    return status == 503 and code in ("SlowDown", "503") and message not in PROXY_503_MESSAGES


def is_not_found(e: BaseException) -> bool:
    status, code, _ = status_code_message(e)
    return status == 404 and code in ("NoSuchKey", "404")


def is_invalid_range(e: BaseException) -> bool:
    return status_code_message(e)[0] == 416


def etag_of(resp: dict[str, Any]) -> str | None:
    return resp.get("ETag")


# --------------------------------------------------------------------------------------------
# One client


class Worker:
    """One client: its own boto3 client, its own keys, its own slice of the model."""

    def __init__(
        self,
        index: int,
        client: Any,
        bucket: str,
        prefix: str,
        seed: int,
        deadline: float,
        stop: threading.Event,
    ) -> None:
        self.index = index
        self.s3 = client
        self.bucket = bucket
        self.prefix = f"{prefix}/w{index:02d}/"
        self.keys = [self.prefix + name for name in KEY_NAMES]
        self.rng = random.Random(seed * 1000 + index)
        self.deadline = deadline
        self.stop = stop
        self.model = Model({k: [ABSENT] for k in self.keys})
        self.stats = Stats()
        self.crash: BaseException | None = None

    # -- helpers

    def new_seed(self) -> int:
        return self.rng.getrandbits(63)

    def wrong(self, op: str, key: str, detail: str) -> None:
        self.stats.note(self.stats.wrong_reads, op, f"{key!r}: {detail}")

    def check_etag(self, op: str, key: str, entry: Entry, got: str | None) -> None:
        if entry.etag is not None and got is not None and got != entry.etag:
            self.stats.note(
                self.stats.etag_mismatches, op, f"{key!r}: {got} but the write said {entry.etag}"
            )

    def failed(self, op: str, key: str, e: BaseException) -> None:
        cls, message = error_class(e)
        if is_store_throttling(e):
            self.stats.note(self.stats.throttled, f"{op}: {cls}", f"{key!r}: {message}")
        else:
            self.stats.note(self.stats.errors, f"{op}: {cls}", f"{key!r}: {message}"[:300])

    # -- the loop

    def run(self) -> None:
        ops, weights = list(OPS), list(OPS.values())
        try:
            while time.monotonic() < self.deadline and not self.stop.is_set():
                op = self.rng.choices(ops, weights)[0]
                key = self.rng.choice(self.keys)
                getattr(self, f"op_{op}")(key)
                self.stats.ops[op] += 1
        except BaseException as e:  # noqa: BLE001 - reported as the run's failure
            self.crash = e
            self.stop.set()

    # -- writes

    def op_put(self, key: str) -> None:
        content = Content(self.new_seed(), put_size(self.rng))
        data = content.data()
        try:
            resp = self.s3.put_object(Bucket=self.bucket, Key=key, Body=data)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            self.failed("put", key, e)
            self.model.uncertain(key, Entry(content))
            return
        self.stats.bytes_up["put"] += len(data)
        self.model.set(key, Entry(content, etag_of(resp)))

    def op_multipart(self, key: str) -> None:
        sizes = part_sizes(self.rng)
        content = Content(self.new_seed(), sum(sizes), sizes)
        data = content.data()
        abort = self.rng.random() < 0.25
        try:
            upload = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            self.failed("multipart", key, e)
            return
        completing = False
        try:
            offsets = [sum(sizes[:i]) for i in range(len(sizes))]
            sends = [(i, False) for i in range(len(sizes))]
            self.rng.shuffle(sends)
            if self.rng.random() < 0.3:
                # One part is first sent with other bytes (and maybe another size), then
                # again with the right ones: the second upload replaces the first.
                d = self.rng.randrange(len(sizes))
                sends.insert(sends.index((d, False)), (d, True))
            etags: dict[int, str] = {}
            for i, decoy in sends:
                if decoy:
                    size = self.rng.choice([sizes[i], 5 * MiB + self.rng.randrange(100 * KiB)])
                    body = Content(self.new_seed(), size).data()
                else:
                    body = data[offsets[i] : offsets[i] + sizes[i]]
                resp = self.s3.upload_part(
                    Bucket=self.bucket, Key=key, UploadId=upload, PartNumber=i + 1, Body=body
                )
                etags[i + 1] = resp["ETag"]
                self.stats.bytes_up["multipart"] += len(body)
            if abort:
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)
                self.stats.expected["multipart aborted"] += 1
                return
            completing = True
            resp = self.s3.complete_multipart_upload(
                Bucket=self.bucket,
                Key=key,
                UploadId=upload,
                MultipartUpload={
                    "Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]
                },
            )
            self.model.set(key, Entry(content, etag_of(resp)))
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            self.failed("multipart", key, e)
            if completing:
                self.model.uncertain(key, Entry(content))
            with contextlib.suppress(Exception):
                self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload)

    def op_copy(self, key: str) -> None:
        source = self.rng.choice([k for k in self.keys if k != key])
        src = self.model.certain(source)
        if src is None:  # the source's state is not known; copying would spread the doubt
            return
        try:
            resp = self.s3.copy_object(
                Bucket=self.bucket, Key=key, CopySource={"Bucket": self.bucket, "Key": source}
            )
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            if src.content is None and is_not_found(e):
                self.stats.expected["copy of a missing source: 404"] += 1
                return
            self.failed("copy", key, e)
            if src.content is not None:
                self.model.uncertain(key, Entry(Content(src.content.seed, src.content.size)))
            return
        if src.content is None:
            self.wrong("copy", key, f"copy of the missing {source!r} succeeded")
            return
        # A copy is decrypted and sealed again as one part 0, whatever the source's layout.
        copied = Content(src.content.seed, src.content.size)
        self.stats.bytes_up["copy"] += copied.size
        self.model.set(key, Entry(copied, resp.get("CopyObjectResult", {}).get("ETag")))

    def op_delete(self, key: str) -> None:
        try:
            self.s3.delete_object(Bucket=self.bucket, Key=key)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            self.failed("delete", key, e)
            self.model.uncertain(key, ABSENT)
            return
        self.model.set(key, ABSENT)

    # -- reads

    def op_get(self, key: str) -> None:
        states = self.model.keys[key]
        try:
            resp = self.s3.get_object(Bucket=self.bucket, Key=key)
            body = resp["Body"].read()
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            if is_not_found(e) and ABSENT in states:
                self.stats.expected["get of a missing key: 404"] += 1
                self.model.settle(key, ABSENT)
                return
            self.failed("get", key, e)
            return
        self.stats.bytes_down["get"] += len(body)
        for entry in states:
            c = entry.content
            if c is not None and c.size == len(body) and body == c.data():
                self.check_etag("get", key, entry, etag_of(resp))
                length = resp.get("ContentLength")
                if length is not None and length != len(body):
                    self.wrong("get", key, f"Content-Length {length}, body {len(body)}")
                self.model.settle(key, Entry(c, entry.etag or etag_of(resp)))
                return
        expected = [e.content.size if e.content else "absent" for e in states]
        self.wrong("get", key, f"{len(body)} bytes match no modelled state (sizes {expected})")

    def op_get_range(self, key: str) -> None:
        states = self.model.keys[key]
        entry = self.model.certain(key)
        if entry is None:
            return self.op_get(key)  # settle first
        size = entry.content.size if entry.content else 0
        header = random_range(self.rng, size)
        want = expected_range(header, size) if entry.content else None
        try:
            resp = self.s3.get_object(Bucket=self.bucket, Key=key, Range=header)
            body = resp["Body"].read()
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            if entry.content is None and is_not_found(e):
                self.stats.expected["ranged get of a missing key: 404"] += 1
            elif entry.content is not None and want is None and is_invalid_range(e):
                self.stats.expected["unsatisfiable range: 416"] += 1
                headers = e.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
                cr = headers.get("content-range")
                if cr is not None and cr != f"bytes */{size}":
                    self.wrong("get_range", key, f"{header} of {size} bytes: 416 with {cr}")
            else:
                self.failed("get_range", key, e)
            return
        self.stats.bytes_down["get_range"] += len(body)
        if entry.content is None or want is None:
            self.wrong("get_range", key, f"{header} of {states} answered {len(body)} bytes")
            return
        first, last = want
        if body != entry.content.data()[first : last + 1]:
            self.wrong("get_range", key, f"{header} of {size} bytes: got {len(body)} bytes")
            return
        full = first == 0 and last == size - 1
        cr = resp.get("ContentRange")
        if cr is not None and cr != f"bytes {first}-{last}/{size}":
            self.wrong("get_range", key, f"{header}: Content-Range {cr}, size {size}")
        elif cr is None and not full:
            self.wrong("get_range", key, f"{header}: no Content-Range for a partial body")
        self.check_etag("get_range", key, entry, etag_of(resp))

    def op_head(self, key: str) -> None:
        states = self.model.keys[key]
        try:
            resp = self.s3.head_object(Bucket=self.bucket, Key=key)
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            if is_not_found(e) and ABSENT in states:
                self.stats.expected["head of a missing key: 404"] += 1
            else:
                self.failed("head", key, e)
            return
        length = resp.get("ContentLength")
        matching = [e for e in states if e.content is not None and e.content.size == length]
        if not matching:
            self.wrong("head", key, f"Content-Length {length}, modelled {states}")
            return
        if len(states) == 1:
            self.check_etag("head", key, states[0], etag_of(resp))
        alg = resp.get("Metadata", {}).get("cloudtaser-alg")  # shown to clients by design
        if alg != envelope.ALG:
            self.wrong("head", key, f"x-amz-meta-cloudtaser-alg is {alg!r}")

    def op_list(self, key: str) -> None:
        del key  # a listing of this client's prefix
        page_size = self.rng.choice([1000, 1000, 2])
        listed: dict[str, tuple[int, str]] = {}
        kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": self.prefix}
        kwargs["MaxKeys"] = page_size
        try:
            while True:
                resp = self.s3.list_objects_v2(**kwargs)
                for obj in resp.get("Contents", []):
                    listed[obj["Key"]] = (obj["Size"], obj.get("ETag", ""))
                if not resp.get("IsTruncated"):
                    break
                kwargs["ContinuationToken"] = resp["NextContinuationToken"]
        except (botocore.exceptions.ClientError, botocore.exceptions.BotoCoreError) as e:
            self.failed("list", self.prefix, e)
            return
        for k in set(listed) - set(self.keys):
            self.wrong("list", k, "listed but never written by this client")
        for k in self.keys:
            states = self.model.keys[k]
            if k not in listed:
                if ABSENT not in states:
                    self.wrong("list", k, "not listed, but it exists")
                continue
            size, etag = listed[k]
            matching = [e for e in states if e.content is not None and e.content.size == size]
            if not matching:
                sizes = [e.content.size if e.content else "absent" for e in states]
                self.wrong("list", k, f"listed with Size {size}, modelled {sizes}")
            elif len(states) == 1:
                self.check_etag("list", k, states[0], etag)


# --------------------------------------------------------------------------------------------
# RSS sampling


def vm_rss_kib(pid: int) -> int | None:
    """VmRSS of a process in KiB (psutil is not a dependency; /proc is enough on Linux)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread, from ``start()``."""

    def __init__(self, pid: int, interval: float = 1.0) -> None:
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._t0 = 0.0

    def _run(self) -> None:
        while True:
            rss = vm_rss_kib(self.pid)
            if rss is not None:
                self.samples.append((time.monotonic() - self._t0, rss))
            if self._stop.wait(self.interval):
                return

    def start(self) -> None:
        self._t0 = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        rss = vm_rss_kib(self.pid)  # one last sample at the very end of the load
        if rss is not None:
            self.samples.append((time.monotonic() - self._t0, rss))


# --------------------------------------------------------------------------------------------
# After the load


def final_reads(
    via: Any, bucket: str, model: Model, read_all: bool = True
) -> tuple[int, list[str]]:
    """Read every key whole through the proxy once more (or only those not read since their
    last write); settle uncertain keys. Returns (keys read, problems)."""
    problems = []
    keys = [k for k in model.keys if read_all or k not in model.verified]
    for key in keys:
        states = model.keys[key]
        try:
            body = via.get_object(Bucket=bucket, Key=key)["Body"].read()
        except botocore.exceptions.ClientError as e:
            if is_not_found(e) and ABSENT in states:
                model.settle(key, ABSENT)
            else:
                problems.append(f"{key!r}: {error_class(e)[0]}")
            continue
        for entry in states:
            c = entry.content
            if c is not None and c.size == len(body) and c.data() == body:
                model.settle(key, entry)
                break
        else:
            problems.append(f"{key!r}: {len(body)} bytes match no modelled state")
    return len(keys), problems


def walk_at_rest(direct: Any, bucket: str, prefix: str, model: Model) -> tuple[int, list[str]]:
    """Every object under ``prefix`` at the store, seen with the store's credentials: our
    metadata, the sealed size of its model plaintext, and the part header it must start with.
    Returns (objects walked, problems)."""
    problems: list[str] = []
    stored: dict[str, int] = {}
    for page in direct.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            stored[obj["Key"]] = obj["Size"]
    for key, states in model.keys.items():
        if len(states) != 1:
            problems.append(f"{key!r}: still uncertain after the final reads")
            continue
        content = states[0].content
        if content is None:
            if key in stored:
                problems.append(f"{key!r}: deleted, but the store holds {stored[key]} bytes")
            continue
        if key not in stored:
            problems.append(f"{key!r}: missing at the store")
            continue
        head = direct.head_object(Bucket=bucket, Key=key)
        alg = head.get("Metadata", {}).get(envelope.META_ALG.removeprefix("x-amz-meta-"))
        if alg != envelope.ALG:
            problems.append(f"{key!r}: cloudtaser-alg is {alg!r}")
        want = content.stored_size()
        if head["ContentLength"] != want or stored[key] != want:
            problems.append(
                f"{key!r}: stored {head['ContentLength']} bytes (listed {stored[key]}), "
                f"sealed size of {content.size} plaintext bytes in parts {content.parts or '(0)'} "
                f"is {want}"
            )
        first = direct.get_object(Bucket=bucket, Key=key, Range="bytes=0-15")["Body"].read()
        if first != content.first_header():
            problems.append(f"{key!r}: starts with {first.hex()}, not the part header")
    for key in set(stored) - set(model.keys):
        problems.append(f"{key!r}: at the store, but no client wrote it")
    return len(stored), problems


def open_uploads(direct: Any, bucket: str, prefix: str) -> int:
    resp = direct.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return len(resp.get("Uploads", []))


def proxy_log_problems(log_path: Path | None, offset: int) -> list[str]:
    """Lines of the proxy's log written during the run that show an addon failure."""
    if log_path is None or not log_path.exists():
        return []
    with open(log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode(errors="replace")
    marks = ("Traceback", "Addon error", "Error in addon")
    return [line.strip()[:200] for line in text.splitlines() if any(m in line for m in marks)]


# --------------------------------------------------------------------------------------------
# The run


def run_soak(
    make_client: Callable[[], Any],
    direct: Any,
    bucket: str,
    proxy_pid: int,
    config: SoakConfig,
    *,
    proxy_log: Path | None = None,
    progress: Callable[[str], None] | None = None,
) -> SoakResult:
    """Run the load for ``config.duration_s`` seconds and all the checks after it.

    ``make_client()`` returns a new boto3 client through the proxy (one per worker, made here
    before any thread starts: creating clients is not thread-safe); ``direct`` is a client
    straight to the store with its own credentials; ``bucket`` exists already.
    """
    prefix = f"soak-{uuid.uuid4().hex[:8]}"
    log_offset = proxy_log.stat().st_size if proxy_log and proxy_log.exists() else 0
    stop = threading.Event()
    clients = [make_client() for _ in range(config.clients)]
    sampler = RssSampler(proxy_pid)
    t0 = time.monotonic()
    deadline = t0 + config.duration_s
    workers = [
        Worker(i, clients[i], bucket, prefix, config.seed, deadline, stop)
        for i in range(config.clients)
    ]
    threads = [threading.Thread(target=w.run, name=f"soak-{w.index}") for w in workers]
    sampler.start()
    for t in threads:
        t.start()
    try:
        while any(t.is_alive() for t in threads):
            tick = time.monotonic() + 10
            for t in threads:
                t.join(timeout=max(0.0, tick - time.monotonic()))
            if progress:
                ops = sum(sum(w.stats.ops.values()) for w in workers)
                errs = sum(sum(w.stats.errors.values()) for w in workers)
                rss = sampler.samples[-1][1] / KiB if sampler.samples else 0
                progress(
                    f"  {time.monotonic() - t0:5.0f} s: {ops} ops, {errs} unexpected errors, "
                    f"proxy RSS {rss:.1f} MiB"
                )
    finally:
        stop.set()
        for t in threads:
            t.join()
        sampler.stop()
    elapsed = time.monotonic() - t0

    stats = Stats()
    model = Model()
    for w in workers:
        stats.merge(w.stats)
        model.keys.update(w.model.keys)
        model.verified.update(w.model.verified)
        if w.crash is not None:
            stats.note(stats.errors, f"client {w.index} crashed", repr(w.crash))
    result = SoakResult(
        config=config,
        stats=stats,
        elapsed_s=elapsed,
        rss=RssReport(sampler.samples, config.duration_s * config.warmup_fraction),
    )
    result.proxy_alive = vm_rss_kib(proxy_pid) is not None
    result.final_read_keys, result.final_read_problems = final_reads(
        clients[0], bucket, model, config.final_read_all
    )
    result.at_rest_objects, result.at_rest_problems = walk_at_rest(direct, bucket, prefix, model)
    result.open_uploads = open_uploads(direct, bucket, prefix)
    result.proxy_log_problems = proxy_log_problems(proxy_log, log_offset)
    return result


# --------------------------------------------------------------------------------------------
# As a program: its own OpenBao, SeaweedFS and proxy


def _proxy_env(s3: ls.S3Server, bao: ls.OpenBao, token: str) -> dict[str, str]:
    """The test suite's default proxy environment (tests/conftest.py), production defaults
    for everything else."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from conftest import proxy_default_env

    return proxy_default_env(s3, bao, token)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="length of the load")
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (threads)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--workdir", type=Path, help="where servers keep data and logs")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument(
        "--env", action="append", default=[], metavar="NAME=VALUE", help="proxy setting"
    )
    args = parser.parse_args(argv)
    # Nothing from the developer's AWS/Vault settings reaches our boto3 clients.
    for name in list(os.environ):
        if name.startswith(("AWS_", "VAULT_", "BAO_")):
            del os.environ[name]
    os.environ["AWS_CONFIG_FILE"] = os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"

    seed = args.seed if args.seed is not None else random.randrange(2**31)
    config = SoakConfig(duration_s=args.minutes * 60, clients=args.clients, seed=seed)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="cloudtaser-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"soak: servers under {workdir}", flush=True)
    bao = s3 = proxy = None
    ok = False
    try:
        bao = ls.start_openbao_dev(workdir / "openbao")
        s3 = ls.start_seaweedfs(
            workdir / "seaweedfs", ls.random_access_key(), ls.random_secret_key()
        )
        env: dict[str, str | None] = {**_proxy_env(s3, bao, bao.create_policy_token())}
        for item in args.env:
            name, _, value = item.partition("=")
            env[name] = value
        proxy = ls.start_proxy(env, workdir / "proxy")
        print(
            f"soak: OpenBao {bao.addr}, SeaweedFS {s3.endpoint}, proxy {proxy.endpoint} "
            f"(pid {proxy.pid}: {Path(f'/proc/{proxy.pid}/cmdline').read_bytes()[:200]!r})",
            flush=True,
        )
        bucket = f"soak-{uuid.uuid4().hex[:10]}"
        s3.client().create_bucket(Bucket=bucket)
        import boto3

        def make_client() -> Any:
            return boto3.session.Session().client(
                "s3",
                endpoint_url=proxy.endpoint,
                aws_access_key_id=s3.access_key,
                aws_secret_access_key=s3.secret_key,
                region_name=REGION,
                config=client_config(),
            )

        result = run_soak(
            make_client,
            s3.client(),
            bucket,
            proxy.pid,
            config,
            proxy_log=proxy.process.log_path,
            progress=lambda line: print(line, flush=True),
        )
        print(result.summary(), flush=True)
        print(f"  machine: {os.cpu_count()} CPUs, load average {os.getloadavg()}", flush=True)
        if args.json:
            args.json.write_text(json.dumps(result.as_json(), indent=2) + "\n")
        ok = not result.failures()
        return 0 if ok else 1
    finally:
        for server in (proxy, s3, bao):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        if ok and args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
        elif not ok:
            print(f"soak: logs kept under {workdir}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
