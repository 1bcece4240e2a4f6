"""Prometheus metrics for the proxy, served as ``GET /metrics`` on the health address.

All metrics live in this module's own ``REGISTRY`` (not prometheus_client's global one), which
also carries the process and platform collectors, so operators get RSS, CPU and open files next
to ours, and nothing another library registers globally leaks into our endpoint.

Callers never touch label plumbing; they call the typed methods of ``Metrics`` (or the module
functions bound to the default instance, ``METRICS``)::

    metrics.record_request("PutObject", 200, aborted=False, seconds=0.012)
    with metrics.vault_call("encrypt"):
        transit.new_data_key()

Label values are bounded, because a label value is a new time series forever and because these
labels must never carry anything a client chose:

* ``operation`` and ``code`` must look like an S3 operation or error code: PascalCase ASCII
  letters and digits (``PutObject``, ``SignatureDoesNotMatch``), at most 64 characters. S3
  bucket names cannot start with an upper-case letter, and object keys, access key ids or
  query parameters (the classifier's composite names such as ``GetBucket:policy`` or
  ``GET /``, whose suffix the client chose) contain other characters, so they all become
  ``other``.
* ``call`` must be a short lower-case word (``encrypt``, ``read_key``).
* Whatever passes that check, each label accepts at most ``MAX_LABEL_VALUES`` distinct values;
  later new ones become ``other``. Even a caller bug cannot explode cardinality.

No metric carries a secret, a key, a bucket name or an object key. prometheus_client is
thread-safe, so the health thread can render while the event loop and its worker threads count.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import choose_encoder

OTHER = "other"
MAX_LABEL_VALUES = 128

# Outcomes of a request, by how it ended.
OK, CLIENT_ERROR, SERVER_ERROR, ABORTED = "ok", "client_error", "server_error", "aborted"

# The Vault calls the proxy makes; any short lower-case word is accepted.
VAULT_CALLS = ("encrypt", "decrypt", "rewrap", "login", "renew", "lookup", "read_key", "health")

# S3 requests take from milliseconds (HEAD, small PUT) to a minute (a multi-GiB stream).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# A Transit round trip is a millisecond on the same host and seconds at the client timeout.
VAULT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

_PASCAL = re.compile(r"[A-Z][A-Za-z0-9]{0,63}")
_WORD = re.compile(r"[a-z][a-z0-9_]{0,63}")


def outcome_of(status: int | None, aborted: bool) -> str:
    """``ok`` (2xx/3xx), ``client_error`` (4xx), ``server_error`` (5xx, or no status at all),
    ``aborted`` (the connection was cut, whatever status had been sent)."""
    if aborted:
        return ABORTED
    if status is None or status >= 500 or status < 100:
        return SERVER_ERROR
    if status >= 400:
        return CLIENT_ERROR
    return OK


class _BoundedLabel:
    """Maps raw values to safe label values: the shape must match, and only the first
    ``limit`` distinct values are kept; anything else is ``other``."""

    def __init__(self, shape: re.Pattern[str], limit: int = MAX_LABEL_VALUES):
        self._shape = shape
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: object) -> str:
        if not isinstance(value, str) or not self._shape.fullmatch(value):
            return OTHER
        if value in self._seen:  # set membership is safe without the lock
            return value
        with self._lock:
            if len(self._seen) >= self._limit:
                return OTHER
            self._seen.add(value)
        return value


class Metrics:
    """The proxy's metrics in one registry; every method is safe from any thread."""

    def __init__(self, registry: CollectorRegistry):
        self.registry = registry
        self._operation = _BoundedLabel(_PASCAL)
        self._auth_code = _BoundedLabel(_PASCAL)
        self._reject_code = _BoundedLabel(_PASCAL)
        self._call = _BoundedLabel(_WORD)
        r = registry
        self._requests = Counter(
            "cloudtaser_requests_total",
            "S3 requests through the proxy, by operation and outcome "
            "(ok, client_error, server_error, aborted).",
            ["operation", "outcome"],
            registry=r,
        )
        self._duration = Histogram(
            "cloudtaser_request_duration_seconds",
            "Time from the request's headers to the end of its response, by operation.",
            ["operation"],
            buckets=REQUEST_BUCKETS,
            registry=r,
        )
        self._encrypted = Counter(
            "cloudtaser_bytes_encrypted_total", "Plaintext bytes encrypted.", registry=r
        )
        self._decrypted = Counter(
            "cloudtaser_bytes_decrypted_total",
            "Plaintext bytes decrypted and authenticated.",
            registry=r,
        )
        self._vault_calls = Counter(
            "cloudtaser_vault_calls_total",
            "Calls to Vault, by call (" + ", ".join(VAULT_CALLS) + ") and outcome (ok, error).",
            ["call", "outcome"],
            registry=r,
        )
        self._vault_duration = Histogram(
            "cloudtaser_vault_call_duration_seconds",
            "Duration of Vault calls, by call.",
            ["call"],
            buckets=VAULT_BUCKETS,
            registry=r,
        )
        self._dek_cache = Counter(
            "cloudtaser_dek_cache_lookups_total",
            "Lookups of unwrapped data keys in the cache, by result (hit, miss).",
            ["result"],
            registry=r,
        )
        self._dek_pool = Counter(
            "cloudtaser_dek_pool_takes_total",
            "Takes from the pool of pre-wrapped data keys for writes, by result (hit, miss).",
            ["result"],
            registry=r,
        )
        self._auth_failures = Counter(
            "cloudtaser_auth_failures_total",
            "Requests refused for their authentication, by S3 error code.",
            ["code"],
            registry=r,
        )
        self._rejected = Counter(
            "cloudtaser_rejected_requests_total",
            "Requests the proxy itself answered with an S3 error, by S3 error code.",
            ["code"],
            registry=r,
        )
        self._token_ttl = Gauge(
            "cloudtaser_vault_token_ttl_seconds",
            "Remaining TTL of the proxy's Vault token when last seen (0 for a token that "
            "does not expire or has not been seen).",
            registry=r,
        )
        self._ready = Gauge(
            "cloudtaser_ready",
            "1 when the last readiness check passed, else 0.",
            registry=r,
        )
        for outcome in ("ok", "error"):  # so rate() sees the series from the start
            for call in VAULT_CALLS:
                self._vault_calls.labels(call, outcome)
        for result in ("hit", "miss"):
            self._dek_cache.labels(result)
            self._dek_pool.labels(result)

    # ------------------------------------------------------------ requests

    def record_request(
        self, operation: str, status: int | None, aborted: bool, seconds: float
    ) -> str:
        """Count one finished request and observe its duration; returns its outcome."""
        op = self._operation(operation)
        outcome = outcome_of(status, aborted)
        self._requests.labels(op, outcome).inc()
        self._duration.labels(op).observe(max(seconds, 0.0))
        return outcome

    def add_encrypted(self, n: int) -> None:
        if n > 0:
            self._encrypted.inc(n)

    def add_decrypted(self, n: int) -> None:
        if n > 0:
            self._decrypted.inc(n)

    def auth_failure(self, code: str) -> None:
        """A request refused for its signature, key id, clock or permission."""
        self._auth_failures.labels(self._auth_code(code)).inc()

    def rejected(self, code: str) -> None:
        """Any request the proxy answered with its own S3 error (auth failures included)."""
        self._rejected.labels(self._reject_code(code)).inc()

    # ------------------------------------------------------------ Vault and keys

    @contextmanager
    def vault_call(self, call: str) -> Iterator[None]:
        """Time the body as one Vault call: ``error`` if it raises (the exception goes on),
        else ``ok``."""
        label = self._call(call)
        start = time.perf_counter()
        outcome = "error"
        try:
            yield
            outcome = "ok"
        finally:
            self._vault_duration.labels(label).observe(time.perf_counter() - start)
            self._vault_calls.labels(label, outcome).inc()

    def observe_vault(self, call: str, seconds: float, ok: bool) -> None:
        """One Vault call that was timed elsewhere (transit.Transit's observer)."""
        label = self._call(call)
        self._vault_duration.labels(label).observe(max(seconds, 0.0))
        self._vault_calls.labels(label, "ok" if ok else "error").inc()

    def dek_cache(self, hit: bool) -> None:
        self._dek_cache.labels("hit" if hit else "miss").inc()

    def dek_pool(self, hit: bool) -> None:
        self._dek_pool.labels("hit" if hit else "miss").inc()

    def set_token_ttl(self, seconds: float) -> None:
        self._token_ttl.set(max(float(seconds), 0.0))

    def set_ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)

    # ------------------------------------------------------------ exposition

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The registry in the format the scraper's Accept header asks for (Prometheus text
        by default, OpenMetrics when asked), with its content type."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


REGISTRY = CollectorRegistry(auto_describe=True)
ProcessCollector(registry=REGISTRY)
PlatformCollector(registry=REGISTRY)
METRICS = Metrics(REGISTRY)

record_request = METRICS.record_request
add_encrypted = METRICS.add_encrypted
add_decrypted = METRICS.add_decrypted
vault_call = METRICS.vault_call
dek_cache = METRICS.dek_cache
dek_pool = METRICS.dek_pool
auth_failure = METRICS.auth_failure
rejected = METRICS.rejected
set_token_ttl = METRICS.set_token_ttl
set_ready = METRICS.set_ready
render = METRICS.render
