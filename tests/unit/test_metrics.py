"""/metrics: what is counted, and that nothing a client chose can become a label value.

Most tests use a fresh ``Metrics`` on a registry of their own, so no test depends on what
another one counted; the module-level functions are checked by deltas on ``REGISTRY``.
"""

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_om
from prometheus_client.parser import text_string_to_metric_families

from cloudtaser_s3 import metrics
from cloudtaser_s3.metrics import Metrics, outcome_of


@pytest.fixture
def m() -> Metrics:
    return Metrics(CollectorRegistry())


def value(m: Metrics, name: str, **labels: str) -> float:
    return m.registry.get_sample_value(name, labels) or 0.0


def operations(m: Metrics) -> set[str]:
    """Every operation label value /metrics shows."""
    return {
        s.labels["operation"]
        for f in text_string_to_metric_families(m.render()[0].decode())
        if f.name == "cloudtaser_requests"
        for s in f.samples
        if s.name == "cloudtaser_requests_total"
    }


# ---------------------------------------------------------------- outcomes


@pytest.mark.parametrize(
    ("status", "aborted", "outcome"),
    [
        (200, False, "ok"),
        (206, False, "ok"),
        (304, False, "ok"),
        (403, False, "client_error"),
        (416, False, "client_error"),
        (500, False, "server_error"),
        (503, False, "server_error"),
        (None, False, "server_error"),  # no response at all is the proxy's failure
        (200, True, "aborted"),  # headers went out, then the connection was cut
        (None, True, "aborted"),
    ],
)
def test_outcome_of_a_status(status, aborted, outcome):
    assert outcome_of(status, aborted) == outcome


# ---------------------------------------------------------------- label safety


@pytest.mark.parametrize(
    "not_an_operation",
    [
        "photos/2026/IMG_0001.jpg",  # an object key
        "my-bucket",  # a bucket name (lower-case, S3 bucket names cannot be PascalCase)
        "demo",
        "AKIAIOSFODNN7EXAMPLE/20260101/eu-west-1/s3/aws4_request",  # a credential scope
        "GetBucket:policy",  # the classifier's composite names end in what the client sent
        "GET /",
        "X" * 65,  # too long
        "",
        "Put\nObject",
        "PutÖbject",
    ],
)
def test_anything_but_an_operation_name_is_counted_as_other(m, not_an_operation):
    m.record_request(not_an_operation, 200, False, 0.01)
    assert value(m, "cloudtaser_requests_total", operation="other", outcome="ok") == 1
    assert operations(m) == {"other"}


def test_operation_names_are_kept(m):
    for op in ("PutObject", "GetObject", "UploadPart", "ListObjectsV2", "Unknown"):
        m.record_request(op, 200, False, 0.01)
        assert value(m, "cloudtaser_requests_total", operation=op, outcome="ok") == 1


def test_codes_and_calls_are_sanitized_the_same_way(m):
    m.auth_failure("SignatureDoesNotMatch")
    m.auth_failure("secret-key/abc")
    m.rejected("NotImplemented")
    m.rejected("<script>")
    with m.vault_call("read_key"):
        pass
    with m.vault_call("transit/encrypt/s3-dek-wrapper"):
        pass
    assert value(m, "cloudtaser_auth_failures_total", code="SignatureDoesNotMatch") == 1
    assert value(m, "cloudtaser_auth_failures_total", code="other") == 1
    assert value(m, "cloudtaser_rejected_requests_total", code="NotImplemented") == 1
    assert value(m, "cloudtaser_rejected_requests_total", code="other") == 1
    assert value(m, "cloudtaser_vault_calls_total", call="read_key", outcome="ok") == 1
    assert value(m, "cloudtaser_vault_calls_total", call="other", outcome="ok") == 1


def test_a_label_takes_a_bounded_number_of_distinct_values(m):
    """Even well-shaped values stop being new series past the limit: a caller bug that passes
    client data cannot grow the registry without bound."""
    for i in range(metrics.MAX_LABEL_VALUES + 50):
        m.record_request(f"Op{i}", 200, False, 0.0)
    assert len(operations(m)) == metrics.MAX_LABEL_VALUES + 1  # the first ones, and "other"
    assert value(m, "cloudtaser_requests_total", operation="other", outcome="ok") == 50
    m.record_request("Op0", 200, False, 0.0)  # one seen before the limit stays itself
    assert value(m, "cloudtaser_requests_total", operation="Op0", outcome="ok") == 2


# ---------------------------------------------------------------- counting


def test_a_request_is_counted_by_outcome_and_its_duration_observed(m):
    assert m.record_request("GetObject", 404, False, 0.02) == "client_error"
    m.record_request("GetObject", 200, True, 1.5)
    assert value(m, "cloudtaser_requests_total", operation="GetObject", outcome="client_error") == 1
    assert value(m, "cloudtaser_requests_total", operation="GetObject", outcome="aborted") == 1
    hist = "cloudtaser_request_duration_seconds"
    assert value(m, f"{hist}_count", operation="GetObject") == 2
    assert value(m, f"{hist}_sum", operation="GetObject") == pytest.approx(1.52)
    assert value(m, f"{hist}_bucket", operation="GetObject", le="0.025") == 1
    assert value(m, f"{hist}_bucket", operation="GetObject", le="60.0") == 2


def test_bytes_encrypted_and_decrypted_add_up(m):
    m.add_encrypted(1024)
    m.add_encrypted(0)
    m.add_encrypted(-5)  # never decreases a counter (prometheus_client would raise)
    m.add_decrypted(10)
    m.add_decrypted(20)
    assert value(m, "cloudtaser_bytes_encrypted_total") == 1024
    assert value(m, "cloudtaser_bytes_decrypted_total") == 30


def test_vault_call_times_the_body_and_counts_ok(m):
    with m.vault_call("encrypt"):
        pass
    assert value(m, "cloudtaser_vault_calls_total", call="encrypt", outcome="ok") == 1
    assert value(m, "cloudtaser_vault_calls_total", call="encrypt", outcome="error") == 0
    assert value(m, "cloudtaser_vault_call_duration_seconds_count", call="encrypt") == 1


def test_vault_call_counts_an_error_when_the_body_raises_and_lets_it_through(m):
    class VaultDown(Exception):
        pass

    with pytest.raises(VaultDown), m.vault_call("decrypt"):
        raise VaultDown
    assert value(m, "cloudtaser_vault_calls_total", call="decrypt", outcome="error") == 1
    assert value(m, "cloudtaser_vault_calls_total", call="decrypt", outcome="ok") == 0
    assert value(m, "cloudtaser_vault_call_duration_seconds_count", call="decrypt") == 1


def test_dek_cache_and_pool_count_hits_and_misses(m):
    m.dek_cache(True)
    m.dek_cache(True)
    m.dek_cache(False)
    m.dek_pool(False)
    assert value(m, "cloudtaser_dek_cache_lookups_total", result="hit") == 2
    assert value(m, "cloudtaser_dek_cache_lookups_total", result="miss") == 1
    assert value(m, "cloudtaser_dek_pool_takes_total", result="hit") == 0
    assert value(m, "cloudtaser_dek_pool_takes_total", result="miss") == 1


def test_gauges_hold_the_last_value(m):
    m.set_token_ttl(3599.5)
    m.set_ready(True)
    assert value(m, "cloudtaser_vault_token_ttl_seconds") == 3599.5
    assert value(m, "cloudtaser_ready") == 1
    m.set_token_ttl(-1)
    m.set_ready(False)
    assert value(m, "cloudtaser_vault_token_ttl_seconds") == 0
    assert value(m, "cloudtaser_ready") == 0


def test_the_fixed_series_exist_before_their_first_event(m):
    """A counter that appears only at its first increment hides that increase from rate()."""
    assert (
        m.registry.get_sample_value(
            "cloudtaser_vault_calls_total", {"call": "decrypt", "outcome": "error"}
        )
        == 0.0
    )
    assert m.registry.get_sample_value("cloudtaser_dek_cache_lookups_total", {"result": "hit"}) == 0


# ---------------------------------------------------------------- exposition


def test_render_is_prometheus_text_that_parses(m):
    m.record_request("PutObject", 200, False, 0.1)
    body, content_type = m.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    for name in (
        "cloudtaser_requests",
        "cloudtaser_request_duration_seconds",
        "cloudtaser_bytes_encrypted",
        "cloudtaser_bytes_decrypted",
        "cloudtaser_vault_calls",
        "cloudtaser_vault_call_duration_seconds",
        "cloudtaser_dek_cache_lookups",
        "cloudtaser_dek_pool_takes",
        "cloudtaser_auth_failures",
        "cloudtaser_rejected_requests",
        "cloudtaser_vault_token_ttl_seconds",
        "cloudtaser_ready",
    ):
        assert name in families, name
    assert families["cloudtaser_requests"].type == "counter"
    assert families["cloudtaser_request_duration_seconds"].type == "histogram"


def test_render_answers_openmetrics_when_the_scraper_asks(m):
    body, content_type = m.render("application/openmetrics-text; version=1.0.0,text/plain;q=0.5")
    assert content_type.startswith("application/openmetrics-text")
    names = {f.name for f in parse_om(body.decode())}
    assert "cloudtaser_requests" in names


def test_the_module_registry_has_our_metrics_and_the_process_ones():
    names = {f.name for f in text_string_to_metric_families(metrics.render()[0].decode())}
    assert "cloudtaser_requests" in names
    assert "python_info" in names  # PlatformCollector
    assert "process_resident_memory_bytes" in names  # ProcessCollector (Linux /proc)


def test_the_module_functions_count_into_the_module_registry():
    def get(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    before = get("cloudtaser_requests_total", operation="HeadObject", outcome="ok")
    before_bytes = get("cloudtaser_bytes_encrypted_total")
    metrics.record_request("HeadObject", 200, False, 0.001)
    metrics.add_encrypted(7)
    assert get("cloudtaser_requests_total", operation="HeadObject", outcome="ok") == before + 1
    assert get("cloudtaser_bytes_encrypted_total") == before_bytes + 7
