"""Vault kubernetes auth, for real: OpenBao's kubernetes auth method, the proxy's login with a
service-account JWT from VAULT_K8S_JWT_PATH, and Transit used with the token that login gave.

No cluster: the one stand-in is the Kubernetes TokenReview API (tests/k8s_tokenreview.py, HTTPS
on 127.0.0.1), which OpenBao calls exactly as it calls a real API server. Everything else (the
dev OpenBao, its kubernetes auth plugin, moto, the proxy) is the real thing. The auth method is
set up as on the product page: role ``s3-proxy`` bound to service account ``document-store`` in
namespace ``production``, policy ``s3-proxy-policy``, ttl 1h.
"""

from __future__ import annotations

import contextlib
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3
import botocore.exceptions
import hvac.exceptions
import pytest
from botocore.config import Config
from conftest import REGION, proxy_default_env
from k8s_tokenreview import TokenReviewServer, decode_claims

from cloudtaser_s3 import localservers as ls

ROLE = "s3-proxy"
BOUND_SA = ("production", "document-store")
MOUNT = "k8s-test"
READY_TIMEOUT = 6.0  # readiness is cached for 5 s; a working login is ready at once
NO_RETRY = Config(retries={"total_max_attempts": 1}, connect_timeout=5, read_timeout=20)


# ------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def k8s() -> Iterator[TokenReviewServer]:
    with TokenReviewServer() as server:
        yield server


@pytest.fixture(scope="module")
def bucket(moto_s3) -> str:
    name = f"k8s-auth-{uuid.uuid4().hex[:12]}"
    moto_s3.client().create_bucket(Bucket=name)
    return name


def configure_kubernetes_auth(
    openbao, k8s: TokenReviewServer, mount: str, *, reviewer_jwt: str | None = None
) -> None:
    """Enable kubernetes auth at ``mount`` (idempotent) and write config and role with root."""
    root = openbao.client()
    methods = root.sys.list_auth_methods()
    methods = methods.get("data", methods)
    if f"{mount}/" not in methods:
        root.sys.enable_auth_method("kubernetes", path=mount)
    root.write_data(
        f"auth/{mount}/config",
        data={
            "kubernetes_host": k8s.url,
            "kubernetes_ca_cert": k8s.ca_pem,
            "token_reviewer_jwt": reviewer_jwt or k8s.reviewer_token,
            "disable_local_ca_jwt": True,
        },
    )
    root.write_data(
        f"auth/{mount}/role/{ROLE}",
        data={
            "bound_service_account_names": BOUND_SA[1],
            "bound_service_account_namespaces": BOUND_SA[0],
            "policies": openbao.policy,
            "ttl": "1h",
        },
    )


def jwt_file(directory: Path, token: str) -> Path:
    """The projected token file a pod would have (0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "token"
    path.write_text(token + "\n")  # kubelet writes none, but a trailing newline must not matter
    path.chmod(0o600)
    return path


def kubernetes_env(
    moto_s3, openbao, jwt_path: Path, mount_path: str | None
) -> dict[str, str | None]:
    """The test proxy's default environment switched to kubernetes auth (no VAULT_TOKEN)."""
    env: dict[str, str | None] = {
        **proxy_default_env(moto_s3, openbao, "unused"),
        "VAULT_AUTH_METHOD": "kubernetes",
        "VAULT_AUTH_ROLE": ROLE,
        "VAULT_AUTH_MOUNT_PATH": mount_path,  # None: unset, so the default auth/kubernetes
        "VAULT_K8S_JWT_PATH": str(jwt_path),
        "VAULT_TOKEN": None,
    }
    return env


def readyz(proxy) -> tuple[int | None, str]:
    try:
        with urllib.request.urlopen(proxy.readyz, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return None, repr(e)


def wait_ready(proxy, timeout: float = READY_TIMEOUT) -> tuple[int | None, str]:
    """Poll /readyz until 200 or ``timeout``; the last (status, body)."""
    with contextlib.suppress(ls.ServerStartError):
        ls.wait_until(lambda: readyz(proxy)[0] == 200, timeout, "readyz", interval=0.2)
    return readyz(proxy)


def client_for(proxy, moto_s3):
    return boto3.client(
        "s3",
        endpoint_url=proxy.endpoint,
        aws_access_key_id=moto_s3.access_key,
        aws_secret_access_key=moto_s3.secret_key,
        region_name=REGION,
        config=NO_RETRY,
    )


def refused(call) -> tuple[str, int]:
    with pytest.raises(botocore.exceptions.ClientError) as e:
        call()
    r = e.value.response
    return r["Error"]["Code"], r["ResponseMetadata"]["HTTPStatusCode"]


def stored(moto_s3, bucket: str, key: str) -> bool:
    try:
        moto_s3.client().head_object(Bucket=bucket, Key=key)
        return True
    except botocore.exceptions.ClientError as e:
        assert e.response["ResponseMetadata"]["HTTPStatusCode"] == 404
        return False


def login_accessors(openbao, mount: str, secret_name: str) -> list[str]:
    """Accessors of live tokens that kubernetes login at ``mount`` gave this token's holder."""
    root = openbao.client()
    found = []
    for accessor in root.auth.token.list_accessors()["data"]["keys"]:
        try:
            data = root.auth.token.lookup_accessor(accessor)["data"]
        except hvac.exceptions.VaultError:
            continue  # revoked meanwhile
        meta = data.get("meta") or {}
        if (
            data.get("path", "").startswith(f"auth/{mount}/login")
            and meta.get("service_account_secret_name") == secret_name
        ):
            found.append(accessor)
    return found


def secret_name(token: str) -> str:
    return decode_claims(token)["kubernetes.io/serviceaccount/secret.name"]


# ------------------------------------------------------------------------------ tests


@pytest.mark.parametrize(
    ("mount", "mount_path"),
    [
        pytest.param(MOUNT, f"auth/{MOUNT}", id="VAULT_AUTH_MOUNT_PATH=auth/k8s-test"),
        pytest.param(MOUNT, MOUNT, id="VAULT_AUTH_MOUNT_PATH=k8s-test"),
        pytest.param("kubernetes", None, id="VAULT_AUTH_MOUNT_PATH-unset(auth/kubernetes)"),
    ],
)
def test_kubernetes_login_round_trip(openbao, moto_s3, k8s, bucket, tmp_path, mount, mount_path):
    """A bound service account's JWT logs the proxy in; objects are encrypted and read back."""
    configure_kubernetes_auth(openbao, k8s, mount)
    token = k8s.issue(*BOUND_SA)
    env = kubernetes_env(moto_s3, openbao, jwt_file(tmp_path / "sa", token), mount_path)
    reviews_before = k8s.reviews
    with ls.start_proxy(env, tmp_path / "proxy", wait_for="healthz") as proxy:
        status, reason = wait_ready(proxy)
        assert status == 200, (
            f"/readyz {status}: {reason.strip()}\n--- proxy log ---\n{proxy.log_tail(15)}"
        )
        s3 = client_for(proxy, moto_s3)
        key = f"k8s/{uuid.uuid4().hex}"
        body = b"kubernetes-authenticated plaintext " * 100
        s3.put_object(Bucket=bucket, Key=key, Body=body)
        assert s3.get_object(Bucket=bucket, Key=key)["Body"].read() == body
    at_rest = moto_s3.client().get_object(Bucket=bucket, Key=key)["Body"].read()
    assert at_rest.startswith(b"CTS1")
    assert body not in at_rest
    # The login went through Kubernetes: OpenBao asked the TokenReview API about our token.
    assert k8s.reviews > reviews_before
    ours = [r for r in k8s.review_log[reviews_before:] if r.service_account == BOUND_SA[1]]
    assert ours and all(r.authenticated and r.namespace == BOUND_SA[0] for r in ours)
    assert login_accessors(openbao, mount, secret_name(token)), "no token from kubernetes login"


@pytest.mark.parametrize(
    "token_kind", ["unbound-service-account", "unbound-namespace", "not-issued-by-kubernetes"]
)
def test_a_refused_login_leaves_the_proxy_unready_and_stores_nothing(
    openbao, moto_s3, k8s, bucket, tmp_path, token_kind
):
    """A JWT the role does not accept: the proxy runs, /readyz 503, a PUT is a 503, no object."""
    configure_kubernetes_auth(openbao, k8s, MOUNT)
    token = {
        "unbound-service-account": lambda: k8s.issue(BOUND_SA[0], "billing"),
        "unbound-namespace": lambda: k8s.issue("staging", BOUND_SA[1]),
        # The right claims, but Kubernetes never issued it: only TokenReview can tell.
        "not-issued-by-kubernetes": lambda: k8s.forge(*BOUND_SA),
    }[token_kind]()
    env = kubernetes_env(moto_s3, openbao, jwt_file(tmp_path / "sa", token), MOUNT)
    reviews_before = k8s.reviews
    with ls.start_proxy(env, tmp_path / "proxy", wait_for="healthz") as proxy:
        status, reason = readyz(proxy)
        assert status == 503, reason
        assert "kubernetes login failed" in reason
        s3 = client_for(proxy, moto_s3)
        key = f"refused/{uuid.uuid4().hex}"
        assert refused(lambda: s3.put_object(Bucket=bucket, Key=key, Body=b"secret")) == (
            "ServiceUnavailable",
            503,
        )
        assert proxy.is_running()
    assert not stored(moto_s3, bucket, key)
    new_reviews = k8s.review_log[reviews_before:]
    if token_kind == "not-issued-by-kubernetes":
        # OpenBao asked, and the TokenReview said no.
        assert new_reviews and not any(r.authenticated for r in new_reviews)
    else:
        # Refused on the JWT's claims before Kubernetes is asked.
        assert new_reviews == []


def test_the_proxy_logs_in_again_and_fails_closed_once_the_jwt_is_revoked(
    openbao, moto_s3, k8s, bucket, tmp_path
):
    """Vault token gone: the proxy logs in again with its JWT. JWT revoked too: 503, no object."""
    configure_kubernetes_auth(openbao, k8s, MOUNT)
    token = k8s.issue(*BOUND_SA)
    env = kubernetes_env(moto_s3, openbao, jwt_file(tmp_path / "sa", token), MOUNT)
    # Every PUT and GET asks Vault (no DEK pool, no DEK cache): what a revocation does to them.
    env |= {"CLOUDTASER_S3PROXY_DEK_POOL_SIZE": "0", "CLOUDTASER_S3PROXY_DEK_CACHE_SIZE": "0"}
    root = openbao.client()
    with ls.start_proxy(env, tmp_path / "proxy", wait_for="healthz") as proxy:
        status, reason = wait_ready(proxy)
        assert status == 200, f"/readyz {status}: {reason}\n{proxy.log_tail(15)}"
        s3 = client_for(proxy, moto_s3)
        first = f"relogin/{uuid.uuid4().hex}"
        s3.put_object(Bucket=bucket, Key=first, Body=b"before")

        # Revoke the proxy's Vault token: the next Transit call gets 403 and logs in again.
        accessors = login_accessors(openbao, MOUNT, secret_name(token))
        assert accessors
        for accessor in accessors:
            root.auth.token.revoke_accessor(accessor)
        reviews_before = k8s.reviews
        second = f"relogin/{uuid.uuid4().hex}"
        s3.put_object(Bucket=bucket, Key=second, Body=b"after re-login")
        assert s3.get_object(Bucket=bucket, Key=first)["Body"].read() == b"before"
        assert k8s.reviews > reviews_before
        renewed = login_accessors(openbao, MOUNT, secret_name(token))
        assert renewed and not set(renewed) & set(accessors)

        # Now the service account's token is revoked in Kubernetes as well.
        k8s.revoke(token)
        for accessor in renewed:
            root.auth.token.revoke_accessor(accessor)
        third = f"relogin/{uuid.uuid4().hex}"
        assert refused(lambda: s3.put_object(Bucket=bucket, Key=third, Body=b"x")) == (
            "ServiceUnavailable",
            503,
        )
        # No DEK cache: reading ``second`` needs Vault too.
        assert refused(lambda: s3.get_object(Bucket=bucket, Key=second)) == (
            "ServiceUnavailable",
            503,
        )
    assert not stored(moto_s3, bucket, third)
    assert stored(moto_s3, bucket, second)
    assert k8s.review_log[-1].authenticated is False


def test_openbao_presents_the_reviewer_jwt_to_the_tokenreview_api(openbao, k8s):
    """With a token_reviewer_jwt Kubernetes does not accept, every login is denied."""
    mount = "k8s-bad-reviewer"
    configure_kubernetes_auth(openbao, k8s, mount, reviewer_jwt=k8s.forge(*BOUND_SA))
    client = ls._hvac_client(openbao.addr)
    unauthorized_before = k8s.unauthorized
    with pytest.raises(hvac.exceptions.Forbidden):
        client.auth.kubernetes.login(ROLE, k8s.issue(*BOUND_SA), mount_point=mount)
    assert k8s.unauthorized == unauthorized_before + 1
