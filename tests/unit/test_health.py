"""The health companion over real HTTP on 127.0.0.1 (an ephemeral port): probes, /metrics,
and the readiness gauge."""

import http.client
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloudtaser_s3 import metrics
from cloudtaser_s3.config import Address
from cloudtaser_s3.health import CachedCheck, HealthServer

OK: Callable[[], str | None] = lambda: None  # noqa: E731


@contextmanager
def serving(**kwargs) -> Iterator[HealthServer]:
    kwargs.setdefault("live", OK)
    kwargs.setdefault("ready", OK)
    server = HealthServer(Address("127.0.0.1", 0), **kwargs)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def get(server: HealthServer, path: str, **headers: str) -> tuple[int, str, str]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.getheader("Content-Type", ""), resp.read().decode()
    finally:
        conn.close()


def ready_gauge() -> float | None:
    return metrics.REGISTRY.get_sample_value("cloudtaser_ready")


def test_probes_answer_200_ok_when_their_check_passes():
    with serving() as server:
        assert server.port != 0
        assert get(server, "/healthz") == (200, "text/plain; charset=utf-8", "ok\n")
        assert get(server, "/readyz")[::2] == (200, "ok\n")


def test_a_failing_check_answers_503_with_its_one_line_reason():
    with serving(live=lambda: "Vault is not reachable", ready=lambda: "token expired") as server:
        assert get(server, "/healthz")[::2] == (503, "Vault is not reachable\n")
        assert get(server, "/readyz")[::2] == (503, "token expired\n")


def test_unknown_paths_are_404_and_query_strings_are_ignored():
    with serving() as server:
        assert get(server, "/")[0] == 404
        assert get(server, "/metricsx")[0] == 404
        assert get(server, "/healthz?verbose=1")[0] == 200


def test_readyz_sets_the_ready_gauge():
    state = {"problem": "not yet"}
    with serving(ready=lambda: state["problem"]) as server:
        get(server, "/readyz")
        assert ready_gauge() == 0
        state["problem"] = None
        get(server, "/readyz")
        assert ready_gauge() == 1
        state["problem"] = "Transit key 's3-dek-wrapper' is not usable"
        get(server, "/readyz")
        assert ready_gauge() == 0


def test_metrics_serves_the_module_registry_in_prometheus_text():
    metrics.record_request("PutObject", 200, False, 0.05)
    with serving() as server:
        status, content_type, body = get(server, "/metrics")
    assert status == 200
    assert content_type.startswith("text/plain; version=0.0.4")
    names = {f.name for f in text_string_to_metric_families(body)}
    assert {"cloudtaser_requests", "cloudtaser_ready", "process_resident_memory_bytes"} <= names


def test_metrics_follows_the_scrapers_accept_header():
    with serving() as server:
        _, content_type, body = get(
            server, "/metrics", Accept="application/openmetrics-text; version=1.0.0"
        )
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith("# EOF\n")


def test_metrics_answers_while_the_checks_would_hang():
    """A scrape never waits on Vault: /metrics does not run the checks."""
    release = threading.Event()

    def stuck() -> str | None:
        release.wait(10)
        return None

    with serving(live=stuck, ready=stuck) as server:
        try:
            assert get(server, "/metrics")[0] == 200
        finally:
            release.set()


def test_an_injected_renderer_is_used_and_its_failure_is_a_500():
    with serving(metrics=lambda accept: (b"x 1\n", "text/plain; version=0.0.4")) as server:
        assert get(server, "/metrics") == (200, "text/plain; version=0.0.4", "x 1\n")

    def broken(accept: str) -> tuple[bytes, str]:
        raise RuntimeError("collector failed")

    with serving(metrics=broken) as server:
        assert get(server, "/metrics")[0] == 500
        assert get(server, "/healthz")[0] == 200  # the server lives on


def test_the_old_three_argument_constructor_still_works():
    server = HealthServer(Address("127.0.0.1", 0), OK, OK)
    server.start()
    try:
        assert get(server, "/metrics")[0] == 200
    finally:
        server.stop()


def test_cached_check_runs_at_most_once_per_ttl_and_never_raises():
    calls = []

    def check() -> str | None:
        calls.append(1)
        raise ConnectionError("down")

    cached = CachedCheck(check, ttl=60)
    assert cached() == "check failed: ConnectionError"
    assert cached() == "check failed: ConnectionError"
    assert len(calls) == 1


def test_a_taken_port_fails_at_construction():
    with serving() as server, pytest.raises(OSError):
        HealthServer(Address("127.0.0.1", server.port), OK, OK)
