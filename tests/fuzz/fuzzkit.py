"""What the fuzz targets share: the hypothesis profile, the example budget, chunked feeding, a
time bound.

The profile (it lives here, not in a conftest.py: test modules import ``conftest`` by name,
and a second conftest module would shadow tests/conftest.py for every module collected after):

* No example database: CI starts from a fresh clone anyway, and each run should explore new
  inputs rather than replay old ones. A failure prints the falsifying example and a
  ``@reproduce_failure`` blob to replay it exactly.
* No per-example deadline: this machine is shared and loaded, so wall-clock deadlines would be
  flaky. Targets that must stay fast (the XML rewriting) check their own time bound instead.

``CLOUDTASER_FUZZ_EXAMPLES`` is the number of examples *each parser* gets in one run (default
10,000, what CI runs). A parser's tests split it between them with ``budget(share)``, the shares
of one parser adding up to 1, so ``CLOUDTASER_FUZZ_EXAMPLES=200000`` runs 200,000 examples of
every parser.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

settings.register_profile(
    "cloudtaser-fuzz",
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("cloudtaser-fuzz")

EXAMPLES = int(os.environ.get("CLOUDTASER_FUZZ_EXAMPLES", "10000"))


def budget(share: float) -> settings:
    """Settings for a test that runs ``share`` of its parser's examples."""
    return settings(max_examples=max(1, math.ceil(EXAMPLES * share)))


#: How a stream arrives: the sizes of successive reads, used in a cycle. Small sizes split
#: headers, lines and segments; large ones hand over several segments at once.
chunk_sizes = st.lists(
    st.one_of(st.integers(1, 64), st.integers(1, 70_000), st.sampled_from([16, 28, 65_564])),
    min_size=1,
    max_size=6,
)


MAX_READS = 200


def pieces(data: bytes, sizes: list[int]) -> Iterator[bytes]:
    """``data`` cut into reads of the given sizes, repeated in a cycle; after MAX_READS reads
    the rest comes in one read (tiny reads over a whole 64 KiB segment cost time and exercise
    nothing new)."""
    pos, i = 0, 0
    while pos < len(data):
        n = sizes[i % len(sizes)] if i < MAX_READS else len(data)
        yield data[pos : pos + n]
        pos += n
        i += 1


def first_difference(a: bytes, b: bytes) -> int:
    """The first offset where ``a`` and ``b`` differ (the shorter length if one is a prefix)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


@contextmanager
def within(seconds: float, what: str) -> Iterator[None]:
    """Fail if the block takes longer than ``seconds`` (generous: the machine is shared)."""
    start = time.perf_counter()
    yield
    took = time.perf_counter() - start
    assert took < seconds, f"{what} took {took:.2f} s (bound {seconds} s)"
