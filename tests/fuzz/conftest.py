"""Hypothesis settings shared by every fuzz target (see docs/fuzzing.md).

* No example database: CI starts from a fresh clone anyway, and each run should explore new
  inputs rather than replay old ones. A failure prints the falsifying example and a
  ``@reproduce_failure`` blob to replay it exactly.
* No per-example deadline: this machine is shared and loaded, so wall-clock deadlines would be
  flaky. Targets that must stay fast (the XML rewriting) check their own time bound instead.
* How many examples each parser gets is ``CLOUDTASER_FUZZ_EXAMPLES`` (fuzzkit.EXAMPLES).
"""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "cloudtaser-fuzz",
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile("cloudtaser-fuzz")
