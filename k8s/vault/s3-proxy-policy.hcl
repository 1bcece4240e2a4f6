# s3-proxy-policy: what the proxy may do in Vault/OpenBao — the product page's policy, exactly.
# Wrap new data keys (encrypt), unwrap stored ones (decrypt), read the key's metadata (its latest
# version, for readiness and key-version tracking). The key material never leaves Vault
# (exportable=false, allow_plaintext_backup=false), and this policy cannot rewrap, rotate,
# configure or delete the key. Token lookup and renewal come with Vault's `default` policy.
path "transit/encrypt/s3-dek-wrapper" {
  capabilities = ["update"]
}
path "transit/decrypt/s3-dek-wrapper" {
  capabilities = ["update"]
}
path "transit/keys/s3-dek-wrapper" {
  capabilities = ["read"]
}
