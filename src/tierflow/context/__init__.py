"""Contexts: ids with expiry, token-history stores, KV shard handles and their migration.

* ``ids``: unguessable context ids (``ctx_...``), API keys (``tf_...``) kept only as sha256
  hashes, constant-time comparison; ``auth``: issuing keys and resolving a key to its identity.
* ``store``: the :class:`ContextRecord` (owner, model, token history, tier -> layer spans, expiry)
  and the :class:`ContextStore` protocol with its 404 / 403 / 410 semantics;
  ``sqlite_store`` (embedded, survives restarts, secure delete) and ``redis_store`` (shared by
  several machines, Redis TTLs) implement it; ``factory.open_store`` picks one from a setting.
* ``kv``: a tier's in-memory KV shards, LRU-bounded, zero-filled whenever they are let go.

The token history is the source of truth: any tier can rebuild its KV shard from it, so a shard
may be evicted or lost with its tier, while the history lives in the store.
"""

from tierflow.context.auth import IssuedKey, authenticate, issue_key
from tierflow.context.factory import open_store
from tierflow.context.ids import hash_key, keys_equal, new_api_key, new_context_id
from tierflow.context.kv import KVShard, KVShardStore, ShardStats
from tierflow.context.redis_store import RedisContextStore
from tierflow.context.spans import format_span, parse_span
from tierflow.context.sqlite_store import SQLiteContextStore
from tierflow.context.store import ContextRecord, ContextStore, common_prefix_len

__all__ = [
    "ContextRecord",
    "ContextStore",
    "IssuedKey",
    "KVShard",
    "KVShardStore",
    "RedisContextStore",
    "SQLiteContextStore",
    "ShardStats",
    "authenticate",
    "common_prefix_len",
    "format_span",
    "hash_key",
    "issue_key",
    "keys_equal",
    "new_api_key",
    "new_context_id",
    "open_store",
    "parse_span",
]
