"""A short soak (one minute, eight clients) through a proxy of its own in front of SeaweedFS
and OpenBao: a random mix of PUT, GET, ranged GET, HEAD, LIST, multipart (some aborted), copy
and delete, every byte read compared with a model of what each key holds, then every object
walked at the store, and the proxy's RSS sampled every second throughout.

The engine is tests/soak/soak.py; docs/soak.md says what it checks, how to run the
ten-minute, sixteen-client version and what one such run measured. The run happens once, in a
module fixture; each test below checks one of its outcomes, with the run's summary in every
failure message. The last two tests show the checks are not vacuous: a read that differs from
the model, and objects at rest that are plaintext, missing, extra or of the wrong size, are
caught.
"""

from __future__ import annotations

import os
import threading
import uuid

import boto3
import pytest
from soak import (
    ABSENT,
    OPS,
    Content,
    Entry,
    Model,
    SoakConfig,
    SoakResult,
    Worker,
    client_config,
    run_soak,
    walk_at_rest,
)

SECONDS = float(os.environ.get("CLOUDTASER_SOAK_SECONDS", "60"))
CLIENTS = int(os.environ.get("CLOUDTASER_SOAK_CLIENTS", "8"))


@pytest.fixture(scope="module")
def soak(proxy_factory, seaweedfs) -> SoakResult:
    """One soak run through a fresh proxy, so the RSS it samples is this load's alone."""
    proxy = proxy_factory(seaweedfs)
    bucket = f"soak-{uuid.uuid4().hex[:10]}"
    seaweedfs.client().create_bucket(Bucket=bucket)

    def make_client():
        return boto3.session.Session().client(
            "s3",
            endpoint_url=proxy.endpoint,
            aws_access_key_id=seaweedfs.access_key,
            aws_secret_access_key=seaweedfs.secret_key,
            region_name="us-east-1",
            config=client_config(),
        )

    seed = int.from_bytes(os.urandom(4), "big")
    result = run_soak(
        make_client,
        seaweedfs.client(),
        bucket,
        proxy.pid,
        SoakConfig(duration_s=SECONDS, clients=CLIENTS, seed=seed, final_read_all=False),
        proxy_log=proxy.process.log_path,
    )
    print("\n" + result.summary())
    return result


def test_every_operation_type_ran_under_load(soak: SoakResult) -> None:
    assert all(soak.stats.ops[op] > 0 for op in OPS), soak.summary()
    assert soak.stats.expected["multipart aborted"] > 0 or soak.stats.ops["multipart"] < 4, (
        soak.summary()
    )


def test_every_byte_read_through_the_proxy_matches_the_model(soak: SoakResult) -> None:
    assert not soak.stats.wrong_reads, soak.summary()
    assert not soak.final_read_problems, soak.summary()


def test_the_etag_a_write_returned_is_the_one_get_head_and_list_show(soak: SoakResult) -> None:
    assert not soak.stats.etag_mismatches, soak.summary()


def test_no_request_failed_unexpectedly(soak: SoakResult) -> None:
    """Expected outcomes (404 for a deleted key, 416 for an unsatisfiable range) and a store's
    own 503 SlowDown are counted apart; anything else is a failure. The proxy stays up and
    logs no addon error."""
    assert not soak.stats.errors, soak.summary()
    assert soak.proxy_alive, soak.summary()
    assert not soak.proxy_log_problems, soak.summary()


def test_every_object_at_rest_is_sealed_in_our_format_at_its_modelled_size(
    soak: SoakResult,
) -> None:
    assert soak.at_rest_objects > 0, soak.summary()
    assert not soak.at_rest_problems, soak.summary()
    assert soak.open_uploads == 0, soak.summary()


def test_the_proxy_rss_stays_flat_after_warm_up(soak: SoakResult) -> None:
    """Memory bounds, not timing: end <= post-warm-up + 40 MiB, peak < 150 MiB."""
    rss, cfg = soak.rss, soak.config
    assert len(rss.samples) >= SECONDS / 2, soak.summary()  # sampled about every second
    assert rss.end_kib - rss.start_kib <= cfg.rss_growth_bound_mib * 1024, soak.summary()
    assert rss.peak_kib < cfg.rss_peak_bound_mib * 1024, soak.summary()


# --------------------------------------------------------------------------------------------
# The checks catch what they are meant to catch


@pytest.fixture(scope="module")
def small(proxy_seaweedfs, seaweedfs) -> tuple[object, object, str]:
    """(client through the default proxy, client to the store, a fresh bucket)."""
    bucket = f"soakcheck-{uuid.uuid4().hex[:10]}"
    direct = seaweedfs.client()
    direct.create_bucket(Bucket=bucket)
    return proxy_seaweedfs.client(seaweedfs.access_key, seaweedfs.secret_key), direct, bucket


def test_a_read_that_differs_from_the_model_counts_as_a_wrong_read(small) -> None:
    via, _, bucket = small
    worker = Worker(0, via, bucket, "wrong", seed=1, deadline=0.0, stop=threading.Event())
    key = worker.keys[0]
    via.put_object(Bucket=bucket, Key=key, Body=Content(5, 1000).data())
    worker.model.set(key, Entry(Content(6, 1000), etag='"not-the-etag"'))  # same size
    worker.op_get(key)
    assert worker.stats.wrong_reads["get"] == 1
    for _ in range(10):
        worker.op_get_range(key)
    assert worker.stats.wrong_reads["get_range"] >= 1
    worker.op_head(key)
    assert worker.stats.etag_mismatches["head"] == 1
    worker.model.set(key, Entry(Content(6, 999)))
    worker.op_list(key)
    assert worker.stats.wrong_reads["list"] == 1
    assert not worker.stats.errors


def test_the_walk_at_the_store_flags_plaintext_missing_extra_and_missized_objects(small) -> None:
    via, direct, bucket = small
    model = Model()

    def put(key: str, content: Content, client=via) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=content.data())

    good = Content(1, 3 * 65536)
    put("walk/good", good)
    model.set("walk/good", Entry(good))
    put("walk/plain", Content(2, 10), client=direct)  # written past the proxy
    model.set("walk/plain", Entry(Content(2, 10)))
    put("walk/short", Content(3, 100))
    model.set("walk/short", Entry(Content(3, 101)))
    model.set("walk/missing", Entry(Content(4, 5)))
    put("walk/extra", Content(5, 0))
    put("walk/ghost", Content(6, 1))
    model.set("walk/ghost", ABSENT)

    walked, problems = walk_at_rest(direct, bucket, "walk/", model)
    report = "\n".join(problems)
    assert walked == 5
    assert "'walk/good'" not in report, report
    for key in ("plain", "short", "missing", "extra", "ghost"):
        assert f"'walk/{key}'" in report, report
