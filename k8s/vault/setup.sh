#!/usr/bin/env bash
# The Vault/OpenBao side of the CloudTaser S3 proxy: the product page's "Vault Transit Setup".
# Safe to run again: what exists already is left as it is; the policies and the role are rewritten.
#
# Needs VAULT_ADDR and a token that may manage secrets engines, policies and auth roles
# (VAULT_TOKEN, or `vault login` beforehand), and the kubernetes auth method enabled and
# configured at auth/kubernetes for your cluster (see k8s/README.md, "Vault").
#
#   k8s/vault/setup.sh                                            # the sidecar example
#   SERVICE_ACCOUNTS=s3-proxy NAMESPACE=cloudtaser k8s/vault/setup.sh   # the standalone proxy
#   VAULT=bao k8s/vault/setup.sh                                  # with the OpenBao CLI
#
# NAMESPACE and SERVICE_ACCOUNTS (comma-separated) are the pods' namespace and service account(s)
# the role accepts; the defaults are the product page's (production, document-store).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

vault="${VAULT:-vault}"
namespace="${NAMESPACE:-production}"
service_accounts="${SERVICE_ACCOUNTS:-document-store}"
# The key name is also written in both .hcl files and in CLOUDTASER_S3PROXY_TRANSIT_KEY.
key=s3-dek-wrapper

# (Listings are read whole before grep looks at them: with pipefail, grep -q leaving early
# could fail the pipe.)
auth_methods="$("$vault" auth list -format=json)"
if ! grep -q '"kubernetes/"' <<<"$auth_methods"; then
    echo "setup.sh: no auth method at auth/kubernetes; enable and configure it first" \
        "(k8s/README.md, \"Vault\")" >&2
    exit 1
fi

# 1. Transit, and the key that wraps every object's data key. exportable=false and
#    allow_plaintext_backup=false: the key material can never leave Vault, not even via its API.
secrets_engines="$("$vault" secrets list -format=json)"
if ! grep -q '"transit/"' <<<"$secrets_engines"; then
    "$vault" secrets enable transit
fi
if ! "$vault" read -format=json "transit/keys/$key" >/dev/null 2>&1; then
    "$vault" write -f "transit/keys/$key" \
        type=aes256-gcm96 exportable=false allow_plaintext_backup=false
fi

# 2. The proxy's policy, and the operator's for `python -m cloudtaser_s3 rewrap`
#    (hand it out as a short-lived token: vault token create -policy=s3-proxy-rewrap -ttl=8h).
"$vault" policy write s3-proxy-policy s3-proxy-policy.hcl
"$vault" policy write s3-proxy-rewrap s3-proxy-rewrap-policy.hcl

# 3. The kubernetes auth role the proxy logs in with (VAULT_AUTH_ROLE=s3-proxy). Tokens live an
#    hour; the proxy renews them and logs in again before they expire. audience=vault: only a
#    projected service-account token made for Vault is accepted (the manifests mount one at
#    /var/run/secrets/vault/token), never the pod's default API token.
"$vault" write auth/kubernetes/role/s3-proxy \
    bound_service_account_names="$service_accounts" \
    bound_service_account_namespaces="$namespace" \
    audience=vault \
    policies=s3-proxy-policy \
    ttl=1h
