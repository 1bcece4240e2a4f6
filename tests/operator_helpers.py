"""What the integration tests of the operator commands (rewrap, migrate) share: a bucket on each
store, a Transit key of one test with a token for its proxies and the operator's environment,
the real command line, and the set-up of tests that drive one object by hand."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import botocore.session
import pytest
from conftest import proxy_default_env

from cloudtaser_s3 import bucketwalk, config
from cloudtaser_s3 import localservers as ls
from cloudtaser_s3.localservers import OpenBao, ProxyProcess, S3Server
from cloudtaser_s3.transit import Transit

MiB = 2**20


@dataclass
class Rig:
    name: str  # "moto" or "seaweedfs"
    backend: S3Server
    openbao: OpenBao
    make_proxy: Callable[..., ProxyProcess]
    bucket: str
    label: str  # the test module's command, for bucket and key names

    @property
    def direct(self) -> Any:
        return self.backend.client()


def new_rig(request: pytest.FixtureRequest, openbao: OpenBao, proxy_factory: Any) -> Rig:
    """A fresh bucket on the store the fixture's param names, for a module-scoped fixture."""
    backend = request.getfixturevalue("moto_s3" if request.param == "moto" else "seaweedfs")
    label = request.module.__name__.removeprefix("test_")
    bucket = f"{label}-{uuid.uuid4().hex[:10]}"
    backend.client().create_bucket(Bucket=bucket)
    return Rig(request.param, backend, openbao, proxy_factory, bucket, label)


@dataclass
class Keyed:
    """A Transit key of one test (each rotates its own), a token for its proxies, and the
    operator's environment with a token of only the policy the docs ask for."""

    key: str
    proxy_token: str
    cli_env: dict[str, str]
    root: Any

    def rotate(self, mount: str) -> None:
        self.root.secrets.transit.rotate_key(name=self.key, mount_point=mount)

    def retire_below(self, version: int, mount: str) -> None:
        self.root.secrets.transit.update_key_configuration(
            name=self.key, min_decryption_version=version, mount_point=mount
        )


def keyed(rig: Rig, operator_policy_hcl: Callable[[str, str], str]) -> Keyed:
    """A new Transit key; ``operator_policy_hcl(key, mount)`` is the operator's policy."""
    bao, mount = rig.openbao, rig.openbao.transit_mount
    key = f"{rig.label}-{rig.name}-{uuid.uuid4().hex[:8]}"
    root = bao.client()
    root.secrets.transit.create_key(name=key, key_type="aes256-gcm96", mount_point=mount)
    root.sys.create_or_update_policy(f"proxy-{key}", ls.proxy_policy_hcl(key, mount))
    root.sys.create_or_update_policy(f"operator-{key}", operator_policy_hcl(key, mount))
    proxy_token = ls.create_policy_token(bao.addr, bao.root_token, f"proxy-{key}")
    operator_token = ls.create_policy_token(bao.addr, bao.root_token, f"operator-{key}")
    env = proxy_default_env(rig.backend, bao, operator_token)
    env["CLOUDTASER_S3PROXY_TRANSIT_KEY"] = key
    return Keyed(key, proxy_token, env, root)


def proxy_client(rig: Rig, k: Keyed, **env: str) -> Any:
    """A client of a new proxy that wraps with the test's key (``env`` overrides its settings).

    No DEK pool and no DEK cache: the operator tools' tests rotate keys and raise
    min_decryption_version, and expect the next write to use, and the next read to meet, the
    key as Vault has it now (the caches' own bounds are tested in test_vault_lifecycle.py)."""
    env = {
        "CLOUDTASER_S3PROXY_TRANSIT_KEY": k.key,
        "VAULT_TOKEN": k.proxy_token,
        "CLOUDTASER_S3PROXY_DEK_POOL_SIZE": "0",
        "CLOUDTASER_S3PROXY_DEK_CACHE_SIZE": "0",
        **env,
    }
    proxy = rig.make_proxy(rig.backend, **env)
    return proxy.client(rig.backend.access_key, rig.backend.secret_key)


def cli(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """The real command line, as an operator runs it (no terminal: progress as lines)."""
    full = ls.clean_env(
        {
            **env,
            "AWS_CONFIG_FILE": os.devnull,
            "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
            "AWS_EC2_METADATA_DISABLED": "true",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return subprocess.run(
        [sys.executable, "-m", "cloudtaser_s3", *args],
        env=full,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def summary(proc: subprocess.CompletedProcess) -> dict[str, Any]:
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


@dataclass
class ByHand:
    """What a command sets up before its walk, for a test that drives single objects."""

    settings: config.Settings
    access: bucketwalk.StoreAccess
    transit: Transit
    conditions: bucketwalk.StoreConditions

    def open_uploads(self, prefix: str) -> list[Any]:
        """Multipart uploads left under ``prefix`` (a rewrite must abort its own)."""
        client = self.access.client
        return client.list_multipart_uploads(Bucket=self.access.bucket, Prefix=prefix).get(
            "Uploads", []
        )


def by_hand(rig: Rig, k: Keyed, prefix: str) -> ByHand:
    """Settings, store access and a logged-in Transit as the command has them, and the
    store's conditions as probed under ``prefix``."""
    settings = config.from_env({**k.cli_env})
    session = botocore.session.Session()
    session.set_credentials(rig.backend.access_key, rig.backend.secret_key)
    access = bucketwalk.connect(settings, rig.bucket, 4, session)
    transit = Transit(settings)
    transit.login()
    return ByHand(settings, access, transit, bucketwalk.probe_conditions(access, prefix))
