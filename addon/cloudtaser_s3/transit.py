"""Vault/OpenBao Transit: wrapping and unwrapping data keys, and logging in to do so.

hvac is blocking: callers on mitmproxy's event loop go through ``asyncio.to_thread``.
Wrapping uses ``transit/encrypt/<key>`` on a locally generated DEK — one round trip, and it
works with exactly the policy on the product page (encrypt, decrypt, read key).
"""

from __future__ import annotations

import base64
import logging
import os
import re
import threading
from dataclasses import dataclass, field

import hvac
import hvac.exceptions
import requests

from .config import Settings
from .envelope import DEK_LEN

log = logging.getLogger(__name__)

VAULT_TIMEOUT_SECONDS = 10
_WRAPPED = re.compile(r"vault:v(\d+):[A-Za-z0-9+/=]+")


class VaultUnavailable(Exception):
    """Vault could not be reached or refused us; the request is retryable (503)."""


class WrappedKeyInvalid(Exception):
    """The stored wrapped DEK is malformed or Transit refuses to unwrap it."""


@dataclass(frozen=True)
class DataKey:
    plaintext: bytes = field(repr=False)
    wrapped: str
    key_version: int


def key_version_of(wrapped: str) -> int:
    """The N of ``vault:vN:...``; WrappedKeyInvalid when it is not a Transit ciphertext."""
    m = _WRAPPED.fullmatch(wrapped)
    if not m:
        raise WrappedKeyInvalid("wrapped data key is not a Transit ciphertext")
    return int(m.group(1))


class Transit:
    """One logged-in Vault client for one Transit key; thread-safe for our use."""

    def __init__(self, settings: Settings):
        self._s = settings
        self._lock = threading.Lock()
        self._client = hvac.Client(
            url=settings.vault_addr,
            verify=settings.vault_cacert or True,
            timeout=VAULT_TIMEOUT_SECONDS,
            namespace=settings.vault_namespace,
        )
        if settings.vault_auth_method == "token":
            self._client.token = settings.vault_token

    @property
    def key_name(self) -> str:
        return self._s.transit_key

    def login(self) -> None:
        """Kubernetes login with the service-account JWT; a no-op for token auth."""
        if self._s.vault_auth_method != "kubernetes":
            return
        try:
            with open(self._s.vault_k8s_jwt_path) as f:
                jwt = f.read().strip()
        except OSError as e:
            raise VaultUnavailable(
                f"cannot read the service-account token at {self._s.vault_k8s_jwt_path}: "
                f"{e.strerror}"
            ) from None
        with self._lock:
            try:
                hvac.api.auth_methods.Kubernetes(self._client.adapter).login(
                    role=self._s.vault_auth_role,
                    jwt=jwt,
                    mount_point=self._s.vault_auth_mount_path,
                )
            except (hvac.exceptions.VaultError, requests.RequestException) as e:
                raise VaultUnavailable(
                    f"Vault kubernetes login failed (auth/{self._s.vault_auth_mount_path}, role "
                    f"{self._s.vault_auth_role}): {_describe(e)}"
                ) from None

    def _call(self, fn, *args, **kwargs):
        """Run one Transit call; on a refused token log in again once (kubernetes tokens expire)."""
        for attempt in (1, 2):
            try:
                return fn(*args, **kwargs)
            except hvac.exceptions.Forbidden as e:
                if attempt == 1 and self._s.vault_auth_method == "kubernetes":
                    self.login()
                    continue
                raise VaultUnavailable(f"Vault refused the request: {_describe(e)}") from None
            except hvac.exceptions.InvalidRequest:
                raise
            except (hvac.exceptions.VaultError, requests.RequestException) as e:
                raise VaultUnavailable(f"Vault is unavailable: {_describe(e)}") from None
        raise AssertionError("unreachable")

    def new_data_key(self) -> DataKey:
        """A fresh random DEK and its Transit-wrapped form (one round trip)."""
        dek = os.urandom(DEK_LEN)
        resp = self._call(
            self._client.secrets.transit.encrypt_data,
            name=self._s.transit_key,
            plaintext=base64.b64encode(dek).decode(),
            mount_point=self._s.transit_mount,
        )
        wrapped = resp["data"]["ciphertext"]
        return DataKey(plaintext=dek, wrapped=wrapped, key_version=key_version_of(wrapped))

    def unwrap(self, wrapped: str, key_name: str) -> bytes:
        """The plaintext DEK of a stored wrapped key (one round trip)."""
        key_version_of(wrapped)
        try:
            resp = self._call(
                self._client.secrets.transit.decrypt_data,
                name=key_name,
                ciphertext=wrapped,
                mount_point=self._s.transit_mount,
            )
        except hvac.exceptions.InvalidRequest:
            raise WrappedKeyInvalid("Transit refused to unwrap the data key") from None
        dek = base64.b64decode(resp["data"]["plaintext"])
        if len(dek) != DEK_LEN:
            raise WrappedKeyInvalid("unwrapped data key has the wrong length")
        return dek

    def latest_version(self, key_name: str) -> int:
        """The Transit key's current version: what new wraps use, what rewrap moves to."""
        resp = self._call(
            self._client.secrets.transit.read_key,
            name=key_name,
            mount_point=self._s.transit_mount,
        )
        return int(resp["data"]["latest_version"])

    def rewrap(self, key_name: str, wrapped: list[str]) -> list[str]:
        """Rewrap stored DEKs with the key's latest version in one batched call (Transit
        ``rewrap``: the DEKs never leave Vault). Raises WrappedKeyInvalid naming the first
        entry Transit refused."""
        if not wrapped:
            return []
        for w in wrapped:
            key_version_of(w)
        try:
            resp = self._call(
                self._client.secrets.transit.rewrap_data,
                name=key_name,
                ciphertext="",
                batch_input=[{"ciphertext": w} for w in wrapped],
                mount_point=self._s.transit_mount,
            )
        except hvac.exceptions.InvalidRequest:
            raise WrappedKeyInvalid("Transit refused to rewrap the data keys") from None
        results = resp["data"]["batch_results"]
        out = []
        for i, r in enumerate(results):
            if r.get("error") or "ciphertext" not in r:
                raise WrappedKeyInvalid(f"Transit refused to rewrap data key #{i}")
            out.append(r["ciphertext"])
        return out

    def reachable(self) -> bool:
        """Vault answers at all (sealed or standby still counts as reachable)."""
        try:
            self._client.sys.read_health_status(method="GET")
            return True
        except requests.RequestException:
            return False
        except hvac.exceptions.VaultError:
            return True

    def readiness_problem(self) -> str | None:
        """None when the token works and the Transit key is usable, else a short reason."""
        try:
            self._call(self._client.auth.token.lookup_self)
        except VaultUnavailable as e:
            if self._s.vault_auth_method == "kubernetes":
                try:
                    self.login()
                except VaultUnavailable as e2:
                    return str(e2)
            else:
                return f"Vault token does not work: {e}"
        try:
            key = self._call(
                self._client.secrets.transit.read_key,
                name=self._s.transit_key,
                mount_point=self._s.transit_mount,
            )
        except (VaultUnavailable, hvac.exceptions.InvalidRequest) as e:
            return f"Transit key {self._s.transit_key!r} is not usable: {e}"
        if not key.get("data", {}).get("supports_encryption", True):
            return f"Transit key {self._s.transit_key!r} does not support encryption"
        return None


def _describe(e: Exception) -> str:
    """A short reason without request bodies or tokens."""
    if isinstance(e, hvac.exceptions.VaultError):
        errors = getattr(e, "errors", None)
        text = "; ".join(str(x) for x in errors) if errors else type(e).__name__
        return text[:200]
    return type(e).__name__
