"""Benchmark: the backend directly, a plain mitmproxy and the CloudTaser proxy, in one run.

Starts a dev OpenBao, SeaweedFS (the backend), a plain ``mitmdump`` reverse proxy with no script
(bodies streamed, ``stream_large_bodies=1``) and the CloudTaser proxy, all on 127.0.0.1, then
measures the three targets in one interleaved run (D M P, M P D, P D M, ...): PUT/GET of 64 MiB,
1 MiB and 4 KiB objects, boto3 upload_file/download_file of 100 MiB, a 1 KiB range from the
middle of a 64 MiB object, and 8 concurrent clients (processes) doing 4 KiB PUT+GET. Every read
is checked byte for byte. It prints each figure, the ratios proxy/direct and proxy/mitmproxy
with PASS/MISS against the targets of issue 6, the CPU both proxies used per MiB and per request
(``/proc/<pid>/stat``), and their peak RSS (VmHWM).

A concurrency scan (1, 4, 16 clients: 4 KiB PUT+GET and 64 MiB GET) gives the scaling figures;
the profile phase (py-spy, bench/cpu_breakdown.py) shows where each proxy's CPU goes per
request and per MiB, by part of the code, which explains the ratios; the memory run streams a
generated object (1 GiB by default, ``--memory-size 5GiB`` for the issue's figure) through a
fresh proxy and back, sampling its RSS; the target is under 150 MiB.

Exit codes: 0 fine (a MISS is printed, not fatal); 1 the memory run exceeded the RSS target;
2 a read mismatched, a request failed or a server died; 130 interrupted.

    ./run.sh bench [--quick] [--rounds 9] [--no-scan] [--no-memory] [--memory-size 1GiB]
                   [--json out.json] [--keep]   (--help for the sizes and counts)
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
import math
import multiprocessing
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cpu_breakdown as cpu  # bench/cpu_breakdown.py, beside this script
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from cloudtaser_s3 import localservers as ls

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
REGION = "us-east-1"
BUCKET = "bench"
RSS_TARGET_MIB = 150
SAMPLE_INTERVAL = 0.2
CHUNK = MiB
RANGE_SIZE = KiB
_ZEROS = bytes(MiB)

# The three targets, in the order of the first round; keys of every result dict.
TARGETS = ("direct", "mitmproxy", "proxy")
SHORT = {"direct": "D", "mitmproxy": "M", "proxy": "P"}
PROXIES = ("mitmproxy", "proxy")  # the two processes whose CPU and RSS are measured

# Issue 6's targets, all against plain mitmproxy (M) in the same run.
TPUT_MIN_RATIO = 0.9  # every throughput figure >= 0.9x M
SMALL_ADDED_MS = 1.0  # 4 KiB PUT and GET p50 <= M + 1 ms
RANGE_MAX_RATIO = 1.2  # 1 KiB range p50 <= 1.2x M

# Defaults of the full run and of --quick (options the user gives win over both).
DEFAULTS: dict[str, Any] = {
    "rounds": 9,
    "medium_count": 10,
    "small_count": 50,
    "range_count": 20,
    "clients": 8,
    "client_cycles": 10,
    "scan_cycles": 64,
    "scan_reads": 8,
    "profile_cycles": 300,
    "profile_big": 3,
    "memory_size": GiB,
}
QUICK: dict[str, Any] = {
    "rounds": 3,
    "medium_count": 4,
    "small_count": 20,
    "range_count": 10,
    "clients": 8,
    "client_cycles": 4,
    "scan_cycles": 24,
    "scan_reads": 4,
    "profile_cycles": 50,
    "profile_big": 1,
    "memory_size": 256 * MiB,
}


class BenchFailure(Exception):
    """A read mismatched, a request failed or a server died: the run is not valid."""


# --------------------------------------------------------------------------------------------
# Helpers


def parse_size(text: str) -> int:
    """``64MiB``, ``64Mi``, ``64M`` (binary multiples all), ``1GiB``, ``4096``: bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(?:i?B?)\s*", text, re.IGNORECASE)
    if not m:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (use e.g. 64MiB, 1GiB, 4096)")
    power = " KMGT".index(m.group(2).upper() or " ")
    return int(m.group(1)) * 1024**power


def parse_levels(text: str) -> list[int]:
    """``1,4,16``: concurrency levels of the scan."""
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not levels or min(levels) < 1:
        raise argparse.ArgumentTypeError(f"levels must be positive: {text!r}")
    return levels


def fmt_size(n: int) -> str:
    """Bytes as a short binary size."""
    for unit, size in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


def proc_status_kib(pid: int | str, name: str) -> int | None:
    """A ``kB`` field (VmRSS, VmHWM, ...) of /proc/<pid>/status, or None if unavailable."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def proc_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds a process has used so far (0.0 if unavailable)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_cmdline(pid: int) -> list[str]:
    """The argv of a process."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def proc_children(pid: int) -> list[int]:
    """Direct child processes of pid (all threads)."""
    kids: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            kids += [int(x) for x in (task / "children").read_text().split()]
    return kids


def check_is_mitmdump(pid: int) -> str:
    """Make sure a proxy pid is the mitmdump process itself (python -m ... execs it), so its
    CPU time and VmHWM are the proxy's."""
    argv = proc_cmdline(pid)
    if not any(os.path.basename(a) == "mitmdump" for a in argv[:2]):
        raise BenchFailure(f"proxy pid {pid} is not mitmdump: {' '.join(argv)!r}")
    kids = proc_children(pid)
    note = f", children {kids}" if kids else ", no child processes"
    return f"pid {pid} is mitmdump ({' '.join(argv[:2])}{note})"


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine have been busy since boot (/proc/stat): user,
    nice, system and steal (the hypervisor gave the time to another guest). Interrupt time is
    left out: our own loopback traffic is handled there and no process is charged for it."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0
    user, nice, system, _idle, _iowait, _irq, _softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + steal) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds used so far by a process and all its live descendants."""
    total, todo, seen = 0.0, [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += proc_cpu_seconds(pid)
        todo += proc_children(pid)
    return total


class OtherLoad:
    """The share of the machine's CPUs that processes outside this benchmark (and steal time)
    used meanwhile: busy time from /proc/stat minus the CPU time of this process and its
    descendants (the servers and the client processes)."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.busy0 = machine_busy_seconds()
        self.ours0 = tree_cpu_seconds(os.getpid())

    def share(self) -> float:
        wall = (time.monotonic() - self.t0) * (os.cpu_count() or 1)
        busy = machine_busy_seconds() - self.busy0
        ours = tree_cpu_seconds(os.getpid()) - self.ours0
        return max(0.0, busy - ours) / wall if wall > 0 else 0.0


def reset_own_hwm() -> bool:
    """Reset this process's VmHWM to its current RSS (Linux clear_refs "5"); True if done."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def code_version() -> str:
    """The git commit the proxy code comes from, noting uncommitted changes under addon/."""
    repo = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--", "addon"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"
    return f"{head} + uncommitted changes in addon/" if dirty else head


def cpu_model() -> str:
    """The CPU model name, from /proc/cpuinfo."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def percentile(samples: Sequence[float], p: float) -> float:
    """The p-th percentile (0..100), linear interpolation between closest ranks."""
    s = sorted(samples)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * p / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def rotated(items: Sequence[str], n: int) -> list[str]:
    """items rotated left by n: D M P, M P D, P D M, ..."""
    k = n % len(items)
    return [*items[k:], *items[:k]]


class PatternStream(io.RawIOBase):
    """A seekable read-only file of ``length`` deterministic bytes made on the fly.

    The bytes are an AES-256-CTR keystream under a key derived from ``seed``, so any offset can
    be produced directly (botocore reads the body for its CRC32 and SHA-256, seeks back, then
    sends it) and nothing repeats, while the bench process never holds the object.
    """

    def __init__(self, length: int, seed: bytes) -> None:
        super().__init__()
        self._key = hashlib.sha256(b"cloudtaser-bench:" + seed).digest()
        self._length = length
        self._pos = 0
        self._enc: Any = None
        self._enc_pos = -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        if base + offset < 0:
            raise ValueError("negative seek position")
        self._pos = base + offset
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        n = min(len(view), self._length - self._pos)
        if n <= 0:
            return 0
        if self._enc is None or self._enc_pos != self._pos:
            block, skip = divmod(self._pos, 16)
            nonce = (block % 2**128).to_bytes(16, "big")
            self._enc = Cipher(algorithms.AES(self._key), modes.CTR(nonce)).encryptor()
            if skip:
                self._enc.update(_ZEROS[:skip])
        done = 0
        while done < n:
            step = min(n - done, len(_ZEROS))
            view[done : done + step] = self._enc.update(_ZEROS[:step])
            done += step
        self._pos += n
        self._enc_pos = self._pos
        return n


def pattern_sha256(length: int, seed: bytes) -> str:
    """The SHA-256 of a PatternStream, computed in 1 MiB pieces."""
    h = hashlib.sha256()
    stream = PatternStream(length, seed)
    buf = bytearray(CHUNK)
    while n := stream.readinto(buf):
        h.update(memoryview(buf)[:n])
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file, read in 1 MiB pieces."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


class RssSampler:
    """Samples processes' VmRSS every ``interval`` seconds in a thread; keeps each peak."""

    def __init__(self, *pids: int, interval: float = SAMPLE_INTERVAL) -> None:
        self.pids = pids
        self.interval = interval
        self.peaks_kib = dict.fromkeys(pids, 0)
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    @property
    def peak_kib(self) -> int:
        """The peak of the first process."""
        return self.peaks_kib[self.pids[0]]

    def _run(self) -> None:
        while not self._stop.is_set():
            for pid in self.pids:
                rss = proc_status_kib(pid, "VmRSS")
                if rss is not None:
                    self.peaks_kib[pid] = max(self.peaks_kib[pid], rss)
            self.samples += 1
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------------------------
# The stack


def mitmdump_plain_argv(upstream: str, port: int, buffered: bool) -> list[str]:
    """A plain mitmdump reverse proxy, no script: the baseline the proxy is held against.

    ``keep_host_header``: the client signed the Host it connected to and the backend verifies
    that signature, so the Host must reach it unchanged (our proxy sets the same option and
    re-signs). ``stream_large_bodies=1``: every body with a length streams through (``stream =
    True``) instead of being buffered whole; our proxy streams every object body through its
    stream callable, so this is the like-for-like baseline (``--mitm-buffered`` drops it).
    """
    binary = ls.find_binary("mitmdump", "pip install mitmproxy")
    argv = [
        binary,
        "--mode",
        f"reverse:{upstream}@{ls.LOOPBACK}:{port}",
        "--set",
        "flow_detail=0",
        "--set",
        "keep_host_header=true",
    ]
    if not buffered:
        argv += ["--set", "stream_large_bodies=1"]
    return argv


@dataclass
class Stack:
    """The running servers and the clients pointed at them."""

    workdir: Path
    bao: ls.OpenBao | None = None
    s3: ls.S3Server | None = None
    proxies: list[ls.ProxyProcess] = field(default_factory=list)
    plain: list[ls.ServerProcess] = field(default_factory=list)  # plain mitmdump processes
    token: str = ""

    def start_proxy(
        self, name: str, overrides: Mapping[str, str | None] | None = None
    ) -> ls.ProxyProcess:
        """A proxy in front of the backend with the test suite's default environment.

        ``overrides`` go on top of it (a value of None removes a variable).
        """
        assert self.bao is not None and self.s3 is not None
        env: dict[str, str | None] = {
            "S3_ENDPOINT": self.s3.endpoint,
            "S3_REGION": REGION,
            "VAULT_ADDR": self.bao.addr,
            "VAULT_AUTH_METHOD": "token",
            "VAULT_TOKEN": self.token,
            "CLOUDTASER_S3PROXY_TRANSIT_KEY": self.bao.transit_key,
            "TRANSIT_MOUNT": self.bao.transit_mount,
            "AWS_ACCESS_KEY_ID": self.s3.access_key,
            "AWS_SECRET_ACCESS_KEY": self.s3.secret_key,
        }
        env.update(overrides or {})
        proxy = ls.start_proxy(env, self.workdir / name)
        self.proxies.append(proxy)
        return proxy

    def start_plain_mitmproxy(
        self, name: str, *, buffered: bool = False
    ) -> tuple[ls.ServerProcess, str]:
        """A plain mitmdump in reverse mode in front of the backend; (process, endpoint)."""
        assert self.s3 is not None
        port = ls.free_port()
        argv = mitmdump_plain_argv(self.s3.endpoint, port, buffered)
        proc = ls.ServerProcess(
            name,
            argv,
            log_path=self.workdir / name / "mitmdump.log",
            env=ls.clean_env({"HOME": str(self.workdir / name)}),
            cwd=self.workdir / name,
        )
        self.plain.append(proc)
        ls.wait_for_port(ls.LOOPBACK, port, 60.0, proc=proc)
        return proc, f"http://{ls.LOOPBACK}:{port}"

    def check_alive(self) -> None:
        """Raise BenchFailure naming any server that has exited."""
        procs = [p.process for p in self.proxies if p.process.returncode is None]
        procs += [p for p in self.plain if p.returncode is None]
        procs += [x.process for x in (self.bao, self.s3) if x is not None]
        for proc in procs:
            if not proc.is_running():
                raise BenchFailure(
                    f"{proc.name} exited with code {proc.returncode}\n"
                    f"--- {proc.name} log tail ---\n{proc.log_tail()}"
                )

    def stop(self) -> None:
        """Stop everything, proxies first."""
        for proxy in reversed(self.proxies):
            with contextlib.suppress(Exception):
                proxy.stop()
        for proc in self.plain:
            with contextlib.suppress(Exception):
                proc.stop()
        for server in (self.s3, self.bao):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()


def start_stack(workdir: Path) -> Stack:
    """OpenBao dev, SeaweedFS and (later) proxies, all under workdir."""
    stack = Stack(workdir)
    try:
        t0 = time.monotonic()
        stack.bao = ls.start_openbao_dev(workdir / "openbao", transit_key=ls.DEFAULT_TRANSIT_KEY)
        stack.token = stack.bao.create_policy_token()
        stack.s3 = ls.start_seaweedfs(
            workdir / "seaweedfs", ls.random_access_key(), ls.random_secret_key()
        )
        print(
            f"  OpenBao dev {stack.bao.addr}, SeaweedFS {stack.s3.endpoint} "
            f"({time.monotonic() - t0:.1f} s)"
        )
    except BaseException:
        stack.stop()
        raise
    return stack


def client_for(endpoint: str, stack: Stack) -> Any:
    """A boto3 client with default settings and the backend's key pair."""
    assert stack.s3 is not None
    return ls.s3_client(endpoint, stack.s3.access_key, stack.s3.secret_key, REGION)


# --------------------------------------------------------------------------------------------
# Concurrent clients: a pool of worker processes, each with its own boto3 clients
#
# Processes, not threads: botocore spends a few ms of CPU per request, and threads in one
# interpreter would share one GIL, so the client side would cap the rate before the proxies do.


@dataclass(frozen=True)
class Job:
    """One client's share of a concurrent batch."""

    endpoint: str
    access_key: str
    secret_key: str
    kind: str  # "small": PUT a new object then GET it, ``count`` times; "get": GET ``key``
    key: str  # the key prefix (small) or the object (get)
    size: int
    count: int
    sha256: str = ""  # get: of the object
    start_at: float = 0.0  # time.monotonic() (one clock for all processes on Linux)


_POOL_CLIENTS: dict[str, Any] = {}


def _pool_init() -> None:
    # The parent handles Ctrl-C and SIGTERM and terminates the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _pool_job(job: Job) -> dict[str, Any]:
    """Run one Job in a worker; errors come back as a string (exceptions of a module run as
    ``__mp_main__`` do not unpickle in the parent)."""
    out: dict[str, Any] = {"pid": os.getpid(), "put": [], "get": [], "retries": 0, "verified": 0}
    try:
        client = _POOL_CLIENTS.get(job.endpoint)
        if client is None:
            client = ls.s3_client(job.endpoint, job.access_key, job.secret_key, REGION)
            _POOL_CLIENTS[job.endpoint] = client
        delay = job.start_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        out["begin"] = time.monotonic()
        for i in range(job.count):
            if job.kind == "small":
                key, body = f"{job.key}-{i}", os.urandom(job.size)
                t0 = time.perf_counter()
                resp = client.put_object(Bucket=BUCKET, Key=key, Body=body)
                out["put"].append(time.perf_counter() - t0)
                out["retries"] += _retries(resp)
                t0 = time.perf_counter()
                resp = client.get_object(Bucket=BUCKET, Key=key)
                data = resp["Body"].read()
                out["get"].append(time.perf_counter() - t0)
                out["retries"] += _retries(resp)
                if data != body:
                    raise BenchFailure(f"GET {key}: {len(data)} bytes that differ from those put")
                out["verified"] += len(data)
            else:
                t0 = time.perf_counter()
                resp = client.get_object(Bucket=BUCKET, Key=job.key)
                h, got = hashlib.sha256(), 0
                for chunk in resp["Body"].iter_chunks(CHUNK):
                    h.update(chunk)
                    got += len(chunk)
                out["get"].append(time.perf_counter() - t0)
                out["retries"] += _retries(resp)
                if got != job.size or h.hexdigest() != job.sha256:
                    raise BenchFailure(f"GET {job.key}: {got} bytes that differ from those put")
                out["verified"] += got
        out["end"] = time.monotonic()
    except Exception as e:  # noqa: BLE001 - reported to the parent, which fails the run
        out["error"] = f"{type(e).__name__}: {e}"
    return out


@dataclass
class PoolBatch:
    """What one concurrent batch gave: latencies, wall time, distinct client processes."""

    put: list[float]
    get: list[float]
    wall: float
    clients: int
    processes: int
    retries: int
    verified: int


def pool_size(args: argparse.Namespace) -> int:
    """Worker processes: one per client of the largest concurrent batch."""
    return max(args.clients, *args.scan_levels) if args.scan else args.clients


def run_jobs(pool: Any, jobs: list[Job], lead: float = 0.3) -> PoolBatch:
    """Run jobs at once, one per worker process; they all start ``lead`` s from now."""
    start_at = time.monotonic() + lead
    jobs = [Job(**{**asdict(j), "start_at": start_at}) for j in jobs]
    pending = [pool.apply_async(_pool_job, (j,)) for j in jobs]
    outs = [p.get(timeout=3600) for p in pending]
    errors = [o["error"] for o in outs if "error" in o]
    if errors:
        raise BenchFailure(f"{len(errors)} of {len(jobs)} concurrent clients failed: {errors[0]}")
    return PoolBatch(
        put=[x for o in outs for x in o["put"]],
        get=[x for o in outs for x in o["get"]],
        wall=max(o["end"] for o in outs) - min(o["begin"] for o in outs),
        clients=len(jobs),
        processes=len({o["pid"] for o in outs}),
        retries=sum(o["retries"] for o in outs),
        verified=sum(o["verified"] for o in outs),
    )


# --------------------------------------------------------------------------------------------
# Measurements


@dataclass
class Batch:
    """One timed batch through one target: wall seconds, the proxy's CPU seconds (None for
    direct), the MiB and requests it moved."""

    wall: float
    cpu: float | None
    mib: float
    requests: int


@dataclass
class Results:
    """Raw samples: per measure, per target (``direct``, ``mitmproxy``, ``proxy``), seconds.

    ``keys.py`` uses only ``retries`` (its own target names) and ``bytes_verified``.
    """

    samples: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    batches: dict[str, dict[str, list[Batch]]] = field(default_factory=dict)
    retries: dict[str, int] = field(default_factory=lambda: dict.fromkeys(TARGETS, 0))
    bytes_verified: int = 0
    notes: list[str] = field(default_factory=list)
    other_load: float = 0.0  # the share of the CPUs other processes used during the rounds

    def add(self, measure: str, target: str, seconds: float | Sequence[float]) -> None:
        per = self.samples.setdefault(measure, {}).setdefault(target, [])
        if isinstance(seconds, float | int):
            per.append(float(seconds))
        else:
            per.extend(seconds)

    def add_batch(self, measure: str, target: str, batch: Batch) -> None:
        self.batches.setdefault(measure, {}).setdefault(target, []).append(batch)


def _retries(resp: dict[str, Any]) -> int:
    return int(resp.get("ResponseMetadata", {}).get("RetryAttempts", 0))


def timed_put(client: Any, key: str, body: Any, res: Results, target: str) -> float:
    """PutObject; seconds."""
    t0 = time.perf_counter()
    resp = client.put_object(Bucket=BUCKET, Key=key, Body=body)
    dt = time.perf_counter() - t0
    res.retries[target] += _retries(resp)
    return dt


def timed_get(
    client: Any,
    key: str,
    expected: bytes,
    res: Results,
    target: str,
    *,
    sha256: bytes | None = None,
    byte_range: tuple[int, int] | None = None,
) -> float:
    """GetObject read fully; seconds. Verifies the body: by its SHA-256 if given, else directly.
    ``byte_range``: (first, last) inclusive, sent as a Range header; ``expected`` is then the
    bytes of that range."""
    extra = {"Range": f"bytes={byte_range[0]}-{byte_range[1]}"} if byte_range else {}
    t0 = time.perf_counter()
    resp = client.get_object(Bucket=BUCKET, Key=key, **extra)
    data = resp["Body"].read()
    dt = time.perf_counter() - t0
    res.retries[target] += _retries(resp)
    if sha256 is not None:
        same = len(data) == len(expected) and hashlib.sha256(data).digest() == sha256
    else:
        same = data == expected
    if not same:
        what = f" range {extra['Range']}" if extra else ""
        raise BenchFailure(
            f"{target} GET {key}{what}: {len(data)} bytes that differ from the {len(expected)} put"
        )
    res.bytes_verified += len(data)
    return dt


def timed_head(client: Any, key: str, size: int, res: Results, target: str) -> float:
    """HeadObject; seconds. Checks the reported (plaintext) length."""
    t0 = time.perf_counter()
    resp = client.head_object(Bucket=BUCKET, Key=key)
    dt = time.perf_counter() - t0
    res.retries[target] += _retries(resp)
    if resp["ContentLength"] != size:
        raise BenchFailure(f"{target} HEAD {key}: length {resp['ContentLength']}, put {size}")
    return dt


def verify_encrypted_at_rest(direct: Any, key: str, plain: bytes) -> None:
    """The object the proxy stored must carry CloudTaser metadata and not be the plaintext."""
    resp = direct.get_object(Bucket=BUCKET, Key=key)
    stored = resp["Body"].read()
    meta = resp.get("Metadata", {})
    if "cloudtaser-alg" not in meta or plain in stored:
        raise BenchFailure(f"the proxy stored {key} unencrypted (metadata {sorted(meta)})")


def verify_stored_as_is(direct: Any, key: str, plain: bytes) -> None:
    """The object plain mitmproxy stored must be exactly what the client sent."""
    resp = direct.get_object(Bucket=BUCKET, Key=key)
    if resp["Body"].read() != plain or "cloudtaser-alg" in resp.get("Metadata", {}):
        raise BenchFailure(f"plain mitmproxy did not store {key} as sent")


@dataclass
class Run:
    """What the rounds need: the clients and endpoints per target, the proxies' pids."""

    stack: Stack
    args: argparse.Namespace
    clients: dict[str, Any]
    endpoints: dict[str, str]
    pids: dict[str, int]
    pool: Any
    res: Results
    upload_path: Path
    upload_sha256: str

    @contextlib.contextmanager
    def batch(
        self, measure: str, target: str, *, mib: float = 0.0, requests: int = 0
    ) -> Iterator[dict[str, float]]:
        """Time a batch and the CPU its proxy used meanwhile (the others are idle then).
        The caller may set ``wall`` in the yielded dict (a concurrent batch's own span)."""
        pid = self.pids.get(target)
        cpu0 = proc_cpu_seconds(pid) if pid else 0.0
        info: dict[str, float] = {}
        t0 = time.perf_counter()
        yield info
        wall = info.get("wall", time.perf_counter() - t0)
        cpu = proc_cpu_seconds(pid) - cpu0 if pid else None
        self.res.add_batch(measure, target, Batch(wall, cpu, mib, requests))

    def job(self, target: str, **kw: Any) -> Job:
        assert self.stack.s3 is not None
        s3 = self.stack.s3
        return Job(self.endpoints[target], s3.access_key, s3.secret_key, **kw)

    def settle(self, order: Sequence[str]) -> None:
        """Untimed writes: SeaweedFS allocates a new volume after big objects filled one, and
        the first write after that took ~200 ms on whichever target came first."""
        for t in order:
            self.clients[t].put_object(Bucket=BUCKET, Key=f"{t}/settle", Body=b"settle")


def round_big(run: Run, rnd: int, order: list[str]) -> bytes:
    """PUT and GET of the big object, then 1 KiB ranges from its middle; returns the body."""
    a, c, res = run.args, run.clients, run.res
    big = os.urandom(a.big_size)
    digest = hashlib.sha256(big).digest()
    mib = a.big_size / MiB
    for t in order:
        with run.batch("put_big", t, mib=mib, requests=1):
            res.add("put_big", t, timed_put(c[t], f"{t}/big-{rnd}", big, res, t))
    for t in order:
        with run.batch("get_big", t, mib=mib, requests=1):
            dt = timed_get(c[t], f"{t}/big-{rnd}", big, res, t, sha256=digest)
            res.add("get_big", t, dt)
    first = max(0, a.big_size // 2 - RANGE_SIZE // 2)
    last = min(a.big_size, first + RANGE_SIZE) - 1
    want = big[first : last + 1]
    for t in order:
        with run.batch("range", t, mib=a.range_count * len(want) / MiB, requests=a.range_count):
            for _ in range(a.range_count):
                dt = timed_get(c[t], f"{t}/big-{rnd}", want, res, t, byte_range=(first, last))
                res.add("range", t, dt)
    return big


def round_objects(run: Run, rnd: int, order: list[str], size: int, count: int, name: str) -> None:
    """``count`` PUTs of new objects, then ``count`` GETs of them (then HEADs for the small)."""
    c, res = run.clients, run.res
    bodies = [os.urandom(size) for _ in range(count)]
    mib = count * size / MiB
    run.settle(order)
    for t in order:
        with run.batch(f"put_{name}", t, mib=mib, requests=count):
            for i, body in enumerate(bodies):
                res.add(f"put_{name}", t, timed_put(c[t], f"{t}/{name}-{rnd}-{i}", body, res, t))
    for t in order:
        with run.batch(f"get_{name}", t, mib=mib, requests=count):
            for i, body in enumerate(bodies):
                res.add(f"get_{name}", t, timed_get(c[t], f"{t}/{name}-{rnd}-{i}", body, res, t))
    if name != "small":
        return
    for t in order:  # diagnostic: no Transit call and no body on this path
        with run.batch("head_small", t, requests=count):
            for i in range(count):
                dt = timed_head(c[t], f"{t}/small-{rnd}-{i}", size, res, t)
                res.add("head_small", t, dt)


def round_transfer(run: Run, rnd: int, order: list[str]) -> None:
    """boto3 upload_file and download_file (default TransferConfig: 8 MiB parts, 10 threads)."""
    a, c, res = run.args, run.clients, run.res
    mib = a.file_size / MiB
    for t in order:
        with run.batch("upload", t, mib=mib):
            t0 = time.perf_counter()
            c[t].upload_file(str(run.upload_path), BUCKET, f"{t}/file-{rnd}")
            res.add("upload", t, time.perf_counter() - t0)
    for t in order:
        dest = run.upload_path.with_name(f"download-{t}")
        with run.batch("download", t, mib=mib):
            t0 = time.perf_counter()
            c[t].download_file(BUCKET, f"{t}/file-{rnd}", str(dest))
            res.add("download", t, time.perf_counter() - t0)
        got = file_sha256(dest)
        size = dest.stat().st_size
        dest.unlink()
        if got != run.upload_sha256 or size != a.file_size:
            raise BenchFailure(f"{t} download_file {t}/file-{rnd}: {size} bytes that differ")
        res.bytes_verified += size


def round_concurrent(run: Run, rnd: int, order: list[str]) -> None:
    """``--clients`` processes at once, each PUTting a new small object and GETting it."""
    a, res = run.args, run.res
    run.settle(order)
    requests = 2 * a.clients * a.client_cycles
    for t in order:
        jobs = [
            run.job(
                t, kind="small", key=f"{t}/conc-{rnd}-{j}", size=a.small_size, count=a.client_cycles
            )
            for j in range(a.clients)
        ]
        with run.batch("conc", t, mib=requests * a.small_size / MiB, requests=requests) as info:
            out = run_jobs(run.pool, jobs)
            info["wall"] = out.wall
        note_processes(res, out, f"round {rnd + 1} {t}")
        res.add("conc_put", t, out.put)
        res.add("conc_get", t, out.get)
        res.retries[t] += out.retries
        res.bytes_verified += out.verified


def note_processes(res: Results, out: PoolBatch, where: str) -> None:
    """Note a concurrent batch whose clients did not each get a process of their own."""
    if out.processes != out.clients:
        res.notes.append(
            f"{where}: {out.clients} clients ran on {out.processes} processes (less concurrency)"
        )


def run_rounds(run: Run) -> None:
    """The interleaved rounds; the order of the targets rotates every round."""
    a, res = run.args, run.res
    whole = OtherLoad()
    for rnd in range(a.rounds):
        order = rotated(TARGETS, rnd)
        t0 = time.monotonic()
        other = OtherLoad()
        round_big(run, rnd, order)
        round_objects(run, rnd, order, a.medium_size, a.medium_count, "medium")
        round_objects(run, rnd, order, a.small_size, a.small_count, "small")
        round_transfer(run, rnd, order)
        round_concurrent(run, rnd, order)
        for t in order:  # keep the backend's disk use flat; not timed
            run.clients["direct"].delete_object(Bucket=BUCKET, Key=f"{t}/big-{rnd}")
            run.clients["direct"].delete_object(Bucket=BUCKET, Key=f"{t}/file-{rnd}")
        run.stack.check_alive()
        put = " ".join(
            f"{SHORT[t]} {a.big_size / MiB / res.samples['put_big'][t][-1]:.0f}" for t in TARGETS
        )
        get = " ".join(
            f"{SHORT[t]} {a.big_size / MiB / res.samples['get_big'][t][-1]:.0f}" for t in TARGETS
        )
        print(
            f"  round {rnd + 1}/{a.rounds} ({' '.join(SHORT[t] for t in order)}) "
            f"{time.monotonic() - t0:5.1f} s; {fmt_size(a.big_size)} MiB/s PUT {put}, GET {get}; "
            f"others {100 * other.share():.0f}% CPU"
        )
    res.other_load = whole.share()


def warm_up(run: Run) -> None:
    """Open connections and load botocore's models on every path, in this process and in each
    pool worker; check that the proxy encrypts and that plain mitmproxy stores as sent."""
    body = b"warm-up " * 512
    for target, client in run.clients.items():
        client.put_object(Bucket=BUCKET, Key=f"{target}/warm", Body=body)
        if client.get_object(Bucket=BUCKET, Key=f"{target}/warm")["Body"].read() != body:
            raise BenchFailure(f"{target} warm-up read mismatched")
    verify_encrypted_at_rest(run.clients["direct"], "proxy/warm", body)
    verify_stored_as_is(run.clients["direct"], "mitmproxy/warm", body)
    workers = pool_size(run.args)
    for t in TARGETS:
        jobs = [
            run.job(t, kind="small", key=f"{t}/warm-{j}", size=KiB, count=2) for j in range(workers)
        ]
        out = run_jobs(run.pool, jobs, lead=1.0)
    print(f"  {workers} client processes warmed up ({out.processes} distinct in the last batch)")


# --------------------------------------------------------------------------------------------
# Summary of the main run


def make_row(
    figure: str, unit: str, vals: Mapping[str, float], rule: tuple[str, float] | None = None
) -> dict[str, Any]:
    """One table row: the three values, P/D and P/M, and the verdict against a target."""
    d, m, p = vals["direct"], vals["mitmproxy"], vals["proxy"]
    row: dict[str, Any] = {
        "figure": figure,
        "unit": unit,
        "direct": d,
        "mitmproxy": m,
        "proxy": p,
        "p_over_d": p / d,
        "p_over_m": p / m,
    }
    if unit == "ms":
        row["p_minus_m_ms"] = p - m
    if rule is not None:
        kind, limit = rule
        if kind == "min_ratio":
            ok, text = p / m >= limit, f">={limit:.2f}x M"
        elif kind == "max_ratio":
            ok, text = p / m <= limit, f"<={limit:.1f}x M"
        else:
            ok, text = p - m <= limit, f"<=M+{limit:g} ms"
        row.update(target=text, verdict="PASS" if ok else "MISS")
    return row


def summarize(args: argparse.Namespace, res: Results) -> list[dict[str, Any]]:
    """The rows of the main table (and the JSON)."""
    rows: list[dict[str, Any]] = []
    s = res.samples

    def per_target(fn: Callable[[list[float]], float], measure: str) -> dict[str, float]:
        return {t: fn(s[measure][t]) for t in TARGETS}

    def latency(measure: str, label: str, rule: tuple[str, float] | None = None) -> None:
        for q in (50, 99):
            vals = per_target(lambda x, q=q: percentile(x, q) * 1000, measure)
            rows.append(make_row(f"{label} p{q} ms", "ms", vals, rule if q == 50 else None))

    def throughput(measure: str, label: str, size: int) -> None:
        vals = per_target(lambda x: size / MiB / statistics.median(x), measure)
        rows.append(make_row(f"{label} MiB/s", "MiB/s", vals, ("min_ratio", TPUT_MIN_RATIO)))

    for size, name in ((args.big_size, "big"), (args.medium_size, "medium")):
        for op in ("put", "get"):
            label = f"{op.upper()} {fmt_size(size)}"
            throughput(f"{op}_{name}", label, size)
            latency(f"{op}_{name}", label)
    small = fmt_size(args.small_size)
    latency("put_small", f"PUT {small}", ("max_added_ms", SMALL_ADDED_MS))
    latency("get_small", f"GET {small}", ("max_added_ms", SMALL_ADDED_MS))
    latency("head_small", f"HEAD {small}")
    latency("range", f"GET {fmt_size(RANGE_SIZE)} range", ("max_ratio", RANGE_MAX_RATIO))
    throughput("upload", f"upload_file {fmt_size(args.file_size)}", args.file_size)
    throughput("download", f"download_file {fmt_size(args.file_size)}", args.file_size)
    rates = {
        t: statistics.median(b.requests / b.wall for b in res.batches["conc"][t]) for t in TARGETS
    }
    label = f"{args.clients} clients {small} PUT+GET"
    rows.append(make_row(f"{label} req/s", "req/s", rates, ("min_ratio", TPUT_MIN_RATIO)))
    latency("conc_put", f"{args.clients} clients PUT")
    latency("conc_get", f"{args.clients} clients GET")
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """Figure, the three targets, P/D, P/M, P-M for latencies, target and verdict."""
    print(
        f"  {'figure':<34}{'direct':>9}{'mitmproxy':>11}{'proxy':>9}{'P/D':>8}{'P/M':>8}"
        f"{'P-M':>11}  {'target':<13}"
    )
    for r in rows:
        added = f"{r['p_minus_m_ms']:+.1f} ms" if "p_minus_m_ms" in r else ""
        verdict = f"{r['target']:<13}{r['verdict']}" if "verdict" in r else ""
        line = (
            f"  {r['figure']:<34}{r['direct']:>9.1f}{r['mitmproxy']:>11.1f}{r['proxy']:>9.1f}"
            f"{r['p_over_d']:>7.2f}x{r['p_over_m']:>7.2f}x{added:>11}  {verdict}"
        )
        print(line.rstrip())


def cpu_summary(args: argparse.Namespace, res: Results) -> list[dict[str, Any]]:
    """CPU each proxy process used per MiB (body measures) or per request (the others)."""
    per_mib = (
        ("put_big", f"PUT {fmt_size(args.big_size)}"),
        ("get_big", f"GET {fmt_size(args.big_size)}"),
        ("put_medium", f"PUT {fmt_size(args.medium_size)}"),
        ("get_medium", f"GET {fmt_size(args.medium_size)}"),
        ("upload", f"upload_file {fmt_size(args.file_size)}"),
        ("download", f"download_file {fmt_size(args.file_size)}"),
    )
    per_request = (
        ("put_small", f"PUT {fmt_size(args.small_size)}"),
        ("get_small", f"GET {fmt_size(args.small_size)}"),
        ("head_small", f"HEAD {fmt_size(args.small_size)}"),
        ("range", f"GET {fmt_size(RANGE_SIZE)} range"),
        ("conc", f"{args.clients} clients {fmt_size(args.small_size)} PUT+GET"),
    )
    rows = []
    for unit, measures in (("MiB", per_mib), ("request", per_request)):
        for measure, label in measures:
            row: dict[str, Any] = {"figure": f"{label} ms/{unit}", "measure": measure}
            for t in PROXIES:
                bs = res.batches[measure][t]
                cpu = sum(b.cpu or 0.0 for b in bs)
                amount = sum(b.mib for b in bs) if unit == "MiB" else sum(b.requests for b in bs)
                row[t] = 1000 * cpu / amount
                row[f"{t}_core"] = cpu / sum(b.wall for b in bs)
            rows.append(row)
    return rows


def print_cpu(rows: list[dict[str, Any]]) -> None:
    print(
        f"  {'CPU of the proxy process':<44}{'mitmproxy':>10}{'proxy':>9}{'P/M':>8}"
        f"{'M core':>9}{'P core':>9}"
    )
    for r in rows:
        print(
            f"  {r['figure']:<44}{r['mitmproxy']:>10.2f}{r['proxy']:>9.2f}"
            f"{r['proxy'] / r['mitmproxy']:>7.1f}x{100 * r['mitmproxy_core']:>8.0f}%"
            f"{100 * r['proxy_core']:>8.0f}%"
        )


def transit_latency(stack: Stack, count: int) -> dict[str, float]:
    """p50 ms of the two Transit calls the proxy makes (encrypt per PUT, decrypt per GET).

    Made from the bench process with hvac and the proxy's policy token, as the proxy makes them.
    """
    assert stack.bao is not None
    client = stack.bao.client(stack.token)
    transit = client.secrets.transit
    mount, key = stack.bao.transit_mount, stack.bao.transit_key
    enc: list[float] = []
    dec: list[float] = []
    plaintext = base64.b64encode(os.urandom(32)).decode()
    for _ in range(count):
        t0 = time.perf_counter()
        wrapped = transit.encrypt_data(key, plaintext, mount_point=mount)["data"]["ciphertext"]
        t1 = time.perf_counter()
        transit.decrypt_data(key, wrapped, mount_point=mount)
        t2 = time.perf_counter()
        enc.append(t1 - t0)
        dec.append(t2 - t1)
    return {
        "encrypt_p50_ms": percentile(enc, 50) * 1000,
        "decrypt_p50_ms": percentile(dec, 50) * 1000,
    }


def print_main(args: argparse.Namespace, res: Results, report: dict[str, Any]) -> None:
    """The tables and the diagnostics of the main run."""
    print()
    print_table(report["rows"])
    verdicts = [r["verdict"] for r in report["rows"] if "verdict" in r]
    print(
        f"\n  targets against plain mitmproxy: {verdicts.count('PASS')} PASS, "
        f"{verdicts.count('MISS')} MISS (throughput >= {TPUT_MIN_RATIO}x M, 4 KiB PUT/GET p50 "
        f"<= M + {SMALL_ADDED_MS:g} ms, 1 KiB range p50 <= {RANGE_MAX_RATIO}x M)"
    )
    print()
    print_cpu(report["cpu"])
    rss = report["rss"]
    print(
        "\n  peak RSS over the main run (VmHWM; after start -> peak): "
        + ", ".join(
            f"{t} {rss[t]['after_start_kib'] / KiB:.1f} -> {rss[t]['vmhwm_kib'] / KiB:.1f} MiB"
            for t in PROXIES
        )
    )
    print(
        f"  {res.bytes_verified / MiB:.0f} MiB read back and verified byte for byte; "
        "boto3 retries: " + ", ".join(f"{t} {res.retries[t]}" for t in TARGETS)
    )
    transit = report["transit"]
    print(
        f"  Transit round trip from the bench (hvac, policy token): encrypt p50 "
        f"{transit['encrypt_p50_ms']:.1f} ms (the proxy makes one per PUT), decrypt p50 "
        f"{transit['decrypt_p50_ms']:.1f} ms (one per GET of an object not in its DEK cache)"
    )
    print(
        f"  processes outside this benchmark used {100 * res.other_load:.0f}% of the "
        f"{os.cpu_count()} CPUs during the rounds"
    )
    for note in res.notes:
        print(f"  note: {note}")


def main_run(stack: Stack, args: argparse.Namespace, pool: Any) -> tuple[dict[str, Any], Run]:
    """The interleaved run against one plain mitmproxy and one proxy."""
    assert stack.s3 is not None
    proxy = stack.start_proxy("proxy")
    print(
        f"  proxy {proxy.endpoint} ready in {proxy.startup_seconds:.1f} s; "
        f"{check_is_mitmdump(proxy.pid)}"
    )
    mitm, mitm_endpoint = stack.start_plain_mitmproxy("mitmproxy", buffered=args.mitm_buffered)
    print(
        f"  plain mitmproxy {mitm_endpoint}: {check_is_mitmdump(mitm.pid)}\n"
        f"    {' '.join(mitm.argv[1:])}"
    )
    endpoints = {"direct": stack.s3.endpoint, "mitmproxy": mitm_endpoint, "proxy": proxy.endpoint}
    pids = {"mitmproxy": mitm.pid, "proxy": proxy.pid}
    report: dict[str, Any] = {
        "endpoints": endpoints,
        "mitmproxy_argv": mitm.argv[1:],
        "rss": {t: {"after_start_kib": proc_status_kib(pids[t], "VmRSS") or 0} for t in PROXIES},
    }
    upload_path = stack.workdir / f"upload-{args.file_size}"
    h = hashlib.sha256()
    with open(upload_path, "wb") as f:
        for off in range(0, args.file_size, 8 * MiB):
            piece = os.urandom(min(8 * MiB, args.file_size - off))
            h.update(piece)
            f.write(piece)
    run = Run(
        stack=stack,
        args=args,
        clients={t: client_for(endpoints[t], stack) for t in TARGETS},
        endpoints=endpoints,
        pids=pids,
        pool=pool,
        res=Results(),
        upload_path=upload_path,
        upload_sha256=h.hexdigest(),
    )
    with guard(stack, proxy):
        run.clients["direct"].create_bucket(Bucket=BUCKET)
        warm_up(run)
        print("\nMain run (direct D, plain mitmproxy M, proxy P; the order rotates every round)")
        with RssSampler(proxy.pid, mitm.pid) as sampler:
            run_rounds(run)
    upload_path.unlink()
    for t in PROXIES:
        report["rss"][t]["vmhwm_kib"] = proc_status_kib(pids[t], "VmHWM") or 0
        report["rss"][t]["peak_sampled_kib"] = sampler.peaks_kib[pids[t]]
    res = run.res
    report.update(
        rows=summarize(args, res),
        cpu=cpu_summary(args, res),
        transit=transit_latency(stack, args.small_count),
        bytes_verified=res.bytes_verified,
        retries=res.retries,
        notes=res.notes,
        other_load=res.other_load,
        samples_s=res.samples,
        batches={
            m: {t: [asdict(b) for b in bs] for t, bs in v.items()} for m, v in res.batches.items()
        },
    )
    print_main(args, res, report)
    stack.check_alive()
    return report, run


@contextlib.contextmanager
def guard(stack: Stack, proxy: ls.ProxyProcess | None) -> Iterator[None]:
    """Turn an unexpected error of a request into a BenchFailure with the proxy's log tail."""
    try:
        yield
    except BenchFailure:
        raise
    except Exception as e:
        stack.check_alive()
        tail = proxy.log_tail() if proxy is not None else "(no proxy)"
        raise BenchFailure(
            f"request failed: {type(e).__name__}: {e}\n--- proxy log tail ---\n{tail}"
        ) from e


# --------------------------------------------------------------------------------------------
# Concurrency scan


def scan_batch(run: Run, t: str, kind: str, level: int, count: int, sha: str) -> dict[str, Any]:
    """One scan batch through target t: ``level`` clients, ``count`` cycles or GETs each."""
    a = run.args
    if kind == "small":
        jobs = [
            run.job(t, kind="small", key=f"{t}/scan-{level}-{j}", size=a.small_size, count=count)
            for j in range(level)
        ]
    else:
        job = run.job(t, kind="get", key=f"{t}/scan-big", size=a.big_size, count=count, sha256=sha)
        jobs = [job] * level
    pid = run.pids.get(t)
    cpu0 = proc_cpu_seconds(pid) if pid else 0.0
    batch = run_jobs(run.pool, jobs)
    cpu = proc_cpu_seconds(pid) - cpu0 if pid else None
    note_processes(run.res, batch, f"scan {level} clients {t}")
    run.res.retries[t] += batch.retries
    run.res.bytes_verified += batch.verified
    lat = batch.put + batch.get
    mib = level * count * a.big_size / MiB if kind == "big_get" else 0.0
    return {
        "wall_s": batch.wall,
        "requests": len(lat),
        "req_per_s": len(lat) / batch.wall,
        "mib_per_s": mib / batch.wall,
        "p50_ms": percentile(lat, 50) * 1000,
        "p99_ms": percentile(lat, 99) * 1000,
        "cpu_s": cpu,
        "cpu_ms_per_request": None if cpu is None else 1000 * cpu / len(lat),
        "cpu_ms_per_mib": None if cpu is None or not mib else 1000 * cpu / mib,
        "core": None if cpu is None else cpu / batch.wall,
    }


def scan_run(run: Run) -> dict[str, Any]:
    """4 KiB PUT+GET cycles and big GETs at each concurrency level through D, M and P.

    Each level runs the targets in rotated order. Small: ``--scan-cycles`` PUT+GET cycles per
    level, split over the clients (at least 8 each). Big: ``--scan-reads`` GETs of one big
    object per target, split over the clients (at least one each).
    """
    a, c = run.args, run.clients
    big = os.urandom(a.big_size)
    sha = hashlib.sha256(big).hexdigest()
    for t in TARGETS:  # untimed; each target reads the object it wrote itself
        c[t].put_object(Bucket=BUCKET, Key=f"{t}/scan-big", Body=big)
    del big
    hwm0 = {t: proc_status_kib(run.pids[t], "VmHWM") or 0 for t in PROXIES}
    levels: dict[int, dict[str, Any]] = {}
    other = OtherLoad()
    for i, level in enumerate(a.scan_levels):
        order = rotated(TARGETS, i)
        run.settle(order)
        cycles = max(8, math.ceil(a.scan_cycles / level))
        reads = max(1, math.ceil(a.scan_reads / level))
        out: dict[str, Any] = {"small": {}, "big_get": {}, "cycles_per_client": cycles}
        out["reads_per_client"] = reads
        for kind in ("small", "big_get"):
            for t in order:
                count = cycles if kind == "small" else reads
                out[kind][t] = scan_batch(run, t, kind, level, count, sha)
        levels[level] = out
        run.stack.check_alive()
        p = out["small"]["proxy"]
        g = out["big_get"]["proxy"]
        print(
            f"  {level:>2} clients ({' '.join(SHORT[t] for t in order)}): proxy "
            f"{p['req_per_s']:.0f} small req/s, {g['mib_per_s']:.0f} MiB/s GET"
        )
    for t in TARGETS:
        run.clients["direct"].delete_object(Bucket=BUCKET, Key=f"{t}/scan-big")
    hwm = {t: proc_status_kib(run.pids[t], "VmHWM") or 0 for t in PROXIES}
    return {
        "levels": levels,
        "vmhwm_before_kib": hwm0,
        "vmhwm_after_kib": hwm,
        "other_load": other.share(),
    }


def print_scan(args: argparse.Namespace, scan: dict[str, Any]) -> None:
    print()
    print(
        f"  {'figure':<26}{'clients':>8}{'direct':>9}{'mitmproxy':>11}{'proxy':>9}{'P/M':>8}"
        f"{'M CPU':>9}{'P CPU':>9}{'P core':>8}{'P p50 ms':>10}"
    )
    for kind, label, rate, unit in (
        ("small", f"{fmt_size(args.small_size)} PUT+GET req/s", "req_per_s", "request"),
        ("big_get", f"GET {fmt_size(args.big_size)} MiB/s", "mib_per_s", "mib"),
    ):
        for level, out in scan["levels"].items():
            e = out[kind]
            cpu_key = f"cpu_ms_per_{unit}"
            print(
                f"  {label:<26}{level:>8}{e['direct'][rate]:>9.1f}{e['mitmproxy'][rate]:>11.1f}"
                f"{e['proxy'][rate]:>9.1f}{e['proxy'][rate] / e['mitmproxy'][rate]:>7.2f}x"
                f"{e['mitmproxy'][cpu_key]:>9.2f}{e['proxy'][cpu_key]:>9.2f}"
                f"{100 * e['proxy']['core']:>7.0f}%{e['proxy']['p50_ms']:>10.1f}"
            )
    print(
        "  (CPU: ms of the proxy process per request for small, per MiB for GET; "
        "P core: the share of one core the proxy used while the batch ran)"
    )
    b, a = scan["vmhwm_before_kib"], scan["vmhwm_after_kib"]
    print(
        "  peak RSS (VmHWM) before -> after the scan: "
        + ", ".join(f"{t} {b[t] / KiB:.1f} -> {a[t] / KiB:.1f} MiB" for t in PROXIES)
    )
    print(
        f"  processes outside this benchmark used {100 * scan['other_load']:.0f}% of the "
        f"{os.cpu_count()} CPUs during the scan"
    )


def print_scaling(args: argparse.Namespace, report: dict[str, Any]) -> None:
    """What one core of the proxy moves, from the CPU figures of the main run and the scan."""
    cpu = {
        r["measure"] + ("/req" if "request" in r["figure"] else "/mib"): r for r in report["cpu"]
    }
    print("\nScaling (from the proxy's own CPU time: what one busy core would move)")
    for key, what in (
        ("put_big/mib", f"PUT {fmt_size(args.big_size)}"),
        ("get_big/mib", f"GET {fmt_size(args.big_size)}"),
        ("upload/mib", "upload_file"),
        ("download/mib", "download_file"),
    ):
        r = cpu[key]
        print(
            f"  {what:<20} proxy {1000 / r['proxy']:6.0f} MiB/s per core, plain mitmproxy "
            f"{1000 / r['mitmproxy']:6.0f} MiB/s per core"
        )
    for key, what in (
        ("put_small/req", f"PUT {fmt_size(args.small_size)}"),
        ("get_small/req", f"GET {fmt_size(args.small_size)}"),
        ("conc/req", f"{args.clients} clients PUT+GET"),
    ):
        r = cpu[key]
        print(
            f"  {what:<20} proxy {1000 / r['proxy']:6.0f} req/s per core, plain mitmproxy "
            f"{1000 / r['mitmproxy']:6.0f} req/s per core"
        )
    if "scan" in report:
        lv = report["scan"]["levels"]
        small = ", ".join(
            f"{n}: {v['small']['proxy']['cpu_ms_per_request']:.1f}" for n, v in lv.items()
        )
        big = ", ".join(
            f"{n}: {v['big_get']['proxy']['cpu_ms_per_mib']:.2f}" for n, v in lv.items()
        )
        print(f"  proxy CPU ms per small request by clients {small}; per MiB of GET {big}")


# --------------------------------------------------------------------------------------------
# Memory run


def memory_run(stack: Stack, size: int) -> dict[str, Any]:
    """Stream ``size`` bytes through a fresh proxy and back; the proxy's RSS is sampled."""
    seed = os.urandom(16)
    t0 = time.monotonic()
    expected = pattern_sha256(size, seed)
    print(
        f"  expected SHA-256 of the {fmt_size(size)} generated body computed in "
        f"{time.monotonic() - t0:.1f} s"
    )
    proxy = stack.start_proxy("proxy-memory")
    print(f"  fresh proxy {proxy.endpoint}: {check_is_mitmdump(proxy.pid)}")
    start_hwm = proc_status_kib(proxy.pid, "VmHWM") or 0
    client = client_for(proxy.endpoint, stack)
    key = "proxy/memory-run"
    own_reset = reset_own_hwm()
    out_start_rss = proc_status_kib("self", "VmRSS") or 0
    out: dict[str, Any] = {
        "size": size,
        "proxy_hwm_at_start_kib": start_hwm,
        "bench_rss_at_start_kib": out_start_rss,
    }
    with RssSampler(proxy.pid) as sampler, guard(stack, proxy):
        cpu0 = proc_cpu_seconds(proxy.pid)
        t0 = time.perf_counter()
        body = PatternStream(size, seed)
        resp = client.put_object(Bucket=BUCKET, Key=key, Body=body)
        out["put_s"] = time.perf_counter() - t0
        cpu1 = proc_cpu_seconds(proxy.pid)
        out["put_proxy_cpu_s"] = cpu1 - cpu0
        out["put_retries"] = _retries(resp)
        put_peak = sampler.peak_kib
        stack.check_alive()
        t0 = time.perf_counter()
        resp = client.get_object(Bucket=BUCKET, Key=key)
        h = hashlib.sha256()
        got = 0
        for chunk in resp["Body"].iter_chunks(CHUNK):
            h.update(chunk)
            got += len(chunk)
        out["get_s"] = time.perf_counter() - t0
        out["get_proxy_cpu_s"] = proc_cpu_seconds(proxy.pid) - cpu1
        out["get_retries"] = _retries(resp)
    out["put_peak_rss_kib"] = put_peak
    out["peak_rss_sampled_kib"] = sampler.peak_kib
    out["rss_samples"] = sampler.samples
    out["proxy_vmhwm_kib"] = proc_status_kib(proxy.pid, "VmHWM") or 0
    out["bench_vmhwm_kib"] = proc_status_kib("self", "VmHWM") or 0
    out["bench_vmhwm_reset"] = own_reset
    out["verified"] = got == size and h.hexdigest() == expected
    if stack.s3 is not None:
        with contextlib.suppress(Exception):
            stack.s3.client().delete_object(Bucket=BUCKET, Key=key)
    stack.check_alive()
    if not out["verified"]:
        raise BenchFailure(
            f"memory run GET: {got} bytes, SHA-256 {h.hexdigest()}; expected {size} bytes, "
            f"{expected}\n--- proxy log tail ---\n{proxy.log_tail()}"
        )
    proxy.stop()
    return out


def print_memory(out: dict[str, Any]) -> bool:
    """Print the memory run; True if the peak is under the target."""
    size_mib = out["size"] / MiB
    peak_mib = max(out["proxy_vmhwm_kib"], out["peak_rss_sampled_kib"]) / KiB
    ok = peak_mib < RSS_TARGET_MIB
    print(
        f"  PUT {fmt_size(out['size'])}: {out['put_s']:.1f} s ({size_mib / out['put_s']:.0f} "
        f"MiB/s), proxy CPU {out['put_proxy_cpu_s']:.1f} s "
        f"({100 * out['put_proxy_cpu_s'] / out['put_s']:.0f}% of a core), peak RSS during PUT "
        f"{out['put_peak_rss_kib'] / KiB:.1f} MiB"
    )
    print(
        f"  GET {fmt_size(out['size'])}: {out['get_s']:.1f} s ({size_mib / out['get_s']:.0f} "
        f"MiB/s), proxy CPU {out['get_proxy_cpu_s']:.1f} s "
        f"({100 * out['get_proxy_cpu_s'] / out['get_s']:.0f}% of a core); streamed with "
        "iter_chunks, running SHA-256 verified"
    )
    print(
        f"  proxy RSS: {out['proxy_hwm_at_start_kib'] / KiB:.1f} MiB after start, peak sampled "
        f"{out['peak_rss_sampled_kib'] / KiB:.1f} MiB ({out['rss_samples']} samples every "
        f"{SAMPLE_INTERVAL} s), VmHWM {out['proxy_vmhwm_kib'] / KiB:.1f} MiB"
    )
    since = "during the memory run" if out["bench_vmhwm_reset"] else "over the whole run"
    print(
        f"  bench process (the boto3 client) VmHWM {since}: {out['bench_vmhwm_kib'] / KiB:.1f} MiB"
        f" (RSS {out['bench_rss_at_start_kib'] / KiB:.1f} MiB when it began)"
    )
    if out["put_retries"] or out["get_retries"]:
        print(f"  note: boto3 retried (PUT {out['put_retries']}, GET {out['get_retries']})")
    verdict = "PASS" if ok else "FAIL"
    print(
        f"  {verdict}: proxy peak RSS {peak_mib:.1f} MiB "
        f"{'<' if ok else '>='} {RSS_TARGET_MIB} MiB target"
    )
    return ok


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str]) -> argparse.Namespace:
    """Command-line options; counts left unset take the full run's or --quick's defaults."""
    ap = argparse.ArgumentParser(
        description="Direct vs plain mitmproxy vs the CloudTaser proxy, interleaved; a "
        "concurrency scan; and the streaming memory check."
    )
    ap.add_argument(
        "--quick", action="store_true", help="a short smoke run (about 2 minutes on 2 cores)"
    )
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 9, quick 3)")
    ap.add_argument(
        "--big-size", type=parse_size, default=64 * MiB, help="big object (default 64MiB)"
    )
    ap.add_argument(
        "--medium-size", type=parse_size, default=MiB, help="medium object (default 1MiB)"
    )
    ap.add_argument(
        "--medium-count", type=int, help="medium PUT+GETs per round and target (default 10)"
    )
    ap.add_argument(
        "--small-size", type=parse_size, default=4 * KiB, help="small object (default 4KiB)"
    )
    ap.add_argument(
        "--small-count", type=int, help="small PUT+GET+HEADs per round and target (default 50)"
    )
    ap.add_argument(
        "--range-count", type=int, help="1 KiB range GETs per round and target (default 20)"
    )
    ap.add_argument(
        "--file-size",
        type=parse_size,
        default=100 * MiB,
        help="upload_file/download_file size (default 100MiB)",
    )
    ap.add_argument("--clients", type=int, help="concurrent clients of the main run (default 8)")
    ap.add_argument(
        "--client-cycles",
        type=int,
        help="small PUT+GET cycles per concurrent client and round (default 10)",
    )
    ap.add_argument(
        "--scan",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the concurrency scan (default on)",
    )
    ap.add_argument(
        "--scan-levels",
        type=parse_levels,
        default=[1, 4, 16],
        help="concurrent clients of the scan (default 1,4,16)",
    )
    ap.add_argument(
        "--scan-cycles",
        type=int,
        help="small PUT+GET cycles per scan level and target, at least 8 per client (default 64)",
    )
    ap.add_argument(
        "--scan-reads",
        type=int,
        help="big GETs per scan level and target, at least 1 per client (default 8)",
    )
    ap.add_argument(
        "--profile",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="profile both proxies with py-spy after the main run (default on)",
    )
    ap.add_argument(
        "--profile-cycles",
        type=int,
        help="small PUT+GET cycles of the profile, per target (default 300, quick 50)",
    )
    ap.add_argument(
        "--profile-big",
        type=int,
        help="PUTs and GETs of the big object in the profile, per target (default 3, quick 1)",
    )
    ap.add_argument(
        "--memory",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="run the streaming memory check (default on)",
    )
    ap.add_argument(
        "--memory-size",
        type=parse_size,
        help="object of the memory run (default 1GiB, quick 256MiB; the issue's figure: 5GiB)",
    )
    ap.add_argument(
        "--memory-only",
        action="store_true",
        help="only the memory run (e.g. --memory-only --memory-size 5GiB)",
    )
    ap.add_argument(
        "--mitm-buffered",
        action="store_true",
        help="plain mitmproxy without stream_large_bodies=1 (buffers whole bodies)",
    )
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary folder (server logs, data) afterwards",
    )
    args = ap.parse_args(argv)
    for name, value in (QUICK if args.quick else DEFAULTS).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    counts = (
        "rounds",
        "medium_count",
        "small_count",
        "range_count",
        "clients",
        "client_cycles",
        "scan_cycles",
        "scan_reads",
        "profile_cycles",
        "profile_big",
    )
    if any(getattr(args, n) < 1 for n in counts):
        ap.error(
            "counts must be positive: " + ", ".join("--" + n.replace("_", "-") for n in counts)
        )
    if args.memory_only and not args.memory:
        ap.error("--memory-only and --no-memory contradict each other")
    if min(args.big_size, args.medium_size, args.small_size, args.file_size) < 1:
        ap.error("sizes must be positive")
    return args


def isolate_client_env() -> None:
    """Keep the developer's AWS settings (profiles, checksum options) out of our boto3."""
    for name in list(os.environ):
        if name.startswith(("AWS_", "VAULT_", "BAO_")):
            del os.environ[name]
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


def header(args: argparse.Namespace) -> dict[str, Any]:
    """Print and return what the run was made on."""
    import boto3
    import mitmproxy.version

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "mitmproxy": mitmproxy.version.VERSION,
        "boto3": boto3.__version__,
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "loadavg_at_start": os.getloadavg(),
        "code": code_version(),
    }
    print(f"CloudTaser S3 proxy benchmark, {info['date']}")
    print(
        f"  {info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"mitmproxy {info['mitmproxy']}, boto3 {info['boto3']}"
    )
    print(f"  proxy code: {info['code']}")
    if args.memory_only:
        print(f"  memory run only: {fmt_size(args.memory_size)}")
    else:
        print_plan(args)
    print("  backend SeaweedFS, OpenBao dev Transit, all on 127.0.0.1")
    load = info["loadavg_at_start"]
    print(f"  load average at start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    return info


def print_plan(args: argparse.Namespace) -> None:
    """What the main run does per round."""
    print(
        f"  {args.rounds} rounds, per round and target: PUT+GET {fmt_size(args.big_size)} and "
        f"{args.range_count} x {fmt_size(RANGE_SIZE)} range, {args.medium_count} x "
        f"{fmt_size(args.medium_size)}, {args.small_count} x {fmt_size(args.small_size)} "
        f"(+HEAD), upload_file+download_file {fmt_size(args.file_size)}, {args.clients} "
        f"clients x {args.client_cycles} PUT+GET {fmt_size(args.small_size)}"
    )


def run(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], bool]:
    """The whole benchmark; returns the results and whether the memory check passed."""
    report: dict[str, Any] = {"machine": header(args)}
    pool = None
    if not args.memory_only:
        pool = multiprocessing.get_context("spawn").Pool(pool_size(args), initializer=_pool_init)
    try:
        print("\nStarting servers")
        stack = start_stack(workdir)
        try:
            if pool is None:
                return memory_part(stack, args, report)
            report["main"], state = main_run(stack, args, pool)
            if args.scan:
                print(
                    f"\nConcurrency scan: {fmt_size(args.small_size)} PUT+GET and GET "
                    f"{fmt_size(args.big_size)} at {', '.join(map(str, args.scan_levels))} "
                    "clients (one pass, order rotating per level)"
                )
                with guard(stack, stack.proxies[0]):
                    report["scan"] = scan_run(state)
                print_scan(args, report["scan"])
            pool.terminate()
            print_scaling(args, {**report["main"], **report})
            if args.profile:
                profile_part(state, args, report)
            if not args.memory:
                return report, True
            return memory_part(stack, args, report)
        finally:
            stack.stop()
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()


PROFILE_WORKLOADS = (
    ("small", "PUT+GET of a small object", "request"),
    ("put_big", "PUT of the big object", "MiB"),
    ("get_big", "GET of the big object", "MiB"),
)


def profile_run(run: Run) -> dict[str, Any]:
    """py-spy on plain mitmproxy and on the proxy in turn, one workload at a time: where each
    spends its CPU per request or per MiB (bench/cpu_breakdown.py). Not timed against anything;
    the sampling costs the proxy a little CPU of its own."""
    a, c, res = run.args, run.clients, run.res
    small = [os.urandom(a.small_size) for _ in range(a.profile_cycles)]
    big = os.urandom(a.big_size)
    digest = hashlib.sha256(big).digest()
    out: dict[str, Any] = {}
    for target in PROXIES:
        pid = run.pids[target]
        c[target].put_object(Bucket=BUCKET, Key=f"{target}/profile-big", Body=big)
        for name, _, unit in PROFILE_WORKLOADS:
            with cpu.Recording(pid, run.stack.workdir / f"profile-{target}-{name}.txt") as rec:
                cpu0 = proc_cpu_seconds(pid)
                if name == "small":
                    for i, body in enumerate(small):
                        timed_put(c[target], f"{target}/profile-{i}", body, res, target)
                        timed_get(c[target], f"{target}/profile-{i}", body, res, target)
                    units = 2.0 * len(small)
                else:
                    for _ in range(a.profile_big):
                        if name == "put_big":
                            timed_put(c[target], f"{target}/profile-big", big, res, target)
                        else:
                            timed_get(
                                c[target], f"{target}/profile-big", big, res, target, sha256=digest
                            )
                    units = a.profile_big * a.big_size / MiB
                used = proc_cpu_seconds(pid) - cpu0
            out.setdefault(name, {})[target] = {
                "unit": unit,
                "cpu_ms": 1e3 * used / units,
                "samples": dict(rec.samples),
                "ms": cpu.per_unit_ms(rec.samples, used, units),
            }
    return out


def print_profile(args: argparse.Namespace, prof: dict[str, Any]) -> None:
    """One table per workload: CPU ms per unit by part of the code, M and P side by side."""
    sizes = {"small": fmt_size(args.small_size), "put_big": fmt_size(args.big_size)}
    sizes["get_big"] = sizes["put_big"]
    for name, what, unit in PROFILE_WORKLOADS:
        m, p = prof[name]["mitmproxy"], prof[name]["proxy"]
        print(
            f"\n  {what} ({sizes[name]}), CPU ms per {unit}: plain mitmproxy "
            f"{m['cpu_ms']:.2f}, proxy {p['cpu_ms']:.2f} ({sum(p['samples'].values())} samples)"
        )
        print(f"    {'part of the code':52s} {'M':>7s} {'P':>7s} {'P-M':>7s}")
        for label in cpu.LABELS:
            mv, pv = m["ms"].get(label, 0.0), p["ms"].get(label, 0.0)
            if max(mv, pv) < 0.005:
                continue
            print(f"    {label:52s} {mv:7.2f} {pv:7.2f} {pv - mv:+7.2f}")


def profile_part(run: Run, args: argparse.Namespace, report: dict[str, Any]) -> None:
    """The profile phase, skipped with a note when py-spy cannot attach."""
    print(
        f"\nWhere the CPU goes (py-spy --nonblocking at {cpu.RATE}/s; {args.profile_cycles} "
        f"small PUT+GET, {args.profile_big} PUTs and GETs of {fmt_size(args.big_size)} per target)"
    )
    try:
        with guard(run.stack, run.stack.proxies[0]):
            report["profile"] = profile_run(run)
    except cpu.ProfileUnavailable as e:
        print(f"  skipped: {e}")
        report["profile"] = {"skipped": str(e)}
        return
    print_profile(args, report["profile"])


def memory_part(
    stack: Stack, args: argparse.Namespace, report: dict[str, Any]
) -> tuple[dict[str, Any], bool]:
    """The memory run and its verdict."""
    print(
        f"\nMemory run: {fmt_size(args.memory_size)} through a fresh proxy, "
        "generated and verified on the fly"
    )
    mem = memory_run(stack, args.memory_size)
    ok = print_memory(mem)
    report["memory"] = {**mem, "target_mib": RSS_TARGET_MIB, "pass": ok}
    return report, ok


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Treat SIGTERM like Ctrl-C so the servers are stopped either way.

    SIGINT gets Python's handler even if it was inherited as ignored (a background job).
    """

    def handler(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    old_term = signal.signal(signal.SIGTERM, handler)
    old_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old_term)
        signal.signal(signal.SIGINT, old_int)


def main(argv: list[str]) -> int:
    """Run the benchmark; see the module docstring for exit codes."""
    args = parse_args(argv)
    isolate_client_env()
    workdir = Path(tempfile.mkdtemp(prefix="cloudtaser-bench-"))
    keep = args.keep
    t0 = time.monotonic()
    code = 0
    try:
        with sigterm_as_interrupt():
            report, ok = run(args, workdir)
        report["elapsed_s"] = time.monotonic() - t0
        report["machine"]["loadavg_at_end"] = os.getloadavg()
        start, end = report["machine"]["loadavg_at_start"], os.getloadavg()
        print(
            f"\nLoad average (1 min): {start[0]:.2f} at start, {end[0]:.2f} at the end "
            f"({os.cpu_count()} CPUs shared by the bench, the proxies, SeaweedFS and OpenBao)"
        )
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")
            print(f"\nResults written to {args.json}")
        code = 0 if ok else 1
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        code = 130
    except (BenchFailure, ls.ServerStartError) as e:
        print(f"\nFAILED: {e}", file=sys.stderr)
        keep, code = True, 2
    except Exception:  # a bug or an unexpected server answer: still a failed run
        traceback.print_exc()
        keep, code = True, 2
    print(f"\nTotal {time.monotonic() - t0:.0f} s" + (f"; files kept in {workdir}" if keep else ""))
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
