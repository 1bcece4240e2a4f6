"""The DEK cache and the data key pool: what they keep, for how long, and when they give nothing.

Both trade plaintext DEKs in memory for Vault round trips (README "The key caches and their
trade-off"); these tests pin the bounds that trade-off promises.
"""

from __future__ import annotations

import itertools

import pytest

from cloudtaser_s3 import keycache
from cloudtaser_s3.keycache import DataKeyPool, DekCache
from cloudtaser_s3.transit import DataKey


@pytest.fixture
def clock(monkeypatch):
    now = [1000.0]
    monkeypatch.setattr(keycache.time, "monotonic", lambda: now[0])
    return now


def test_a_cached_key_is_handed_out_until_its_absolute_ttl(clock):
    cache = DekCache(max_entries=4, ttl=300)
    cache.put("k", "vault:v1:a", b"\x01" * 32)
    clock[0] += 299
    assert cache.get("k", "vault:v1:a") == b"\x01" * 32  # reading does not extend the lifetime
    clock[0] += 2
    assert cache.get("k", "vault:v1:a") is None


def test_expired_and_evicted_keys_are_zeroed_in_place(clock):
    cache = DekCache(max_entries=2, ttl=300)
    cache.put("k", "vault:v1:a", b"a" * 32)
    evicted = cache._items[("k", "vault:v1:a")][0]
    for name in ("b", "c"):
        cache.put("k", f"vault:v1:{name}", name.encode() * 32)
    buffers = {wrapped: buf for (_, wrapped), (buf, _) in cache._items.items()}
    assert set(buffers) == {"vault:v1:b", "vault:v1:c"}  # "a", the oldest, was evicted
    assert evicted == bytearray(32)  # ... and zeroed
    assert buffers["vault:v1:b"] == bytearray(b"b" * 32)  # the live ones are intact
    clock[0] += 301
    cache.sweep()
    assert len(cache) == 0
    assert all(buf == bytearray(32) for buf in buffers.values())


def test_the_cache_is_off_at_size_zero_or_ttl_zero():
    for cache in (DekCache(max_entries=0), DekCache(ttl=0)):
        cache.put("k", "vault:v1:a", b"\x01" * 32)
        assert cache.get("k", "vault:v1:a") is None


def _fetcher(version: int = 1):
    counter = itertools.count()
    calls: list[tuple[int, str]] = []

    def fetch(n: int, name: str) -> list[DataKey]:
        calls.append((n, name))
        return [
            DataKey(bytes(32), f"vault:v{version}:{next(counter)}", version, name) for _ in range(n)
        ]

    return fetch, calls


def test_the_pool_fills_a_transit_key_only_after_a_write_asked_for_it():
    fetch, calls = _fetcher()
    pool = DataKeyPool(fetch, size=4, max_age=30)
    pool.refill()
    assert calls == []  # no key is wrapped (or, with an upserting token, created) unasked
    assert pool.take("tenant-a") is None  # the first write asks Transit itself
    pool.refill()
    assert calls == [(4, "tenant-a")]
    assert pool.take("tenant-a") is not None


def test_the_pool_hands_out_nothing_while_vault_is_failing():
    fetch, _ = _fetcher()
    healthy = [True]
    pool = DataKeyPool(fetch, size=4, max_age=30, healthy=lambda: healthy[0])
    pool.take("k")
    pool.refill()
    healthy[0] = False
    assert pool.take("k") is None
    healthy[0] = True
    assert pool.take("k") is not None


def test_pooled_keys_older_than_max_age_are_never_handed_out(clock):
    fetch, _ = _fetcher()
    pool = DataKeyPool(fetch, size=4, max_age=30)
    pool.take("k")
    pool.refill()
    clock[0] += 31
    assert pool.take("k") is None


def test_a_refill_that_sees_a_new_key_version_drops_the_older_keys():
    fetch_v1, _ = _fetcher(version=1)
    pool = DataKeyPool(fetch_v1, size=4, max_age=30)
    pool.take("k")
    pool.refill()
    pool.take("k")  # three v1 keys left, one missing
    pool._fetch, _ = _fetcher(version=2)
    pool.refill()
    assert pool.take("k").key_version == 2  # the three v1 keys are gone, not handed out
    assert pool.take("k") is None


def test_the_pool_is_off_at_size_zero():
    fetch, calls = _fetcher()
    pool = DataKeyPool(fetch, size=0)
    assert pool.take("k") is None
    pool.refill()
    assert calls == []
