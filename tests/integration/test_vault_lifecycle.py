"""Keys in production: tokens that expire and are renewed, logins that are redone, Vault
outages the proxy rides out, key rotation, several Transit keys and the pool of pre-wrapped
data keys — all against a real OpenBao, with the proxy as a real mitmdump process.

Tokens here live for seconds (the product page's role has ttl 1h), so renewals and re-logins
happen while the test keeps storing and reading objects."""

from __future__ import annotations

import os
import time
import uuid
from urllib.parse import urlsplit

import botocore.exceptions
import pytest
from botocore.config import Config
from conftest import http_status, no_retry_client, proxy_default_env
from faultproxy import FaultProxy
from k8s_tokenreview import TokenReviewServer

from cloudtaser_s3 import localservers as ls

NO_RETRY = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=30)
ROLE = "s3-proxy-short"
SA = ("production", "document-store")
MOUNT = "k8s-lifecycle"


@pytest.fixture(scope="module")
def bucket(seaweedfs) -> str:
    name = f"lifecycle-{uuid.uuid4().hex[:12]}"
    seaweedfs.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def vault_fault(openbao):
    """OpenBao behind a fault-injecting TCP forwarder: ``refuse()`` is an outage."""
    vault = urlsplit(openbao.addr)
    fault = FaultProxy(vault.hostname, vault.port)
    yield fault
    fault.stop()


@pytest.fixture
def transit_key(openbao) -> str:
    """A Transit key of this test's own, so rotating it disturbs nobody else."""
    name = f"lifecycle-{uuid.uuid4().hex[:8]}"
    openbao.client().secrets.transit.create_key(name, mount_point=openbao.transit_mount)
    return name


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def stored_meta(backend, bucket: str, key: str) -> dict[str, str]:
    return backend.client().head_object(Bucket=bucket, Key=key)["Metadata"]


def put_and_read(s3, bucket: str, key: str) -> None:
    body = os.urandom(1000)
    s3.put_object(Bucket=bucket, Key=key, Body=body)
    assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body


def log_count(proxy, text: str) -> int:
    return proxy.log_tail(5000).count(text)


# ------------------------------------------------------------------ kubernetes auth that lasts


def configure_short_role(openbao, k8s: TokenReviewServer) -> None:
    root = openbao.client()
    methods = root.sys.list_auth_methods()
    if f"{MOUNT}/" not in methods.get("data", methods):
        root.sys.enable_auth_method("kubernetes", path=MOUNT)
    root.write_data(
        f"auth/{MOUNT}/config",
        data={
            "kubernetes_host": k8s.url,
            "kubernetes_ca_cert": k8s.ca_pem,
            "token_reviewer_jwt": k8s.reviewer_token,
            "disable_local_ca_jwt": True,
        },
    )
    # Renewed every 2 s (2/3 of 3 s); after 7 s Vault grants no more, so the proxy logs in again.
    root.write_data(
        f"auth/{MOUNT}/role/{ROLE}",
        data={
            "bound_service_account_names": SA[1],
            "bound_service_account_namespaces": SA[0],
            "policies": openbao.policy,
            "ttl": "3s",
            "max_ttl": "7s",
        },
    )


def test_kubernetes_tokens_are_renewed_and_replaced_while_requests_keep_working(
    openbao, seaweedfs, bucket, tmp_path
):
    with TokenReviewServer() as k8s:
        configure_short_role(openbao, k8s)
        jwt = tmp_path / "sa" / "token"
        jwt.parent.mkdir()
        jwt.write_text(k8s.issue(*SA))
        env = {
            **proxy_default_env(seaweedfs, openbao, "unused"),
            "VAULT_AUTH_METHOD": "kubernetes",
            "VAULT_AUTH_ROLE": ROLE,
            "VAULT_AUTH_MOUNT_PATH": MOUNT,
            "VAULT_K8S_JWT_PATH": str(jwt),
            "VAULT_TOKEN": None,
            # No DEK cache: every read needs a live token.
            "CLOUDTASER_S3PROXY_DEK_CACHE_SIZE": "0",
        }
        with ls.start_proxy(env, tmp_path / "proxy", wait_for="healthz") as proxy:
            s3 = no_retry_client(proxy, seaweedfs)
            deadline = time.monotonic() + 16
            n = 0
            while time.monotonic() < deadline:
                put_and_read(s3, bucket, f"k8s-lasting/{n}")
                n += 1
                time.sleep(0.25)
            assert log_count(proxy, "renewed the Vault token") >= 3, proxy.log_tail(60)
            assert log_count(proxy, "logged in to Vault") >= 2, proxy.log_tail(60)
            assert "refused" not in proxy.log_tail(5000).lower()

            # The kubelet rotates the projected token: the proxy logs in with the new one.
            reviews = k8s.reviews
            fresh = k8s.issue(*SA)
            (tmp_path / "sa" / "token.new").write_text(fresh)
            os.replace(tmp_path / "sa" / "token.new", jwt)
            wait_for(lambda: log_count(proxy, "service-account token changed") >= 1, 15, "re-login")
            wait_for(lambda: k8s.reviews > reviews, 15, "the login with the new token")
            put_and_read(s3, bucket, "k8s-lasting/after-rotation")


def test_a_renewable_vault_token_is_renewed_past_its_ttl(openbao, seaweedfs, bucket, tmp_path):
    token = ls.create_policy_token(openbao.addr, openbao.root_token, openbao.policy, ttl="6s")
    env = {**proxy_default_env(seaweedfs, openbao, token), "CLOUDTASER_S3PROXY_DEK_CACHE_SIZE": "0"}
    with ls.start_proxy(env, tmp_path, wait_for="healthz") as proxy:
        s3 = no_retry_client(proxy, seaweedfs)
        put_and_read(s3, bucket, "token-before")
        time.sleep(13)  # more than twice the token's TTL
        put_and_read(s3, bucket, "token-renewed")
        assert log_count(proxy, "renewed the Vault token") >= 2
        assert http_status(proxy.readyz) == 200


# ------------------------------------------------------------------ outages


def test_an_outage_keeps_cached_reads_refuses_writes_and_heals_itself(
    proxy_factory, proxy_seaweedfs, vault_fault, seaweedfs, bucket
):
    fault = vault_fault
    proxy = proxy_factory(
        seaweedfs,
        VAULT_ADDR=fault.url,
        CLOUDTASER_S3PROXY_VAULT_TIMEOUT="1s",
        CLOUDTASER_S3PROXY_VAULT_RETRIES="1",
        CLOUDTASER_S3PROXY_DEK_POOL_SIZE="0",  # the pool's own outage test is the next one
    )
    s3 = no_retry_client(proxy, seaweedfs)
    s3.put_object(Bucket=bucket, Key="outage/read-before", Body=b"cached")
    assert s3.get_object(Bucket=bucket, Key="outage/read-before")["Body"].read() == b"cached"
    # Written here and never read: its DEK went into the cache when it was written.
    s3.put_object(Bucket=bucket, Key="outage/written-here", Body=b"cached at write")
    # Written by another replica: this proxy has never seen its DEK.
    no_retry_client(proxy_seaweedfs, seaweedfs).put_object(
        Bucket=bucket, Key="outage/never-read", Body=b"not cached"
    )
    wait_for(lambda: http_status(proxy.readyz) == 200, 10, "ready")

    fault.refuse()
    started = time.monotonic()
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=bucket, Key="outage/during", Body=b"x" * 5000)
    assert e.value.response["Error"]["Code"] == "ServiceUnavailable"
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    assert time.monotonic() - started < 10  # bounded: two attempts, short timeouts
    with pytest.raises(botocore.exceptions.ClientError):
        seaweedfs.client().head_object(Bucket=bucket, Key="outage/during")
    # The DEK of an object read before the outage is cached: it still reads.
    assert s3.get_object(Bucket=bucket, Key="outage/read-before")["Body"].read() == b"cached"
    got = s3.get_object(Bucket=bucket, Key="outage/written-here")["Body"].read()
    assert got == b"cached at write"
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.get_object(Bucket=bucket, Key="outage/never-read")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    wait_for(lambda: http_status(proxy.readyz) == 503, 15, "/readyz 503")

    fault.heal()  # no restart: everything comes back by itself
    wait_for(lambda: http_status(proxy.readyz) == 200, 15, "/readyz 200")
    put_and_read(s3, bucket, "outage/after")
    assert s3.get_object(Bucket=bucket, Key="outage/never-read")["Body"].read() == b"not cached"


def test_with_a_pool_writes_still_stop_while_vault_is_down(
    proxy_factory, vault_fault, seaweedfs, bucket
):
    """Pre-wrapped keys do not let writes go on through an outage: the pool hands out nothing
    once Vault fails (checked every 2 s even when idle), and works again when it is back."""
    fault = vault_fault
    proxy = proxy_factory(
        seaweedfs,
        VAULT_ADDR=fault.url,
        CLOUDTASER_S3PROXY_DEK_POOL_SIZE="8",
        CLOUDTASER_S3PROXY_VAULT_TIMEOUT="1s",
        CLOUDTASER_S3PROXY_VAULT_RETRIES="0",
    )
    s3 = no_retry_client(proxy, seaweedfs)
    put_and_read(s3, bucket, "pool-outage/before")
    fault.refuse()
    time.sleep(3)  # the pool's own check notices
    with pytest.raises(botocore.exceptions.ClientError) as e:
        s3.put_object(Bucket=bucket, Key="pool-outage/during", Body=b"x")
    assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503
    with pytest.raises(botocore.exceptions.ClientError):
        seaweedfs.client().head_object(Bucket=bucket, Key="pool-outage/during")
    fault.heal()
    wait_for(lambda: _put_ok(s3, bucket, "pool-outage/after"), 15, "writes again")


def _put_ok(s3, bucket: str, key: str) -> bool:
    try:
        s3.put_object(Bucket=bucket, Key=key, Body=b"back")
        return True
    except botocore.exceptions.ClientError:
        return False


# ------------------------------------------------------------------ rotation and keys


def test_after_rotation_new_objects_use_the_new_version_and_old_ones_still_read(
    proxy_factory, openbao, seaweedfs, bucket, transit_key
):
    proxy = proxy_factory(
        seaweedfs,
        VAULT_TOKEN=openbao.root_token,
        CLOUDTASER_S3PROXY_TRANSIT_KEY=transit_key,
        CLOUDTASER_S3PROXY_DEK_POOL_SIZE="0",  # at once; with the pool, the next test
    )
    s3 = no_retry_client(proxy, seaweedfs)
    s3.put_object(Bucket=bucket, Key="rotation/old", Body=b"v1 object")
    assert stored_meta(seaweedfs, bucket, "rotation/old")["cloudtaser-key-version"] == "1"

    openbao.client().secrets.transit.rotate_key(transit_key, mount_point=openbao.transit_mount)
    s3.put_object(Bucket=bucket, Key="rotation/new", Body=b"v2 object")
    meta = stored_meta(seaweedfs, bucket, "rotation/new")
    assert meta["cloudtaser-key-version"] == "2"
    assert meta["cloudtaser-dek"].startswith("vault:v2:")
    assert s3.get_object(Bucket=bucket, Key="rotation/old")["Body"].read() == b"v1 object"
    assert s3.get_object(Bucket=bucket, Key="rotation/new")["Body"].read() == b"v2 object"


def test_the_data_key_pool_follows_a_rotation_within_its_max_age(
    proxy_factory, openbao, seaweedfs, bucket, transit_key
):
    proxy = proxy_factory(
        seaweedfs,
        VAULT_TOKEN=openbao.root_token,
        CLOUDTASER_S3PROXY_TRANSIT_KEY=transit_key,
        CLOUDTASER_S3PROXY_DEK_POOL_SIZE="4",
        CLOUDTASER_S3PROXY_DEK_POOL_MAX_AGE="2s",
    )
    s3 = no_retry_client(proxy, seaweedfs)
    put_and_read(s3, bucket, "pool/before")
    openbao.client().secrets.transit.rotate_key(transit_key, mount_point=openbao.transit_mount)
    time.sleep(2.5)
    for i in range(6):  # more than the pool holds: refilled keys are of the new version
        put_and_read(s3, bucket, f"pool/after-{i}")
        assert stored_meta(seaweedfs, bucket, f"pool/after-{i}")["cloudtaser-key-version"] == "2"
    assert s3.get_object(Bucket=bucket, Key="pool/before")["Body"].read()


def test_a_bucket_prefix_can_have_its_own_transit_key(
    proxy_factory, openbao, seaweedfs, bucket, transit_key
):
    tenant_key = transit_key
    proxy = proxy_factory(
        seaweedfs,
        VAULT_TOKEN=openbao.root_token,
        CLOUDTASER_S3PROXY_TRANSIT_KEYS=f"{bucket}/tenant-b/={tenant_key}",
    )
    s3 = no_retry_client(proxy, seaweedfs)
    put_and_read(s3, bucket, "tenant-b/report.pdf")
    put_and_read(s3, bucket, "tenant-a/report.pdf")
    assert stored_meta(seaweedfs, bucket, "tenant-b/report.pdf")["cloudtaser-key"] == tenant_key
    assert (
        stored_meta(seaweedfs, bucket, "tenant-a/report.pdf")["cloudtaser-key"]
        == openbao.transit_key
    )
    # Reads follow the key name stored with each object, whatever the mapping says now.
    plain = proxy_factory(seaweedfs, VAULT_TOKEN=openbao.root_token)
    s3 = no_retry_client(plain, seaweedfs)
    assert s3.get_object(Bucket=bucket, Key="tenant-b/report.pdf")["Body"].read()


def test_a_mapped_transit_key_that_does_not_exist_makes_the_proxy_unready(
    openbao, seaweedfs, tmp_path
):
    env = {
        **proxy_default_env(seaweedfs, openbao, openbao.root_token),
        "CLOUDTASER_S3PROXY_TRANSIT_KEYS": "some-bucket=no-such-key",
    }
    with ls.start_proxy(env, tmp_path, wait_for="healthz") as proxy:
        wait_for(lambda: http_status(proxy.readyz) == 503, 10, "/readyz 503")
        assert http_status(proxy.healthz) == 200
