"""The mitmproxy addon: every S3 request through the proxy passes these hooks.

Each hook ends in exactly one of: the flow transformed (encrypted, decrypted, re-signed), an S3
error answered, or the connection closed. An exception inside a hook is caught here and turned
into an S3 error — mitmproxy's own handling would log it and forward the flow unchanged, which
for an upload means plaintext upstream.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TypeVar
from urllib.parse import quote, unquote_plus

from mitmproxy import ctx, http, tls
from mitmproxy.net.http import url as mitm_url
from OpenSSL import SSL

from . import (
    awschunked,
    config,
    copying,
    envelope,
    etags,
    headlimit,
    metrics,
    mitmaddons,
    ranges,
    requestlog,
    s3xml,
    sigv4,
    tlsfiles,
    uploads,
)
from . import layout as layout_mod
from .awschunked import ChunkedDecoder, ChunkSigning
from .checksums import PlaintextDigests, checksum_headers
from .credentials import Identities, as_botocore
from .envelope import ObjectKeyMaterial, PartSealer
from .health import CachedCheck, HealthServer
from .interrupt import INJECTED, abort_leftovers, close_both, fail_streamed_request
from .keycache import DataKeyPool, DekCache
from .layout import Layout, LayoutCache
from .refusal import RefusalResponder
from .s3errors import (
    S3Error,
    error_headers,
    error_xml,
    internal_error,
    new_request_id,
    not_implemented,
    service_unavailable,
)
from .s3request import Action, S3Request, classify, virtual_host_bucket
from .streams import (
    OpeningStream,
    PlainRangeStream,
    PlaintextGuard,
    RangeOpeningStream,
    SealingStream,
    chunk_safe,
    set_chunked,
    set_length,
)
from .transit import DataKey, Transit, VaultUnavailable, WrappedKeyInvalid
from .upstream import Head, Store

log = logging.getLogger("cloudtaser")

headlimit.install()

ACCOUNT = "cloudtaser-account"
_COUNT = re.compile(r"[0-9]{1,20}")  # a size as stores write it (str.isdigit() takes "²")
T = TypeVar("T")

STATE = "cloudtaser"
LISTINGS = ("ListObjects", "ListObjectsV2", "ListObjectVersions")
MAX_PART_LIST = 4 * 2**20
MAX_LISTING_PROBES = 200  # multipart objects whose layout one listing may ask the store for
LISTING_PROBE_CONCURRENCY = 8  # 10,000 parts with checksums fit in well under this
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
# mitmproxy options that would buffer or re-stream bodies behind our back (ENGINEERING.md).
# mitmproxy options that would let bodies past the encryption (buffered, re-streamed, passed
# through untouched, sent elsewhere, rewritten or replayed) or turn off the upstream's
# certificate check. Each must stay at its default; the start stops naming the option.
_FORBIDDEN_OPTIONS = {
    "stream_large_bodies": "it would buffer or stream bodies past the encryption",
    "body_size_limit": "it would buffer or stream bodies past the encryption",
    "store_streamed_bodies": "it would keep object bodies in memory",
    "ignore_hosts": "matching connections would pass through unencrypted",
    "allow_hosts": "other connections would pass through unencrypted",
    "tcp_hosts": "matching connections would pass through as raw TCP",
    "udp_hosts": "matching connections would pass through as raw UDP",
    "ssl_insecure": "it turns off the check of the store's certificate",
    "map_remote": "it sends requests to another server",
    "map_local": "it answers requests from local files",
    "modify_body": "it rewrites bodies outside the proxy's control",
    "modify_headers": "it rewrites headers the proxy has set or checked",
    "server_replay": "it answers with recorded responses",
    "client_replay": "it sends recorded requests",
    "anticache": "it strips the conditional headers clients send (If-None-Match and others)",
    "anticomp": "it rewrites request headers after the proxy checked them",
    "stickyauth": "it adds credentials from other requests",
    "stickycookie": "it adds cookies from other requests",
    "block_list": "it answers requests past the proxy's checks",
    "proxyauth": "clients authenticate with SigV4, in the Authorization header it would take",
    "upstream_auth": "it replaces the proxy's signature towards the store",
    "save_stream_file": "it writes every request's headers, credentials included, to disk",
    "hardump": "it writes every request's headers, credentials included, to disk",
}
# mitmproxy options that must stay on (their default).
_REQUIRED_OPTIONS = {
    "validate_inbound_headers": "without it, ambiguous framing and malformed header names "
    "reach the store verbatim",
}
_PRESIGN_PARAMS = {
    "x-amz-algorithm",
    "x-amz-credential",
    "x-amz-date",
    "x-amz-expires",
    "x-amz-signedheaders",
    "x-amz-signature",
    "x-amz-security-token",
    # SigV2 query authentication (boto3 still presigns with it in some configurations): never
    # verified here, and never forwarded beside the proxy's own signature.
    "awsaccesskeyid",
    "signature",
    "expires",
}
# The client's authentication headers: dropped before forwarding, replaced by resign()'s.
_CLIENT_AUTH_FIELDS = frozenset(name.lower().encode() for name in sigv4.RESIGN_HEADERS)
# Response headers that describe the stored ciphertext, not the object the client sees.
_CIPHERTEXT_RESPONSE_HEADERS = (
    "content-md5",
    "x-amz-checksum-crc32",
    "x-amz-checksum-crc32c",
    "x-amz-checksum-crc64nvme",
    "x-amz-checksum-sha1",
    "x-amz-checksum-sha256",
    "x-amz-checksum-type",
)


@dataclass
class Account:
    """What one request cost and carried, for its log line and the metrics."""

    started: float = field(default_factory=time.monotonic)
    vault_calls: int = 0
    bytes_in: int = 0  # body bytes from the client
    bytes_out: int = 0  # body bytes to the client
    plaintext: int = 0  # plaintext bytes the request encrypts
    error_code: str | None = None  # the S3 error the proxy answered with
    done: bool = False

    def took(self, n: int) -> None:
        self.bytes_in += n

    def gave(self, n: int) -> None:
        self.bytes_out += n


@dataclass
class FlowState:
    request: S3Request
    account: Account = field(default_factory=Account)
    access_key: str | None = None
    sealing: SealingStream | None = None
    opening: OpeningStream | PlaintextGuard | None = None
    error_body: bytes | None = None  # a response replaced by an error after its headers came
    range: ranges.ByteRange | None = None  # the client's plaintext range, on a ranged GET
    layout: Layout | None = None  # the layout the stored range was computed from
    part_number: int | None = None  # GET/HEAD ?partNumber=
    upload: tuple[uploads.UploadToken, bytes] | None = field(default=None, repr=False)
    chunked: bool = False  # the body is aws-chunked
    verified: sigv4.VerifiedRequest | None = None
    body_digests: PlaintextDigests | None = None  # a small body checked in the request hook
    notes: dict = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.request.operation} in {self.request.bucket or '-'}"


def _account(flow: http.HTTPFlow) -> Account:
    account = flow.metadata.get(ACCOUNT)
    if account is None:
        account = flow.metadata[ACCOUNT] = Account()
    return account


def _what(flow: http.HTTPFlow, state: FlowState | None) -> str:
    """A request as log lines name it: operation and bucket, never the object key (it can be
    personal data) nor the query (presigned URLs carry signatures)."""
    return state.where if state else flow.request.method


def _rejected(flow: http.HTTPFlow, error: S3Error) -> None:
    _account(flow).error_code = error.code
    metrics.rejected(error.code)


def _drop_everything(_data: bytes) -> list[bytes]:
    return []


def _signed_headers(req: http.Request) -> list[tuple[str, str]]:
    """The headers as the client signed them: HTTP/2 carries Host as :authority."""
    headers = list(req.headers.items(multi=True))
    if req.is_http2 and "host" not in req.headers and req.authority:
        headers.append(("host", req.authority))
    return headers


def _has_body(req: http.Request) -> bool:
    if "transfer-encoding" in req.headers:
        return True
    try:
        return int(req.headers.get("content-length", "0")) > 0
    except ValueError:
        return True


def _listed_entries(text: str) -> list[str]:
    return [text[start:end] for start, end in s3xml.entry_spans(text)]


def _listed_key(flow: http.HTTPFlow, key: str) -> str:
    """Listing keys are URL-encoded when the client asked for encoding-type=url."""
    if flow.request.query.get("encoding-type") == "url":
        return unquote_plus(key)
    return key


def _plain_size(stored: int) -> int:
    try:
        return envelope.plaintext_part_length(stored)
    except envelope.FormatError:
        return stored


def _strict(stream: RangeOpeningStream):
    """A range stream's feed and finish that raise instead of reporting a failure."""

    def feed(chunk: bytes) -> bytes:
        out = stream(chunk)
        if stream.failed:
            raise envelope.FormatError("the copy source range failed authentication")
        return out

    def finish() -> None:
        feed(b"")

    return feed, finish


def _b64(value: str, length: int) -> bytes:
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise envelope.FormatError("metadata is not base64") from None
    if len(raw) != length:
        raise envelope.FormatError("metadata has the wrong length")
    return raw


class CloudTaser:
    def __init__(self) -> None:
        self.settings: config.Settings | None = None
        self._base: config.Settings | None = None
        self.identities: Identities | None = None
        self.transit: Transit | None = None
        self.health: HealthServer | None = None
        self.refusals = RefusalResponder()
        self.deks = DekCache()
        self.pool: DataKeyPool | None = None
        # Vault calls wait on the network (timeouts, retries): their own threads, so an outage
        # cannot starve the default executor the store calls and probes run in.
        self.vault_threads = ThreadPoolExecutor(16, thread_name_prefix="cloudtaser-vault")
        self._keys_stop = threading.Event()
        self.draining = False  # SIGTERM came: not ready, no new connections
        self.inflight = 0  # requests between requestheaders and their end
        self._drain_task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tls_stamp: tuple = ()
        self.layouts = LayoutCache()
        self.store: Store | None = None
        self._running = False

    # ---------------------------------------------------------------- lifecycle

    def configure(self, updated: set[str]) -> None:
        try:
            self._configure()
        except config.ConfigError as e:
            # One line naming the setting, then stop: mitmproxy would print a traceback for an
            # OptionsError raised from a script. At start-up mitmproxy's errorcheck exits (code
            # 1) on the logged error; later (an option changed in mitmweb) we shut down
            # ourselves. Until then every request is refused.
            self.settings = None
            log.error("cloudtaser: configuration error: %s", e)
            if self._running:
                ctx.master.shutdown()

    def _configure(self) -> None:
        if self._base is None:
            self._base = config.from_env(os.environ)
        flags = config.MitmdumpFlags(
            tuple(ctx.options.mode), ctx.options.listen_host, ctx.options.listen_port
        )
        settings, spec = config.reconcile(self._base, flags)
        for name, why in _FORBIDDEN_OPTIONS.items():
            if getattr(ctx.options, name, None):
                raise config.ConfigError(f"mitmproxy option {name}", f"must stay unset: {why}")
        for name, why in _REQUIRED_OPTIONS.items():
            if not getattr(ctx.options, name, True):
                raise config.ConfigError(f"mitmproxy option {name}", f"must stay on: {why}")
        if self.identities is None:
            self.identities = Identities(settings)
        if self.transit is None:
            self.transit = Transit(settings, metrics.METRICS.observe_vault)
            self.deks = DekCache(settings.dek_cache_size, settings.dek_cache_ttl)
            self.pool = DataKeyPool(
                lambda n, name: self.transit.new_data_keys(n, name),  # type: ignore[union-attr]
                settings.dek_pool_size,
                settings.dek_pool_max_age,
                # No key pooled before a write asks for it: a refill is a Transit encrypt,
                # which a token allowed to upsert would answer by creating a missing key.
                (),
                healthy=lambda: not self.transit.failing,  # type: ignore[union-attr]
                check=self.transit.check_token,
            )
        self.store = Store(settings.s3_endpoint, settings.s3_region, settings.upstream_ca_bundle)
        certs = []
        self._tls_stamp = tlsfiles.stamp(*filter(None, (settings.tls_cert, settings.tls_key)))
        if settings.tls_cert and settings.tls_key:
            pem = tlsfiles.write_listener_pem(
                settings.tls_cert, settings.tls_key, ctx.options.confdir
            )
            certs = [f"*={pem}"]
        if (
            list(ctx.options.certs) != certs
            or ctx.options.ssl_verify_upstream_trusted_ca != settings.upstream_ca_bundle
        ):
            ctx.options.update(
                certs=certs, ssl_verify_upstream_trusted_ca=settings.upstream_ca_bundle
            )
        requestlog.configure_logging(settings.log_format == "json")
        self.settings = settings
        if list(ctx.options.mode) != [spec] or not ctx.options.keep_host_header:
            ctx.options.update(mode=[spec], keep_host_header=True)
        # mitmproxy 12's inactivity timeout (11.0 has a fixed 10 minutes and no option).
        idle = max(1, round(settings.upstream_timeout))
        if "tcp_timeout" in ctx.options and ctx.options.tcp_timeout != idle:
            ctx.options.update(tcp_timeout=idle)

    async def running(self) -> None:
        self._running = True
        if self.settings is None or self.transit is None:
            return
        # A script can load after mitmproxy brought its servers up with the mode it had then;
        # make the listeners match the mode configure() settled on.
        proxyserver = ctx.master.addons.get("proxyserver")
        if proxyserver is not None and not await proxyserver.setup_servers():
            log.error("cloudtaser: cannot listen on %s", self.settings.listen)
            ctx.master.shutdown()
            return
        await self.refusals.start()
        # mitmproxy's addons with nothing to do here (mitmaddons.py): each would still cost
        # every request a few microseconds per event.
        removed = await mitmaddons.remove_unused(ctx.master.addons)
        log.info("cloudtaser: mitmproxy addons not run here: %s", ", ".join(removed) or "none")
        mitmaddons.stop_legacy_log_events(ctx.master)
        transit = self.transit
        self._loop = asyncio.get_running_loop()
        for warning in config.cleartext_warnings(self.settings):
            log.warning("cloudtaser: %s", warning)
        await self._vault(self._login_quietly)
        transit.start_keeper()
        pool = self.pool
        assert pool is not None
        threading.Thread(
            target=pool.run,
            args=(self._keys_stop, self._housekeeping),
            name="cloudtaser-data-keys",
            daemon=True,
        ).start()
        checked = CachedCheck(transit.readiness_problem)

        def ready() -> str | None:
            return "shutting down" if self.draining else checked()

        with contextlib.suppress(NotImplementedError, RuntimeError):
            asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, self._on_sigterm)
        live = CachedCheck(lambda: None if transit.reachable() else "Vault is not reachable")
        try:
            self.health = HealthServer(self.settings.health, live, ready)
        except OSError as e:
            log.error(
                "cloudtaser: CLOUDTASER_S3PROXY_HEALTH_ADDR: cannot listen on %s: %s",
                self.settings.health,
                e.strerror,
            )
            ctx.master.shutdown()
            return
        self.health.start()
        log.info(
            "cloudtaser: encrypting proxy on %s -> %s (region %s), Transit key %r at %s, "
            "health on %s",
            self.settings.listen,
            self.settings.s3_endpoint,
            self.settings.s3_region,
            self.settings.transit_key,
            self.settings.vault_addr,
            self.settings.health,
        )

    def _on_sigterm(self) -> None:
        """Graceful stop (replaces mitmdump's immediate one); a second SIGTERM is immediate."""
        if self.draining:
            ctx.master.shutdown()
            return
        self.draining = True
        self._drain_task = asyncio.ensure_future(self._drain())

    async def _drain(self) -> None:
        """Not ready at once, stop accepting, let requests in flight finish within the grace
        period, then exit (0)."""
        assert self.settings is not None
        grace = self.settings.shutdown_grace
        log.info(
            "cloudtaser: SIGTERM: draining %d request(s) in flight, up to %gs",
            self.inflight,
            grace,
        )
        proxyserver = ctx.master.addons.get("proxyserver")
        if proxyserver is not None:
            await proxyserver.servers.update([])
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        while self.inflight > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if self.inflight:
            log.warning("cloudtaser: grace period over; cutting %d request(s)", self.inflight)
        else:
            log.info("cloudtaser: drained; exiting")
        ctx.master.shutdown()

    def _housekeeping(self) -> None:
        """Runs every few seconds off the event loop: expired DEKs go, the token gauge moves,
        a renewed TLS certificate is loaded."""
        self.deks.sweep()
        settings = self.settings
        renewed = (
            settings is not None
            and settings.tls_cert
            and settings.tls_key
            and tlsfiles.stamp(settings.tls_cert, settings.tls_key) != self._tls_stamp
        )
        if renewed and self._loop is not None:
            self._loop.call_soon_threadsafe(self._reload_tls)
        if self.transit is not None:
            metrics.METRICS.set_token_ttl(self.transit.token_ttl() or 0)

    def _reload_tls(self) -> None:
        """On the event loop: take the new certificate, or keep the old one and say why."""
        try:
            self._configure()
            log.info("cloudtaser: loaded the renewed TLS certificate")
        except config.ConfigError as e:
            assert self.settings is not None
            self._tls_stamp = tlsfiles.stamp(
                self.settings.tls_cert or "", self.settings.tls_key or ""
            )
            log.error("cloudtaser: keeping the current TLS certificate: %s", e)

    def _login_quietly(self) -> None:
        assert self.transit is not None
        try:
            self.transit.login()
        except VaultUnavailable as e:
            log.warning("cloudtaser: %s (will retry on demand)", e)

    async def done(self) -> None:
        self._keys_stop.set()
        if self.transit is not None:
            self.transit.stop_keeper()
        self.deks.clear()
        if self.health is not None:
            self.health.stop()
        await self.refusals.stop()

    # ---------------------------------------------------------------- TLS

    def tls_start_client(self, data: tls.TlsData) -> None:
        """Without CLOUDTASER_S3PROXY_TLS_CERT a TLS handshake is refused: mitmproxy would
        answer it with a certificate from its own CA, which no client should learn to trust.
        A context without a certificate makes the handshake fail on the spot."""
        if self.settings is not None and self.settings.tls_cert:
            return
        log.warning(
            "cloudtaser: refused a TLS handshake: no CLOUDTASER_S3PROXY_TLS_CERT is configured"
        )
        data.ssl_conn = SSL.Connection(SSL.Context(SSL.TLS_SERVER_METHOD))
        data.ssl_conn.set_accept_state()

    # ---------------------------------------------------------------- request side

    async def requestheaders(self, flow: http.HTTPFlow) -> None:
        if flow.response or flow.error or not flow.live:
            return
        flow.metadata[ACCOUNT] = Account()
        self.inflight += 1
        if self.settings is None:
            self._refuse(flow, service_unavailable("The proxy is not configured."))
            return
        try:
            await self._prepare_request(flow)
        except S3Error as e:
            self._refuse(flow, e)
        except Exception:
            log.exception("cloudtaser: request hook failed")
            self._refuse(flow, internal_error())

    def _refuse(self, flow: http.HTTPFlow, error: S3Error) -> None:
        state = flow.metadata.get(STATE)
        resource = state.request.resource if state else flow.request.path.split("?", 1)[0]
        _rejected(flow, error)
        log.info("cloudtaser: refused %s: %s (%d)", _what(flow, state), error.code, error.status)
        if not _has_body(flow.request):
            flow.response = self._error_response(error, resource)
            if self.draining:
                flow.response.headers["connection"] = "close"
            return
        try:
            self.refusals.route(flow, error, resource)
        except Exception:
            # Without the responder there is no way to answer without reading the body into
            # memory; the one safe end left is dropping the connection. A hook that raised here
            # would make mitmproxy forward the request as it came.
            log.exception("cloudtaser: cannot route a refusal; closing the connection")
            flow.kill()

    @staticmethod
    def _error_response(error: S3Error, resource: str) -> http.Response:
        request_id = new_request_id()
        body = error_xml(error, resource, request_id)
        headers = {**error_headers(request_id, len(body)), **error.headers}
        return http.Response.make(error.status, body, headers)

    async def _prepare_request(self, flow: http.HTTPFlow) -> None:
        assert self.settings is not None and self.identities is not None
        req = flow.request
        if self.settings.tls_cert and not flow.client_conn.tls_established:
            raise S3Error(
                "AccessDenied", "This proxy accepts HTTPS only (CLOUDTASER_S3PROXY_TLS_CERT).", 403
            )
        raw_path, _, raw_query = req.path.partition("?")
        signed_path = raw_path
        bucket = virtual_host_bucket(req.host_header or "", self.settings.virtual_host_domains)
        if bucket is not None:
            # Virtual-hosted style: the signature covers the path as sent; upstream gets the
            # path-style form of the same request.
            raw_path = "/" + quote(bucket, safe="") + (raw_path if raw_path != "/" else "")
            req.path = raw_path + ("?" + raw_query if raw_query else "")
        s3req = classify(req.method, raw_path, raw_query, req.headers)
        state = FlowState(s3req, account=_account(flow))
        flow.metadata[STATE] = state

        verified = None
        if self.settings.verify_signatures:
            try:
                verified = sigv4.verify(
                    req.method,
                    signed_path,
                    raw_query,
                    _signed_headers(req),
                    self.identities.secret_for,
                    datetime.now(UTC),
                )
                if verified.region != self.settings.s3_region:
                    wrong = (
                        f"the region '{verified.region}' is wrong; "
                        f"expecting '{self.settings.s3_region}'"
                    )
                    if verified.presigned:
                        raise S3Error(
                            "AuthorizationQueryParametersError",
                            "Error parsing the X-Amz-Credential parameter; " + wrong,
                            400,
                        )
                    raise S3Error(
                        "AuthorizationHeaderMalformed",
                        "The authorization header is malformed; " + wrong,
                        400,
                    )
            except S3Error as e:
                metrics.auth_failure(e.code)
                raise
            state.access_key = verified.access_key

        present = {name.lower() for name, _ in req.headers.fields}  # each lookup is a scan
        for name in etags.CONDITION_HEADERS:
            if name.encode() in present:
                req.headers[name] = etags.list_to_store(req.headers[name])
        # The proxy's own metadata is never taken from a client.
        prefix = envelope.META_PREFIX.encode()
        req.headers.fields = tuple(
            f for f in req.headers.fields if not f[0].lower().startswith(prefix)
        )

        payload_hash = req.headers.get("x-amz-content-sha256", UNSIGNED_PAYLOAD)
        state.chunked = payload_hash.startswith("STREAMING-") or "aws-chunked" in req.headers.get(
            "content-encoding", ""
        )
        state.verified = verified
        if state.chunked and s3req.action is not Action.ENCRYPT:
            raise not_implemented(f"An aws-chunked {s3req.operation} body")
        if s3req.action is Action.REFUSE:
            if s3req.operation == "InvalidBucketName":
                raise S3Error("InvalidBucketName", "The specified bucket is not valid.", 400)
            raise not_implemented(s3req.operation)
        if s3req.action is Action.COPY:
            await self._copy(flow, state)
            return
        if s3req.action is Action.ENCRYPT:
            if s3req.operation == "UploadPart":
                await self._prepare_part(flow, state)
            else:
                await self._prepare_put(flow, state)
            payload_hash = UNSIGNED_PAYLOAD
        elif s3req.action is Action.CREATE_UPLOAD:
            await self._prepare_create_upload(flow, state)
        elif s3req.action is Action.UPLOAD_ID:
            state.notes["client_upload_id"] = req.query.get("uploadId", "")
            req.query["uploadId"] = uploads.upstream_id(req.query.get("uploadId", ""))
        elif s3req.action is Action.COMPLETE_UPLOAD:
            req.query["uploadId"] = uploads.upstream_id(req.query.get("uploadId", ""))
            self._prepare_complete(req, state)
            payload_hash = UNSIGNED_PAYLOAD
        elif s3req.action in (Action.DECRYPT, Action.HEAD):
            if "partNumber" in req.query:
                try:
                    state.part_number = int(req.query["partNumber"])
                except ValueError:
                    state.part_number = 0
                if not 1 <= state.part_number <= 10000:
                    raise S3Error("InvalidArgument", "Part number must be 1 to 10000.", 400)
                if "range" in req.headers:
                    raise S3Error(
                        "InvalidRequest",
                        "Cannot specify both Range header and partNumber query parameter",
                        400,
                    )
            if "range" in req.headers:
                wanted = ranges.parse_range(req.headers["range"])
                if wanted is None or s3req.action is Action.HEAD:
                    del req.headers["range"]  # S3 serves the whole object for these too
                else:
                    state.range = wanted
                    await self._translate_range(flow, state)

        # A presigned request goes upstream signed in headers: its query authentication (checked
        # above, or not looked at on a sidecar that verifies nothing) is not forwarded.
        if raw_query and any(k.lower() in _PRESIGN_PARAMS for k in req.query):
            req.query = [
                (k, v) for k, v in req.query.items(multi=True) if k.lower() not in _PRESIGN_PARAMS
            ]
        await self._sign_upstream(flow, state, payload_hash)

    def _upload_length(self, req: http.Request, chunked: bool) -> int:
        """The plaintext length of an upload body, refused when missing or over the limit."""
        assert self.settings is not None
        if chunked:
            if "x-amz-decoded-content-length" not in req.headers:
                raise S3Error(
                    "MissingContentLength",
                    "You must provide the x-amz-decoded-content-length header with aws-chunked.",
                    411,
                )
            field_name = "x-amz-decoded-content-length"
        elif "transfer-encoding" in req.headers or "content-length" not in req.headers:
            raise S3Error(
                "MissingContentLength", "You must provide the Content-Length HTTP header.", 411
            )
        else:
            field_name = "content-length"
        try:
            length = int(req.headers[field_name])
            if length < 0:
                raise ValueError
        except ValueError:
            raise S3Error("InvalidArgument", f"{field_name} is not a number.", 400) from None
        if length > self.settings.max_object_size:
            raise S3Error(
                "EntityTooLarge",
                "Your proposed upload exceeds the maximum allowed size "
                f"(MAX_OBJECT_SIZE is {self.settings.max_object_size} bytes).",
                400,
            )
        return length

    async def _vault(self, fn: Callable[..., T], *args: object) -> T:
        """Run a blocking Vault call in the Vault threads."""
        return await asyncio.get_running_loop().run_in_executor(self.vault_threads, fn, *args)

    async def _new_data_key(self, state: FlowState) -> DataKey:
        """A DEK for a new object: from the pool of pre-wrapped keys, else one Transit call.
        The Transit key follows CLOUDTASER_S3PROXY_TRANSIT_KEYS for the object's bucket/key."""
        assert self.transit is not None and self.settings is not None and self.pool is not None
        key_name = config.transit_key_for(
            self.settings, state.request.bucket or "", state.request.key or ""
        )
        data_key = self.pool.take(key_name)
        if self.pool.enabled:
            metrics.dek_pool(data_key is not None)
        if data_key is None:
            state.account.vault_calls += 1
            try:
                data_key = await self._vault(self.transit.new_data_key, key_name)
            except VaultUnavailable as e:
                log.warning("cloudtaser: no data key for %s: %s", state.where, e)
                raise service_unavailable(
                    "The key service is unavailable; nothing was stored. Please retry."
                ) from None
        # Read-after-write is the common case: the first GET of a new object (or the parts of
        # a new upload) then needs no Transit decrypt. Same lifetime rules as an unwrapped DEK.
        self.deks.put(key_name, data_key.wrapped, data_key.plaintext)
        return data_key

    async def _unwrap(self, wrapped: str, key_name: str, state: FlowState) -> bytes:
        """The plaintext DEK for a wrapped one, from the cache or one Transit round trip."""
        assert self.transit is not None
        dek = self.deks.get(key_name, wrapped)
        metrics.dek_cache(dek is not None)
        if dek is not None:
            return dek
        state.account.vault_calls += 1
        try:
            dek = await self._vault(self.transit.unwrap, wrapped, key_name)
        except VaultUnavailable as e:
            log.warning("cloudtaser: cannot unwrap the key of %s: %s", state.where, e)
            raise service_unavailable(
                "The key service is unavailable; the object's key cannot be unwrapped now. "
                "Please retry."
            ) from None
        except WrappedKeyInvalid as e:
            raise S3Error(
                "InternalError", f"The object's data key cannot be unwrapped: {e}.", 500
            ) from None
        self.deks.put(key_name, wrapped, dek)
        return dek

    def _metadata(self, data_key: DataKey, salt: bytes) -> dict[str, str]:
        """The x-amz-meta-cloudtaser-* headers of a new object (docs/format.md)."""
        assert self.transit is not None
        return {
            envelope.META_DEK: data_key.wrapped,
            envelope.META_KEY_VERSION: str(data_key.key_version),
            envelope.META_NONCE: base64.b64encode(salt).decode(),
            envelope.META_KEY: data_key.key_name,
            envelope.META_ALG: envelope.ALG,
        }

    def _set_metadata(self, req: http.Request, data_key: DataKey, salt: bytes) -> None:
        # A client's x-amz-meta-cloudtaser-* were dropped in _prepare_request: append them.
        req.headers.fields += tuple(
            (name.encode(), value.encode())
            for name, value in self._metadata(data_key, salt).items()
        )

    def _seal_body(
        self,
        flow: http.HTTPFlow,
        state: FlowState,
        material: ObjectKeyMaterial,
        part_number: int,
        length: int,
        digests: PlaintextDigests,
    ) -> None:
        """Stream the request body upstream as one sealed part."""
        req = flow.request
        sealer = PartSealer(material, part_number, length)
        resource = state.request.resource

        def refuse_midway(error: S3Error) -> None:
            _rejected(flow, error)
            fail_streamed_request(flow, error, resource)

        state.sealing = SealingStream(
            sealer,
            digests,
            refuse_midway,
            self._chunked_decoder(req, state) if state.chunked else None,
        )
        for name in checksum_headers(req.headers.items(multi=True)):
            del req.headers[name]
        req.headers.pop("transfer-encoding", None)
        req.headers["content-length"] = str(sealer.sealed_length)
        req.stream = chunk_safe(state.sealing, count_in=state.account.took)
        state.account.plaintext += length

    def _chunked_decoder(self, req: http.Request, state: FlowState) -> ChunkedDecoder:
        """A decoder for the aws-chunked body; the framing headers do not go upstream."""
        assert self.identities is not None and self.settings is not None
        variant = req.headers.get("x-amz-content-sha256", "")
        signing = None
        v = state.verified
        if v is not None and variant in (awschunked.SIGNED, awschunked.SIGNED_TRAILER):
            secret = self.identities.secret_for(v.access_key)
            assert secret is not None
            scope_date = v.scope.split("/", 1)[0]
            signing = ChunkSigning(
                v.signature, sigv4.signing_key(secret, scope_date, v.region), v.amz_date, v.scope
            )
        decoder = ChunkedDecoder(variant, signing)
        encodings = [
            e.strip()
            for e in req.headers.get("content-encoding", "").split(",")
            if e.strip() and e.strip().lower() != "aws-chunked"
        ]
        if encodings:
            req.headers["content-encoding"] = ", ".join(encodings)
        else:
            req.headers.pop("content-encoding", None)
        for name in ("x-amz-decoded-content-length", "x-amz-trailer"):
            req.headers.pop(name, None)
        return decoder

    async def _prepare_put(self, flow: http.HTTPFlow, state: FlowState) -> None:
        req = flow.request
        length = self._upload_length(req, state.chunked)
        digests = PlaintextDigests.from_headers(req.headers)
        data_key = await self._new_data_key(state)
        assert state.request.key is not None
        salt = envelope.new_salt()
        material = ObjectKeyMaterial(data_key.plaintext, salt, state.request.key)
        self._seal_body(flow, state, material, 0, length, digests)
        self._set_metadata(req, data_key, salt)

    async def _prepare_part(self, flow: http.HTTPFlow, state: FlowState) -> None:
        req = flow.request
        try:
            part_number = int(req.query.get("partNumber", ""))
        except ValueError:
            part_number = 0
        if not 1 <= part_number <= 10000:
            raise S3Error(
                "InvalidArgument", "Part number must be an integer between 1 and 10000.", 400
            )
        length = self._upload_length(req, state.chunked)
        digests = PlaintextDigests.from_headers(req.headers)
        token, dek = await self._upload_key(req, state)
        assert state.request.key is not None
        material = ObjectKeyMaterial(dek, token.salt, state.request.key)
        self._seal_body(flow, state, material, part_number, length, digests)

    async def _upload_key(
        self, req: http.Request, state: FlowState
    ) -> tuple[uploads.UploadToken, bytes]:
        """The upload's token and DEK from the client's upload id; the query gets the store's id."""
        token = uploads.decode(req.query.get("uploadId", ""))
        if token is None:
            raise S3Error(
                "NoSuchUpload",
                "The specified multipart upload does not exist or was not started through the "
                "CloudTaser proxy, so its parts cannot be encrypted.",
                404,
            )
        dek = await self._unwrap(token.wrapped_dek, token.key_name, state)
        if not token.authentic(dek):
            raise S3Error("NoSuchUpload", "The specified upload id has been altered.", 404)
        req.query["uploadId"] = token.upstream_id
        return token, dek

    def _prepare_complete(self, req: http.Request, state: FlowState) -> None:
        """The part list is read whole (it is small) so its checksums of plaintext parts can
        be taken out; whole-object checksums describe the plaintext too and stay here."""
        try:
            length = int(req.headers.get("content-length", "0"))
        except ValueError:
            length = -1
        if not 0 <= length <= MAX_PART_LIST:
            raise S3Error("MalformedXML", "The part list is missing or too large.", 400)
        state.body_digests = PlaintextDigests.from_headers(req.headers)
        for name in checksum_headers(req.headers.items(multi=True)):
            del req.headers[name]

    async def _copy(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """CopyObject / UploadPartCopy, done by the proxy itself: read the source, open it,
        seal it under the destination's key, write it; the client gets S3's copy result."""
        assert self.store is not None and self.identities is not None
        assert self.settings is not None and state.request.key is not None
        req = flow.request
        part = state.request.operation == "UploadPartCopy"
        src = copying.parse_copy_source(req.headers.get("x-amz-copy-source", ""))
        src_state = FlowState(
            S3Request("GetObject", Action.DECRYPT, src.bucket, src.key),
            account=state.account,
            access_key=state.access_key,
        )
        head = await self._head(src_state)
        if head.status == 404:
            raise S3Error("NoSuchKey", "The specified key does not exist.", 404)
        if head.status != 200 or head.content_length is None:
            raise S3Error("AccessDenied", f"The copy source cannot be read ({head.status}).", 403)
        wanted = None
        if part and "x-amz-copy-source-range" in req.headers:
            wanted = ranges.parse_range(req.headers["x-amz-copy-source-range"])
            if wanted is None or wanted.first is None or wanted.last is None:
                raise S3Error(
                    "InvalidArgument",
                    "The x-amz-copy-source-range value must be of the form bytes=first-last.",
                    400,
                )
        get_headers = copying.source_conditions(req.headers, etags.to_store)
        etag = head.headers.get("etag", "")
        get_headers.setdefault("if-match", etag)
        alg = head.headers.get(envelope.META_ALG)
        if alg is None:
            if self.settings.plaintext_objects == "refuse":
                raise S3Error("AccessDenied", "The copy source is not encrypted.", 403)
            length = head.content_length
            span = wanted.resolve(length) if wanted else (0, length - 1)
            if span is None:
                raise S3Error("InvalidRange", "The copy source range is not satisfiable.", 416)
            if wanted:
                get_headers["range"] = f"bytes={span[0]}-{span[1]}"
            plain_length = span[1] - span[0] + 1 if length else 0

            def open_chunk(chunk: bytes) -> bytes:
                return chunk

            def finish_open() -> None:
                return None

        elif alg != envelope.ALG:
            raise S3Error("InvalidObjectState", f"Unknown CloudTaser format {alg!r}.", 409)
        else:
            layout = await self._layout(src_state, etag, head.content_length)
            material = await self._object_material(head, src_state)
            if wanted is None:
                plain_length = layout.plaintext_length
                opener = envelope.BodyOpener(material, expected_plaintext=plain_length)
                open_chunk, finish_open = opener.feed, opener.finish
            else:
                plan = ranges.plan(wanted, layout)
                if plan is None:
                    raise S3Error("InvalidRange", "The copy source range is not satisfiable.", 416)
                get_headers["range"] = plan.stored_range
                plain_length = plan.length
                open_chunk, finish_open = _strict(
                    RangeOpeningStream(plan, plan.opener(material), lambda error: None)
                )
        if plain_length > self.settings.max_object_size:
            raise S3Error("EntityTooLarge", "The copy exceeds MAX_OBJECT_SIZE.", 400)

        if part:
            part_number = int(req.query.get("partNumber", "0") or 0)
            if not 1 <= part_number <= 10000:
                raise S3Error("InvalidArgument", "Part number must be 1 to 10000.", 400)
            token, dek = await self._upload_key(req, state)
            material_dst = ObjectKeyMaterial(dek, token.salt, state.request.key)
            sealer = PartSealer(material_dst, part_number, plain_length)
            query = f"partNumber={part_number}&uploadId={quote(token.upstream_id, safe='')}"
            put_headers: dict[str, str] = {}
        else:
            data_key = await self._new_data_key(state)
            salt = envelope.new_salt()
            material_dst = ObjectKeyMaterial(data_key.plaintext, salt, state.request.key)
            sealer = PartSealer(material_dst, 0, plain_length)
            query = ""
            replace_meta = req.headers.get("x-amz-metadata-directive", "COPY").upper() == "REPLACE"
            put_headers = copying.destination_headers(req.headers, head.headers, replace_meta)
            put_headers.update(self._metadata(data_key, salt))

        creds = as_botocore(
            await asyncio.to_thread(self.identities.upstream_credentials, state.access_key)
        )
        conn, source = await asyncio.to_thread(
            self.store.open_get, src.bucket, src.key, src.query, get_headers, creds
        )
        try:
            if source.status in (304, 412):
                raise S3Error(
                    "PreconditionFailed",
                    "At least one of the pre-conditions you specified did not hold",
                    412,
                )
            if source.status not in (200, 206):
                raise S3Error("SlowDown", "The copy source changed. Please retry.", 503)
            body = copying.reencrypt(source, open_chunk, finish_open, sealer)
            status, headers, answer = await asyncio.to_thread(
                self.store.put_stream,
                state.request.bucket or "",
                state.request.key,
                query,
                put_headers,
                body,
                sealer.sealed_length,
                creds,
            )
        except envelope.FormatError as e:
            log.error("cloudtaser: copy source in %s failed authentication: %s", src.bucket, e)
            raise S3Error(
                "InternalError", "The copy source failed authentication; nothing was written.", 500
            ) from None
        except OSError as e:
            log.warning("cloudtaser: copy in %s failed: %s", state.where, e)
            raise S3Error("InternalError", "The copy failed; nothing was written.", 500) from None
        finally:
            conn.close()
        self.layouts.forget(state.request.bucket or "", state.request.key)
        if status != 200:
            flow.response = http.Response.make(
                status, answer, {"Content-Type": headers.get("content-type", "application/xml")}
            )
            return
        result = copying.result_xml(etags.to_client(headers.get("etag", "")), part)
        flow.response = http.Response.make(200, result, {"Content-Type": "application/xml"})

    async def _prepare_create_upload(self, flow: http.HTTPFlow, state: FlowState) -> None:
        req = flow.request
        data_key = await self._new_data_key(state)
        salt = envelope.new_salt()
        # A checksum algorithm set here would make the store demand matching checksums of
        # every (ciphertext) part; client checksums are checked by the proxy instead.
        for name in ("x-amz-checksum-algorithm", "x-amz-checksum-type"):
            req.headers.pop(name, None)
        self._set_metadata(req, data_key, salt)
        assert self.transit is not None
        state.upload = (
            uploads.UploadToken("", data_key.wrapped, data_key.key_name, salt),
            data_key.plaintext,
        )

    async def _sign_upstream(
        self, flow: http.HTTPFlow, state: FlowState, payload_hash: str
    ) -> None:
        assert self.settings is not None and self.identities is not None
        req = flow.request
        # One pass over the raw fields: each Headers.pop() or [name]= is a scan of its own.
        req.headers.fields = tuple(
            f for f in req.headers.fields if f[0].lower() not in _CLIENT_AUTH_FIELDS
        )
        req.host_header = mitm_url.hostport(req.scheme, req.host, req.port)
        if self.identities.refresh_needed():
            creds = await asyncio.to_thread(self.identities.upstream_credentials, state.access_key)
        else:
            creds = self.identities.upstream_credentials(state.access_key)
        signed = sigv4.resign(
            req.method,
            req.url,
            list(req.headers.items(multi=True)),
            as_botocore(creds),
            self.settings.s3_region,
            payload_hash,
        )
        # Every name resign() returns was just removed: append, do not look up.
        req.headers.fields += tuple((k.encode(), v.encode()) for k, v in signed.items())

    async def request(self, flow: http.HTTPFlow) -> None:
        """Requests whose body ended with the headers never reach the stream callable."""
        state: FlowState | None = flow.metadata.get(STATE)
        if state is None or flow.response or INJECTED in flow.metadata:
            return
        if state.body_digests is not None:
            try:
                self._check_part_list(flow, state)
            except Exception:
                log.exception("cloudtaser: checking a part list failed")
                flow.response = self._error_response(internal_error(), state.request.resource)
            return
        if state.sealing is None:
            return
        sealing = state.sealing
        if sealing.finished or sealing.failed or sealing.received:
            return
        try:
            flow.request.raw_content = sealing.finish()
        except S3Error as e:
            flow.response = self._error_response(e, state.request.resource)
        except Exception:
            log.exception("cloudtaser: sealing an empty body failed")
            flow.response = self._error_response(internal_error(), state.request.resource)

    def _check_part_list(self, flow: http.HTTPFlow, state: FlowState) -> None:
        assert state.body_digests is not None
        body = flow.request.raw_content or b""
        try:
            state.body_digests.update(body)
            state.body_digests.verify()
        except S3Error as e:
            flow.response = self._error_response(e, state.request.resource)
            return
        text = s3xml.strip_checksums(body.decode("utf-8", errors="replace"))
        flow.request.content = s3xml.map_all(text, "ETag", etags.to_store).encode("utf-8")

    # ---------------------------------------------------------------- response side

    async def responseheaders(self, flow: http.HTTPFlow) -> None:
        if self.draining and flow.response is not None:
            flow.response.headers["connection"] = "close"  # no next request on this one
        state: FlowState | None = flow.metadata.get(STATE)
        if state is None or INJECTED in flow.metadata or flow.response is None:
            return
        try:
            if "etag" in flow.response.headers:
                flow.response.headers["etag"] = etags.to_client(flow.response.headers["etag"])
            await self._prepare_response(flow, state)
        except Exception as e:
            if not isinstance(e, S3Error):
                log.exception("cloudtaser: response hook failed")
            try:
                self._replace_response(
                    flow, state, e if isinstance(e, S3Error) else internal_error()
                )
            except Exception:
                # Never let the stored body through unexamined: drop both connections.
                log.exception("cloudtaser: cannot answer with an error; closing the connection")
                close_both(flow)

    def _replace_response(self, flow: http.HTTPFlow, state: FlowState, error: S3Error) -> None:
        """Turn a response whose headers arrived into an S3 error; its body is dropped.

        Replacing ``flow.response`` here would make mitmproxy read the whole upstream body into
        the new response, so the existing one is rewritten and its body streamed away instead.
        """
        resp = flow.response
        assert resp is not None
        request_id = new_request_id()
        body = error_xml(error, state.request.resource, request_id)
        if flow.request.method == "HEAD":
            body = b""
        resp.status_code = error.status
        resp.reason = error.code
        resp.headers.clear()
        for name, value in {**error_headers(request_id, len(body)), **error.headers}.items():
            resp.headers[name] = value
        set_length(resp, len(body))
        state.error_body = body
        sent = False

        def emit_once(_data: bytes) -> bytes:
            nonlocal sent
            if sent:
                return b""
            sent = True
            return body

        resp.stream = chunk_safe(emit_once, count_out=state.account.gave)
        _rejected(flow, error)
        log.info("cloudtaser: %s answered %s", state.where, error.code)

    async def _prepare_response(self, flow: http.HTTPFlow, state: FlowState) -> None:
        assert self.settings is not None
        resp = flow.response
        assert resp is not None
        action = state.request.action
        if action not in (Action.DECRYPT, Action.HEAD, Action.ENCRYPT):
            return
        for name in _CIPHERTEXT_RESPONSE_HEADERS:
            resp.headers.pop(name, None)
        bucket, key = state.request.bucket or "", state.request.key or ""
        if action is Action.ENCRYPT:
            self.layouts.forget(bucket, key)
            return
        if state.range is not None and resp.status_code == 416:
            raise self._unsatisfiable(resp)
        if resp.status_code not in (200, 206):
            return
        offset, total = self._stored_extent(resp)
        alg = resp.headers.get(envelope.META_ALG)
        if alg is None:
            self._serve_plaintext(flow, state, (offset, total))
            return
        if alg != envelope.ALG:
            raise S3Error(
                "InvalidObjectState",
                f"The object is encrypted with an unknown CloudTaser format {alg!r}; "
                "this proxy release cannot read it.",
                409,
            )
        etag = etags.to_store(resp.headers.get("etag", ""))
        if state.layout is not None and state.layout.etag != etag:
            # The object changed between learning its layout and reading it.
            self.layouts.forget(bucket, key)
            raise S3Error("SlowDown", "The object changed while it was read. Please retry.", 503)
        if self._streams_unmeasured(state, etag):
            material = await self._object_material(resp, state)
            set_chunked(resp)
            state.opening = OpeningStream(
                envelope.BodyOpener(material), None, lambda error: close_both(flow)
            )
            resp.stream = chunk_safe(state.opening, count_out=state.account.gave)
            return
        layout = state.layout or await self._layout(state, etag, total)
        if state.part_number is not None:
            await self._serve_part(flow, state, layout, offset)
            return
        if action is Action.HEAD:
            set_length(resp, layout.plaintext_length)
            return
        material = await self._object_material(resp, state)
        on_failure = lambda error: close_both(flow)  # noqa: E731
        if state.range is None:
            set_length(resp, layout.plaintext_length)
            state.opening = OpeningStream(
                envelope.BodyOpener(material, expected_plaintext=layout.plaintext_length),
                layout.plaintext_length,
                on_failure,
            )
        else:
            plan = ranges.plan(state.range, layout, offset)
            if plan is None:
                raise self._unsatisfiable(resp, layout.plaintext_length)
            state.opening = RangeOpeningStream(plan, plan.opener(material), on_failure)
            self._as_partial(resp, plan.content_range, plan.length)
        resp.stream = chunk_safe(state.opening, count_out=state.account.gave)

    def _streams_unmeasured(self, state: FlowState, etag: str) -> bool:
        """A whole GET of a multipart object whose layout is not cached needs no request to
        the store: the part headers in the body say where parts end. Only its plaintext length
        is unknown until the end, so it goes out chunked (unless the setting asks for the
        layout first, for clients that insist on a Content-Length)."""
        assert self.settings is not None
        return (
            state.request.action is Action.DECRYPT
            and state.range is None
            and state.part_number is None
            and state.layout is None
            and self.settings.multipart_get_length == "known"
            and layout_mod.multipart_parts(etag) is not None
            and self.layouts.get(state.request.bucket or "", state.request.key or "", etag) is None
        )

    async def _serve_part(
        self, flow: http.HTTPFlow, state: FlowState, layout: Layout, offset: int
    ) -> None:
        """GET/HEAD with partNumber: the store sends one stored part, header included."""
        resp = flow.response
        assert resp is not None
        if len(layout.parts) > 1 and "content-range" not in resp.headers:
            # S3 answers 206 with the part's Content-Range; without it nothing says which
            # stored bytes these are (moto sends 200 and no range), and the proxy will not guess.
            raise S3Error(
                "NotImplemented",
                "The store did not say which part it sent; GetObject with partNumber cannot be "
                "served through this store.",
                501,
            )
        part = next((p for p in layout.parts if p.stored_offset == offset), None)
        sent = ranges.parse_content_range(resp.headers.get("content-range", ""))
        if part is None or (sent is not None and sent[1] - sent[0] + 1 != part.stored_length):
            # e.g. SeaweedFS answers partNumber=1 of a single-part object with its first chunk.
            raise S3Error(
                "NotImplemented",
                "The store's answer to partNumber is not one whole part of the object; it "
                "cannot be served through this store.",
                501,
            )
        set_length(resp, part.plain_length)
        if resp.status_code == 206 and part.plain_length:
            end = part.plain_offset + part.plain_length - 1
            resp.headers["content-range"] = (
                f"bytes {part.plain_offset}-{end}/{layout.plaintext_length}"
            )
        if state.request.action is Action.HEAD:
            return
        material = await self._object_material(resp, state)
        state.opening = OpeningStream(
            envelope.BodyOpener(material, expected_plaintext=part.plain_length),
            part.plain_length,
            lambda error: close_both(flow),
        )
        resp.stream = chunk_safe(state.opening, count_out=state.account.gave)

    async def _layout(self, state: FlowState, etag: str, total: int) -> Layout:
        """The object's part layout: trivial for a single part, else cached or asked for."""
        bucket, key = state.request.bucket or "", state.request.key or ""
        try:
            if layout_mod.multipart_parts(etag) is None:
                layout = Layout.single(etag, total)
            else:
                cached = self.layouts.get(bucket, key, etag)
                layout = cached or await self._probe_parts(state, etag, total)
        except envelope.FormatError:
            raise S3Error(
                "InternalError",
                "The stored object's length is not valid for its CloudTaser format.",
                500,
            ) from None
        self.layouts.put(bucket, key, layout)
        return layout

    async def _probe_parts(self, state: FlowState, etag: str, total: int) -> Layout:
        """Ask the store for part lengths: the first and last part, and every part only when
        those two do not explain the total (parts of unequal size)."""
        count = layout_mod.multipart_parts(etag) or 1

        # No If-Match on these: some stores (moto) answer a part HEAD with the part's own ETag.
        # An object replaced meanwhile shows up as lengths that do not add up to the total.
        async def part_length(n: int) -> int:
            head = await self._head(state, part_number=n)
            if head.status not in (200, 206) or head.content_length is None:
                raise S3Error(
                    "InternalError", f"The store did not describe part {n} ({head.status}).", 500
                )
            return head.content_length

        first = await part_length(1)
        if count == 1:
            return Layout.from_lengths(etag, [(1, total)])
        last = await part_length(count)
        guess = layout_mod.guess_regular(etag, total, count, first, last)
        if guess is not None:
            return guess
        middle = await asyncio.gather(*(part_length(n) for n in range(2, count)))
        lengths = [(1, first)] + [(n, ln) for n, ln in zip(range(2, count), middle, strict=True)]
        layout = Layout.from_lengths(etag, lengths + [(count, last)])
        if layout.stored_length != total:
            raise S3Error("SlowDown", "The object changed while it was read. Please retry.", 503)
        return layout

    async def _head(
        self, state: FlowState, part_number: int | None = None, if_match: str | None = None
    ) -> Head:
        assert self.identities is not None and self.store is not None
        creds = await asyncio.to_thread(self.identities.upstream_credentials, state.access_key)
        try:
            return await asyncio.to_thread(
                self.store.head,
                state.request.bucket or "",
                state.request.key or "",
                as_botocore(creds),
                part_number,
                if_match,
            )
        except OSError as e:
            log.warning("cloudtaser: the store did not answer a HEAD: %s", e)
            raise S3Error("ServiceUnavailable", "The store did not answer. Retry.", 503) from None

    async def _translate_range(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Ask the store for the segments that hold the client's range.

        With the object's layout known (cached, or learnt with a HEAD), the exact segments;
        for an object stored as plaintext, the range as it is.
        """
        assert state.range is not None
        req = flow.request
        bucket, key = state.request.bucket or "", state.request.key or ""
        layout = self.layouts.get(bucket, key)
        if layout is None:
            head = await self._head(state)
            if head.status != 200 or envelope.META_ALG not in head.headers:
                # Missing, refused, or not ours: let the GET itself say so, or serve plaintext.
                req.headers["range"] = ranges.stored_range_header(state.range)
                return
            if head.headers.get(envelope.META_ALG) != envelope.ALG or head.content_length is None:
                req.headers["range"] = ranges.stored_range_header(state.range)
                return
            layout = await self._layout(state, head.headers.get("etag", ""), head.content_length)
        plan = ranges.plan(state.range, layout)
        if plan is None:
            # Unsatisfiable for the layout we know: let the store's own answer decide.
            self.layouts.forget(bucket, key)
            req.headers["range"] = ranges.stored_range_header(state.range)
            return
        state.layout = layout
        req.headers["range"] = plan.stored_range

    @staticmethod
    def _stored_extent(resp: http.Response) -> tuple[int, int]:
        """(offset of the first byte in this response, total stored length)."""
        content_range = resp.headers.get("content-range")
        if resp.status_code == 206 and content_range:
            parsed = ranges.parse_content_range(content_range)
            if parsed is None:
                raise S3Error("InternalError", "The store sent an unreadable Content-Range.", 502)
            return parsed[0], parsed[2]
        try:
            return 0, int(resp.headers.get("content-length", ""))
        except ValueError:
            raise S3Error("InternalError", "The store sent no Content-Length.", 502) from None

    @staticmethod
    def _as_partial(resp: http.Response, content_range: str, length: int) -> None:
        resp.status_code = 206
        resp.reason = "Partial Content"
        resp.headers["content-range"] = content_range
        set_length(resp, length)

    @staticmethod
    def _unsatisfiable(resp: http.Response, plain_length: int | None = None) -> S3Error:
        if plain_length is None:  # the store's own 416 names the stored length
            parsed = (resp.headers.get("content-range") or "").rpartition("/")[2]
            try:
                plain_length = envelope.plaintext_part_length(int(parsed))
            except (ValueError, envelope.FormatError):
                plain_length = None
        headers = {"Content-Range": f"bytes */{plain_length}"} if plain_length else {}
        return S3Error("InvalidRange", "The requested range is not satisfiable", 416, headers)

    def _serve_plaintext(
        self, flow: http.HTTPFlow, state: FlowState, extent: tuple[int, int]
    ) -> None:
        """An object without CloudTaser metadata: serve it as stored, or refuse it."""
        assert self.settings is not None and flow.response is not None
        resp = flow.response
        if self.settings.plaintext_objects == "refuse":
            raise S3Error(
                "AccessDenied",
                "The object is not encrypted by CloudTaser and this proxy refuses "
                "plaintext objects (CLOUDTASER_S3PROXY_PLAINTEXT_OBJECTS=refuse).",
                403,
            )
        log.info(
            "cloudtaser: serving %s as stored: it has no CloudTaser metadata",
            state.request.resource,
        )
        if state.request.action is not Action.DECRYPT:
            return
        on_failure = lambda error: close_both(flow)  # noqa: E731
        guard = PlaintextGuard(on_failure)
        if state.range is None:
            state.opening = guard
        else:
            offset, total = extent
            span = state.range.resolve(total)
            if span is None:
                raise self._unsatisfiable(resp, total)
            start, end = span
            # Ciphertext that lost its metadata starts with the magic; only a range that
            # includes byte 0 can show it, so only those are checked.
            state.opening = PlainRangeStream(
                start - offset, end - start + 1, guard if start == 0 else None
            )
            self._as_partial(resp, f"bytes {start}-{end}/{total}", end - start + 1)
        resp.stream = chunk_safe(state.opening, count_out=state.account.gave)

    async def _object_material(self, resp: http.Response, state: FlowState) -> ObjectKeyMaterial:
        assert self.transit is not None and state.request.key is not None
        wrapped = resp.headers.get(envelope.META_DEK, "")
        key_name = resp.headers.get(envelope.META_KEY, "")
        try:
            salt = _b64(resp.headers.get(envelope.META_NONCE, ""), envelope.SALT_LEN)
        except envelope.FormatError:
            raise S3Error(
                "InternalError", "The object's CloudTaser nonce metadata is damaged.", 500
            ) from None
        if not key_name:
            raise S3Error("InternalError", "The object's CloudTaser key metadata is missing.", 500)
        dek = await self._unwrap(wrapped, key_name, state)
        return ObjectKeyMaterial(dek, salt, state.request.key)

    async def response(self, flow: http.HTTPFlow) -> None:
        try:
            await self._response(flow)
        finally:
            self._finish(flow, aborted=False)

    async def _response(self, flow: http.HTTPFlow) -> None:
        state: FlowState | None = flow.metadata.get(STATE)
        if state is None or flow.response is None or INJECTED in flow.metadata:
            return
        # A replaced response whose upstream body was empty never ran its stream callable.
        if state.error_body is not None:
            if not flow.response.raw_content:
                flow.response.raw_content = state.error_body
            return
        try:
            if state.request.operation in LISTINGS:
                await self._learn_listed_layouts(flow, state)
                self._rewrite_listing(flow)
            else:
                if state.request.operation == "CompleteMultipartUpload":
                    await self._learn_completed_layout(flow, state)
                self._rewrite_upload_response(flow, state)
        except Exception:
            log.exception("cloudtaser: rewriting a multipart response failed")
            flow.response = self._error_response(internal_error(), state.request.resource)

    async def _learn_listed_layouts(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Learn the layout of listed multipart objects the proxy has not seen yet (two small
        HEADs each for the usual equal-sized parts), so listings show plaintext sizes and sync
        tools do not upload unchanged files again. Bounded per listing; what is left over is
        shown at its stored size."""
        resp = flow.response
        assert resp is not None
        if resp.status_code != 200:
            return
        bucket = state.request.bucket or ""
        wanted = []
        for block in _listed_entries(resp.get_text(strict=False) or ""):
            etag, size, key = (s3xml.text_of(block, t) for t in ("ETag", "Size", "Key"))
            if etag is None or key is None or size is None or not _COUNT.fullmatch(size):
                continue
            key = _listed_key(flow, key)
            if layout_mod.multipart_parts(etag) and self.layouts.get(bucket, key, etag) is None:
                wanted.append((key, etag, int(size)))
        gate = asyncio.Semaphore(LISTING_PROBE_CONCURRENCY)

        async def learn(key: str, etag: str, size: int) -> None:
            probe = FlowState(
                S3Request("HeadObject", Action.HEAD, bucket, key),
                account=state.account,
                access_key=state.access_key,
            )
            async with gate:
                try:
                    await self._layout(probe, etag, size)
                except S3Error as e:
                    log.info("cloudtaser: layout of a listed object in %s unknown: %s", bucket, e)

        await asyncio.gather(*(learn(*w) for w in wanted[:MAX_LISTING_PROBES]))

    async def _learn_completed_layout(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Learn a new multipart object's layout while completing it (a HEAD of the object and
        one or two of its parts), so this replica's reads of it carry a Content-Length."""
        resp = flow.response
        assert resp is not None
        text = resp.get_text(strict=False) or ""
        etag = s3xml.text_of(text, "ETag")
        if resp.status_code != 200 or "<Error>" in text or etag is None:
            return
        probe = FlowState(
            S3Request("HeadObject", Action.HEAD, state.request.bucket, state.request.key),
            account=state.account,
            access_key=state.access_key,
        )
        try:
            head = await self._head(probe, if_match=etag)
            if head.status == 200 and head.content_length is not None:
                await self._layout(probe, etags.to_store(etag), head.content_length)
        except S3Error as e:
            log.info("cloudtaser: layout of an object in %s unknown: %s", state.where, e.message)

    def _rewrite_listing(self, flow: http.HTTPFlow) -> None:
        """Listings show plaintext sizes for single-part objects (so sync tools see the sizes
        they uploaded). A listing does not say which objects are encrypted: an object stored
        without the proxy is shown 44+ bytes smaller unless plaintext objects are refused
        anyway. Multipart objects show the size of their layout when the proxy knows it."""
        resp = flow.response
        assert resp is not None
        if resp.status_code != 200:
            return
        bucket = flow.metadata[STATE].request.bucket or ""

        def entry(block: str) -> str:
            etag = s3xml.text_of(block, "ETag")
            size_text = s3xml.text_of(block, "Size")
            if etag is None or size_text is None or not _COUNT.fullmatch(size_text):
                return block
            block = s3xml.replace_first(block, "ETag", etags.to_client(etag))
            if layout_mod.multipart_parts(etag) is None:
                plain = _plain_size(int(size_text))
            else:
                key = _listed_key(flow, s3xml.text_of(block, "Key") or "")
                layout = self.layouts.get(bucket, key, etag)
                if layout is None:
                    return block
                plain = layout.plaintext_length
            return s3xml.replace_first(block, "Size", str(plain))

        text = resp.get_text(strict=False) or ""
        resp.text = s3xml.map_entries(text, entry)

    def _rewrite_upload_response(self, flow: http.HTTPFlow, state: FlowState) -> None:
        """Multipart responses name the store's upload id and ciphertext sizes and checksums;
        the client sees its own upload id and plaintext sizes."""
        resp = flow.response
        assert resp is not None
        op = state.request.operation
        if resp.status_code != 200 or op not in (
            "CreateMultipartUpload",
            "ListParts",
            "CompleteMultipartUpload",
        ):
            return
        text = resp.get_text(strict=False) or ""
        if op == "CreateMultipartUpload":
            assert state.upload is not None
            token, dek = state.upload
            upstream = s3xml.text_of(text, "UploadId")
            if upstream is None:
                raise ValueError("no UploadId in CreateMultipartUpload response")
            client_id = replace(token, upstream_id=upstream).encode(dek)
            text = s3xml.replace_first(text, "UploadId", client_id)
        elif op == "ListParts":
            text = s3xml.replace_first(text, "UploadId", state.notes.get("client_upload_id", ""))
            text = s3xml.map_all(text, "Size", lambda v: str(_plain_size(int(v))))
            text = s3xml.map_all(text, "ETag", etags.to_client)
        resp.text = s3xml.strip_checksums(text)

    def error(self, flow: http.HTTPFlow) -> None:
        state: FlowState | None = flow.metadata.get(STATE)
        log.info("cloudtaser: %s failed: %s", _what(flow, state), flow.error)
        self._finish(flow, aborted=True)
        abort_leftovers(flow)

    @staticmethod
    def _forget_keys(flow: http.HTTPFlow) -> None:
        """A finished flow keeps no key material: mitmweb keeps flows, and the streams and
        the upload state hold DEKs."""
        state: FlowState | None = flow.metadata.get(STATE)
        if state is not None:
            state.upload = state.sealing = state.opening = None
        for message in (flow.request, flow.response):
            if message is not None and callable(message.stream):
                message.stream = _drop_everything  # never a pass-through, should more come

    def _finish(self, flow: http.HTTPFlow, aborted: bool) -> None:
        """Once per request: its metrics and its log line."""
        account: Account | None = flow.metadata.get(ACCOUNT)
        if account is None or account.done:
            return
        account.done = True
        self.inflight -= 1
        state: FlowState | None = flow.metadata.get(STATE)
        resp = flow.response
        status = None if resp is None else resp.status_code
        if not account.bytes_in and isinstance(flow.request.raw_content, bytes):
            account.bytes_in = len(flow.request.raw_content)
        if resp is not None and not account.bytes_out and isinstance(resp.raw_content, bytes):
            account.bytes_out = len(resp.raw_content)
        error_code = account.error_code
        if error_code is None and status is not None and status >= 400 and resp is not None:
            error_code = s3xml.text_of(resp.get_text(strict=False) or "", "Code")
        operation = state.request.operation if state else "Unknown"
        outcome = metrics.record_request(
            operation, status, aborted, time.monotonic() - account.started
        )
        if outcome == "ok" and not aborted:
            metrics.add_encrypted(account.plaintext)
            if state is not None and isinstance(state.opening, OpeningStream | RangeOpeningStream):
                metrics.add_decrypted(account.bytes_out)
        requestlog.log_request(
            requestlog.RequestRecord(
                operation=operation,
                bucket=state.request.bucket if state else None,
                status=status,
                bytes_in=account.bytes_in,
                bytes_out=account.bytes_out,
                duration_ms=round((time.monotonic() - account.started) * 1000, 1),
                vault_calls=account.vault_calls,
                outcome=outcome,
                error_code=error_code,
                client=requestlog.client_ip(flow.client_conn.peername),
            )
        )
        self._forget_keys(flow)
