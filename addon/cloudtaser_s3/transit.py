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
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import hvac
import hvac.exceptions
import requests

from .config import Settings
from .envelope import DEK_LEN

log = logging.getLogger(__name__)

# (call, seconds, ok): how metrics see every Vault call without this module knowing them.
Observer = Callable[[str, float, bool], None]


def _no_observer(call: str, seconds: float, ok: bool) -> None:
    pass


_WRAPPED = re.compile(r"vault:v([0-9]{1,9}):[A-Za-z0-9+/=]+")
JWT_CHECK_SECONDS = 10.0  # how often the keeper looks for a rotated service-account token
RENEW_AT = 2 / 3  # renew when this share of the token's TTL has passed
RETRY_BASE_SECONDS = 0.2


class VaultUnavailable(Exception):
    """Vault could not be reached or refused us; the request is retryable (503)."""


class VaultRefused(VaultUnavailable):
    """Vault answered and refused the token (403): logging in again may help, retrying not."""


class WrappedKeyInvalid(Exception):
    """The stored wrapped DEK is malformed or Transit refuses to unwrap it."""


@dataclass(frozen=True)
class DataKey:
    plaintext: bytes = field(repr=False)
    wrapped: str
    key_version: int
    key_name: str = ""


@dataclass
class _Lease:
    """The current Vault token's lifetime as Vault last described it."""

    ttl: float = 0.0  # seconds granted at obtained_at; 0 = does not expire
    renewable: bool = False
    obtained_at: float = 0.0
    jwt_stamp: tuple[int, int, int] | None = None  # the JWT file's (inode, mtime_ns, size)

    def renew_due(self, now: float) -> float | None:
        """When to renew (monotonic), or None when the token never needs it."""
        if not self.ttl or not self.renewable:
            return None
        return self.obtained_at + self.ttl * RENEW_AT


def key_version_of(wrapped: str) -> int:
    """The N of ``vault:vN:...``; WrappedKeyInvalid when it is not a Transit ciphertext."""
    m = _WRAPPED.fullmatch(wrapped)
    if not m:
        raise WrappedKeyInvalid("wrapped data key is not a Transit ciphertext")
    return int(m.group(1))


def _jwt_stamp(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


class Transit:
    """One logged-in Vault client for the Transit keys; thread-safe for our use.

    Every call has a bounded timeout and a bounded number of retries (connection failures and
    5xx only). A keeper thread renews the token before it expires and logs in again when
    renewal is refused or the service-account JWT file changes (projected tokens rotate).
    """

    def __init__(self, settings: Settings, observe: Observer | None = None):
        self._s = settings
        self._lock = threading.Lock()
        self._observe = observe or _no_observer
        self._client = hvac.Client(
            url=settings.vault_addr,
            verify=settings.vault_cacert or True,
            timeout=settings.vault_timeout,
            namespace=settings.vault_namespace,
        )
        if settings.vault_auth_method == "token":
            self._client.token = settings.vault_token
        self._lease = _Lease()
        self._stop = threading.Event()
        self._keeper: threading.Thread | None = None
        self.logins = 0
        self.renewals = 0
        # The last Vault call failed (unreachable, 5xx or refused): writes must not go on from
        # keys wrapped earlier until a call succeeds again.
        self.failing = False

    @property
    def key_name(self) -> str:
        return self._s.transit_key

    def key_names(self) -> list[str]:
        """Every Transit key new objects may be wrapped with."""
        return sorted({self._s.transit_key, *(r.key for r in self._s.transit_key_map)})

    # -- authentication -------------------------------------------------------------------

    def login(self) -> None:
        """Kubernetes login with the service-account JWT; for token auth, learn whether the
        token is renewable and when it expires."""
        if self._s.vault_auth_method != "kubernetes":
            data = self._call("lookup", self._client.auth.token.lookup_self)["data"]
            self._set_lease(data.get("ttl") or 0, bool(data.get("renewable")), None)
            return
        path = self._s.vault_k8s_jwt_path
        stamp = _jwt_stamp(path)
        try:
            with open(path) as f:
                jwt = f.read().strip()
        except OSError as e:
            raise VaultUnavailable(
                f"cannot read the service-account token at {path}: {e.strerror}"
            ) from None
        with self._lock:
            started = time.monotonic()
            try:
                resp = hvac.api.auth_methods.Kubernetes(self._client.adapter).login(
                    role=self._s.vault_auth_role,
                    jwt=jwt,
                    mount_point=self._s.vault_auth_mount_path,
                )
            except (hvac.exceptions.VaultError, requests.RequestException) as e:
                self._observe("login", time.monotonic() - started, False)
                raise VaultUnavailable(
                    f"Vault kubernetes login failed (auth/{self._s.vault_auth_mount_path}, role "
                    f"{self._s.vault_auth_role}): {_describe(e)}"
                ) from None
            self._observe("login", time.monotonic() - started, True)
        auth = resp.get("auth") or {}
        self.logins += 1
        self._set_lease(auth.get("lease_duration") or 0, bool(auth.get("renewable")), stamp)
        log.info(
            "cloudtaser: logged in to Vault (role %s, token TTL %ss)",
            self._s.vault_auth_role,
            auth.get("lease_duration"),
        )

    def _set_lease(self, ttl: float, renewable: bool, stamp: tuple[int, int, int] | None) -> None:
        with self._lock:
            self._lease = _Lease(float(ttl), renewable, time.monotonic(), stamp)

    def token_ttl(self) -> float | None:
        """Seconds the current token has left as far as we know; None when it never expires."""
        lease = self._lease
        if not lease.ttl:
            return None
        return max(0.0, lease.obtained_at + lease.ttl - time.monotonic())

    def renew(self) -> None:
        """Renew the token; log in again when Vault refuses or grants too little to matter
        (the token is reaching its max TTL)."""
        wanted = self._lease.ttl
        try:
            resp = self._call("renew", self._client.auth.token.renew_self, relogin=False)
        except (VaultRefused, hvac.exceptions.InvalidRequest):
            if self._s.vault_auth_method != "kubernetes":
                raise VaultUnavailable("Vault refused to renew the token") from None
            log.info("cloudtaser: Vault refused to renew the token; logging in again")
            self.login()
            return
        auth = resp.get("auth") or {}
        granted = float(auth.get("lease_duration") or 0)
        self.renewals += 1
        if (
            self._s.vault_auth_method == "kubernetes"
            and wanted
            and granted < wanted * (1 - RENEW_AT)
        ):
            log.info("cloudtaser: Vault token is near its max TTL; logging in again")
            self.login()
            return
        self._set_lease(granted, bool(auth.get("renewable")), self._lease.jwt_stamp)
        log.info("cloudtaser: renewed the Vault token (TTL %ds)", granted)

    def start_keeper(self) -> None:
        """Keep the token alive in a background thread (after the first login)."""
        if self._keeper is None:
            self._keeper = threading.Thread(
                target=self._keep, name="cloudtaser-vault-token", daemon=True
            )
            self._keeper.start()

    def stop_keeper(self) -> None:
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join(timeout=5)

    def _keep(self) -> None:
        failures = 0
        while not self._stop.is_set():
            lease, now = self._lease, time.monotonic()
            due = lease.renew_due(now)
            wait = JWT_CHECK_SECONDS if due is None else min(JWT_CHECK_SECONDS, due - now)
            if failures:
                wait = min(wait, RETRY_BASE_SECONDS * 2 ** min(failures, 6))
            if self._stop.wait(max(0.0, wait)):
                return
            try:
                if self._jwt_rotated():
                    log.info("cloudtaser: the service-account token changed; logging in again")
                    self.login()
                elif (due := self._lease.renew_due(time.monotonic())) is not None and (
                    time.monotonic() >= due
                ):
                    self.renew()
                elif self._lease.ttl == 0 and self._s.vault_auth_method == "kubernetes":
                    self.login()  # never logged in (Vault was down at start)
                failures = 0
            except VaultUnavailable as e:
                failures += 1
                log.warning("cloudtaser: keeping the Vault token alive failed: %s", e)
            except Exception:  # the keeper must outlive anything
                failures += 1
                log.exception("cloudtaser: Vault token keeper error")

    def _jwt_rotated(self) -> bool:
        if self._s.vault_auth_method != "kubernetes" or self._lease.jwt_stamp is None:
            return False
        stamp = _jwt_stamp(self._s.vault_k8s_jwt_path)
        return stamp is not None and stamp != self._lease.jwt_stamp

    # -- calls ------------------------------------------------------------------------------

    def _call(self, call: str, fn, *args, relogin: bool = True, retry: bool = True, **kwargs):
        """Run one Vault call with bounded retries: connection failures and 5xx are retried
        (with backoff), a refused token triggers one new login (kubernetes tokens expire)."""
        relogged = False
        attempt = 0
        while True:
            started = time.monotonic()
            try:
                result = fn(*args, **kwargs)
                self._observe(call, time.monotonic() - started, True)
                self.failing = False
                return result
            except hvac.exceptions.Forbidden as e:
                self._observe(call, time.monotonic() - started, False)
                self.failing = True
                if relogin and not relogged and self._s.vault_auth_method == "kubernetes":
                    relogged = True
                    self.login()
                    continue
                raise VaultRefused(f"Vault refused the request: {_describe(e)}") from None
            except hvac.exceptions.InvalidRequest:
                self._observe(call, time.monotonic() - started, False)
                raise
            except (hvac.exceptions.VaultError, requests.RequestException) as e:
                self._observe(call, time.monotonic() - started, False)
                self.failing = True
                retryable = not isinstance(e, hvac.exceptions.VaultError) or isinstance(
                    e,
                    (
                        hvac.exceptions.InternalServerError,
                        hvac.exceptions.VaultDown,
                        hvac.exceptions.BadGateway,
                        hvac.exceptions.RateLimitExceeded,
                    ),
                )
                retries = self._s.vault_retries if retry else 0
                if retryable and attempt < retries and not self._stop.is_set():
                    time.sleep(RETRY_BASE_SECONDS * 2**attempt)
                    attempt += 1
                    continue
                raise VaultUnavailable(f"Vault is unavailable: {_describe(e)}") from None

    def new_data_key(self, key_name: str | None = None) -> DataKey:
        """A fresh random DEK and its Transit-wrapped form (one round trip)."""
        return self.new_data_keys(1, key_name)[0]

    def new_data_keys(self, count: int, key_name: str | None = None) -> list[DataKey]:
        """``count`` fresh random DEKs, generated here and wrapped in one batched round trip
        (``transit/encrypt`` with batch_input: the page's policy suffices)."""
        name = key_name or self._s.transit_key
        deks = [os.urandom(DEK_LEN) for _ in range(count)]
        batch = [{"plaintext": base64.b64encode(d).decode()} for d in deks]
        resp = self._call(
            "encrypt",
            self._client.secrets.transit.encrypt_data,
            name=name,
            batch_input=batch,
            mount_point=self._s.transit_mount,
        )
        results = resp["data"]["batch_results"]
        if len(results) != count or any(r.get("error") for r in results):
            raise VaultUnavailable("Transit did not wrap every data key of the batch")
        return [
            DataKey(d, r["ciphertext"], key_version_of(r["ciphertext"]), name)
            for d, r in zip(deks, results, strict=True)
        ]

    def unwrap(self, wrapped: str, key_name: str) -> bytes:
        """The plaintext DEK of a stored wrapped key (one round trip)."""
        key_version_of(wrapped)
        try:
            resp = self._call(
                "decrypt",
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
            "read_key",
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
                "rewrap",
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

    def check_token(self) -> None:
        """One cheap authenticated call (token lookup), so ``failing`` follows Vault even when
        no request needs it; raises VaultUnavailable."""
        self._call("lookup", self._client.auth.token.lookup_self, retry=False)

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
        """None when the token works and every Transit key is usable, else a short reason."""
        try:
            self._call("lookup", self._client.auth.token.lookup_self, retry=False)
        except VaultUnavailable as e:
            if self._s.vault_auth_method == "kubernetes":
                try:
                    self.login()
                except VaultUnavailable as e2:
                    return str(e2)
            else:
                return f"Vault token does not work: {e}"
        for name in self.key_names():
            try:
                key = self._call(
                    "read_key",
                    self._client.secrets.transit.read_key,
                    name=name,
                    mount_point=self._s.transit_mount,
                    retry=False,
                )
            except (VaultUnavailable, hvac.exceptions.InvalidRequest) as e:
                return f"Transit key {name!r} is not usable: {e}"
            if not key.get("data", {}).get("supports_encryption", True):
                return f"Transit key {name!r} does not support encryption"
        return None


def _describe(e: Exception) -> str:
    """A short reason without request bodies or tokens."""
    if isinstance(e, hvac.exceptions.VaultError):
        errors = getattr(e, "errors", None)
        text = "; ".join(str(x) for x in errors) if errors else type(e).__name__
        return text[:200]
    return type(e).__name__
