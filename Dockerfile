# CloudTaser S3 encryption proxy: the image for the sidecar and the standalone Deployment.
#
#   docker build -t cloudtaser-s3proxy .
#   docker run --read-only --tmpfs /tmp -p 8099:8099 -p 8098:8098 \
#       -e VAULT_ADDR=... -e VAULT_AUTH_METHOD=token -e VAULT_TOKEN=... \
#       -e CLOUDTASER_S3PROXY_TRANSIT_KEY=s3-dek-wrapper cloudtaser-s3proxy
#
# The entrypoint is `run.sh proxy`, the production path: the settings are validated (a missing or
# bad one stops the start with one line naming it), then the process becomes mitmdump with the
# addon. Arguments after the image name go to mitmdump. Nothing is installed at start:
# CLOUDTASER_VENV tells run.sh to use the finished virtualenv as it is.
#
# The root filesystem can be read-only: the only place written is $HOME (/tmp), where mitmproxy
# creates its confdir (/tmp/.mitmproxy) at every start; with TLS on, the listener's combined key
# and certificate go there too. Mount an in-memory emptyDir (or --tmpfs) on /tmp.
# mitmdump runs as PID 1 and handles SIGTERM itself; no init process is needed.

# Pinned to a full version tag. For reproducible builds add the digest as well:
#   python:3.13.7-slim-trixie@sha256:<digest of the tag, from your registry>
# Both stages use the same image: the virtualenv's python links to the base image's interpreter.
ARG PYTHON_IMAGE=python:3.13.7-slim-trixie

# ---------------------------------------------------------------------------------------------
# Builder: a virtualenv with the package and its dependencies, from wheels only.
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_ROOT_USER_ACTION=ignore

WORKDIR /app
RUN python -m venv /opt/venv
COPY pyproject.toml README.md ./
COPY addon/ addon/

# --only-binary: every dependency ships manylinux wheels (mitmproxy_rs, cryptography, awscrt,
# ...), so neither stage needs a compiler, and a dependency that would need one fails the build
# here instead of pulling in a toolchain. Editable (-e): the venv points at /app/addon, copied
# below as is, so the image runs exactly the files the tests ran (the mitmproxy script ships
# inside the package, cloudtaser_s3/entry/, so a regular install would work as well).
# Byte code is compiled here, since the read-only image cannot write it at start.
RUN /opt/venv/bin/pip install --only-binary=:all: -e . \
    && /opt/venv/bin/python -m compileall -q --invalidation-mode checked-hash addon

# ---------------------------------------------------------------------------------------------
# Final: the interpreter, the virtualenv, the addon and run.sh. No pip runs here, no compiler.
FROM ${PYTHON_IMAGE}

# A fixed numeric id, so Kubernetes can check runAsNonRoot (the manifests use the same id).
RUN groupadd --system --gid 10001 cloudtaser \
    && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home \
        --shell /usr/sbin/nologin cloudtaser

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
COPY run.sh /app/run.sh

# CLOUDTASER_VENV: run.sh uses this virtualenv and never installs into it.
# HOME=/tmp: mitmproxy's confdir (~/.mitmproxy) lands in the one writable mount.
ENV CLOUDTASER_VENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app
USER 10001:10001

# 8099: the S3 listener (CLOUDTASER_S3PROXY_LISTEN_ADDR); 8098: /healthz, /readyz, /metrics
# (CLOUDTASER_S3PROXY_HEALTH_ADDR). No HEALTHCHECK: Kubernetes ignores it and probes the
# health port itself (see k8s/); with plain Docker, probe http://<container>:8098/healthz.
EXPOSE 8099 8098

ENTRYPOINT ["/app/run.sh", "proxy"]
