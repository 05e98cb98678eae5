"""The KV shards a tier keeps in memory: per context, the key/value cache of its layer span.

A shard is only a cache: the token history in the context store can rebuild it on any tier, so
the store evicts least-recently-used contexts when it runs out of room. What it must never do
is leave a conversation's keys and values lying in memory after it lets them go: every array it
drops (replaced, truncated away, evicted, dropped) is zero-filled first.

Ownership, so that erasing is real: ``put`` adopts an array only when it is writable, C-contiguous
and owns its memory; anything else -- a read-only or borrowed view, as ONNX Runtime may hand out
-- is copied into a buffer the store owns. The store can only erase what it owns: the caller's
original view (and ONNX Runtime's buffer behind it) is the caller's to release.

Eviction never touches a context in use: :meth:`KVShardStore.using` pins a context for a running
step, and ``put`` evicts only other contexts. A context erased with :meth:`KVShardStore.drop`
(deleted or expired) is remembered for a while, and a late ``put`` for it is refused, so a step
still running when its context was deleted cannot bring its keys and values back.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np

from tierflow.context.spans import check_span, format_span
from tierflow.errors import ContextNotFoundError, InvalidInputError

_REMEMBER_DROPPED = 4096  # how many dropped context ids refuse a late put


@dataclass(eq=False)
class KVShard:
    """The KV cache of layers ``first..last`` (inclusive) of one context: one array pair a layer.

    Each array is ``[batch, heads, length, head_dim]``; every layer has the same length.
    """

    context_id: str
    layers: tuple[int, int]
    keys: list[np.ndarray]
    values: list[np.ndarray]

    def __post_init__(self) -> None:
        first, last = self.layers
        check_span(first, last)
        n = last - first + 1
        if len(self.keys) != n or len(self.values) != n:
            raise InvalidInputError(
                f"a KV shard of layers {first}-{last} needs {n} key and value arrays, "
                f"got {len(self.keys)} and {len(self.values)}"
            )
        lengths = {a.shape[2] for a in (*self.keys, *self.values) if a.ndim == 4}
        if any(a.ndim != 4 for a in (*self.keys, *self.values)) or len(lengths) > 1:
            raise InvalidInputError("KV arrays must all be [batch, heads, length, head_dim] of one length")

    @property
    def length(self) -> int:
        """How many tokens the shard covers."""
        return int(self.keys[0].shape[2])

    @property
    def nbytes(self) -> int:
        """Bytes held by the arrays."""
        return sum(int(a.nbytes) for a in (*self.keys, *self.values))

    @property
    def span(self) -> str:
        """The layers as the API writes them, "a-b"."""
        return format_span(*self.layers)


@dataclass(frozen=True)
class ShardStats:
    """What ``GET /contexts/{id}`` reports of a tier's shards of one context."""

    layers: str  # "a-b", or "a-b,c-d" if the tier holds disjoint spans
    tokens: int  # the shortest shard's length: the prefix every layer here has
    bytes: int


class KVShardStore:
    """A tier's in-memory KV shards, bounded by ``capacity_bytes``, LRU by context; thread-safe."""

    def __init__(self, capacity_bytes: int) -> None:
        if capacity_bytes < 0:
            raise InvalidInputError(f"capacity_bytes must be >= 0, got {capacity_bytes}")
        self.capacity_bytes = capacity_bytes
        self._lock = threading.RLock()
        # context id -> {(first, last): shard}; order = recency, most recent last
        self._shards: OrderedDict[str, dict[tuple[int, int], KVShard]] = OrderedDict()
        self._pins: dict[str, int] = {}
        self._dropped: OrderedDict[str, None] = OrderedDict()
        # (replaced, what of it the replacement may still use): to erase
        self._superseded: list[tuple[KVShard, KVShard | None]] = []
        self._total = 0

    @property
    def total_bytes(self) -> int:
        """Bytes held now."""
        with self._lock:
            return self._total

    def get(self, context_id: str, first: int, last: int) -> KVShard | None:
        """The shard of exactly these layers, or None; marks the context recently used."""
        with self._lock:
            shard = self._shards.get(context_id, {}).get((first, last))
            if shard is not None:
                self._shards.move_to_end(context_id)
            return shard

    def spans(self, context_id: str) -> list[tuple[int, int]]:
        """The layer spans held for a context, sorted."""
        with self._lock:
            return sorted(self._shards.get(context_id, {}))

    def put(self, shard: KVShard, *, defer_erase: bool = False, fresh: bool = False) -> KVShard:
        """Store ``shard`` (in owned buffers) and return what is stored.

        ``fresh``: the arrays are new buffers that nothing else holds (a session's outputs, which
        numpy sees as borrowed memory), so the store takes them without a copy.

        Any shard of the same context whose layers overlap it is replaced and erased -- with
        ``defer_erase``, kept referenced (never released unerased) until :meth:`erase_superseded`:
        a decode step replaces its whole past and erases it after its reply has left. Then other
        contexts are evicted until the store fits its capacity (this one alone may exceed it).
        """
        owned = KVShard(
            shard.context_id,
            shard.layers,
            [_owned(a, fresh) for a in shard.keys],
            [_owned(a, fresh) for a in shard.values],
        )
        with self._lock:
            if shard.context_id in self._dropped:
                raise ContextNotFoundError(f"context {shard.context_id!r} was deleted; its KV is not kept")
            held = self._shards.setdefault(shard.context_id, {})
            first, last = owned.layers
            for span in [s for s in held if s[0] <= last and first <= s[1]]:
                old = held.pop(span)
                self._total -= old.nbytes
                if defer_erase:
                    # fresh arrays share no memory with the old ones: nothing of them to spare
                    self._superseded.append((old, None if fresh else owned))
                else:
                    _erase(old, keep=owned)
            held[owned.layers] = owned
            self._total += owned.nbytes
            self._shards.move_to_end(shard.context_id)
            self._evict(self.capacity_bytes, spare=shard.context_id)
            return owned

    def erase_superseded(self) -> int:
        """Erase the shards that deferred puts replaced; bytes zeroed."""
        with self._lock:
            pending, self._superseded = self._superseded, []
        return sum(_erase(old, keep=new) for old, new in pending)

    def truncate(self, context_id: str, length: int) -> None:
        """Keep the first ``length`` tokens of every shard of a context; erase the cut-off rest."""
        if length < 0:
            raise InvalidInputError(f"cannot truncate a KV shard to {length} tokens")
        with self._lock:
            held = self._shards.get(context_id, {})
            for span, shard in list(held.items()):
                if shard.length <= length:
                    continue
                short = KVShard(
                    context_id,
                    span,
                    [np.array(a[:, :, :length, :], order="C") for a in shard.keys],
                    [np.array(a[:, :, :length, :], order="C") for a in shard.values],
                )
                held[span] = short
                self._total += short.nbytes - shard.nbytes
                _erase(shard)

    def discard(self, context_id: str, first: int, last: int) -> int:
        """Erase and remove one shard (after it migrated elsewhere); bytes erased."""
        with self._lock:
            held = self._shards.get(context_id, {})
            shard = held.pop((first, last), None)
            if not held:
                self._shards.pop(context_id, None)
            if shard is None:
                return 0
            self._total -= shard.nbytes
            return _erase(shard)

    def drop(self, context_id: str) -> int:
        """Erase and remove every shard of a deleted or expired context; bytes erased.

        A later ``put`` for it is refused. A step still running on it reads zeros from then on:
        deletion wins over a step in flight.
        """
        with self._lock:
            self._dropped[context_id] = None
            while len(self._dropped) > _REMEMBER_DROPPED:
                self._dropped.popitem(last=False)
            return self._remove(context_id)

    def evict_to(self, capacity: int) -> list[str]:
        """Erase least-recently-used, unpinned contexts until at most ``capacity`` bytes are held.

        Returns the contexts evicted; their shards are rebuilt from the token history on demand.
        """
        with self._lock:
            return self._evict(capacity, spare=None)

    @contextmanager
    def using(self, context_id: str) -> Iterator[None]:
        """Pin a context for a running step: no eviction touches it until the block ends."""
        with self._lock:
            self._pins[context_id] = self._pins.get(context_id, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._pins[context_id] - 1
                if left:
                    self._pins[context_id] = left
                else:
                    del self._pins[context_id]

    def stats(self) -> dict[str, ShardStats]:
        """Per context: which layers, how many tokens, how many bytes this tier holds."""
        with self._lock:
            return {
                cid: ShardStats(
                    layers=",".join(held[s].span for s in sorted(held)),
                    tokens=min(sh.length for sh in held.values()),
                    bytes=sum(sh.nbytes for sh in held.values()),
                )
                for cid, held in self._shards.items()
                if held
            }

    def clear(self) -> int:
        """Erase everything (a tier shutting down); bytes erased."""
        with self._lock:
            return sum(self._remove(cid) for cid in list(self._shards))

    def _remove(self, context_id: str) -> int:
        held = self._shards.pop(context_id, {})
        pending = [p for p in self._superseded if p[0].context_id == context_id]
        if pending:
            self._superseded = [p for p in self._superseded if p[0].context_id != context_id]
        erased = sum(_erase(old, keep=new) for old, new in pending)
        erased += sum(_erase(shard) for shard in held.values())
        self._total -= sum(shard.nbytes for shard in held.values())
        return erased

    def _evict(self, capacity: int, spare: str | None) -> list[str]:
        evicted: list[str] = []
        for cid in list(self._shards):  # least recently used first
            if self._total <= capacity:
                break
            if cid == spare or cid in self._pins:
                continue
            self._remove(cid)
            evicted.append(cid)
        return evicted


def _owned(array: np.ndarray, fresh: bool = False) -> np.ndarray:
    """``array`` itself if the store may own and erase it, else a private copy."""
    flags = array.flags
    if flags.writeable and flags.c_contiguous and (flags.owndata or fresh):
        return array
    return np.array(array, copy=True, order="C")


def _erase(shard: KVShard, keep: KVShard | None = None) -> int:
    """Zero-fill a shard's arrays (except any still used by ``keep``); bytes zeroed."""
    live = [] if keep is None else [*keep.keys, *keep.values]
    erased = 0
    for array in (*shard.keys, *shard.values):
        if live and any(np.may_share_memory(array, other) for other in live):
            continue
        if array.flags.writeable:  # always, for arrays that went through put()
            array.fill(0)
            erased += int(array.nbytes)
    return erased
