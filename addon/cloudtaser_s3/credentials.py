"""Who may call the proxy (client credentials) and who the proxy is upstream (signing identity).

Client credentials are access-key pairs the proxy verifies SigV4 signatures against: from
CLOUDTASER_S3PROXY_CLIENT_CREDENTIALS_FILE (one ``ACCESS_KEY_ID:SECRET_ACCESS_KEY`` per line, as a
Kubernetes Secret mounts it), or by default the upstream's own static credentials.

Upstream identity ``client`` re-signs with the very pair the client used, so the store still
sees who acts; ``proxy`` re-signs with botocore's standard chain (env, shared files, web
identity/IRSA, instance metadata).
"""

from __future__ import annotations

import botocore.session
from botocore.credentials import Credentials, ReadOnlyCredentials

from .config import ConfigError, Settings

CREDENTIALS_FILE_VAR = "CLOUDTASER_S3PROXY_CLIENT_CREDENTIALS_FILE"
# botocore providers whose credentials are long-lived key pairs a client can also hold.
_STATIC_METHODS = {"env", "shared-credentials-file", "config-file", "explicit"}


def parse_credentials_file(text: str) -> dict[str, str]:
    """``ACCESS_KEY_ID:SECRET`` lines; blank lines and ``#`` comments are skipped."""
    pairs: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        access_key, sep, secret = line.partition(":")
        access_key, secret = access_key.strip(), secret.strip()
        if not sep or not access_key or not secret:
            raise ConfigError(
                CREDENTIALS_FILE_VAR, f"line {number} is not ACCESS_KEY_ID:SECRET_ACCESS_KEY"
            )
        pairs[access_key] = secret
    if not pairs:
        raise ConfigError(CREDENTIALS_FILE_VAR, "the file holds no access-key pairs")
    return pairs


class Identities:
    """Client secrets by access key, and the credentials to sign upstream requests with."""

    def __init__(self, settings: Settings, session: botocore.session.Session | None = None):
        self._settings = settings
        self._session = session or botocore.session.Session()
        self._proxy_credentials = self._session.get_credentials()
        self._clients: dict[str, str] = {}
        if settings.client_credentials_file:
            try:
                with open(settings.client_credentials_file) as f:
                    text = f.read()
            except OSError as e:
                raise ConfigError(CREDENTIALS_FILE_VAR, f"cannot read it: {e.strerror}") from None
            self._clients = parse_credentials_file(text)
        elif settings.verify_signatures:
            creds = self._proxy_credentials
            if creds is None or creds.method not in _STATIC_METHODS:
                raise ConfigError(
                    CREDENTIALS_FILE_VAR,
                    "not set, and the upstream credentials are not a static key pair to use "
                    "for clients; give the clients' keys in this file",
                )
            frozen = creds.get_frozen_credentials()
            self._clients = {frozen.access_key: frozen.secret_key}
        if settings.upstream_identity == "proxy" and self._proxy_credentials is None:
            raise ConfigError(
                "CLOUDTASER_S3PROXY_UPSTREAM_IDENTITY",
                "is 'proxy' but botocore found no credentials (AWS_ACCESS_KEY_ID, shared "
                "files, web identity or instance metadata)",
            )

    def secret_for(self, access_key: str) -> str | None:
        return self._clients.get(access_key)

    def upstream_credentials(self, client_access_key: str | None) -> ReadOnlyCredentials:
        """Credentials to sign the upstream request with. May block to refresh (call off-loop)."""
        if self._settings.upstream_identity == "client" and client_access_key is not None:
            secret = self._clients[client_access_key]
            return ReadOnlyCredentials(client_access_key, secret, None)
        assert self._proxy_credentials is not None
        return self._proxy_credentials.get_frozen_credentials()

    def refresh_needed(self) -> bool:
        """True when getting proxy credentials may do I/O (refreshable and near expiry)."""
        creds = self._proxy_credentials
        if self._settings.upstream_identity != "proxy" or creds is None:
            return False
        needed = getattr(creds, "refresh_needed", None)
        return bool(needed and needed())


def as_botocore(creds: ReadOnlyCredentials) -> Credentials:
    return Credentials(creds.access_key, creds.secret_key, creds.token)
