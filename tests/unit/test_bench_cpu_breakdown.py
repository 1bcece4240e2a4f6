"""The benchmark's profile sorts py-spy samples by part of the code: the innermost frame that
belongs to a known part decides, idle waits do not count, other threads are a line of their own."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import cpu_breakdown as cpu  # noqa: E402

LOOP = 'process 1:"mitmdump";<module> (mitmdump:6);run (asyncio/runners.py:118)'


def stack(*frames: str, n: int = 1) -> str:
    return ";".join((LOOP, *frames)) + f" {n}"


def test_the_innermost_known_frame_decides():
    hashing = stack(
        "ConnectionHandler.server_event (mitmproxy/proxy/server.py:426)",
        "SealingStream.__call__ (cloudtaser_s3/streams.py:95)",
        "PlaintextDigests.update (cloudtaser_s3/checksums.py:333)",
        n=5,
    )
    sealing = stack(
        "ConnectionHandler.server_event (mitmproxy/proxy/server.py:426)",
        "PartSealer._seal (cloudtaser_s3/envelope.py:155)",
        n=3,
    )
    # deepcopy is in no known part: the caller (mitmproxy's option manager) is charged.
    options = stack("OptManager.__getattr__ (mitmproxy/optmanager.py:56)", "deepcopy (copy.py:119)")
    counts = cpu.categorize("\n".join((hashing, sealing, options)))
    assert counts == Counter(
        {
            "client checksums of the plaintext (SHA-256, CRC)": 5,
            "AES-GCM sealing/opening, segment framing": 3,
            "mitmproxy: HTTP/1, connections, flows": 1,
        }
    )


def test_dispatch_logging_and_the_hooks_are_told_apart():
    counts = cpu.categorize(
        "\n".join(
            (
                stack(
                    "AddonManager.trigger_event (mitmproxy/addonmanager.py:291)",
                    "CloudTaser.requestheaders (cloudtaser_s3/addon.py:516)",
                    "verify (cloudtaser_s3/sigv4.py:469)",
                ),
                stack(
                    "AddonManager.trigger_event (mitmproxy/addonmanager.py:291)",
                    "CloudTaser._finish (cloudtaser_s3/addon.py:1640)",
                    "Logger.log (logging/__init__.py:1589)",
                ),
                stack(
                    "AddonManager.trigger_event (mitmproxy/addonmanager.py:291)",
                    "CloudTaser.requestheaders (cloudtaser_s3/addon.py:516)",
                ),
                stack("AddonManager._iter_hooks (mitmproxy/addonmanager.py:249)"),
            )
        )
    )
    assert counts == Counter(
        {
            "SigV4 verify and re-sign": 1,
            "request log line and metrics": 1,
            "the proxy's hooks (classify, headers, keys)": 1,
            "mitmproxy: addon dispatch": 1,
        }
    )


def test_idle_waits_are_dropped_and_other_threads_counted_apart():
    idle = stack(
        "BaseEventLoop._run_once (asyncio/base_events.py:2012)",
        "EpollSelector.select (selectors.py:452)",
    )
    waiting = (
        'process 1:"mitmdump";Thread._bootstrap (threading.py:1012);'
        "Event.wait (threading.py:659);Condition.wait (threading.py:363) 40"
    )
    vault = (
        'process 1:"mitmdump";Thread._bootstrap (threading.py:1012);'
        "Transit.new_data_keys (cloudtaser_s3/transit.py:305);"
        "HTTPConnection.send (http/client.py:1055) 2"
    )
    counts = cpu.categorize("\n".join((idle, waiting, vault)))
    assert counts == Counter({cpu.OTHER_THREADS: 2})


def test_samples_become_milliseconds_of_the_measured_cpu_time():
    samples = Counter({cpu.LABELS[0]: 3, cpu.LABELS[1]: 1})
    ms = cpu.per_unit_ms(samples, cpu_seconds=2.0, units=100)
    assert ms[cpu.LABELS[0]] == 15.0 and ms[cpu.LABELS[1]] == 5.0
    assert sum(ms.values()) == 20.0
    assert cpu.per_unit_ms(Counter(), 2.0, 100) == {}
