"""The context stores: one suite run against SQLite (a real file) and Redis (a real server)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from tierflow.context import (
    ContextStore,
    RedisContextStore,
    SQLiteContextStore,
    authenticate,
    common_prefix_len,
    hash_key,
    issue_key,
    open_store,
)
from tierflow.context.store import encode_tokens
from tierflow.errors import (
    AuthenticationError,
    ContextExpiredError,
    ContextForbiddenError,
    ContextNotFoundError,
    InvalidInputError,
)

# A token run no other test data contains, to look for in raw bytes.
DISTINCTIVE = [918273645, 192837465, 1029384756, 564738291, 1357924680, 1122334455]


@dataclass
class Backing:
    """Where a store's data lives; ``open`` gives a fresh store on it (a restart, another machine)."""

    kind: str
    open: Callable[[], ContextStore]
    path: Path | None = None
    client: redis.Redis | None = None


@pytest.fixture(params=["sqlite", "redis"])
def backing(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backing]:
    opened: list[ContextStore] = []
    if request.param == "sqlite":
        path = tmp_path / "contexts.db"

        def open_sqlite() -> ContextStore:
            opened.append(SQLiteContextStore(path))
            return opened[-1]

        result = Backing("sqlite", open_sqlite, path=path)
    else:
        url = request.getfixturevalue("redis_url")
        client = redis.Redis.from_url(url)
        client.flushdb()

        def open_redis() -> ContextStore:
            opened.append(RedisContextStore(url))
            return opened[-1]

        result = Backing("redis", open_redis, client=client)
    try:
        yield result
    finally:
        for store in opened:
            store.close()
        if result.client is not None:
            result.client.close()


@pytest.fixture
def store(backing: Backing) -> ContextStore:
    return backing.open()


def wait_past(moment: float) -> None:
    """Let wall-clock time pass ``moment`` (an expiry)."""
    time.sleep(max(moment - time.time(), 0.0) + 0.02)


# --- the shared suite ------------------------------------------------------------------------


def test_create_get_round_trip(store: ContextStore) -> None:
    spans = {"device": "0-1", "cloud": "2-5"}
    rec = store.create("alice", "m1", 60, spans=spans, tokens=[1, 2], meta={"k": "v"})
    assert rec.context_id.startswith("ctx_") and len(rec.context_id) > 30
    assert 59 < rec.expires_in(time.time()) <= 60
    got = store.get(rec.context_id, "alice")
    assert got == rec
    assert store.create("alice", "m1").context_id != rec.context_id
    assert isinstance(store, ContextStore)


def test_append_and_truncate(store: ContextStore) -> None:
    cid = store.create("alice", "m1", 60).context_id
    assert store.append_tokens(cid, [5, 6, 7]).tokens == [5, 6, 7]
    assert store.append_tokens(cid, [8]).tokens == [5, 6, 7, 8]
    # a new prompt diverges after two tokens: keep them, then append the new tail
    assert store.append_tokens(cid, [9, 10], keep=2).tokens == [5, 6, 9, 10]
    assert store.append_tokens(cid, [], keep=0).tokens == []
    assert store.append_tokens(cid, [2**31 - 1, 0]).tokens == [2**31 - 1, 0]
    assert store.get(cid, "alice").tokens == [2**31 - 1, 0]
    with pytest.raises(InvalidInputError):
        store.append_tokens(cid, [1], keep=3)
    with pytest.raises(InvalidInputError):
        store.append_tokens(cid, [-1])
    with pytest.raises(InvalidInputError):
        store.append_tokens(cid, [2**31])
    assert store.get(cid, "alice").tokens == [2**31 - 1, 0]


def test_unknown_id_is_not_found(store: ContextStore) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.get("ctx_nope", "alice"),
        lambda: store.append_tokens("ctx_nope", [1]),
        lambda: store.set_spans("ctx_nope", {"edge": "0-1"}),
        lambda: store.set_meta("ctx_nope", {"prompt": "a car"}),
        lambda: store.touch("ctx_nope", 10),
    ]
    for call in calls:
        with pytest.raises(ContextNotFoundError):
            call()
    assert store.delete("ctx_nope") is False


def test_another_identity_is_forbidden(store: ContextStore) -> None:
    cid = store.create("alice", "m1", 60).context_id
    with pytest.raises(ContextForbiddenError):
        store.get(cid, "mallory")
    assert store.get(cid, "alice").owner == "alice"


def test_expired_then_gone(store: ContextStore) -> None:
    rec = store.create("alice", "m1", 0.3, tokens=[1])
    keep = store.create("alice", "m1", 60)
    wait_past(rec.expires_at)
    with pytest.raises(ContextForbiddenError):
        store.get(rec.context_id, "mallory")  # a probe neither learns the expiry nor consumes it
    with pytest.raises(ContextExpiredError):
        store.get(rec.context_id, "alice")
    with pytest.raises(ContextNotFoundError):
        store.get(rec.context_id, "alice")
    assert store.get(keep.context_id, "alice") == keep


def test_mutating_an_expired_context_says_expired(store: ContextStore) -> None:
    rec = store.create("alice", "m1", 0.3)
    wait_past(rec.expires_at)
    with pytest.raises(ContextExpiredError):
        store.append_tokens(rec.context_id, [1])
    with pytest.raises(ContextNotFoundError):
        store.append_tokens(rec.context_id, [1])


def test_touch_refreshes_expiry(store: ContextStore) -> None:
    rec = store.create("alice", "m1", 0.3)
    touched = store.touch(rec.context_id, 60)
    assert touched.expires_at > rec.expires_at + 50
    wait_past(rec.expires_at)
    assert store.get(rec.context_id, "alice").expires_at == touched.expires_at
    with pytest.raises(InvalidInputError):
        store.touch(rec.context_id, 0)


def test_set_spans(store: ContextStore) -> None:
    cid = store.create("alice", "m1", 60, spans={"device": "0-5"}).context_id
    assert store.set_spans(cid, {"device": "0-1", "edge": "2-5"}).spans == {"device": "0-1", "edge": "2-5"}
    assert store.get(cid, "alice").spans == {"device": "0-1", "edge": "2-5"}
    with pytest.raises(InvalidInputError):
        store.set_spans(cid, {"edge": "5-2"})
    with pytest.raises(InvalidInputError):
        store.create("alice", "m1", 60, spans={"edge": "two"})


def test_set_meta_replaces_the_map_and_keeps_the_rest(store: ContextStore) -> None:
    rec = store.create("alice", "m1", 60, tokens=[4, 5], meta={"kind": "image", "prompt": "a car"})
    large = "x" * 2_000_000  # an image context keeps its last picture (base64 PNG) here
    changed = store.set_meta(rec.context_id, {"prompt": "a blue car", "png": large})
    assert changed.meta == {"prompt": "a blue car", "png": large}  # replaced, not merged
    again = store.get(rec.context_id, "alice")
    assert again.meta == changed.meta and again.tokens == [4, 5] and again.expires_at == rec.expires_at


def test_list_is_the_owners_live_contexts_oldest_first(store: ContextStore) -> None:
    a = store.create("alice", "m1", 60)
    short = store.create("alice", "m1", 0.3)
    b = store.create("alice", "m2", 60)
    store.create("bob", "m1", 60)
    wait_past(short.expires_at)
    assert [r.context_id for r in store.list("alice")] == [a.context_id, b.context_id]
    assert store.list("nobody") == []


def test_purge_reports_each_expired_id_once_and_leaves_a_tombstone(store: ContextStore) -> None:
    gone = [store.create("alice", "m1", 0.3).context_id for _ in range(3)]
    live = store.create("alice", "m1", 60)
    wait_past(time.time() + 0.3)
    assert sorted(store.purge_expired()) == sorted(gone)
    assert store.purge_expired() == []
    assert store.get(live.context_id, "alice") == live
    with pytest.raises(ContextExpiredError):  # the owner still hears "expired", once
        store.get(gone[0], "alice")
    with pytest.raises(ContextNotFoundError):
        store.get(gone[0], "alice")


def test_delete(store: ContextStore) -> None:
    cid = store.create("alice", "m1", 60, tokens=[1, 2]).context_id
    assert store.delete(cid) is True
    with pytest.raises(ContextNotFoundError):
        store.get(cid, "alice")
    assert store.delete(cid) is False
    assert store.list("alice") == []


def test_a_second_store_on_the_same_data_sees_the_contexts(backing: Backing) -> None:
    first = backing.open()
    rec = first.create("alice", "m1", 60, spans={"edge": "0-3"}, tokens=[4, 5, 6])
    first.add_key("alice", hash_key("tf_secret"))
    first.close()  # a restart (SQLite) / another machine (Redis)
    second = backing.open()
    assert second.get(rec.context_id, "alice") == rec
    assert second.identity_for(hash_key("tf_secret")) == "alice"


def test_concurrent_appends_from_threads_lose_nothing(store: ContextStore) -> None:
    cid = store.create("alice", "m1", 60).context_id
    errors: list[BaseException] = []

    def work(marker: int) -> None:
        try:
            for _ in range(20):
                store.append_tokens(cid, [marker])
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors
    tokens = store.get(cid, "alice").tokens
    assert sorted(tokens) == sorted(i for i in range(6) for _ in range(20))


def test_api_keys(store: ContextStore) -> None:
    issued = issue_key(store, "alice")
    assert issued.key.startswith("tf_") and issued.key_hash == hash_key(issued.key)
    assert authenticate(store, issued.key) == "alice"
    other = issue_key(store)
    assert other.identity.startswith("id_")
    assert store.list_identities() == sorted(["alice", other.identity])
    for bad in (None, "", "tf_unknown", "nope"):
        with pytest.raises(AuthenticationError):
            authenticate(store, bad)
    with pytest.raises(InvalidInputError):
        store.add_key("alice", issued.key)  # a raw key is never stored
    assert store.revoke_key(issued.key_hash) is True
    with pytest.raises(AuthenticationError):
        authenticate(store, issued.key)


def test_nothing_of_a_deleted_context_remains(backing: Backing) -> None:
    store = backing.open()
    rec = store.create("alice", "m1", 60, tokens=DISTINCTIVE, meta={"title": "secret plans"})
    other = store.create("alice", "m1", 60, tokens=[1, 2, 3])
    blob = encode_tokens(DISTINCTIVE)
    assert _raw_contains(backing, rec.context_id.encode(), blob)  # the check can see it at all
    store.delete(rec.context_id)
    assert not _raw_contains(backing, rec.context_id.encode())
    assert not _raw_contains(backing, blob)
    assert not _raw_contains(backing, b"secret plans")
    assert store.get(other.context_id, "alice").tokens == [1, 2, 3]


def _raw_contains(backing: Backing, *needles: bytes) -> bool:
    """Whether every needle is in the raw data: the SQLite file (and any journal), or all of Redis."""
    if backing.path is not None:
        files = [p for p in backing.path.parent.iterdir() if p.name.startswith(backing.path.name)]
        raw = b"".join(p.read_bytes() for p in files)
    else:
        assert backing.client is not None
        raw = _redis_dump(backing.client)
    return all(n in raw for n in needles)


def _redis_dump(client: redis.Redis) -> bytes:
    """Every key name and value in the Redis db, as one byte string (``KEYS *`` and their contents)."""
    parts: list[object] = []
    for key in client.keys("*"):
        parts.append(key)
        kind = client.type(key)
        if kind == b"hash":
            for f, v in client.hgetall(key).items():
                parts += [f, v]
        elif kind == b"zset":
            parts += list(client.zrange(key, 0, -1))
        elif kind == b"string":
            parts.append(client.get(key) or b"")
        else:
            parts.append(client.dump(key) or b"")
    return b"\x00".join(p if isinstance(p, bytes) else str(p).encode() for p in parts)


# --- SQLite only -------------------------------------------------------------------------------


def test_sqlite_survives_a_restart_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "contexts.db"
    with SQLiteContextStore(path) as store:
        rec = store.create("alice", "m1", 60, tokens=[7, 8])
        store.append_tokens(rec.context_id, [9])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    with SQLiteContextStore(path) as store:
        assert store.get(rec.context_id, "alice").tokens == [7, 8, 9]
        assert store._conn().execute("PRAGMA secure_delete").fetchone()[0] == 1
        assert store._conn().execute("PRAGMA journal_mode").fetchone()[0] == "delete"


def test_sqlite_truncation_leaves_no_cut_off_tokens_in_the_file(tmp_path: Path) -> None:
    path = tmp_path / "contexts.db"
    with SQLiteContextStore(path) as store:
        cid = store.create("alice", "m1", 60, tokens=[1, 2, *DISTINCTIVE]).context_id
        assert encode_tokens(DISTINCTIVE) in path.read_bytes()
        store.append_tokens(cid, [3], keep=2)
    assert encode_tokens(DISTINCTIVE) not in path.read_bytes()


def test_sqlite_two_processes_on_one_file(tmp_path: Path) -> None:
    path = tmp_path / "contexts.db"
    with SQLiteContextStore(path) as store:
        cid = store.create("alice", "m1", 60).context_id
    script = (
        "import sys\n"
        "from tierflow.context import SQLiteContextStore\n"
        "s = SQLiteContextStore(sys.argv[1])\n"
        "for _ in range(40):\n"
        "    s.append_tokens(sys.argv[2], [int(sys.argv[3])])\n"
        "s.close()\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(path), cid, str(marker)], stderr=subprocess.PIPE)
        for marker in (1, 2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    with SQLiteContextStore(path) as store:
        tokens = store.get(cid, "alice").tokens
    assert sorted(tokens) == [1] * 40 + [2] * 40


def test_open_store_picks_by_setting(tmp_path: Path, redis_url: str) -> None:
    sqlite = open_store(tmp_path / "c.db")
    shared = open_store(redis_url)
    try:
        assert isinstance(sqlite, SQLiteContextStore) and isinstance(shared, RedisContextStore)
    finally:
        sqlite.close()
        shared.close()


# --- Redis only --------------------------------------------------------------------------------


def test_redis_itself_removes_an_expired_context(redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    with RedisContextStore(redis_url) as store:
        rec = store.create("alice", "m1", 0.3, tokens=DISTINCTIVE)
        ttl_ms = client.pttl(f"tierflow:ctx:{rec.context_id}")
        assert 0 < ttl_ms <= 300
        wait_past(rec.expires_at)
        deadline = time.monotonic() + 5
        while client.exists(f"tierflow:ctx:{rec.context_id}") and time.monotonic() < deadline:
            time.sleep(0.02)
        assert not client.exists(f"tierflow:ctx:{rec.context_id}")  # no store call removed it
        assert encode_tokens(DISTINCTIVE) not in _redis_dump(client)
        with pytest.raises(ContextExpiredError):
            store.get(rec.context_id, "alice")
        with pytest.raises(ContextNotFoundError):
            store.get(rec.context_id, "alice")
        assert store.purge_expired() == []  # reported once: by get
        assert rec.context_id.encode() not in _redis_dump(client)
    client.close()


def test_redis_purge_is_reported_once_across_machines(redis_url: str) -> None:
    redis.Redis.from_url(redis_url).flushdb()
    with RedisContextStore(redis_url) as one, RedisContextStore(redis_url) as two:
        cid = one.create("alice", "m1", 0.3).context_id
        wait_past(time.time() + 0.3)
        assert one.purge_expired() + two.purge_expired() == [cid]


def test_common_prefix_len() -> None:
    assert common_prefix_len([1, 2, 3, 4], [1, 2, 9]) == 2
    assert common_prefix_len([1, 2], [1, 2, 3]) == 2
    assert common_prefix_len([], [1]) == 0
    assert common_prefix_len([5], [6]) == 0
