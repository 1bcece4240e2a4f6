"""A small stand-in for the Kubernetes TokenReview API, so Vault's kubernetes auth runs for real.

OpenBao's kubernetes auth method (configured with ``disable_local_ca_jwt=true`` and no
``pem_keys``) handles a login like this (builtin/credential/kubernetes/path_login.go):

1. it parses the service-account JWT *without* verifying its signature (go-jose: compact JWS,
   ``alg`` one of RS/ES/PS 256/384/512, base64url JSON claims), reads the legacy claims
   ``kubernetes.io/serviceaccount/{namespace,service-account.name,service-account.uid}``
   and checks name and namespace against the role's bound lists; a token that fails here never
   reaches Kubernetes;
2. it POSTs ``{"spec": {"token": <jwt>, "audiences": <the JWT's aud>}}`` to
   ``<kubernetes_host>/apis/authentication.k8s.io/v1/tokenreviews`` over TLS verified against
   ``kubernetes_ca_cert``, with ``Authorization: Bearer <token_reviewer_jwt>``;
3. it accepts only ``status.authenticated=true`` with ``status.user.username`` of the form
   ``system:serviceaccount:<namespace>:<name>`` and ``status.user.uid`` equal to the JWT's
   claims; a 401 (bad reviewer credentials) or ``authenticated=false`` is "permission denied".

This server plays the API server's part in step 2 only, and is the single fake in the tests
that use it: the tokens it issues are real RS256 JWTs signed with its own key (``public_key_pem``
could be handed to Vault as ``pem_keys``), and it remembers which tokens it issued, so a token
it did not issue, or one revoked with ``revoke``, is not authenticated — as the real API
answers for a deleted service account or secret.

HTTPS on 127.0.0.1 with a certificate from a throw-away CA made here (``ca_pem`` is the
``kubernetes_ca_cert``), SAN IP 127.0.0.1 and DNS localhost.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import ipaddress
import json
import os
import ssl
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

LOOPBACK = "127.0.0.1"
TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"
LEGACY_ISSUER = "kubernetes/serviceaccount"
# What a real API server answers as status.audiences when the review names none.
API_AUDIENCES = ("https://kubernetes.default.svc.cluster.local",)
REVIEWER = ("kube-system", "vault-token-reviewer")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _b64url_json(obj: Any) -> str:
    return _b64url(json.dumps(obj, separators=(",", ":")).encode())


def decode_claims(token: str) -> dict[str, Any]:
    """The JWT's payload, unverified (what Vault does before asking TokenReview)."""
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


@dataclass(frozen=True)
class IssuedToken:
    namespace: str
    service_account: str
    uid: str
    audiences: tuple[str, ...] = ()

    @property
    def username(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.service_account}"


@dataclass
class Review:
    """One TokenReview the server answered (for assertions)."""

    namespace: str | None
    service_account: str | None
    authenticated: bool
    audiences: list[str] = field(default_factory=list)


def _tls_material() -> tuple[bytes, bytes, bytes]:
    """(CA cert PEM, server cert PEM, server key PEM) for 127.0.0.1, valid for a day."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test kubernetes CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    return (
        ca.public_bytes(serialization.Encoding.PEM),
        cert.public_bytes(serialization.Encoding.PEM),
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
    )


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    """A metav1.Status failure, as the API server sends with a non-2xx code."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


class TokenReviewServer:
    """HTTPS TokenReview API on 127.0.0.1:<free port> that knows the tokens it issued.

    ``url`` is the ``kubernetes_host``, ``ca_pem`` the ``kubernetes_ca_cert`` and
    ``reviewer_token`` the ``token_reviewer_jwt`` to configure Vault with. ``reviews`` counts
    the TokenReviews answered (authenticated or not); ``review_log`` holds them;
    ``unauthorized`` counts requests refused for a missing or wrong reviewer token.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._issued: dict[str, IssuedToken] = {}
        self._revoked: set[str] = set()
        self._sa_uids: dict[tuple[str, str], str] = {}
        self.review_log: list[Review] = []
        self.unauthorized = 0

        self._signing_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_der = self._signing_key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self._kid = _b64url(hashlib.sha256(public_der).digest())
        self.public_key_pem = (
            self._signing_key.public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            .decode()
        )

        ca_pem, cert_pem, key_pem = _tls_material()
        self.ca_pem = ca_pem.decode()
        self._ssl = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ssl.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory(prefix="k8s-tokenreview-") as tmp:
            cert_file, key_file = os.path.join(tmp, "tls.crt"), os.path.join(tmp, "tls.key")
            with open(cert_file, "wb") as f:
                f.write(cert_pem)
            with open(os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                f.write(key_pem)
            self._ssl.load_cert_chain(cert_file, key_file)

        self.reviewer_token = self.issue(*REVIEWER)
        self._reviewers = {self.reviewer_token}

        self._httpd = _TLSServer((LOOPBACK, 0), _handler(self), self._ssl)
        self.port: int = self._httpd.server_address[1]
        self.url = f"https://{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, name="k8s-tokenreview", daemon=True
        )
        self._thread.start()

    # ---------------------------------------------------------------- tokens

    def service_account_uid(self, namespace: str, service_account: str) -> str:
        """The service account's uid (one per namespace/name, like a real object)."""
        with self._lock:
            return self._sa_uids.setdefault((namespace, service_account), str(uuid.uuid4()))

    def issue(
        self, namespace: str, service_account: str, *, audiences: list[str] | None = None
    ) -> str:
        """A signed service-account JWT this server will authenticate until revoked.

        Without ``audiences`` it is a legacy (secret-based) token: no ``aud``, valid for the
        API server's audiences. With them, it carries ``aud`` and is valid only for those.
        """
        uid = self.service_account_uid(namespace, service_account)
        secret = f"{service_account}-token-{uuid.uuid4().hex[:5]}"
        claims: dict[str, Any] = {
            "iss": LEGACY_ISSUER,
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/secret.name": secret,
            "kubernetes.io/serviceaccount/service-account.name": service_account,
            "kubernetes.io/serviceaccount/service-account.uid": uid,
            "sub": f"system:serviceaccount:{namespace}:{service_account}",
        }
        if audiences:
            claims["aud"] = list(audiences)
        token = self._sign(claims)
        with self._lock:
            self._issued[token] = IssuedToken(
                namespace, service_account, uid, tuple(audiences or ())
            )
        return token

    def forge(self, namespace: str, service_account: str) -> str:
        """A JWT with the right claims (and the real uid) that this server never issued."""
        uid = self.service_account_uid(namespace, service_account)
        return self._sign(
            {
                "iss": LEGACY_ISSUER,
                "kubernetes.io/serviceaccount/namespace": namespace,
                "kubernetes.io/serviceaccount/service-account.name": service_account,
                "kubernetes.io/serviceaccount/service-account.uid": uid,
                "sub": f"system:serviceaccount:{namespace}:{service_account}",
            }
        )

    def revoke(self, token: str) -> None:
        """From now on the token is not authenticated (its secret was deleted)."""
        with self._lock:
            self._revoked.add(token)

    def _sign(self, claims: dict[str, Any]) -> str:
        header = {"alg": "RS256", "kid": self._kid}
        signing_input = f"{_b64url_json(header)}.{_b64url_json(claims)}"
        signature = self._signing_key.sign(
            signing_input.encode(), padding.PKCS1v15(), hashes.SHA256()
        )
        return f"{signing_input}.{_b64url(signature)}"

    # ---------------------------------------------------------------- reviews

    @property
    def reviews(self) -> int:
        with self._lock:
            return len(self.review_log)

    def authorized(self, authorization: str | None) -> bool:
        if not authorization or not authorization.startswith("Bearer "):
            return False
        bearer = authorization.removeprefix("Bearer ").strip()
        with self._lock:
            return bearer in self._reviewers and bearer not in self._revoked

    def review(self, body: dict[str, Any]) -> dict[str, Any]:
        """The TokenReview the API server would answer for ``body`` (a TokenReview)."""
        spec = body.get("spec") or {}
        token = spec.get("token") or ""
        wanted = [a for a in spec.get("audiences") or [] if a]
        with self._lock:
            issued = self._issued.get(token)
            revoked = token in self._revoked
        status: dict[str, Any] = {"user": {}}
        if issued is None or revoked:
            status["error"] = "[invalid bearer token, token lookup failed]"
            self._record(Review(None, None, False, wanted))
        else:
            # Legacy tokens are valid for the API server's own audiences; bound ones for theirs.
            token_auds = list(issued.audiences) or list(API_AUDIENCES)
            target = wanted or list(API_AUDIENCES)
            granted = [a for a in target if a in token_auds] if issued.audiences else target
            if not granted:
                status["error"] = (
                    f"[invalid bearer token, token audiences {token_auds} "
                    f"is invalid for the target audiences {target}]"
                )
                self._record(Review(issued.namespace, issued.service_account, False, wanted))
            else:
                status = {
                    "authenticated": True,
                    "user": {
                        "username": issued.username,
                        "uid": issued.uid,
                        "groups": [
                            "system:serviceaccounts",
                            f"system:serviceaccounts:{issued.namespace}",
                            "system:authenticated",
                        ],
                    },
                    "audiences": granted,
                }
                self._record(Review(issued.namespace, issued.service_account, True, wanted))
        return {
            "kind": "TokenReview",
            "apiVersion": "authentication.k8s.io/v1",
            "metadata": {"creationTimestamp": None},
            "spec": spec,
            "status": status,
        }

    def _record(self, review: Review) -> None:
        with self._lock:
            self.review_log.append(review)

    def wait_for_reviews(self, count: int, timeout: float = 5.0) -> int:
        """Wait until at least ``count`` reviews were served; return the number served."""
        deadline = time.monotonic() + timeout
        while self.reviews < count and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.reviews

    # ---------------------------------------------------------------- lifecycle

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(5)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class _TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address, handler, context: ssl.SSLContext) -> None:
        self._context = context
        super().__init__(address, handler)

    def finish_request(self, request, client_address) -> None:  # noqa: ANN001
        # The TLS handshake runs in the connection's own thread, never in the accept loop.
        request.settimeout(10)
        try:
            tls = self._context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return
        try:
            super().finish_request(tls, client_address)
        finally:
            tls.close()

    def handle_error(self, request, client_address) -> None:  # noqa: ANN001
        pass  # a client hanging up mid-request is not worth a traceback on stderr


def _handler(server: TokenReviewServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "k8s-tokenreview-standin"

        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            if self.path.split("?", 1)[0] != TOKENREVIEW_PATH:
                self._json(404, _status(404, "NotFound", "the server could not find it"))
                return
            if not server.authorized(self.headers.get("Authorization")):
                with server._lock:
                    server.unauthorized += 1
                self._json(401, _status(401, "Unauthorized", "Unauthorized"))
                return
            try:
                body = json.loads(raw)
                if not isinstance(body, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                self._json(400, _status(400, "BadRequest", f"invalid TokenReview: {e}"))
                return
            self._json(201, server.review(body))

        def do_GET(self) -> None:  # noqa: N802
            self._json(405, _status(405, "MethodNotAllowed", "only POST is served here"))

        def _json(self, code: int, obj: dict[str, Any]) -> None:
            data = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return Handler
