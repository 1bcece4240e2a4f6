"""Session fixtures: real OpenBao, moto and SeaweedFS servers, and proxies in front of them.

Servers start lazily (only when a test asks for them) and once per session; see
cloudtaser_s3.localservers for how. Start-up costs, measured: OpenBao dev ~0.5 s, moto ~1 s,
SeaweedFS ~1 s, a proxy ~2 s.

* ``openbao``: in-memory dev OpenBao with Transit, key ``s3-dek-wrapper`` and ``s3-proxy-policy``.
* ``openbao_token``: a token with only that policy, as the proxy gets in production.
* ``moto_s3``: moto's S3 (accepts any signature); ``seaweedfs``: SeaweedFS (verifies them).
* ``proxy_factory(backend, **env_overrides)``: a proxy in front of ``backend`` (an S3Server).
  Overrides are environment variables for the proxy; ``None`` removes a default. All proxies
  are stopped at the end of the session (or earlier with ``.stop()``).
* ``proxy_moto``, ``proxy_seaweedfs``: one default proxy each.
* ``s3_client(endpoint, access_key, secret_key, region)``: a boto3 client with default settings
  (import it from here or from cloudtaser_s3.localservers).

Region: us-east-1 everywhere. Both backends accept any region in a signature, and it is the one
region where CreateBucket needs no LocationConstraint (moto enforces that, as AWS does).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloudtaser_s3 import localservers as ls
from cloudtaser_s3.localservers import OpenBao, ProxyProcess, S3Server, s3_client

__all__ = ["s3_client"]

REGION = "us-east-1"
TRANSIT_KEY = ls.DEFAULT_TRANSIT_KEY

ProxyFactory = Callable[..., ProxyProcess]

# Proxies started by proxy_factory, for log tails on failures.
_PROXIES: list[ProxyProcess] = []


def pytest_configure(config: pytest.Config) -> None:
    """Keep the developer's AWS/Vault settings out of the test process.

    boto3 clients in tests would otherwise pick up e.g. ``~/.aws/config``'s addressing style or
    checksum settings, or an AWS_PROFILE. Child processes get the same treatment in
    localservers (clean_env / proxy_env).
    """
    for name in list(os.environ):
        if name.startswith(("AWS_", "VAULT_", "BAO_")):
            del os.environ[name]
    os.environ["AWS_CONFIG_FILE"] = os.devnull
    os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
    os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # noqa: ANN201
    """On a failing test, attach the tail of every running proxy's log to the report."""
    report = yield
    if report.failed and call.when == "call":
        for proxy in _PROXIES:
            if proxy.process.log_path.exists():
                report.sections.append((f"proxy {proxy.endpoint} log tail", proxy.log_tail(30)))
    return report


@pytest.fixture(scope="session")
def openbao(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OpenBao]:
    """A dev OpenBao with Transit, the ``s3-dek-wrapper`` key and ``s3-proxy-policy``."""
    bao = ls.start_openbao_dev(tmp_path_factory.mktemp("openbao"), transit_key=TRANSIT_KEY)
    yield bao
    bao.stop()


@pytest.fixture(scope="session")
def openbao_token(openbao: OpenBao) -> str:
    """A token carrying only the proxy policy (never the root token)."""
    return openbao.create_policy_token()


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server. It does not check signatures; use seaweedfs for that."""
    server = ls.start_moto(workdir=tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def seaweedfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """SeaweedFS with its S3 gateway verifying SigV4 against a random key pair."""
    server = ls.start_seaweedfs(
        tmp_path_factory.mktemp("seaweedfs"), ls.random_access_key(), ls.random_secret_key()
    )
    yield server
    server.stop()


def no_retry_client(
    proxy: ProxyProcess, backend: S3Server, secret_key: str | None = None, **config
):
    """A boto3 client through ``proxy`` with ``backend``'s key pair that tries every call once,
    so a test sees each error as the proxy gave it. ``config`` adds botocore Config settings."""
    import boto3
    from botocore.config import Config

    settings = {"retries": {"total_max_attempts": 1}, "connect_timeout": 5, "read_timeout": 30}
    return boto3.client(
        "s3",
        endpoint_url=proxy.endpoint,
        aws_access_key_id=backend.access_key,
        aws_secret_access_key=secret_key or backend.secret_key,
        region_name=REGION,
        config=Config(**{**settings, **config}),
    )


def http_status(url: str, timeout: float = 5) -> int | None:
    """The status a GET of ``url`` answers with; None when nothing answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def proxy_default_env(backend: S3Server, openbao: OpenBao, token: str) -> dict[str, str]:
    """The environment a test proxy gets before overrides."""
    return {
        "S3_ENDPOINT": backend.endpoint,
        "S3_REGION": REGION,
        "VAULT_ADDR": openbao.addr,
        "VAULT_AUTH_METHOD": "token",
        "VAULT_TOKEN": token,
        "CLOUDTASER_S3PROXY_TRANSIT_KEY": openbao.transit_key,
        "TRANSIT_MOUNT": openbao.transit_mount,
        # The upstream credentials; by default also the ones the proxy verifies clients by.
        "AWS_ACCESS_KEY_ID": backend.access_key,
        "AWS_SECRET_ACCESS_KEY": backend.secret_key,
        # Test proxies are stopped with SIGTERM often, some with a stalled request in flight.
        "CLOUDTASER_S3PROXY_SHUTDOWN_GRACE": "2s",
    }


@pytest.fixture(scope="session")
def proxy_factory(
    openbao: OpenBao, openbao_token: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProxyFactory]:
    """``make(backend, **env_overrides) -> ProxyProcess``; every proxy stops at session end.

    Example: ``proxy_factory(seaweedfs, CLOUDTASER_S3PROXY_PLAINTEXT_OBJECTS="refuse")``.
    Listen and health ports are free ones unless overridden.
    """
    started: list[ProxyProcess] = []

    def make(backend: S3Server, **env_overrides: str | None) -> ProxyProcess:
        env: dict[str, str | None] = {**proxy_default_env(backend, openbao, openbao_token)}
        env.update(env_overrides)
        workdir: Path = tmp_path_factory.mktemp(f"proxy-{backend.name}")
        proxy = ls.start_proxy(env, workdir)
        started.append(proxy)
        _PROXIES.append(proxy)
        return proxy

    yield make
    for proxy in reversed(started):
        proxy.stop()
        _PROXIES.remove(proxy)


@pytest.fixture(scope="session")
def proxy_moto(proxy_factory: ProxyFactory, moto_s3: S3Server) -> ProxyProcess:
    """A default proxy in front of moto."""
    return proxy_factory(moto_s3)


@pytest.fixture(scope="session")
def proxy_seaweedfs(proxy_factory: ProxyFactory, seaweedfs: S3Server) -> ProxyProcess:
    """A default proxy in front of SeaweedFS."""
    return proxy_factory(seaweedfs)


@dataclass
class Stack:
    """One backend with its default proxy, a client for each, and a fresh bucket."""

    name: str
    backend: S3Server
    proxy: ProxyProcess
    via: object  # boto3 client through the proxy, default settings
    direct: object  # boto3 client straight to the backend
    bucket: str


@pytest.fixture(scope="module", params=["moto", "seaweedfs"])
def stack(request: pytest.FixtureRequest) -> Stack:
    """Each test module that asks runs once against moto and once against SeaweedFS."""
    name = request.param
    backend = request.getfixturevalue("moto_s3" if name == "moto" else "seaweedfs")
    proxy = request.getfixturevalue(f"proxy_{name}")
    via = proxy.client(backend.access_key, backend.secret_key)
    bucket = f"{request.module.__name__.removeprefix('test_')[:20]}-{uuid.uuid4().hex[:10]}"
    bucket = bucket.replace("_", "-").lower()
    via.create_bucket(Bucket=bucket)
    return Stack(name, backend, proxy, via, backend.client(), bucket)
