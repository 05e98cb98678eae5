"""Contexts: ids with expiry, token-history stores, KV shard handles and their migration. To be built."""
