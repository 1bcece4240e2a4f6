"""The embedded local demo stack: ``./run.sh`` (``python -m cloudtaser_s3 devstack``) with nothing
configured.

It starts, on loopback only, a persistent OpenBao (Transit key ``s3-dek-wrapper``), SeaweedFS as
the signature-verifying S3 upstream, and the proxy in front of it, then prints the handful of
``export`` lines a user needs and waits. Ctrl-C or SIGTERM stops the three in reverse order and
exits 0.

Everything lives in ``.cloudtaser-local/`` in the repository root (or ``$CLOUDTASER_LOCAL_DIR``):
the OpenBao storage together with its unseal key, the SeaweedFS data, the S3 key pair, and the
logs. Keys and ciphertext live and die together, which is the point: deleting the folder
deletes both, and a restart can decrypt what an earlier run stored.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from . import localservers as ls

REGION = "eu-west-1"  # the product page's default S3_REGION
OPENBAO_PORT = 8200
S3_PORT = 8333
# The product page's defaults are ":8099" and ":8098" (all interfaces); the demo stays on
# loopback unless the user sets the variables.
DEFAULT_LISTEN = "127.0.0.1:8099"
DEFAULT_HEALTH = "127.0.0.1:8098"
LISTEN_VAR = "CLOUDTASER_S3PROXY_LISTEN_ADDR"
HEALTH_VAR = "CLOUDTASER_S3PROXY_HEALTH_ADDR"
TOKEN_TTL = "768h"  # OpenBao's default maximum; a fresh token is made at every start

# Proxy settings a user may still set around the demo (plaintext policy, size limit, ...).
# Vault, S3, credentials and the transit key belong to the stack and are not passed through.
PASSTHROUGH_PREFIX = "CLOUDTASER_S3PROXY_"
PASSTHROUGH_NAMES = frozenset({"MAX_OBJECT_SIZE"})
STACK_OWNED = frozenset({"CLOUDTASER_S3PROXY_TRANSIT_KEY"})

README = """\
This folder is the CloudTaser S3 proxy's local demo stack, made by `./run.sh` when no
VAULT_ADDR is configured (python -m cloudtaser_s3 devstack). Everything here is for local
experiments only; never put real data through it.

  openbao/     OpenBao storage (integrated raft) holding the Transit key that wraps every
               object's data key, plus DEMO-ONLY-unseal-key-and-root-token.json. Anyone with
               that file can decrypt everything stored through the demo.
  seaweedfs/   SeaweedFS, the local S3 server the proxy writes to: ciphertext only.
  credentials.json
               The S3 access key pair the demo's clients use (printed at every start).
  logs/        openbao.log, seaweedfs.log, proxy.log.
  proxy/       The proxy's working folder (empty AWS config files, so it never reads yours).

The keys and the ciphertext belong together. To start over, stop the stack and delete this
whole folder; deleting openbao/ alone makes everything in seaweedfs/ undecryptable for good.
"""


class _Stop(Exception):
    """SIGTERM arrived (SIGINT arrives as KeyboardInterrupt)."""


def _raise_stop(signum: int, frame: Any) -> None:
    raise _Stop(signum)


def repo_root() -> Path:
    """The repository root: the parent of the ``addon`` folder this package lives in."""
    return Path(__file__).resolve().parents[2]


def state_dir() -> Path:
    """``$CLOUDTASER_LOCAL_DIR``, else ``.cloudtaser-local`` in the repository root."""
    override = os.environ.get("CLOUDTASER_LOCAL_DIR")
    return Path(override).expanduser().resolve() if override else repo_root() / ".cloudtaser-local"


def _display(path: Path) -> str:
    """The path relative to the working directory when it is below it (shorter to read)."""
    try:
        rel = path.relative_to(Path.cwd())
    except ValueError:
        return str(path) + "/"
    return f"{rel}/" if str(rel) != "." else "./"


def _say(msg: str, stream: TextIO = sys.stderr) -> None:
    print(f"devstack: {msg}", file=stream, flush=True)


def load_or_create_credentials(path: Path) -> dict[str, str]:
    """The demo's S3 key pair, generated on first start and then kept."""
    if path.exists():
        data = json.loads(path.read_text())
        if data.get("aws_access_key_id") and data.get("aws_secret_access_key"):
            return data
    data = {
        "_note": "S3 credentials of the local CloudTaser demo stack (clients and SeaweedFS).",
        "aws_access_key_id": ls.random_access_key(),
        "aws_secret_access_key": ls.random_secret_key(),
        "region": REGION,
    }
    ls.write_private_json(path, data)
    return data


def _lock(state: Path) -> Any:
    """Hold an exclusive lock on the folder: two stacks on one folder would corrupt it."""
    f = open(state / "devstack.lock", "a+")  # noqa: SIM115 - held for the whole run
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise RuntimeError(
            f"another devstack (pid {holder}) is already running with {state}; stop it first"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _addr_from_env(var: str, default: str) -> tuple[str, str, int]:
    """(value, host to connect to, port) for a listen address setting."""
    value = os.environ.get(var) or default
    host, port = ls.split_addr(value)
    return value, ls.connect_host(host), port


def _check_proxy_ports(addrs: list[tuple[str, str, str, int]]) -> str | None:
    """An error message if a proxy port is taken (these are the ones users type in)."""
    for var, value, host, port in addrs:
        if not ls.port_is_free(port, host if host != "localhost" else ls.LOOPBACK):
            return (
                f"port {port} ({var}={value}) is already in use, perhaps by another proxy or "
                f"devstack; stop that, or choose another address, e.g. {var}=127.0.0.1:PORT"
            )
    return None


def _seaweedfs_has_data(seaweed_dir: Path) -> bool:
    """True if SeaweedFS stored any object (a volume file longer than its 8-byte superblock)."""
    data = seaweed_dir / "data"
    return data.is_dir() and any(f.stat().st_size > 8 for f in data.glob("*.dat"))


def _proxy_env(
    bao: ls.OpenBao, s3: ls.S3Server, token: str, creds: dict[str, str], listen: str, health: str
) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if (k.startswith(PASSTHROUGH_PREFIX) or k in PASSTHROUGH_NAMES) and k not in STACK_OWNED
    }
    env.update(
        {
            LISTEN_VAR: listen,
            HEALTH_VAR: health,
            "S3_ENDPOINT": s3.endpoint,
            "S3_REGION": REGION,
            "VAULT_ADDR": bao.addr,
            "VAULT_AUTH_METHOD": "token",
            "VAULT_TOKEN": token,
            "CLOUDTASER_S3PROXY_TRANSIT_KEY": bao.transit_key,
            "TRANSIT_MOUNT": bao.transit_mount,
            # The upstream credentials, and by default also those the proxy verifies clients by.
            "AWS_ACCESS_KEY_ID": creds["aws_access_key_id"],
            "AWS_SECRET_ACCESS_KEY": creds["aws_secret_access_key"],
        }
    )
    return env


def _banner(state: Path, creds: dict[str, str], endpoint_port: int, health_port: int) -> str:
    return "\n".join(
        [
            f"CloudTaser S3 proxy is running (demo stack; data in {_display(state)})",
            f"  export AWS_ENDPOINT_URL=http://localhost:{endpoint_port}",
            f"  export AWS_ACCESS_KEY_ID={creds['aws_access_key_id']}",
            f"  export AWS_SECRET_ACCESS_KEY={creds['aws_secret_access_key']}",
            f"  export AWS_REGION={REGION}",
            # boto3 and the AWS CLI read only AWS_DEFAULT_REGION; the other SDKs AWS_REGION.
            f"  export AWS_DEFAULT_REGION={REGION}",
            f"  health: http://localhost:{health_port}/healthz  "
            f"readiness: http://localhost:{health_port}/readyz",
            "  (Ctrl-C stops the stack; logs in " + _display(state / "logs") + ")",
        ]
    )


def main() -> int:
    """Run the demo stack until SIGINT/SIGTERM; 0 on a clean stop, 1 if something failed."""
    state = state_dir()
    state.mkdir(parents=True, exist_ok=True)
    os.chmod(state, 0o700)
    (state / "README.txt").write_text(README)
    logs = state / "logs"
    logs.mkdir(exist_ok=True)
    try:
        lock = _lock(state)
    except RuntimeError as e:
        _say(str(e))
        return 1

    try:
        listen, listen_host, listen_port = _addr_from_env(LISTEN_VAR, DEFAULT_LISTEN)
        health, health_host, health_port = _addr_from_env(HEALTH_VAR, DEFAULT_HEALTH)
    except ValueError as e:
        _say(f"{LISTEN_VAR} / {HEALTH_VAR}: {e} (expected e.g. 127.0.0.1:8099)")
        lock.close()
        return 1
    problem = _check_proxy_ports(
        [
            (LISTEN_VAR, listen, listen_host, listen_port),
            (HEALTH_VAR, health, health_host, health_port),
        ]
    )
    if problem:
        _say(problem)
        lock.close()
        return 1

    openbao_dir, seaweed_dir = state / "openbao", state / "seaweedfs"
    if _seaweedfs_has_data(seaweed_dir) and not (openbao_dir / ls.UNSEAL_FILE_NAME).exists():
        _say(
            f"{seaweed_dir} holds objects but the OpenBao keys that encrypted them are gone "
            f"({openbao_dir / ls.UNSEAL_FILE_NAME} is missing), so they can never be decrypted. "
            f"Delete the whole folder {state} to start over."
        )
        lock.close()
        return 1

    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _raise_stop)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    bao: ls.OpenBao | None = None
    s3: ls.S3Server | None = None
    proxy: ls.ProxyProcess | None = None
    token: str | None = None
    rc = 0
    try:
        creds = load_or_create_credentials(state / "credentials.json")
        _say("starting OpenBao ...")
        bao = ls.start_openbao_persistent(
            openbao_dir, port=OPENBAO_PORT, log_path=logs / "openbao.log"
        )
        for note in bao.notes:
            _say(note)
        _say(f"OpenBao ready at {bao.addr} ({bao.startup_seconds:.1f} s)")

        _say("starting SeaweedFS ...")
        s3 = ls.start_seaweedfs(
            seaweed_dir,
            creds["aws_access_key_id"],
            creds["aws_secret_access_key"],
            port=S3_PORT,
            fallback_to_free_port=True,
            log_path=logs / "seaweedfs.log",
        )
        for note in s3.notes:
            _say(note)
        _say(f"SeaweedFS S3 ready at {s3.endpoint} ({s3.startup_seconds:.1f} s)")

        # The proxy gets a token with the proxy policy only, as in production; never root.
        token = bao.create_policy_token(ttl=TOKEN_TTL, display_name="cloudtaser-devstack")
        if importlib.util.find_spec("cloudtaser_s3.__main__") is None:
            raise ls.ServerStartError(
                "the proxy (python -m cloudtaser_s3 proxy) is not available in this checkout"
            )
        _say("starting the proxy ...")
        try:
            proxy = ls.start_proxy(
                _proxy_env(bao, s3, token, creds, listen, health),
                state / "proxy",
                log_path=logs / "proxy.log",
            )
        except ls.ServerStartError as e:
            raise ls.ServerStartError(
                f"the proxy did not start (OpenBao and SeaweedFS did): {e}"
            ) from None
        _say(f"proxy ready ({proxy.startup_seconds:.1f} s)")
        print(_banner(state, creds, listen_port, health_port), flush=True)

        while True:
            for name, proc in (
                ("proxy", proxy.process),
                ("SeaweedFS", s3.process),
                ("OpenBao", bao.process),
            ):
                if not proc.is_running():
                    raise ls.ServerStartError(
                        f"{name} stopped unexpectedly (exit code {proc.returncode}); "
                        f"log {proc.log_path}\n{proc.log_tail()}"
                    )
            time.sleep(0.5)
    except (KeyboardInterrupt, _Stop):
        print(file=sys.stderr)
        _say("stopping ...")
    except ls.PortInUseError as e:
        _say(str(e))
        rc = 1
    except (ls.ServerStartError, FileNotFoundError, OSError) as e:
        _say(f"error: {e}")
        rc = 1
    finally:
        # Finish the shutdown even if the user presses Ctrl-C again: the children run in their
        # own sessions and would otherwise be left to the parent-death signal.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if proxy is not None:
            proxy.stop()
        if bao is not None and token is not None:
            with contextlib.suppress(Exception):
                bao.client().auth.token.revoke(token)
        if s3 is not None:
            s3.stop()
        if bao is not None:
            bao.stop()
        if proxy or s3 or bao:
            _say("stopped")
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        lock.close()
    return rc


if __name__ == "__main__":
    sys.exit(main())
