# credgate: exactly what the vault store backend calls (docs/storage.md), nothing more.
#
# Mount names are the defaults (`secret` for KV v2, `transit`);
# vault/scripts/init-vault.sh substitutes VAULT_KV_ENGINE and
# VAULT_TRANSIT_ENGINE when they differ. sys/health is unauthenticated, so
# nothing under sys/ is granted.

# Records: read the current version; write new versions with check-and-set
# ("create" for a new key, "update" for a new version of an existing one).
path "secret/data/*" {
  capabilities = ["create", "read", "update"]
}

# custom_metadata (update), LIST (list), delete a record and all its versions
# (delete). Metadata of a new key is never written before its data, so no
# "create"; no destroy/undelete paths.
path "secret/metadata/*" {
  capabilities = ["update", "delete", "list"]
}

# One Transit key per tenant (and `_credgate`): read whether it is derived,
# create it (derived) on first write. `+` is one segment, so rotate, config,
# export, trim and delete stay out of reach.
path "transit/keys/+" {
  capabilities = ["read", "update"]
}

path "transit/encrypt/+" {
  capabilities = ["update"]
}

path "transit/decrypt/+" {
  capabilities = ["update"]
}

# Moves ciphertexts to the latest key version after an operator's rotation.
path "transit/rewrap/+" {
  capabilities = ["update"]
}

# Keep credgate's own token alive; its roles issue tokens without the
# default policy.
path "auth/token/lookup-self" {
  capabilities = ["read"]
}

path "auth/token/renew-self" {
  capabilities = ["update"]
}
