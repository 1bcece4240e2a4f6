"""The listener's TLS certificate: checked at start, handed to mitmproxy as it wants it.

mitmproxy serves a certificate given as ``certs = ["*=<pem>"]``, one PEM file holding the private
key and the chain. Operators have them as two files (a Kubernetes ``kubernetes.io/tls`` Secret:
tls.crt and tls.key), so the proxy checks that they parse and belong together — a wrong pair
fails the start with the setting's name instead of failing every handshake — and writes the
combined file, readable by the proxy's user only, into mitmproxy's confdir. When the files
change (cert-manager renewed the Secret), the proxy loads the new pair; a broken pair is logged
and the old certificate kept.

Without a certificate the proxy refuses TLS handshakes outright (see addon.tls_start_client):
mitmproxy would otherwise answer them with a certificate made up on the fly and signed by its own
CA in ~/.mitmproxy — which no client should ever be told to trust.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .config import ConfigError

CERT_VAR = "CLOUDTASER_S3PROXY_TLS_CERT"
KEY_VAR = "CLOUDTASER_S3PROXY_TLS_KEY"
COMBINED_PREFIX = "cloudtaser-listener-"


def stamp(*paths: str) -> tuple:
    """What changes when a file is replaced (a renewed Secret swaps its files): inode, mtime
    and size of each, after following links."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
            out.append((st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def _read(variable: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(variable, f"cannot read {path}: {e.strerror}") from None


def combined_pem(cert_path: str, key_path: str) -> bytes:
    """Key and chain in one PEM, after checking that the key is the certificate's."""
    cert_pem, key_pem = _read(CERT_VAR, cert_path), _read(KEY_VAR, key_path)
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
    except ValueError:
        raise ConfigError(CERT_VAR, f"{cert_path} holds no PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError):
        raise ConfigError(KEY_VAR, f"{key_path} holds no unencrypted PEM private key") from None
    raw = serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    if chain[0].public_key().public_bytes(*raw) != key.public_key().public_bytes(*raw):
        raise ConfigError(KEY_VAR, f"{key_path} is not the key of the certificate in {cert_path}")
    key_out = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return key_out + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)


def write_listener_pem(cert_path: str, key_path: str, directory: str) -> Path:
    """Write the combined PEM (mode 0600, atomically) and return its path. The name follows the
    content, so a renewed certificate is a new file — the option mitmproxy sees changes and it
    loads the new one; older files are removed."""
    pem = combined_pem(cert_path, key_path)
    folder = Path(os.path.expanduser(directory))
    target = folder / f"{COMBINED_PREFIX}{hashlib.sha256(pem).hexdigest()[:16]}.pem"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{target.name}.{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        os.replace(tmp, target)
        for old in folder.glob(f"{COMBINED_PREFIX}*.pem"):
            if old != target:
                old.unlink(missing_ok=True)
    except OSError as e:
        raise ConfigError(
            "mitmproxy option confdir", f"cannot write the listener's key to {folder}: {e.strerror}"
        ) from None
    return target
