"""The shared context store: contexts in Redis, so several machines serve the same conversations.

Layout under a key prefix (default ``tierflow:``):

* ``ctx:<id>``   a hash (owner, model, tokens as int32 bytes, spans/meta as JSON, created_at,
  expires_at) with a Redis TTL equal to the context's lifetime: Redis itself removes it at expiry.
* ``gone:<id>``  the tombstone (the owner's name only), living ``expired_grace_s`` past the expiry,
  so the owner's next call after Redis dropped the hash still hears "expired" (HTTP 410).
* ``owner:<identity>`` and ``expiry``  sorted sets of ids scored by expiry: ``list`` and
  ``purge_expired`` (which reports every expired id once, so tiers can drop its KV shards).
* ``keys``       a hash of API key sha256 -> identity.

Every read-modify-write of a context runs as one Lua script, so concurrent appends from several
processes never lose tokens and an update never recreates a hash that has just expired.
``delete`` removes all of the context's keys and index entries: nothing of it stays in Redis.
"""

from __future__ import annotations

import builtins
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis

from tierflow.context.ids import check_identity, is_key_hash
from tierflow.context.spans import check_spans
from tierflow.context.store import (
    DEFAULT_EXPIRES_IN,
    EXPIRED_GRACE_S,
    ContextRecord,
    check_expires_in,
    check_meta,
    check_tokens,
    decode_tokens,
    encode_tokens,
    expired,
    forbidden,
    new_record,
    not_found,
)
from tierflow.errors import InvalidInputError, TransportError

# Shared prologue: status 0 = no such hash, -1 = expired at ARGV[1].
_LIVE = """
local e = redis.call('HGET', KEYS[1], 'expires_at')
if not e then return {0} end
if tonumber(e) <= tonumber(ARGV[1]) then return {-1} end
"""
_APPEND = (
    _LIVE
    + """
local cur = redis.call('HGET', KEYS[1], 'tokens')
local keep = tonumber(ARGV[2])
if keep >= 0 then
  if keep > #cur then return {-2, #cur} end
  cur = string.sub(cur, 1, keep)
end
redis.call('HSET', KEYS[1], 'tokens', cur .. ARGV[3])
return {1, redis.call('HGETALL', KEYS[1])}
"""
)
_SET_FIELD = (
    _LIVE
    + """
redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
return {1, redis.call('HGETALL', KEYS[1])}
"""
)
# KEYS: ctx, gone, owner set, expiry set; ARGV: now, expires_at, ttl ms, tombstone ttl ms, id
_TOUCH = (
    _LIVE
    + """
redis.call('HSET', KEYS[1], 'expires_at', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[2], ARGV[5])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[5])
return {1, redis.call('HGETALL', KEYS[1])}
"""
)


class RedisContextStore:
    """:class:`~tierflow.context.store.ContextStore` in Redis (``redis://host:port/db``)."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "tierflow:",
        clock: Callable[[], float] = time.time,
        expired_grace_s: float = EXPIRED_GRACE_S,
        socket_timeout_s: float = 5.0,
    ) -> None:
        self.url = _redact(url)
        self._prefix = prefix
        self._clock = clock
        self._grace = expired_grace_s
        self._r: redis.Redis = redis.Redis.from_url(
            url,
            decode_responses=False,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
        )
        self._append = self._r.register_script(_APPEND)
        self._set_field = self._r.register_script(_SET_FIELD)
        self._touch = self._r.register_script(_TOUCH)

    # --- keys --------------------------------------------------------------------------------

    def _ctx(self, context_id: str) -> str:
        return f"{self._prefix}ctx:{context_id}"

    def _gone(self, context_id: str) -> str:
        return f"{self._prefix}gone:{context_id}"

    def _own(self, owner: str) -> str:
        return f"{self._prefix}owner:{owner}"

    @property
    def _exp(self) -> str:
        return f"{self._prefix}expiry"

    @property
    def _keys(self) -> str:
        return f"{self._prefix}keys"

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Redis being unreachable is the environment failing: a RecoverableError naming the server."""
        try:
            yield
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise TransportError(f"the context store at {self.url} is unreachable: {exc}") from exc

    def close(self) -> None:
        """Close the connection pool. The contexts stay in Redis."""
        self._r.close()

    def __enter__(self) -> RedisContextStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- contexts ----------------------------------------------------------------------------

    def create(
        self,
        owner: str,
        model: str,
        expires_in: float = DEFAULT_EXPIRES_IN,
        *,
        spans: Mapping[str, str] | None = None,
        tokens: Sequence[int] = (),
        meta: Mapping[str, str] | None = None,
    ) -> ContextRecord:
        """A new context with a fresh id; one MULTI/EXEC writes it, its tombstone and its index."""
        lifetime = check_expires_in(expires_in)  # the key's TTL, exactly as asked
        record = new_record(owner, model, lifetime, self._clock(), spans=spans, tokens=tokens, meta=meta)
        cid = record.context_id
        with self._guard(), self._r.pipeline(transaction=True) as pipe:
            pipe.hset(self._ctx(cid), mapping=cast(Any, _fields(record)))
            pipe.pexpire(self._ctx(cid), _ms(lifetime))
            pipe.set(self._gone(cid), owner.encode(), px=_ms(lifetime + self._grace))
            pipe.zadd(self._own(owner), {cid: record.expires_at})
            pipe.zadd(self._exp, {cid: record.expires_at})
            pipe.execute()
        return record

    def get(self, context_id: str, owner: str) -> ContextRecord:
        """The live context if it is ``owner``'s; see the protocol for the errors."""
        with self._guard():
            raw = cast(dict[bytes, bytes], self._r.hgetall(self._ctx(context_id)))
            if not raw:
                raise self._missing(context_id, owner)
            record = _record(context_id, raw)
            if record.owner != owner:
                raise forbidden(context_id)
            if record.expired(self._clock()):
                self._forget(context_id, record.owner)
                raise expired(context_id)
            return record

    def append_tokens(
        self, context_id: str, tokens: Sequence[int], *, keep: int | None = None
    ) -> ContextRecord:
        """Truncate to ``keep`` (if given) and append, atomically in one script."""
        new = encode_tokens(check_tokens(tokens))
        if keep is not None and keep < 0:
            raise InvalidInputError(f"keep={keep} is negative")
        keep_bytes = -1 if keep is None else 4 * keep
        return self._run(self._append, [self._ctx(context_id)], [keep_bytes, new], context_id)

    def set_spans(self, context_id: str, spans: Mapping[str, str]) -> ContextRecord:
        """Replace the tier -> span map."""
        checked = json.dumps(check_spans(dict(spans)))
        return self._run(self._set_field, [self._ctx(context_id)], ["spans", checked], context_id)

    def set_meta(self, context_id: str, meta: Mapping[str, str]) -> ContextRecord:
        """Replace the meta map."""
        checked = json.dumps(check_meta(meta))
        return self._run(self._set_field, [self._ctx(context_id)], ["meta", checked], context_id)

    def touch(self, context_id: str, expires_in: float = DEFAULT_EXPIRES_IN) -> ContextRecord:
        """Move the expiry (and the Redis TTLs) to ``expires_in`` seconds from now."""
        lifetime = check_expires_in(expires_in)
        with self._guard():
            owner = self._r.hget(self._ctx(context_id), "owner")
            if owner is None:
                raise self._missing(context_id, None)
            expires_at = self._clock() + lifetime
            keys = [self._ctx(context_id), self._gone(context_id), self._own(_text(owner)), self._exp]
            args: list[Any] = [repr(expires_at), _ms(lifetime), _ms(lifetime + self._grace), context_id]
            return self._run(self._touch, keys, args, context_id)

    def delete(self, context_id: str) -> bool:
        """Remove the hash, the tombstone and the index entries."""
        with self._guard():
            owner = self._r.hget(self._ctx(context_id), "owner") or self._r.get(self._gone(context_id))
            return self._forget(context_id, None if owner is None else _text(owner)) > 0

    def list(self, owner: str) -> builtins.list[ContextRecord]:
        """``owner``'s unexpired contexts, oldest first."""
        now = self._clock()
        with self._guard():
            ids = [_text(m) for m in self._r.zrangebyscore(self._own(owner), f"({now!r}", "+inf")]
            with self._r.pipeline(transaction=False) as pipe:
                for cid in ids:
                    pipe.hgetall(self._ctx(cid))
                raws = pipe.execute()
        records = [_record(cid, raw) for cid, raw in zip(ids, raws, strict=True) if raw]
        mine = [r for r in records if r.owner == owner and not r.expired(now)]
        return sorted(mine, key=lambda r: r.created_at)

    def purge_expired(self, now: float | None = None) -> builtins.list[str]:
        """Report (once, across every machine) and clean up each context expired at ``now``."""
        at = self._clock() if now is None else now
        purged: list[str] = []
        with self._guard():
            for member in self._r.zrangebyscore(self._exp, "-inf", repr(at)):
                cid = _text(member)
                if not self._r.zrem(self._exp, cid):
                    continue  # another process purged it first
                owner = self._r.get(self._gone(cid)) or self._r.hget(self._ctx(cid), "owner")
                with self._r.pipeline(transaction=True) as pipe:
                    pipe.delete(self._ctx(cid))
                    if owner is not None:
                        pipe.zrem(self._own(_text(owner)), cid)
                        pipe.set(self._gone(cid), owner, px=_ms(self._grace))
                    pipe.execute()
                purged.append(cid)
        return purged

    def _run(
        self, script: Any, keys: builtins.list[str], args: builtins.list[Any], cid: str
    ) -> ContextRecord:
        """Run a mutation script; map its status to the record or the protocol's error."""
        with self._guard():
            result = script(keys=keys, args=[repr(self._clock()), *args])
            status = int(result[0])
            if status == 1:
                flat = result[1]
                return _record(cid, dict(zip(flat[0::2], flat[1::2], strict=True)))
            if status == -2:
                raise InvalidInputError(f"keep is beyond the history's {int(result[1]) // 4} tokens")
            if status == -1:
                owner = self._r.hget(self._ctx(cid), "owner")
                self._forget(cid, None if owner is None else _text(owner))
                raise expired(cid)
            raise self._missing(cid, None)

    def _missing(self, context_id: str, owner: str | None) -> Exception:
        """The error for an id with no hash: expired (a tombstone, consumed now), forbidden or unknown."""
        stone = self._r.get(self._gone(context_id))
        if stone is None:
            return not_found(context_id)
        if owner is not None and _text(stone) != owner:
            return forbidden(context_id)
        if not self._r.delete(self._gone(context_id)):
            return not_found(context_id)  # a concurrent call reported the expiry
        self._forget(context_id, _text(stone))
        return expired(context_id)

    def _forget(self, context_id: str, owner: str | None) -> int:
        """Delete every key and index entry of a context; how many of them existed."""
        with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(self._ctx(context_id), self._gone(context_id))
            pipe.zrem(self._exp, context_id)
            if owner is not None:
                pipe.zrem(self._own(owner), context_id)
            return sum(int(n) for n in pipe.execute())

    # --- API keys ----------------------------------------------------------------------------

    def add_key(self, identity: str, token_hash: str) -> None:
        """Register a key hash for ``identity``."""
        check_identity(identity)
        if not is_key_hash(token_hash):
            raise InvalidInputError("an API key must be registered by its sha256 hex digest, not as is")
        with self._guard():
            self._r.hset(self._keys, token_hash, identity)

    def revoke_key(self, token_hash: str) -> bool:
        """Forget a key hash."""
        with self._guard():
            return bool(self._r.hdel(self._keys, token_hash))

    def identity_for(self, token_hash: str) -> str | None:
        """The identity of a key hash, or None."""
        with self._guard():
            value = self._r.hget(self._keys, token_hash)
        return None if value is None else _text(value)

    def list_identities(self) -> builtins.list[str]:
        """Every identity with a key, sorted."""
        with self._guard():
            values = self._r.hvals(self._keys)
        return sorted({_text(v) for v in values})


def _fields(record: ContextRecord) -> dict[str, bytes]:
    return {
        "owner": record.owner.encode(),
        "model": record.model.encode(),
        "tokens": encode_tokens(record.tokens),
        "spans": json.dumps(record.spans).encode(),
        "meta": json.dumps(record.meta).encode(),
        "created_at": repr(record.created_at).encode(),
        "expires_at": repr(record.expires_at).encode(),
    }


def _record(context_id: str, raw: Mapping[bytes, bytes]) -> ContextRecord:
    return ContextRecord(
        context_id=context_id,
        owner=raw[b"owner"].decode(),
        model=raw[b"model"].decode(),
        tokens=decode_tokens(raw[b"tokens"]),
        spans=dict(json.loads(raw[b"spans"])),
        created_at=float(raw[b"created_at"]),
        expires_at=float(raw[b"expires_at"]),
        meta=dict(json.loads(raw[b"meta"])),
    )


def _text(value: object) -> str:
    """A Redis reply (bytes, since the client does not decode) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def _ms(seconds: float) -> int:
    """A Redis TTL in whole milliseconds, at least 1 (0 would be refused)."""
    return max(math.ceil(seconds * 1000), 1)


def _redact(url: str) -> str:
    """The url without its password, for error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
