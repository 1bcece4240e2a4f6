"""Benchmark: what the DEK cache and the data key pool save, in Vault round trips and latency.

Starts OpenBao dev and SeaweedFS once (bench.py's ``start_stack``), then three proxies in front
of them that differ only in their key settings:

    A  no cache, no pool   CLOUDTASER_S3PROXY_DEK_CACHE_SIZE=0, _DEK_POOL_SIZE=0
    B  cache, no pool      DEK cache on (1024 keys, 5 min), CLOUDTASER_S3PROXY_DEK_POOL_SIZE=0
    C  defaults            cache on as in B, pool of 32 pre-wrapped DEKs

and the backend itself ("direct") as the baseline. Each round does, for every target in a
rotating order (A B C D, B C D A, ...), ``--ops`` PUTs of new 4 KiB objects, then ``--ops`` GETs
of a set of ``--keys`` objects written before the run, read round-robin so every key is read
many times; every read is compared byte for byte with what was put. Vault round trips come from
each proxy's /metrics (``cloudtaser_vault_calls_total`` for encrypt and decrypt, ok and error),
scraped right before and after each batch, divided by the requests of that batch.

Exit codes: 0 fine (warnings about unexpected Vault call counts are printed, not fatal); 2 a read
mismatched, a request failed or a server died; 130 interrupted. Timings are never asserted.

    .venv/bin/python bench/keys.py [--rounds 8] [--ops 50] [--keys 20] [--json out.json] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

# bench/ is this script's folder, so it is first on sys.path: this is bench/bench.py.
from bench import (
    BUCKET,
    BenchFailure,
    KiB,
    Results,
    Stack,
    client_for,
    code_version,
    cpu_model,
    isolate_client_env,
    percentile,
    sigterm_as_interrupt,
    start_stack,
    timed_get,
    timed_put,
    verify_encrypted_at_rest,
)
from cloudtaser_s3 import localservers as ls

SIZE = 4 * KiB
POOL_SIZE = 32
VAULT_KEY_CALLS = ("encrypt", "decrypt")  # wrap new DEKs (PUT, pool refills), unwrap (GET)
PHASES = ("put", "get")

# name, description, environment on top of the test suite's defaults (None: the backend itself)
TARGETS: tuple[tuple[str, str, dict[str, str] | None], ...] = (
    (
        "A",
        "no cache, no pool",
        {"CLOUDTASER_S3PROXY_DEK_CACHE_SIZE": "0", "CLOUDTASER_S3PROXY_DEK_POOL_SIZE": "0"},
    ),
    ("B", "cache, no pool", {"CLOUDTASER_S3PROXY_DEK_POOL_SIZE": "0"}),
    ("C", "defaults: cache + pool", {"CLOUDTASER_S3PROXY_DEK_POOL_SIZE": str(POOL_SIZE)}),
    ("D", "direct", None),
)

Sample = tuple[str, tuple[tuple[str, str], ...]]


# --------------------------------------------------------------------------------------------
# /metrics


def scrape(proxy: ls.ProxyProcess) -> Counter[Sample]:
    """Every sample of the proxy's /metrics (Prometheus text), keyed by name and labels."""
    with urllib.request.urlopen(f"{proxy.health}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out: Counter[Sample] = Counter()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def delta(after: Counter[Sample], before: Counter[Sample]) -> Counter[Sample]:
    """after - before, keeping zero and negative entries (Counter's ``-`` would drop them)."""
    return Counter({k: v - before.get(k, 0.0) for k, v in after.items()})


def total(snap: Counter[Sample], name: str, **want: str | tuple[str, ...]) -> float:
    """The sum of the samples called ``name`` whose labels match ``want`` (a value or a tuple
    of values per label)."""
    out = 0.0
    for (n, labels), v in snap.items():
        if n != name:
            continue
        got = dict(labels)
        if all(got.get(k) in ((w,) if isinstance(w, str) else w) for k, w in want.items()):
            out += v
    return out


def vault_calls(snap: Counter[Sample], calls: tuple[str, ...] = VAULT_KEY_CALLS) -> float:
    return total(snap, "cloudtaser_vault_calls_total", call=calls)


def rate(snap: Counter[Sample], name: str) -> tuple[float, float]:
    """(hits, lookups) of a hit/miss counter."""
    hits = total(snap, name, result="hit")
    return hits, hits + total(snap, name, result="miss")


# --------------------------------------------------------------------------------------------
# Targets


@dataclass
class Target:
    """One of A, B, C (a proxy) or D (the backend), with what was measured through it."""

    name: str
    label: str
    client: Any
    proxy: ls.ProxyProcess | None
    put_s: list[float] = field(default_factory=list)
    get_s: list[float] = field(default_factory=list)
    keys: list[tuple[str, bytes]] = field(default_factory=list)  # the GET set
    next_get: int = 0
    puts: int = 0
    # /metrics deltas summed over the timed batches of each phase; the rest of the run
    window: dict[str, Counter[Sample]] = field(
        default_factory=lambda: {p: Counter() for p in PHASES}
    )
    start: Counter[Sample] = field(default_factory=Counter)
    whole: Counter[Sample] = field(default_factory=Counter)

    @property
    def title(self) -> str:
        return f"{self.name} {self.label}"

    def per_op(self, phase: str) -> float:
        ops = len(self.put_s if phase == "put" else self.get_s)
        return vault_calls(self.window[phase]) / ops

    def outside(self) -> float:
        """Vault encrypt/decrypt calls between the timed batches (pool refills and refreshes)."""
        inside = sum(vault_calls(w) for w in self.window.values())
        return vault_calls(self.whole) - inside


def start_targets(stack: Stack) -> list[Target]:
    assert stack.s3 is not None
    out: list[Target] = []
    for name, label, overrides in TARGETS:
        if overrides is None:
            out.append(Target(name, label, stack.s3.client(), None))
            continue
        proxy = stack.start_proxy(f"proxy-{name}", overrides)
        shown = " ".join(f"{k}={v}" for k, v in overrides.items()) or "(no overrides)"
        print(
            f"  {name} {label:<18} {proxy.endpoint} ready in {proxy.startup_seconds:.1f} s; {shown}"
        )
        out.append(Target(name, label, client_for(proxy.endpoint, stack), proxy))
    return out


def prepare(targets: list[Target], n_keys: int, res: Results) -> None:
    """Untimed: one warm-up PUT/GET per target (the proxies' objects must be encrypted at
    rest), then the GET set of each target, written through it."""
    direct = next(t for t in targets if t.proxy is None).client
    for t in targets:
        body = os.urandom(SIZE)
        timed_put(t.client, f"{t.name}/warm", body, res, t.name)
        timed_get(t.client, f"{t.name}/warm", body, res, t.name)
        if t.proxy is not None:
            verify_encrypted_at_rest(direct, f"{t.name}/warm", body)
        for i in range(n_keys):
            key = f"{t.name}/read-{i}"
            body = os.urandom(SIZE)
            timed_put(t.client, key, body, res, t.name)
            t.keys.append((key, body))


def batch(t: Target, phase: str, rnd: int, n: int, res: Results) -> None:
    """n PUTs of new objects or n GETs of the GET set through one target, timed one by one;
    the proxy's /metrics is scraped around the batch."""
    before = scrape(t.proxy) if t.proxy else None
    for _ in range(n):
        if phase == "put":
            body = os.urandom(SIZE)
            t.put_s.append(timed_put(t.client, f"{t.name}/put-{rnd}-{t.puts}", body, res, t.name))
            t.puts += 1
        else:
            key, body = t.keys[t.next_get % len(t.keys)]
            t.next_get += 1
            t.get_s.append(timed_get(t.client, key, body, res, t.name))
    if t.proxy is not None and before is not None:
        t.window[phase] += delta(scrape(t.proxy), before)


def run_rounds(targets: list[Target], args: argparse.Namespace, stack: Stack, res: Results) -> None:
    for t in targets:
        if t.proxy is not None:
            t.start = scrape(t.proxy)
    for rnd in range(args.rounds):
        shift = rnd % len(targets)
        order = targets[shift:] + targets[:shift]
        t0 = time.monotonic()
        for phase in PHASES:
            for t in order:
                batch(t, phase, rnd, args.ops, res)
        stack.check_alive()
        print(
            f"  round {rnd + 1}/{args.rounds} ({' '.join(t.name for t in order)}) "
            f"{time.monotonic() - t0:5.1f} s"
        )
    time.sleep(1.0)  # let a pool refill that a last PUT woke finish before the final scrape
    for t in targets:
        if t.proxy is not None:
            t.whole = delta(scrape(t.proxy), t.start)


# --------------------------------------------------------------------------------------------
# Report


def ms(samples: list[float], q: float) -> float:
    return percentile(samples, q) * 1000


def pct(hits: float, lookups: float) -> str:
    return f"{100 * hits / lookups:.0f}%" if lookups else "-"


def summarize(targets: list[Target]) -> dict[str, Any]:
    """Per target and phase: p50/p99, ratios to direct, p50 difference to A, Vault calls per
    op, hit rates, and the cross-checks."""
    by = {t.name: t for t in targets}
    out: dict[str, Any] = {}
    for phase in PHASES:
        rows: dict[str, Any] = {}
        for t in targets:
            s = t.put_s if phase == "put" else t.get_s
            row: dict[str, Any] = {
                "label": t.label,
                "ops": len(s),
                "p50_ms": ms(s, 50),
                "p99_ms": ms(s, 99),
            }
            if t.proxy is not None:
                w = t.window[phase]
                op = "PutObject" if phase == "put" else "GetObject"
                row.update(
                    vault_per_op=t.per_op(phase),
                    vault_calls={c: vault_calls(w, (c,)) for c in VAULT_KEY_CALLS},
                    vault_errors=total(
                        w, "cloudtaser_vault_calls_total", call=VAULT_KEY_CALLS, outcome="error"
                    ),
                    cache=rate(w, "cloudtaser_dek_cache_lookups_total"),
                    pool=rate(w, "cloudtaser_dek_pool_takes_total"),
                    # over the whole run: the proxy counts a request after its response went
                    # out, so a batch's last one can land after the scrape that ends the batch
                    proxy_requests=total(t.whole, "cloudtaser_requests_total", operation=op),
                )
            rows[t.name] = row
        d, a = rows["D"], rows["A"]
        for row in rows.values():
            row["p50_x_direct"] = row["p50_ms"] / d["p50_ms"]
            row["p99_x_direct"] = row["p99_ms"] / d["p99_ms"]
            row["p50_vs_a_ms"] = row["p50_ms"] - a["p50_ms"]
        out[phase] = rows
    out["outside_batches"] = {t.name: t.outside() for t in targets if t.proxy is not None}
    out["transit_ms"] = {}
    for t in targets:
        if t.proxy is None:
            continue
        per: dict[str, float] = {}
        for c in VAULT_KEY_CALLS:
            n = total(t.whole, "cloudtaser_vault_call_duration_seconds_count", call=c)
            s = total(t.whole, "cloudtaser_vault_call_duration_seconds_sum", call=c)
            if n:
                per[c] = 1000 * s / n
        out["transit_ms"][t.name] = per
    out["keys"] = len(by["B"].keys)
    return out


def print_tables(summary: dict[str, Any], args: argparse.Namespace) -> None:
    for phase, what, rate_name, rate_key in (
        ("put", "PUT 4 KiB, a new object each", "pool hits", "pool"),
        ("get", f"GET 4 KiB, {summary['keys']} objects round-robin", "cache hits", "cache"),
    ):
        rows = summary[phase]
        n = rows["D"]["ops"]
        print(
            f"\n  {what} ({n} per target)"
            f"\n  {'target':<22}{'p50 ms':>8}{'p99 ms':>8}{'p50/direct':>12}{'p99/direct':>12}"
            f"{'p50 vs A':>11}{'Vault/op':>10}{rate_name:>12}"
        )
        for name in ("D", "A", "B", "C"):
            r = rows[name]
            vs_a = f"{r['p50_vs_a_ms']:+.1f} ms" if name in ("B", "C") else "-"
            vault = f"{r['vault_per_op']:.3f}" if "vault_per_op" in r else "-"
            hits = pct(*r[rate_key]) if rate_key in r else "-"
            print(
                f"  {name + ' ' + r['label']:<22}{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}"
                f"{r['p50_x_direct']:>11.2f}x{r['p99_x_direct']:>11.2f}x{vs_a:>11}{vault:>10}"
                f"{hits:>12}"
            )
    calls = ", ".join(
        f"{n} " + " / ".join(f"{c} {v:.1f}" for c, v in per.items())
        for n, per in summary["transit_ms"].items()
    )
    print(f"\n  Transit call as each proxy timed it (mean ms): {calls}")
    outside = ", ".join(f"{n} {v:.0f}" for n, v in summary["outside_batches"].items())
    print(f"  Vault encrypt/decrypt calls between the timed batches (not in Vault/op): {outside}")
    for phase in PHASES:
        for name in ("A", "B", "C"):
            r = summary[phase][name]
            if r["proxy_requests"] != r["ops"] or r["vault_errors"]:
                print(
                    f"  note: {name} {phase.upper()}: the proxy counted {r['proxy_requests']:.0f}"
                    f" requests for {r['ops']} sent, {r['vault_errors']:.0f} Vault errors"
                )


def conclusion(summary: dict[str, Any]) -> tuple[str, list[str]]:
    """One paragraph computed from the numbers, and warnings where they are not as expected."""
    put, get = summary["put"], summary["get"]
    warnings: list[str] = []
    n_get = get["B"]["ops"]
    floor = summary["keys"] / n_get  # every key's first read must miss
    b_hits, b_lookups = get["B"]["cache"]

    def saved(rows: dict[str, Any], frm: str, to: str) -> str:
        d = rows[frm]["p50_ms"] - rows[to]["p50_ms"]
        return f"saves {d:.1f} ms at p50" if d >= 0 else f"costs {-d:.1f} ms more at p50"

    text = (
        f"The DEK cache takes GET from {get['A']['vault_per_op']:.2f} to "
        f"{get['B']['vault_per_op']:.3f} Vault calls per op ({b_lookups - b_hits:.0f} misses in "
        f"{n_get} reads of {summary['keys']} objects: {pct(b_hits, b_lookups)} hits) and "
        f"{saved(get, 'A', 'B')} ({get['A']['p50_ms']:.1f} -> {get['B']['p50_ms']:.1f} ms). "
        f"The pool of {POOL_SIZE} pre-wrapped DEKs takes PUT from "
        f"{put['B']['vault_per_op']:.2f} to {put['C']['vault_per_op']:.3f} Vault calls per op "
        f"({pct(*put['C']['pool'])} pool hits; the refills are batched) and "
        f"{saved(put, 'B', 'C')} ({put['B']['p50_ms']:.1f} -> {put['C']['p50_ms']:.1f} ms). "
        f"With both, the proxy adds {put['C']['p50_ms'] - put['D']['p50_ms']:.1f} ms to a 4 KiB "
        f"PUT and {get['C']['p50_ms'] - get['D']['p50_ms']:.1f} ms to a GET at p50 "
        f"({put['C']['p50_x_direct']:.1f}x / {get['C']['p50_x_direct']:.1f}x direct), against "
        f"{put['A']['p50_ms'] - put['D']['p50_ms']:.1f} / "
        f"{get['A']['p50_ms'] - get['D']['p50_ms']:.1f} ms with neither (A)"
    )
    if max(put["C"]["vault_per_op"], get["C"]["vault_per_op"]) < 0.2:
        text += "; what remains is the proxy's own work per request, not Vault."
    else:
        text += "."
    text += (
        f" For scale: A and B take the same path for a PUT (one Transit call each), so their "
        f"PUT p50s differing by {abs(put['B']['p50_ms'] - put['A']['p50_ms']):.1f} ms shows "
        "the noise of this run."
    )
    for name in ("A", "B", "C"):
        for phase in PHASES:
            want = 1.0 if (name == "A" or (name == "B" and phase == "put")) else None
            got = summary[phase][name]["vault_per_op"]
            if want is not None and abs(got - want) > 0.01:
                warnings.append(f"{name} {phase.upper()}: {got:.3f} Vault calls per op, expected 1")
    if get["B"]["vault_per_op"] > floor + 0.01 or get["C"]["vault_per_op"] > floor + 0.01:
        warnings.append(
            f"GET with the cache: {get['B']['vault_per_op']:.3f} (B) and "
            f"{get['C']['vault_per_op']:.3f} (C) Vault calls per op, expected about {floor:.3f} "
            f"(one miss per object)"
        )
    if put["C"]["vault_per_op"] > 0.2:
        warnings.append(
            f"PUT with the pool: {put['C']['vault_per_op']:.3f} Vault calls per op, expected "
            f"about 1/{POOL_SIZE // 2} (batched refills)"
        )
    return text, warnings


def header(args: argparse.Namespace) -> dict[str, Any]:
    import boto3
    import mitmproxy.version

    info = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpus": os.cpu_count(),
        "cpu": cpu_model(),
        "python": platform.python_version(),
        "mitmproxy": mitmproxy.version.VERSION,
        "boto3": boto3.__version__,
        "code": code_version(),
        "rounds": args.rounds,
        "ops": args.ops,
        "keys": args.keys,
        "loadavg_at_start": os.getloadavg()[0],
    }
    print(f"CloudTaser key benchmark (DEK cache and pool), {info['date']}")
    print(
        f"  {info['cpus']} CPUs ({info['cpu']}), Python {info['python']}, "
        f"mitmproxy {info['mitmproxy']}, boto3 {info['boto3']}"
    )
    print(f"  proxy code: {info['code']}")
    print(
        f"  {args.rounds} rounds x {args.ops} PUTs + {args.ops} GETs of 4 KiB per target; "
        f"GETs read {args.keys} objects round-robin; targets rotate each round"
    )
    return info


# --------------------------------------------------------------------------------------------
# Main


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Vault round trips and latency of 4 KiB PUT/GET with and without the DEK "
        "cache and pool, against the backend directly."
    )
    ap.add_argument("--rounds", type=int, default=8, help="rounds (default 8)")
    ap.add_argument(
        "--ops", type=int, default=50, help="PUTs and GETs per round and target (default 50)"
    )
    ap.add_argument(
        "--keys", type=int, default=20, help="distinct objects the GETs read (default 20)"
    )
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder afterwards")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.ops < 1 or args.keys < 1:
        ap.error("--rounds, --ops and --keys must be positive")
    return args


def run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    report: dict[str, Any] = {"machine": header(args)}
    print("\nStarting servers")
    stack = start_stack(workdir)
    try:
        targets = start_targets(stack)
        res = Results(retries={t.name: 0 for t in targets})
        try:
            assert stack.s3 is not None
            stack.s3.client().create_bucket(Bucket=BUCKET)
            prepare(targets, args.keys, res)
            print("\nRounds")
            run_rounds(targets, args, stack, res)
        except BenchFailure:
            raise
        except Exception as e:
            stack.check_alive()
            tails = "\n".join(
                f"--- proxy {t.name} log tail ---\n{t.proxy.log_tail(15)}"
                for t in targets
                if t.proxy is not None
            )
            raise BenchFailure(f"request failed: {type(e).__name__}: {e}\n{tails}") from e
        summary = summarize(targets)
        print_tables(summary, args)
        print(
            f"  {res.bytes_verified // KiB} KiB read back and verified byte for byte; boto3 "
            "retries: " + ", ".join(f"{n} {v}" for n, v in res.retries.items())
        )
        text, warnings = conclusion(summary)
        print("\nConclusion")
        print("  " + text)
        for w in warnings:
            print(f"  WARNING: {w}")
        report.update(
            summary=summary,
            conclusion=text,
            warnings=warnings,
            retries=res.retries,
            samples_s={t.name: {"put": t.put_s, "get": t.get_s} for t in targets},
        )
        return report
    finally:
        stack.stop()


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    isolate_client_env()
    workdir = Path(tempfile.mkdtemp(prefix="cloudtaser-bench-keys-"))
    keep = args.keep
    t0 = time.monotonic()
    code = 0
    try:
        with sigterm_as_interrupt():
            report = run(args, workdir)
        report["elapsed_s"] = time.monotonic() - t0
        report["machine"]["loadavg_at_end"] = os.getloadavg()[0]
        print(
            f"\nLoad average (1 min): {report['machine']['loadavg_at_start']:.2f} at start, "
            f"{report['machine']['loadavg_at_end']:.2f} at the end ({os.cpu_count()} CPUs shared "
            "by the bench, three proxies, SeaweedFS and OpenBao)"
        )
        if args.json:
            args.json.write_text(json.dumps(report, indent=2, default=list) + "\n")
            print(f"Results written to {args.json}")
    except KeyboardInterrupt:
        print("\ninterrupted; servers stopped", file=sys.stderr)
        code = 130
    except (BenchFailure, ls.ServerStartError) as e:
        print(f"\nFAILED: {e}", file=sys.stderr)
        keep, code = True, 2
    except Exception:
        traceback.print_exc()
        keep, code = True, 2
    print(f"\nTotal {time.monotonic() - t0:.0f} s" + (f"; files kept in {workdir}" if keep else ""))
    if not keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
