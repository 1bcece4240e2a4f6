# s3-proxy-rewrap: for the operator who runs `python -m cloudtaser_s3 rewrap` after a key
# rotation (README, "Rotation runbook"). Rewrap moves stored data keys to the key's latest
# version inside Vault — the plaintext keys never leave it — and reading the key tells which
# version is the latest. Deliberately no decrypt: this token cannot unwrap a data key, so it
# cannot read an object. Give it to a person or a one-off Job, never to the proxy.
path "transit/rewrap/s3-dek-wrapper" {
  capabilities = ["update"]
}
path "transit/keys/s3-dek-wrapper" {
  capabilities = ["read"]
}
