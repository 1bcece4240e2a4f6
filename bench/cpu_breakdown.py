"""Where a proxy's CPU goes: py-spy samples of a running mitmdump, grouped by what the code does.

The benchmark's ratios say how much slower the proxy is than plain mitmproxy; this says why.
``Recording`` attaches py-spy (``--nonblocking``: the process is never paused) to a proxy while
a workload runs, and ``categorize`` sorts the samples: every stack is charged to the innermost
frame that belongs to a known part (the client's checksums, AES-GCM, SigV4, logging and
metrics, the proxy's other hook code, mitmproxy's addon dispatch, mitmproxy's HTTP/1 and
connection handling, asyncio), idle waits are dropped, and threads other than the event loop
(Vault calls, the DEK pool, health) are one line of their own. Multiplied by the CPU time the
process used meanwhile (``/proc``), that is milliseconds of CPU per request or per MiB.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

RATE = 1000  # samples per second
OTHER_THREADS = "other threads (Vault calls, DEK pool, health)"
UNKNOWN = "other"
# (label, path fragments), tried in this order on each frame from the innermost outwards.
CATEGORIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("client checksums of the plaintext (SHA-256, CRC)", ("cloudtaser_s3/checksums.py",)),
    (
        "AES-GCM sealing/opening, segment framing",
        ("cloudtaser_s3/envelope.py", "cloudtaser_s3/streams.py", "cloudtaser_s3/awschunked.py"),
    ),
    ("SigV4 verify and re-sign", ("cloudtaser_s3/sigv4.py",)),
    (
        "request log line and metrics",
        (
            "cloudtaser_s3/requestlog.py",
            "cloudtaser_s3/metrics.py",
            "logging/__init__.py",
            "prometheus_client/",
        ),
    ),
    ("the proxy's hooks (classify, headers, keys)", ("cloudtaser_s3/",)),
    ("mitmproxy: addon dispatch", ("mitmproxy/addonmanager.py", "mitmproxy/hooks.py")),
    ("mitmproxy: HTTP/1, connections, flows", ("mitmproxy/", "h11/", "h2/")),
    ("asyncio and sockets", ("asyncio/", "selectors.py", "socket.py", "ssl.py")),
)
LABELS = tuple(label for label, _ in CATEGORIES) + (OTHER_THREADS, UNKNOWN)
# Innermost frames of a thread that waits rather than works.
_IDLE = (
    ".select (selectors.py",  # the event loop or the health server waiting for sockets
    "Condition.wait (threading.py",
    "Event.wait (threading.py",
    "_worker (concurrent/futures/thread.py",  # an idle executor thread
)
_THREAD_ROOT = "Thread._bootstrap"


def _frame_path(frame: str) -> str:
    """``'name (path/to/file.py:12)'`` -> ``'path/to/file.py'``."""
    inside = frame.rpartition(" (")[2]
    return inside.rpartition(":")[0] if ":" in inside else inside


def category_of(frames: list[str]) -> str:
    """The part of the code a sampled stack (outermost first) is charged to."""
    for frame in reversed(frames):
        path = _frame_path(frame)
        for label, fragments in CATEGORIES:
            if any(f in path for f in fragments):
                return label
    return UNKNOWN


def categorize(raw: str) -> Counter[str]:
    """Non-idle samples per category from py-spy's ``--format raw`` output (one stack per
    line: frames joined by ';', then a space and the count)."""
    counts: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, n = line.rstrip().rpartition(" ")
        if not stack or not n.isdigit():
            continue
        frames = stack.split(";")
        if any(idle in frames[-1] for idle in _IDLE):
            continue
        if any(f.startswith(_THREAD_ROOT) for f in frames):
            counts[OTHER_THREADS] += int(n)
        else:
            counts[category_of(frames)] += int(n)
    return counts


def find_py_spy() -> str | None:
    """py-spy next to this interpreter (installed with the test extra), else on PATH."""
    beside = Path(sys.executable).parent / "py-spy"
    return str(beside) if beside.exists() else shutil.which("py-spy")


class ProfileUnavailable(Exception):
    """py-spy is missing or may not attach (ptrace not permitted)."""


class Recording:
    """py-spy recording ``pid`` while the block runs; ``samples`` afterwards."""

    def __init__(self, pid: int, out: Path) -> None:
        self.pid, self.out = pid, out
        self.samples: Counter[str] = Counter()
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Recording:
        binary = find_py_spy()
        if binary is None:
            raise ProfileUnavailable("py-spy is not installed (pip install py-spy)")
        argv = [binary, "record", "--nonblocking", "-r", str(RATE), "-f", "raw"]
        argv += ["-o", str(self.out), "-p", str(self.pid)]
        self._proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(1.0)  # attached, or failed
        if self._proc.poll() is not None:
            out = (self._proc.stdout.read() if self._proc.stdout else b"").decode(errors="replace")
            raise ProfileUnavailable(
                "py-spy could not attach: " + (out.strip().splitlines() or ["no output"])[-1]
            )
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGINT)  # py-spy writes its file on Ctrl-C
        try:
            self._proc.wait(30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if exc[0] is None and self.out.exists():
            self.samples = categorize(self.out.read_text(errors="replace"))
            os.unlink(self.out)


def per_unit_ms(samples: Counter[str], cpu_seconds: float, units: float) -> dict[str, float]:
    """CPU milliseconds per unit (request or MiB) for each category, the process's measured
    CPU time shared out in proportion to the samples."""
    total = sum(samples.values())
    if not total or units <= 0:
        return {}
    return {label: 1e3 * cpu_seconds * samples[label] / total / units for label in LABELS}
