"""Benchmark: the backend directly vs through the CloudTaser S3 proxy, in the same run.

Starts a dev OpenBao, SeaweedFS (the backend) and the proxy in a temporary folder, then, for
``--rounds`` rounds and alternating direct/proxy, measures PUT and GET of a big object (64 MiB by
default) and of ``--small-count`` small objects (4 KiB). Every read is checked byte for byte.
Prints a table with ratios and the proxy's peak RSS (VmHWM of the mitmdump process).

The memory run then streams a 1 GiB object, generated on the fly, through a fresh proxy and back,
sampling the proxy's RSS every 0.2 s; the target is a peak under 150 MiB.

Exit codes: 0 fine; 1 the memory run exceeded the RSS target; 2 a read mismatched, a request
failed or a server died; 130 interrupted. Timings are printed, never asserted.

    ./run.sh bench [--rounds 5] [--big-size 64MiB] [--small-count 50] [--no-memory]
                   [--memory-size 1GiB] [--json out.json] [--keep]
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import io
import json
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
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
_ZEROS = bytes(MiB)


SMALL_OPS = ("small_put", "small_get", "small_head")


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
    """Make sure the proxy pid is the mitmdump process itself (python -m ... execs it)."""
    argv = proc_cmdline(pid)
    if not any(os.path.basename(a) == "mitmdump" for a in argv[:2]):
        raise BenchFailure(f"proxy pid {pid} is not mitmdump: {' '.join(argv)!r}")
    kids = proc_children(pid)
    note = f", children {kids}" if kids else ", no child processes"
    return f"pid {pid} is mitmdump ({' '.join(argv[:2])}{note})"


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


def percentile(samples: list[float], p: float) -> float:
    """The p-th percentile (0..100), linear interpolation between closest ranks."""
    s = sorted(samples)
    if len(s) == 1:
        return s[0]
    pos = (len(s) - 1) * p / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


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


class RssSampler:
    """Samples a process's VmRSS every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, pid: int, interval: float = SAMPLE_INTERVAL) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = proc_status_kib(self.pid, "VmRSS")
            if rss is not None:
                self.peak_kib = max(self.peak_kib, rss)
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


@dataclass
class Stack:
    """The running servers and the clients pointed at them."""

    workdir: Path
    bao: ls.OpenBao | None = None
    s3: ls.S3Server | None = None
    proxies: list[ls.ProxyProcess] = field(default_factory=list)
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

    def check_alive(self) -> None:
        """Raise BenchFailure naming any server that has exited."""
        procs = [p.process for p in self.proxies if p.process.returncode is None]
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
# Measurements


@dataclass
class Results:
    """Raw samples per target ("direct", "proxy"); seconds."""

    big_put: dict[str, list[float]] = field(default_factory=lambda: {"direct": [], "proxy": []})
    big_get: dict[str, list[float]] = field(default_factory=lambda: {"direct": [], "proxy": []})
    small_put: dict[str, list[float]] = field(default_factory=lambda: {"direct": [], "proxy": []})
    small_get: dict[str, list[float]] = field(default_factory=lambda: {"direct": [], "proxy": []})
    small_head: dict[str, list[float]] = field(default_factory=lambda: {"direct": [], "proxy": []})
    retries: dict[str, int] = field(default_factory=lambda: {"direct": 0, "proxy": 0})
    # CPU seconds the proxy process used: per big proxied PUT/GET, per round's small batch.
    proxy_cpu: dict[str, list[float]] = field(
        default_factory=lambda: {k: [] for k in ("big_put", "big_get", *SMALL_OPS)}
    )
    bytes_verified: int = 0


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
) -> float:
    """GetObject read fully; seconds. Verifies the body: by its SHA-256 if given, else directly."""
    t0 = time.perf_counter()
    resp = client.get_object(Bucket=BUCKET, Key=key)
    data = resp["Body"].read()
    dt = time.perf_counter() - t0
    res.retries[target] += _retries(resp)
    if sha256 is not None:
        same = len(data) == len(expected) and hashlib.sha256(data).digest() == sha256
    else:
        same = data == expected
    if not same:
        raise BenchFailure(
            f"{target} GET {key}: {len(data)} bytes that differ from the {len(expected)} put"
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


def run_rounds(
    clients: dict[str, Any],
    args: argparse.Namespace,
    res: Results,
    check: Callable[[], None],
    proxy_pid: int,
) -> None:
    """The interleaved direct/proxy rounds; the first target alternates per round."""
    for rnd in range(args.rounds):
        order = ["direct", "proxy"] if rnd % 2 == 0 else ["proxy", "direct"]
        big = os.urandom(args.big_size)
        big_sha256 = hashlib.sha256(big).digest()
        t0 = time.monotonic()
        for target in order:
            cpu = proc_cpu_seconds(proxy_pid)
            dt = timed_put(clients[target], f"{target}/big-{rnd}", big, res, target)
            res.big_put[target].append(dt)
            if target == "proxy":
                res.proxy_cpu["big_put"].append(proc_cpu_seconds(proxy_pid) - cpu)
        for target in order:
            cpu = proc_cpu_seconds(proxy_pid)
            dt = timed_get(
                clients[target], f"{target}/big-{rnd}", big, res, target, sha256=big_sha256
            )
            res.big_get[target].append(dt)
            if target == "proxy":
                res.proxy_cpu["big_get"].append(proc_cpu_seconds(proxy_pid) - cpu)
        small = [os.urandom(args.small_size) for _ in range(args.small_count)]
        for target in order:  # untimed: SeaweedFS grows a volume after the big objects
            clients[target].put_object(Bucket=BUCKET, Key=f"{target}/settle", Body=small[0])
        for target in order:
            cpu = proc_cpu_seconds(proxy_pid)
            for i, body in enumerate(small):
                key = f"{target}/small-{rnd}-{i}"
                res.small_put[target].append(timed_put(clients[target], key, body, res, target))
            if target == "proxy":
                res.proxy_cpu["small_put"].append(proc_cpu_seconds(proxy_pid) - cpu)
        for target in order:
            cpu = proc_cpu_seconds(proxy_pid)
            for i, body in enumerate(small):
                key = f"{target}/small-{rnd}-{i}"
                res.small_get[target].append(timed_get(clients[target], key, body, res, target))
            if target == "proxy":
                res.proxy_cpu["small_get"].append(proc_cpu_seconds(proxy_pid) - cpu)
        for target in order:  # diagnostic: no Transit call and no body on this path
            cpu = proc_cpu_seconds(proxy_pid)
            for i in range(args.small_count):
                key = f"{target}/small-{rnd}-{i}"
                res.small_head[target].append(
                    timed_head(clients[target], key, args.small_size, res, target)
                )
            if target == "proxy":
                res.proxy_cpu["small_head"].append(proc_cpu_seconds(proxy_pid) - cpu)
        del big
        for target in order:  # keep the backend's disk use flat; not timed
            clients["direct"].delete_object(Bucket=BUCKET, Key=f"{target}/big-{rnd}")
        check()
        mibs = {t: args.big_size / MiB / res.big_put[t][-1] for t in order}
        print(
            f"  round {rnd + 1}/{args.rounds} ({order[0]} first) "
            f"{time.monotonic() - t0:5.1f} s; big PUT direct {mibs['direct']:.0f} MiB/s, "
            f"proxy {mibs['proxy']:.0f} MiB/s"
        )


def warm_up(clients: dict[str, Any]) -> None:
    """Open connections and load botocore's models on both paths; check encryption at rest."""
    body = b"warm-up " * 512
    for target, client in clients.items():
        client.put_object(Bucket=BUCKET, Key=f"{target}/warm", Body=body)
        if client.get_object(Bucket=BUCKET, Key=f"{target}/warm")["Body"].read() != body:
            raise BenchFailure(f"{target} warm-up read mismatched")
    verify_encrypted_at_rest(clients["direct"], "proxy/warm", body)


def summarize(args: argparse.Namespace, res: Results) -> list[dict[str, Any]]:
    """Rows for the table (and the JSON): medians of throughput, p50/p99 of latency."""
    rows: list[dict[str, Any]] = []
    size = args.big_size / MiB
    for name, samples in (
        (f"PUT {fmt_size(args.big_size)}", res.big_put),
        (f"GET {fmt_size(args.big_size)}", res.big_get),
    ):
        d = statistics.median(size / s for s in samples["direct"])
        p = statistics.median(size / s for s in samples["proxy"])
        rows.append(
            {
                "figure": f"{name} MiB/s (median)",
                "unit": "MiB/s",
                "direct": d,
                "proxy": p,
                "ratio": p / d,
            }
        )
    for op, samples in (
        (f"PUT {fmt_size(args.small_size)}", res.small_put),
        (f"GET {fmt_size(args.small_size)}", res.small_get),
        (f"HEAD {fmt_size(args.small_size)}", res.small_head),
    ):
        for q in (50, 99):
            d = percentile(samples["direct"], q) * 1000
            p = percentile(samples["proxy"], q) * 1000
            rows.append(
                {
                    "figure": f"{op} p{q} ms",
                    "unit": "ms",
                    "direct": d,
                    "proxy": p,
                    "ratio": p / d,
                    "added_ms": p - d,
                }
            )
    return rows


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


def print_table(rows: list[dict[str, Any]]) -> None:
    """Figure, direct, proxy, ratio proxy/direct, added ms for latencies."""
    print(f"  {'figure':<26}{'direct':>10}{'proxy':>10}{'proxy/direct':>14}{'added':>12}")
    for r in rows:
        added = f"{r['added_ms']:+.1f} ms" if "added_ms" in r else ""
        line = (
            f"  {r['figure']:<26}{r['direct']:>10.1f}{r['proxy']:>10.1f}"
            f"{r['ratio']:>13.2f}x{added:>12}"
        )
        print(line.rstrip())


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
    with RssSampler(proxy.pid) as sampler:
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
    """Command-line options."""
    ap = argparse.ArgumentParser(
        description="Direct vs proxy benchmark and the 1 GiB streaming memory check."
    )
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    ap.add_argument(
        "--big-size", type=parse_size, default=64 * MiB, help="big object size (default 64MiB)"
    )
    ap.add_argument(
        "--small-count",
        type=int,
        default=50,
        help="small objects per round and target (default 50)",
    )
    ap.add_argument(
        "--small-size", type=parse_size, default=4 * KiB, help="small object size (default 4KiB)"
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
        default=GiB,
        help="object size of the memory run (default 1GiB)",
    )
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    ap.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary folder (server logs, data) afterwards",
    )
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.small_count < 1 or args.big_size < 1:
        ap.error("--rounds, --small-count and --big-size must be positive")
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
        "rounds": args.rounds,
        "big_size": args.big_size,
        "small_size": args.small_size,
        "small_count": args.small_count,
        "loadavg_at_start": os.getloadavg()[0],
        "code": code_version(),
    }
    print(f"CloudTaser S3 proxy benchmark, {info['date']}")
    print(
        f"  {info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"mitmproxy {info['mitmproxy']}, boto3 {info['boto3']}"
    )
    print(f"  proxy code: {info['code']}")
    print(
        f"  {args.rounds} rounds: PUT+GET {fmt_size(args.big_size)}, PUT+GET "
        f"{args.small_count} x {fmt_size(args.small_size)} per round and target; "
        "backend SeaweedFS, OpenBao dev Transit, all on 127.0.0.1"
    )
    return info


def print_main(
    args: argparse.Namespace, res: Results, report: dict[str, Any], rows: list[dict[str, Any]]
) -> None:
    """The table and the diagnostics of the main run."""
    print()
    print_table(rows)
    transit = report["transit"]
    print(
        f"\n  proxy peak RSS (VmHWM of mitmdump) over the main run: "
        f"{report['proxy_vmhwm_kib'] / KiB:.1f} MiB (after start "
        f"{report['proxy_rss_after_start_kib'] / KiB:.1f} MiB, peak VmRSS sampled "
        f"{report['proxy_peak_rss_sampled_kib'] / KiB:.1f} MiB)"
    )
    print(
        f"  {res.bytes_verified / MiB:.0f} MiB read back and verified byte for byte; "
        f"boto3 retries: direct {res.retries['direct']}, proxy {res.retries['proxy']}"
    )
    print(
        f"  Transit round trip from the bench (hvac, policy token): encrypt p50 "
        f"{transit['encrypt_p50_ms']:.1f} ms (the proxy makes one per PUT), decrypt p50 "
        f"{transit['decrypt_p50_ms']:.1f} ms (one per GET)"
    )
    for op, label in (("big_put", "PUT"), ("big_get", "GET")):
        cpu, wall = res.proxy_cpu[op], getattr(res, op)["proxy"]
        print(
            f"  proxy CPU per {fmt_size(args.big_size)} {label}: median "
            f"{statistics.median(cpu):.2f} s, {100 * sum(cpu) / sum(wall):.0f}% of a core "
            "while it ran"
        )
    print(
        f"  proxy CPU per {fmt_size(args.small_size)} request: "
        + ", ".join(
            f"{op} {ms:.1f} ms" for op, ms in report["proxy_cpu_ms_per_small_request"].items()
        )
    )


def main_run(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    """The interleaved direct/proxy run against one proxy; returns its part of the report."""
    assert stack.s3 is not None
    proxy = stack.start_proxy("proxy")
    print(
        f"  proxy {proxy.endpoint} ready in {proxy.startup_seconds:.1f} s; "
        f"{check_is_mitmdump(proxy.pid)}"
    )
    report: dict[str, Any] = {"proxy_rss_after_start_kib": proc_status_kib(proxy.pid, "VmRSS") or 0}
    clients = {"direct": stack.s3.client(), "proxy": client_for(proxy.endpoint, stack)}
    res = Results()
    try:
        clients["direct"].create_bucket(Bucket=BUCKET)
        warm_up(clients)
        print("\nMain run (direct and proxy interleaved)")
        with RssSampler(proxy.pid) as sampler:
            run_rounds(clients, args, res, stack.check_alive, proxy.pid)
    except BenchFailure:
        raise
    except Exception as e:
        stack.check_alive()
        raise BenchFailure(
            f"request failed: {type(e).__name__}: {e}\n--- proxy log tail ---\n{proxy.log_tail()}"
        ) from e
    report["proxy_vmhwm_kib"] = proc_status_kib(proxy.pid, "VmHWM") or 0
    report["proxy_peak_rss_sampled_kib"] = sampler.peak_kib
    rows = summarize(args, res)
    report.update(
        rows=rows,
        transit=transit_latency(stack, args.small_count),
        proxy_cpu_s=res.proxy_cpu,
        proxy_cpu_ms_per_small_request={
            op.split("_")[1].upper(): 1000 * sum(res.proxy_cpu[op]) / len(getattr(res, op)["proxy"])
            for op in SMALL_OPS
        },
        bytes_verified=res.bytes_verified,
        retries=res.retries,
        samples_s={
            "big_put": res.big_put,
            "big_get": res.big_get,
            "small_put": res.small_put,
            "small_get": res.small_get,
            "small_head": res.small_head,
        },
    )
    print_main(args, res, report, rows)
    stack.check_alive()
    proxy.stop()
    return report


def run(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], bool]:
    """The whole benchmark; returns the results and whether the memory check passed."""
    report: dict[str, Any] = {"machine": header(args)}
    print("\nStarting servers")
    stack = start_stack(workdir)
    try:
        report["main"] = main_run(stack, args)
        if not args.memory:
            return report, True
        print(
            f"\nMemory run: {fmt_size(args.memory_size)} through a fresh proxy, "
            "generated and verified on the fly"
        )
        try:
            mem = memory_run(stack, args.memory_size)
        except BenchFailure:
            raise
        except Exception as e:
            stack.check_alive()
            tail = stack.proxies[-1].log_tail() if stack.proxies else "(no proxy)"
            raise BenchFailure(
                f"memory run request failed: {type(e).__name__}: {e}\n"
                f"--- proxy log tail ---\n{tail}"
            ) from e
        ok = print_memory(mem)
        report["memory"] = {**mem, "target_mib": RSS_TARGET_MIB, "pass": ok}
        return report, ok
    finally:
        stack.stop()


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
        report["machine"]["loadavg_at_end"] = os.getloadavg()[0]
        print(
            f"\nLoad average (1 min): {report['machine']['loadavg_at_start']:.2f} at start, "
            f"{report['machine']['loadavg_at_end']:.2f} at the end ({os.cpu_count()} CPUs shared "
            "by the bench, the proxy, SeaweedFS and OpenBao)"
        )
        if args.json:
            args.json.write_text(json.dumps(report, indent=2) + "\n")
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
