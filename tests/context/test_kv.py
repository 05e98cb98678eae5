"""The KV shard store: LRU by context, capacity, truncation, and erasing what it lets go."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from tierflow.context import KVShard, KVShardStore
from tierflow.errors import ContextNotFoundError, InvalidInputError


def shard(cid: str, first: int, last: int, length: int = 4, fill: float | None = None) -> KVShard:
    """Layers first..last of [1, 2, length, 8] float32 arrays with distinct, nonzero values."""
    rng = np.random.default_rng(abs(hash((cid, first, last, length))) % 2**32)
    n = last - first + 1

    def arr() -> np.ndarray:
        a = rng.uniform(1.0, 2.0, size=(1, 2, length, 8)).astype(np.float32)
        return a if fill is None else np.full_like(a, fill)

    return KVShard(cid, (first, last), [arr() for _ in range(n)], [arr() for _ in range(n)])


BYTES = 2 * 1 * 2 * 4 * 8 * 4  # one layer of one shard(length=4): key + value


def arrays(s: KVShard) -> list[np.ndarray]:
    return [*s.keys, *s.values]


def test_shard_shape_and_size() -> None:
    s = shard("ctx_a", 2, 4)
    assert s.length == 4 and s.nbytes == 3 * BYTES and s.span == "2-4"
    with pytest.raises(InvalidInputError):
        KVShard("ctx_a", (0, 1), s.keys[:1], s.values[:1])
    with pytest.raises(InvalidInputError):
        KVShard("ctx_a", (0, 0), [np.zeros((1, 2, 4, 8))], [np.zeros((1, 2, 5, 8))])


def test_put_get_and_stats() -> None:
    store = KVShardStore(10 * BYTES)
    held = store.put(shard("ctx_a", 0, 1))
    assert store.get("ctx_a", 0, 1) is held
    assert store.get("ctx_a", 0, 2) is None and store.get("ctx_b", 0, 1) is None
    store.put(shard("ctx_a", 3, 3))
    stats = store.stats()["ctx_a"]
    assert (stats.layers, stats.tokens, stats.bytes) == ("0-1,3-3", 4, 3 * BYTES)
    assert store.total_bytes == 3 * BYTES
    assert store.spans("ctx_a") == [(0, 1), (3, 3)]


def test_lru_order_and_capacity() -> None:
    store = KVShardStore(3 * BYTES)
    a, b, c = (store.put(shard(cid, 0, 0)) for cid in ("ctx_a", "ctx_b", "ctx_c"))
    assert store.get("ctx_a", 0, 0) is a  # a is now the most recent; b the least
    store.put(shard("ctx_d", 0, 0))
    assert store.get("ctx_b", 0, 0) is None
    assert all(np.all(x == 0) for x in arrays(b))  # evicted = erased
    assert store.total_bytes <= store.capacity_bytes
    assert set(store.stats()) == {"ctx_a", "ctx_c", "ctx_d"}
    assert store.evict_to(BYTES) == ["ctx_c", "ctx_a"]
    assert all(np.all(x == 0) for x in arrays(a) + arrays(c))
    assert set(store.stats()) == {"ctx_d"}


def test_put_never_evicts_the_context_it_puts_nor_a_pinned_one() -> None:
    store = KVShardStore(2 * BYTES)
    store.put(shard("ctx_a", 0, 0))
    with store.using("ctx_a"):
        store.put(shard("ctx_big", 0, 2))  # 3 layers: over capacity on its own
        assert store.get("ctx_a", 0, 0) is not None  # pinned by a running step
        assert store.get("ctx_big", 0, 2) is not None  # the current context is kept
        assert store.evict_to(0) == ["ctx_big"]  # an explicit eviction still spares the pinned one
        assert store.get("ctx_a", 0, 0) is not None
    assert store.evict_to(0) == ["ctx_a"]
    assert store.total_bytes == 0


def test_replacing_a_shard_erases_the_old_arrays() -> None:
    store = KVShardStore(10 * BYTES)
    old = store.put(shard("ctx_a", 0, 1))
    kept_refs = arrays(old)
    new = store.put(shard("ctx_a", 0, 1, length=5))
    assert store.get("ctx_a", 0, 1) is new
    assert all(np.all(x == 0) for x in kept_refs)
    assert not any(np.all(x == 0) for x in arrays(new))
    store.put(shard("ctx_a", 1, 2))  # overlaps 0-1: replaces it too
    assert store.spans("ctx_a") == [(1, 2)]
    assert all(np.all(x == 0) for x in arrays(new))
    assert store.total_bytes == 2 * BYTES


def test_putting_the_same_arrays_again_keeps_them() -> None:
    store = KVShardStore(10 * BYTES)
    held = store.put(shard("ctx_a", 0, 0))
    again = store.put(KVShard("ctx_a", (0, 0), held.keys, held.values))
    assert not any(np.all(x == 0) for x in arrays(again))


def test_drop_erases_and_refuses_a_late_put() -> None:
    store = KVShardStore(10 * BYTES)
    held = [store.put(shard("ctx_a", 0, 1)), store.put(shard("ctx_a", 2, 2))]
    store.put(shard("ctx_b", 0, 0))
    refs = [x for s in held for x in arrays(s)]
    assert store.drop("ctx_a") == 3 * BYTES
    assert all(np.all(x == 0) for x in refs)
    assert "ctx_a" not in store.stats() and store.total_bytes == BYTES
    with pytest.raises(ContextNotFoundError):
        store.put(shard("ctx_a", 0, 1))
    assert store.drop("ctx_unknown") == 0


def test_truncate_keeps_the_prefix_exactly_and_erases_the_rest() -> None:
    store = KVShardStore(10 * BYTES)
    original = shard("ctx_a", 0, 1, length=6)
    expected = [x[:, :, :3, :].copy() for x in arrays(original)]
    held = store.put(original)
    refs = arrays(held)
    store.truncate("ctx_a", 3)
    short = store.get("ctx_a", 0, 1)
    assert short is not None and short.length == 3
    for got, want in zip(arrays(short), expected, strict=True):
        np.testing.assert_array_equal(got, want)
        assert got.flags.c_contiguous and got.flags.owndata
    assert all(np.all(x == 0) for x in refs)  # the old buffers, cut-off part included
    assert store.total_bytes == short.nbytes
    store.truncate("ctx_a", 10)  # longer than the shard: nothing changes
    assert store.get("ctx_a", 0, 1) is short


def test_read_only_arrays_are_copied_into_owned_buffers() -> None:
    store = KVShardStore(10 * BYTES)
    source = np.ones((1, 2, 4, 8), dtype=np.float32)
    view = source.view()
    view.flags.writeable = False  # what a runtime may hand out
    held = store.put(KVShard("ctx_a", (0, 0), [view], [np.ones((1, 2, 4, 8), dtype=np.float32)]))
    assert held.keys[0] is not view and held.keys[0].flags.writeable
    own = held.values[0]
    store.drop("ctx_a")
    assert np.all(held.keys[0] == 0) and np.all(own == 0)
    assert np.all(source == 1)  # the caller's buffer is the caller's to release


def test_discard_one_shard() -> None:
    store = KVShardStore(10 * BYTES)
    held = store.put(shard("ctx_a", 0, 1))
    store.put(shard("ctx_a", 2, 2))
    assert store.discard("ctx_a", 0, 1) == 2 * BYTES
    assert all(np.all(x == 0) for x in arrays(held))
    assert store.spans("ctx_a") == [(2, 2)]
    assert store.discard("ctx_a", 0, 1) == 0


def test_threads_keep_the_total_consistent() -> None:
    store = KVShardStore(8 * BYTES)
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(30):
                cid = f"ctx_{i}_{j % 5}"
                with store.using(cid):
                    store.put(shard(cid, 0, 0))
                    store.get(cid, 0, 0)
                store.truncate(cid, 2)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    assert store.total_bytes == sum(s.bytes for s in store.stats().values())
    assert store.total_bytes <= store.capacity_bytes


def test_a_deferred_replacement_keeps_the_old_arrays_until_erased_and_a_drop_erases_them() -> None:
    store = KVShardStore(10 * BYTES)
    old = store.put(shard("ctx_a", 0, 1))
    old_refs = arrays(old)
    new = store.put(shard("ctx_a", 0, 1, length=5), defer_erase=True)
    assert store.get("ctx_a", 0, 1) is new
    assert not any(np.all(x == 0) for x in old_refs)  # still intact: the step's reply goes first
    assert store.erase_superseded() == sum(x.nbytes for x in old_refs)
    assert all(np.all(x == 0) for x in old_refs)
    assert store.erase_superseded() == 0
    replaced = arrays(store.get("ctx_a", 0, 1))
    store.put(shard("ctx_a", 0, 1, length=6), defer_erase=True)
    store.drop("ctx_a")  # deleting the context erases what was waiting too
    assert all(np.all(x == 0) for x in replaced)
    assert store.erase_superseded() == 0


def test_a_deferred_replacement_spares_only_arrays_it_still_uses() -> None:
    """A replacement that reuses an array of the old shard keeps it intact; a fresh one (a session's
    new outputs) shares nothing, and every old array is erased."""
    store = KVShardStore(10 * BYTES)
    old = store.put(shard("ctx_a", 0, 1))
    reusing = shard("ctx_a", 0, 1, length=4)
    reusing.keys[0] = old.keys[0]  # the same buffer, still in use
    store.put(reusing, defer_erase=True)
    store.erase_superseded()
    assert not np.all(old.keys[0] == 0)
    assert all(np.all(x == 0) for x in [old.keys[1], *old.values])
    current = store.get("ctx_a", 0, 1)
    assert current is not None
    store.put(shard("ctx_a", 0, 1, length=5), defer_erase=True, fresh=True)
    assert store.erase_superseded() == sum(x.nbytes for x in arrays(current))
    assert all(np.all(x == 0) for x in arrays(current))


def test_fresh_buffers_are_taken_without_a_copy_and_borrowed_ones_are_copied() -> None:
    store = KVShardStore(10 * BYTES)
    base = np.ones((2, 1, 2, 4, 8), dtype=np.float32)
    borrowed = [base[0], base[1]]  # views: numpy says they do not own their memory
    kept = store.put(KVShard("ctx_a", (0, 0), [borrowed[0]], [borrowed[1]]))
    assert not np.shares_memory(kept.keys[0], base)
    taken = store.put(KVShard("ctx_b", (0, 0), [borrowed[0]], [borrowed[1]]), fresh=True)
    assert np.shares_memory(taken.keys[0], base) and np.shares_memory(taken.values[0], base)
