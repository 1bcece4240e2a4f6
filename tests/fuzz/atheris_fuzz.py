"""Coverage-guided runs of the hypothesis fuzz targets with atheris (libFuzzer), for long runs
outside CI. Every hypothesis test in tests/fuzz is also a libFuzzer target: atheris feeds it
bytes through ``test.hypothesis.fuzz_one_input`` and keeps the inputs that reach new code of
cloudtaser_s3 (instrumented at import), so the same properties are checked on inputs chosen
by coverage rather than at random.

    .venv/bin/python tests/fuzz/atheris_fuzz.py test_fuzz_envelope::test_a_mutated_body_... \\
        -runs=100000 -max_total_time=600 [corpus-dir]

A failing input stops the run and is written as ``crash-<sha1>`` (replay it by passing the
file instead of a corpus directory). Needs atheris (a test dependency on Linux x86-64).
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import atheris


def main() -> None:
    if len(sys.argv) < 2 or "::" not in sys.argv[1]:
        sys.exit(__doc__)
    module_name, test_name = sys.argv[1].split("::", 1)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import fuzzkit  # noqa: F401  (the hypothesis profile: no database, no deadline)

    with atheris.instrument_imports(include=["cloudtaser_s3"]):
        module = importlib.import_module(module_name)
    test = getattr(module, test_name)
    atheris.Setup([sys.argv[0], *sys.argv[2:]], test.hypothesis.fuzz_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
