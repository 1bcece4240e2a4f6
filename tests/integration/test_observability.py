"""What operators see: /metrics on the health address and one log line per request, from a
real proxy process — and what they must never see there (object keys, keys, tokens)."""

from __future__ import annotations

import json
import os
import urllib.request
import uuid

import botocore.exceptions
import pytest
from conftest import no_retry_client
from prometheus_client.parser import text_string_to_metric_families

from cloudtaser_s3 import mitmaddons

SECRET_KEY_NAME = "customers/jane-doe/passport.pdf"
# Without the DEK pool and cache every PUT and GET makes its own Vault call: exact counts.
EVERY_REQUEST_ASKS_VAULT = {
    "CLOUDTASER_S3PROXY_DEK_POOL_SIZE": "0",
    "CLOUDTASER_S3PROXY_DEK_CACHE_SIZE": "0",
}


@pytest.fixture(scope="module")
def bucket(seaweedfs) -> str:
    name = f"observe-{uuid.uuid4().hex[:12]}"
    seaweedfs.client().create_bucket(Bucket=name)
    return name


def scrape(proxy) -> tuple[str, dict[tuple[str, tuple], float]]:
    url = proxy.healthz.rsplit("/", 1)[0] + "/metrics"
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def exercise(proxy, backend, bucket) -> bytes:
    s3 = no_retry_client(proxy, backend)
    body = os.urandom(300_000)
    s3.put_object(Bucket=bucket, Key=SECRET_KEY_NAME, Body=body)
    assert s3.get_object(Bucket=bucket, Key=SECRET_KEY_NAME)["Body"].read() == body
    with pytest.raises(botocore.exceptions.ClientError):
        wrong = no_retry_client(proxy, backend, secret_key="wrong")
        wrong.get_object(Bucket=bucket, Key=SECRET_KEY_NAME)
    return body


def test_metrics_count_requests_bytes_vault_calls_and_refusals(proxy_factory, seaweedfs, bucket):
    proxy = proxy_factory(seaweedfs, **EVERY_REQUEST_ASKS_VAULT)
    body = exercise(proxy, seaweedfs, bucket)
    text, m = scrape(proxy)
    assert m[("cloudtaser_requests_total", (("operation", "PutObject"), ("outcome", "ok")))] == 1
    assert m[("cloudtaser_requests_total", (("operation", "GetObject"), ("outcome", "ok")))] == 1
    assert (
        m[("cloudtaser_requests_total", (("operation", "GetObject"), ("outcome", "client_error")))]
        == 1
    )
    assert m[("cloudtaser_bytes_encrypted_total", ())] == len(body)
    assert m[("cloudtaser_bytes_decrypted_total", ())] == len(body)
    assert m[("cloudtaser_vault_calls_total", (("call", "encrypt"), ("outcome", "ok")))] >= 1
    assert m[("cloudtaser_vault_calls_total", (("call", "decrypt"), ("outcome", "ok")))] >= 1
    assert m[("cloudtaser_dek_cache_lookups_total", (("result", "miss"),))] >= 1
    assert m[("cloudtaser_auth_failures_total", (("code", "SignatureDoesNotMatch"),))] == 1
    assert m[("cloudtaser_rejected_requests_total", (("code", "SignatureDoesNotMatch"),))] == 1
    assert ("process_resident_memory_bytes", ()) in m
    for secret in ("jane-doe", bucket, "vault:v", seaweedfs.access_key, "hvs."):
        assert secret not in text


def test_one_log_line_per_request_without_keys_or_secrets(proxy_factory, seaweedfs, bucket):
    proxy = proxy_factory(seaweedfs, **EVERY_REQUEST_ASKS_VAULT)
    exercise(proxy, seaweedfs, bucket)
    log = proxy.log_tail(400)
    lines = [ln for ln in log.splitlines() if "PutObject bucket=" in ln]
    assert len(lines) == 1, log
    assert "status=200" in lines[0] and "vault=1" in lines[0] and "outcome=ok" in lines[0]
    assert any(
        "GetObject bucket=" in ln and "error=SignatureDoesNotMatch" in ln for ln in log.splitlines()
    )
    assert "jane-doe" not in log
    assert "vault:v" not in log and "X-Amz-Signature" not in log


def test_the_proxy_runs_without_mitmproxys_unused_addons(proxy_factory, seaweedfs, bucket):
    """The addons with nothing to do here leave mitmproxy's chain when the proxy starts
    (mitmaddons.py), and request lines still reach the log without mitmproxy's add_log
    events."""
    proxy = proxy_factory(seaweedfs)
    exercise(proxy, seaweedfs, bucket)
    log = proxy.log_tail(400)
    [line] = [ln for ln in log.splitlines() if "mitmproxy addons not run here:" in ln]
    assert set(line.split("not run here: ", 1)[1].split(", ")) == mitmaddons.UNUSED
    assert any("PutObject bucket=" in ln for ln in log.splitlines())


def test_json_logs_are_one_object_per_line(proxy_factory, seaweedfs, bucket):
    proxy = proxy_factory(
        seaweedfs, CLOUDTASER_S3PROXY_LOG_FORMAT="json", **EVERY_REQUEST_ASKS_VAULT
    )
    exercise(proxy, seaweedfs, bucket)
    records = []
    for line in proxy.log_tail(400).splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    requests = [r for r in records if r.get("operation") == "PutObject"]
    assert len(requests) == 1
    put = requests[0]
    assert put["status"] == 200 and put["bucket"] == bucket and put["vault_calls"] == 1
    assert put["bytes_in"] >= 300_000
    assert all("jane-doe" not in json.dumps(r) for r in records)
