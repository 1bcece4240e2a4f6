"""The health companion: /healthz, /readyz and /metrics on CLOUDTASER_S3PROXY_HEALTH_ADDR.

It runs in its own thread with its own tiny HTTP server, so a busy or stuck proxy event loop
cannot make probes hang, and probes never wait on the data path. Vault checks are cached for a
few seconds so aggressive probes do not turn into Vault load. /metrics never calls Vault: a
scrape must answer while Vault is down, which is when it matters; the ``cloudtaser_ready``
gauge it shows is the result of the last /readyz.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from . import metrics as metrics_mod
from .config import Address

log = logging.getLogger(__name__)

CACHE_SECONDS = 5.0

# Renders the metrics for a scraper's Accept header: (body, content type).
Renderer = Callable[[str], tuple[bytes, str]]


class CachedCheck:
    """Runs ``check`` at most once per CACHE_SECONDS; returns None (ok) or a reason."""

    def __init__(self, check: Callable[[], str | None], ttl: float = CACHE_SECONDS):
        self._check = check
        self._ttl = ttl
        self._lock = threading.Lock()
        self._at = 0.0
        self._result: str | None = "not checked yet"

    def __call__(self) -> str | None:
        with self._lock:
            if time.monotonic() - self._at >= self._ttl:
                try:
                    self._result = self._check()
                except Exception as e:  # a probe must answer, never raise
                    self._result = f"check failed: {type(e).__name__}"
                self._at = time.monotonic()
            return self._result


class HealthServer:
    def __init__(
        self,
        address: Address,
        live: Callable[[], str | None],
        ready: Callable[[], str | None],
        metrics: Renderer | None = None,
    ):
        """``metrics`` renders /metrics from the scraper's Accept header (the module's registry
        by default); ``ready``'s answer also sets the ``cloudtaser_ready`` gauge."""
        render = metrics or metrics_mod.render

        def readiness() -> str | None:
            problem = ready()
            metrics_mod.set_ready(problem is None)
            return problem

        checks = {"/healthz": live, "/readyz": readiness}

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                path = self.path.split("?", 1)[0]
                if path == "/metrics":
                    self._metrics()
                    return
                check = checks.get(path)
                if check is None:
                    self._answer(404, "not found\n")
                    return
                problem = check()
                if problem is None:
                    self._answer(200, "ok\n")
                else:
                    self._answer(503, f"{problem}\n")

            def _metrics(self) -> None:
                try:
                    body, content_type = render(self.headers.get("Accept", ""))
                except Exception:
                    log.exception("cloudtaser: rendering /metrics failed")
                    self._answer(500, "metrics unavailable\n")
                    return
                self._answer(200, body, content_type)

            def _answer(
                self,
                status: int,
                text: str | bytes,
                content_type: str = "text/plain; charset=utf-8",
            ) -> None:
                body = text.encode() if isinstance(text, str) else text
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer((address.host, address.port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="cloudtaser-health", daemon=True
        )

    @property
    def port(self) -> int:
        return self._server.server_address[1]

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
