"""The context record and the store protocol every context store (SQLite, Redis) follows.

A context is a conversation: its owner, its model, the token history (prompts and generated
tokens, from which any tier can rebuild its KV shard) and which tier holds which layer span.
Stores also hold the API keys (as hashes) because both answer the same question for a request:
who is calling, and is this theirs.

Expiry semantics shared by the stores (the HTTP API maps them to 404/403/410):

* an id never issued, or deleted with :meth:`ContextStore.delete`: ``ContextNotFoundError``;
* another identity's context: ``ContextForbiddenError`` (checked before expiry, so another
  identity's probe neither learns the expiry nor consumes the owner's 410);
* an expired one: ``ContextExpiredError`` once, and the context is deleted; later calls say not
  found. A context removed by :meth:`ContextStore.purge_expired` (or, in Redis, by its TTL) leaves
  a tombstone -- the id, the owner and nothing else -- for ``expired_grace_s`` so the owner's next
  call still hears "expired" rather than "never existed".
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from tierflow.context.ids import new_context_id
from tierflow.context.spans import check_spans
from tierflow.errors import (
    ContextExpiredError,
    ContextForbiddenError,
    ContextNotFoundError,
    InvalidInputError,
)

DEFAULT_EXPIRES_IN = 3600.0  # seconds, the API's default lifetime
EXPIRED_GRACE_S = 86400.0  # how long a tombstone keeps answering "expired" after a purge
MAX_TOKEN = 2**31 - 1  # histories are stored as int32


@dataclass(frozen=True)
class ContextRecord:
    """One conversation as a store holds it. A snapshot: stores return a new one after a change."""

    context_id: str
    owner: str
    model: str
    tokens: list[int]
    spans: dict[str, str]
    created_at: float
    expires_at: float
    meta: dict[str, str] = field(default_factory=dict)

    def expires_in(self, now: float) -> float:
        """Seconds left before expiry at ``now`` (0 once it has passed)."""
        return max(self.expires_at - now, 0.0)

    def expired(self, now: float) -> bool:
        """Whether the expiry has passed at ``now``."""
        return now >= self.expires_at


@runtime_checkable
class ContextStore(Protocol):
    """Contexts with an owner and an expiry, and the deployment's API keys (hashes only)."""

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
        """A new context with a fresh unguessable id, owned by ``owner``."""
        ...

    def get(self, context_id: str, owner: str) -> ContextRecord:
        """The context, if it exists, is ``owner``'s and has not expired (else a ContextError)."""
        ...

    def append_tokens(
        self, context_id: str, tokens: Sequence[int], *, keep: int | None = None
    ) -> ContextRecord:
        """Cut the history to its first ``keep`` tokens (if given), then append ``tokens``; atomic."""
        ...

    def set_spans(self, context_id: str, spans: Mapping[str, str]) -> ContextRecord:
        """Replace which tier holds which layer span (after a plan, a failover or a migration)."""
        ...

    def set_meta(self, context_id: str, meta: Mapping[str, str]) -> ContextRecord:
        """Replace the context's meta (an image context's last picture and prompt); atomic."""
        ...

    def touch(self, context_id: str, expires_in: float = DEFAULT_EXPIRES_IN) -> ContextRecord:
        """Refresh the expiry to ``expires_in`` seconds from now (every use does this)."""
        ...

    def delete(self, context_id: str) -> bool:
        """Remove the context and its tombstone for good; whether anything was there."""
        ...

    def list(self, owner: str) -> builtins.list[ContextRecord]:
        """``owner``'s live contexts, oldest first."""
        ...

    def purge_expired(self, now: float | None = None) -> builtins.list[str]:
        """Remove every context expired at ``now``; the ids removed, so tiers can drop their shards."""
        ...

    def add_key(self, identity: str, token_hash: str) -> None:
        """Register an API key's sha256 hash for ``identity`` (never the key itself)."""
        ...

    def revoke_key(self, token_hash: str) -> bool:
        """Forget a key hash; whether it was known."""
        ...

    def identity_for(self, token_hash: str) -> str | None:
        """The identity a key hash stands for, or None."""
        ...

    def list_identities(self) -> builtins.list[str]:
        """Every identity that has at least one key, sorted."""
        ...

    def close(self) -> None:
        """Release connections. The data stays."""
        ...


# --- helpers the stores share ------------------------------------------------------------------


def check_tokens(tokens: Iterable[int]) -> builtins.list[int]:
    """Token ids as a list of ints in int32 range, or a UserError."""
    out = [int(t) for t in tokens]
    for t in out:
        if not 0 <= t <= MAX_TOKEN:
            raise InvalidInputError(f"token id {t} is outside 0..{MAX_TOKEN}")
    return out


def encode_tokens(tokens: Sequence[int]) -> bytes:
    """A token history as little-endian int32 bytes: 4 bytes a token, no framing."""
    return np.asarray(tokens, dtype="<i4").tobytes()


def decode_tokens(blob: bytes) -> builtins.list[int]:
    """The inverse of :func:`encode_tokens`."""
    if len(blob) % 4:
        raise ValueError(f"token blob of {len(blob)} bytes is not a whole number of int32")
    return [int(t) for t in np.frombuffer(blob, dtype="<i4")]


def check_expires_in(expires_in: float) -> float:
    """A positive, finite lifetime in seconds, or a UserError."""
    value = float(expires_in)
    if not math.isfinite(value) or value <= 0:
        raise InvalidInputError(f"expires_in must be a positive number of seconds, got {expires_in!r}")
    return value


def check_meta(meta: Mapping[str, str] | None) -> dict[str, str]:
    """A context's meta as str -> str."""
    return {str(k): str(v) for k, v in (meta or {}).items()}


def check_keep(keep: int | None, length: int) -> int:
    """The history length to keep before an append: ``length`` for None, else 0 <= keep <= length."""
    if keep is None:
        return length
    if not 0 <= keep <= length:
        raise InvalidInputError(f"keep={keep} is outside the history's 0..{length} tokens")
    return keep


def check_owner_model(owner: str, model: str) -> None:
    """A UserError for an empty owner or model id."""
    if not owner:
        raise InvalidInputError("a context needs an owner identity")
    if not model:
        raise InvalidInputError("a context needs a model id")


def new_record(
    owner: str,
    model: str,
    expires_in: float,
    now: float,
    *,
    spans: Mapping[str, str] | None = None,
    tokens: Sequence[int] = (),
    meta: Mapping[str, str] | None = None,
) -> ContextRecord:
    """A new context's record with a fresh unguessable id, every field checked: what each store's
    ``create`` writes."""
    check_owner_model(owner, model)
    return ContextRecord(
        context_id=new_context_id(),
        owner=owner,
        model=model,
        tokens=check_tokens(tokens),
        spans=check_spans(dict(spans or {})),
        created_at=now,
        expires_at=now + check_expires_in(expires_in),
        meta=check_meta(meta),
    )


def not_found(context_id: str) -> ContextNotFoundError:
    """The one wording of "no such context" (the id is the caller's own input, safe to echo)."""
    return ContextNotFoundError(f"no context {context_id!r}")


def expired(context_id: str) -> ContextExpiredError:
    """The one wording of "this context has expired"."""
    return ContextExpiredError(f"context {context_id!r} has expired; its history and KV shards are gone")


def forbidden(context_id: str) -> ContextForbiddenError:
    """The one wording of "not yours"."""
    return ContextForbiddenError(f"context {context_id!r} belongs to another identity")


def common_prefix_len(history: Sequence[int], prompt: Sequence[int]) -> int:
    """How many leading tokens two sequences share: the part of a KV cache a new prompt can reuse."""
    n = min(len(history), len(prompt))
    if n == 0:
        return 0
    a = np.asarray(history[:n], dtype=np.int64)
    b = np.asarray(prompt[:n], dtype=np.int64)
    diff = np.flatnonzero(a != b)
    return int(diff[0]) if diff.size else n
