"""Keeping Vault off the hot path: unwrapped DEKs for reads, pre-wrapped DEKs for writes.

``DekCache`` saves a Transit decrypt for every part of an upload and every read of a hot object.
``DataKeyPool`` keeps a few fresh DEKs wrapped in advance (one batched Transit call refills
many), so a PutObject needs no Vault round trip at all.

The trade-off both make: plaintext DEKs live in process memory for a bounded time — a cached
one until ``ttl`` after it was unwrapped, a pooled one until used or ``max_age``. Python cannot
promise that memory is wiped: the cache keeps its copies in bytearrays and zeroes them when
they expire or are evicted, but the immutable copies handed to the cipher (and OpenSSL's own
key schedule) are only released, when the streams that use them end. A process memory dump
within those windows shows the keys of the objects touched in them — never the Transit key.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable

from .transit import DataKey, VaultUnavailable

log = logging.getLogger(__name__)

CHECK_SECONDS = 2.0  # with a pool: how often Vault is checked when no request asks it


def _wipe(buf: bytearray) -> None:
    buf[:] = bytes(len(buf))


class DekCache:
    """Unwrapped data keys by (Transit key, wrapped form), bounded in count and lifetime.

    The lifetime is absolute (from the unwrap, not the last use), so a key that is read all
    the time is still unwrapped again every ``ttl``: revoking access in Vault takes effect for
    every object within ``ttl``. ``max_entries=0`` or ``ttl=0`` turns the cache off.
    """

    def __init__(self, max_entries: int = 1024, ttl: float = 300.0):
        self._max = max_entries
        self._ttl = ttl
        self._lock = threading.Lock()
        self._items: OrderedDict[tuple[str, str], tuple[bytearray, float]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get(self, key_name: str, wrapped: str) -> bytes | None:
        with self._lock:
            self._sweep_locked(time.monotonic())
            item = self._items.get((key_name, wrapped))
            if item is None:
                self.misses += 1
                return None
            self.hits += 1
            return bytes(item[0])

    def put(self, key_name: str, wrapped: str, dek: bytes) -> None:
        if not self._max or self._ttl <= 0:
            return
        with self._lock:
            old = self._items.pop((key_name, wrapped), None)
            if old is not None:
                _wipe(old[0])
            self._items[(key_name, wrapped)] = (bytearray(dek), time.monotonic() + self._ttl)
            while len(self._items) > self._max:
                _wipe(self._items.popitem(last=False)[1][0])

    def sweep(self) -> None:
        """Drop (and zero) expired keys even when nobody asks for them."""
        with self._lock:
            self._sweep_locked(time.monotonic())

    def clear(self) -> None:
        with self._lock:
            for buf, _ in self._items.values():
                _wipe(buf)
            self._items.clear()

    def __len__(self) -> int:
        return len(self._items)

    def _sweep_locked(self, now: float) -> None:
        # Insertion order is expiry order: the lifetime is the same for every entry.
        while self._items:
            key, (buf, expires) = next(iter(self._items.items()))
            if expires > now:
                return
            del self._items[key]
            _wipe(buf)


class DataKeyPool:
    """Fresh DEKs wrapped in advance, per Transit key, refilled in the background.

    ``take`` never waits for Vault: it returns a pooled key or None (the caller then asks
    Transit itself). Keys older than ``max_age`` are dropped, and a refill that comes back with
    a newer key version drops the older ones, so after a rotation new objects use the new
    version within ``max_age`` at the latest. While ``healthy()`` says Vault is failing, the
    pool hands out nothing: an outage or a revoked token stops writes as it does without a
    pool (the background loop checks Vault every ``CHECK_SECONDS``).
    """

    def __init__(
        self,
        fetch: Callable[[int, str], list[DataKey]],
        size: int = 16,
        max_age: float = 30.0,
        key_names: tuple[str, ...] = (),
        healthy: Callable[[], bool] = lambda: True,
        check: Callable[[], None] = lambda: None,
    ):
        self._fetch = fetch
        self._healthy = healthy
        self._check = check
        self._size = size
        self._max_age = max_age
        self._lock = threading.Lock()
        self._pools: dict[str, deque[tuple[DataKey, float]]] = {n: deque() for n in key_names}
        self._wake = threading.Event()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._size > 0

    def take(self, key_name: str) -> DataKey | None:
        if not self.enabled or not self._healthy():
            return None
        now = time.monotonic()
        with self._lock:
            pool = self._pools.setdefault(key_name, deque())
            while pool and now - pool[0][1] > self._max_age:
                pool.popleft()
            key = pool.popleft()[0] if pool else None
            low = len(pool) <= self._size // 2
        if key is None:
            self.misses += 1
        else:
            self.hits += 1
        if low:
            self._wake.set()
        return key

    def refill(self) -> None:
        """Top every pool up with one batched Transit call per key; drop stale keys."""
        with self._lock:
            names = list(self._pools)
        for name in names:
            now = time.monotonic()
            with self._lock:
                pool = self._pools[name]
                while pool and now - pool[0][1] > self._max_age / 2:
                    pool.popleft()  # renewed before it would expire in a caller's hands
                missing = self._size - len(pool)
            if missing <= 0:
                continue
            fresh = self._fetch(missing, name)
            newest = max(k.key_version for k in fresh)
            with self._lock:
                pool = self._pools[name]
                kept = [(k, t) for k, t in pool if k.key_version >= newest]
                if len(kept) < len(pool):
                    log.info("cloudtaser: Transit key %r is at version %d now", name, newest)
                pool.clear()
                pool.extend(kept)
                pool.extend((k, now) for k in fresh)

    def run(self, stop: threading.Event, also: Callable[[], None] = lambda: None) -> None:
        """The background loop: refill when low or every max_age/4; ``also`` rides along
        (the DEK cache's sweep)."""
        failures = 0
        while not stop.is_set():
            try:
                also()
                if self.enabled:
                    self._check()
                    self.refill()
                failures = 0
            except VaultUnavailable as e:
                failures += 1
                log.warning("cloudtaser: refilling the data key pool failed: %s", e)
            except Exception:
                failures += 1
                log.exception("cloudtaser: data key pool error")
            period = min(self._max_age / 4, CHECK_SECONDS) if self.enabled else 5.0
            if failures:
                period = min(period, 0.5 * 2 ** min(failures, 5))
            self._wake.wait(period)
            self._wake.clear()
