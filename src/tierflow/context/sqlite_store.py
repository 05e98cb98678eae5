"""The embedded context store: one SQLite file that survives restarts and forgets what it deletes.

Choices, and why:

* ``PRAGMA secure_delete=ON`` on every connection: SQLite overwrites deleted (and replaced) record
  content with zeros, so a deleted conversation cannot be read back from the file.
* The rollback journal (``journal_mode=DELETE``), not WAL: a WAL file keeps copies of changed
  pages -- the deleted rows included -- until it is overwritten, and it is never shrunk by
  default; the rollback journal lives only for a transaction and is unlinked at commit (what the
  filesystem does with its freed blocks is below what a file format can control).
* One connection per thread (``threading.local``; those of ended threads are closed) with a busy
  timeout: SQLite's file locks then serialise writers across threads and across processes on one
  file; every read-modify-write runs in ``BEGIN IMMEDIATE`` so two appends never lose one another.
* Token histories are little-endian int32 blobs (4 bytes a token).
* The file is created with mode 0600: it holds conversations and key hashes.
"""

from __future__ import annotations

import builtins
import json
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from tierflow.context.ids import check_identity, is_key_hash
from tierflow.context.spans import check_spans
from tierflow.context.store import (
    DEFAULT_EXPIRES_IN,
    EXPIRED_GRACE_S,
    ContextRecord,
    check_expires_in,
    check_keep,
    check_meta,
    check_tokens,
    decode_tokens,
    encode_tokens,
    expired,
    forbidden,
    new_record,
    not_found,
)
from tierflow.errors import ContextExpiredError, InvalidInputError, RecoverableError

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS contexts (
    context_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    model TEXT NOT NULL,
    tokens BLOB NOT NULL,
    spans TEXT NOT NULL,
    meta TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS contexts_owner ON contexts (owner);
CREATE INDEX IF NOT EXISTS contexts_expiry ON contexts (expires_at);
CREATE TABLE IF NOT EXISTS tombstones (
    context_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    forget_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    token_hash TEXT PRIMARY KEY,
    identity TEXT NOT NULL,
    created_at REAL NOT NULL
);
"""
_COLUMNS = "context_id, owner, model, tokens, spans, meta, created_at, expires_at"


class SQLiteContextStore:
    """:class:`~tierflow.context.store.ContextStore` on one SQLite file (the embedded default)."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        clock: Callable[[], float] = time.time,
        expired_grace_s: float = EXPIRED_GRACE_S,
        busy_timeout_s: float = 10.0,
    ) -> None:
        self.path = Path(path)
        self._clock = clock
        self._grace = expired_grace_s
        self._busy_timeout_s = busy_timeout_s
        self._local = threading.local()
        self._all: list[tuple[threading.Thread, sqlite3.Connection]] = []
        self._all_lock = threading.Lock()
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.path.exists():
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
        with self._tx() as conn:
            # statement by statement: executescript() would commit the open transaction
            for statement in filter(None, (s.strip() for s in _SCHEMA.split(";"))):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    # --- connections -------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection, opened (with secure_delete and the journal mode) on first use."""
        if self._closed:
            raise RuntimeError("the context store is closed")
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self._busy_timeout_s, isolation_level=None, check_same_thread=False
            )
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA secure_delete = ON")
            conn.execute("PRAGMA journal_mode = DELETE")
            conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_s * 1000)}")
            self._local.conn = conn
            with self._all_lock:  # close the connections of threads that have ended
                ended = [c for t, c in self._all if not t.is_alive()]
                self._all = [(t, c) for t, c in self._all if t.is_alive()]
                self._all.append((threading.current_thread(), conn))
            for old in ended:
                old.close()
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction taken up front (BEGIN IMMEDIATE), so read-modify-writes are atomic.

        A ContextExpiredError raised inside commits first: the expired context's deletion stands.
        """
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise RecoverableError(f"the context store {self.path} is busy: {exc}") from exc
        try:
            yield conn
        except ContextExpiredError:
            conn.execute("COMMIT")
            raise
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close every thread's connection. The file and its contexts stay."""
        self._closed = True
        with self._all_lock:
            conns, self._all = self._all, []
        for _thread, conn in conns:
            conn.close()

    def __enter__(self) -> SQLiteContextStore:
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
        """A new context with a fresh id; see the protocol."""
        record = new_record(owner, model, expires_in, self._clock(), spans=spans, tokens=tokens, meta=meta)
        with self._tx() as conn:
            conn.execute(
                f"INSERT INTO contexts ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    record.context_id,
                    record.owner,
                    record.model,
                    encode_tokens(record.tokens),
                    json.dumps(record.spans),
                    json.dumps(record.meta),
                    record.created_at,
                    record.expires_at,
                ),
            )
        return record

    def get(self, context_id: str, owner: str) -> ContextRecord:
        """The live context if it is ``owner``'s; see the protocol for the errors."""
        row = (
            self._conn()
            .execute(f"SELECT {_COLUMNS} FROM contexts WHERE context_id = ?", (context_id,))
            .fetchone()
        )
        if row is not None:  # the common case needs no write lock
            record = _record(row)
            if record.owner == owner and not record.expired(self._clock()):
                return record
        with self._tx() as conn:
            return self._live(conn, context_id, owner)

    def append_tokens(
        self, context_id: str, tokens: Sequence[int], *, keep: int | None = None
    ) -> ContextRecord:
        """Truncate to ``keep`` (if given) and append, in one transaction."""
        new = check_tokens(tokens)
        with self._tx() as conn:
            record = self._live(conn, context_id, None)
            history = record.tokens[: check_keep(keep, len(record.tokens))] + new
            conn.execute(
                "UPDATE contexts SET tokens = ? WHERE context_id = ?", (encode_tokens(history), context_id)
            )
        return replace(record, tokens=history)

    def set_spans(self, context_id: str, spans: Mapping[str, str]) -> ContextRecord:
        """Replace the tier -> span map."""
        checked = check_spans(dict(spans))
        with self._tx() as conn:
            record = self._live(conn, context_id, None)
            conn.execute(
                "UPDATE contexts SET spans = ? WHERE context_id = ?", (json.dumps(checked), context_id)
            )
        return replace(record, spans=checked)

    def set_meta(self, context_id: str, meta: Mapping[str, str]) -> ContextRecord:
        """Replace the meta map."""
        checked = check_meta(meta)
        with self._tx() as conn:
            record = self._live(conn, context_id, None)
            conn.execute(
                "UPDATE contexts SET meta = ? WHERE context_id = ?", (json.dumps(checked), context_id)
            )
        return replace(record, meta=checked)

    def touch(self, context_id: str, expires_in: float = DEFAULT_EXPIRES_IN) -> ContextRecord:
        """Move the expiry to ``expires_in`` seconds from now."""
        lifetime = check_expires_in(expires_in)
        with self._tx() as conn:
            record = self._live(conn, context_id, None)
            expires_at = self._clock() + lifetime
            conn.execute("UPDATE contexts SET expires_at = ? WHERE context_id = ?", (expires_at, context_id))
        return replace(record, expires_at=expires_at)

    def delete(self, context_id: str) -> bool:
        """Remove the row and any tombstone; secure_delete zeroes their bytes in the file."""
        with self._tx() as conn:
            n = conn.execute("DELETE FROM contexts WHERE context_id = ?", (context_id,)).rowcount
            n += conn.execute("DELETE FROM tombstones WHERE context_id = ?", (context_id,)).rowcount
        return n > 0

    def list(self, owner: str) -> builtins.list[ContextRecord]:
        """``owner``'s unexpired contexts, oldest first."""
        rows = (
            self._conn()
            .execute(
                f"SELECT {_COLUMNS} FROM contexts WHERE owner = ? AND expires_at > ? ORDER BY created_at",
                (owner, self._clock()),
            )
            .fetchall()
        )
        return [_record(row) for row in rows]

    def purge_expired(self, now: float | None = None) -> builtins.list[str]:
        """Delete every context expired at ``now``, leave tombstones, forget old tombstones."""
        at = self._clock() if now is None else now
        with self._tx() as conn:
            rows = conn.execute(
                "SELECT context_id, owner FROM contexts WHERE expires_at <= ?", (at,)
            ).fetchall()
            conn.execute("DELETE FROM contexts WHERE expires_at <= ?", (at,))
            conn.executemany(
                "INSERT OR REPLACE INTO tombstones (context_id, owner, forget_at) VALUES (?, ?, ?)",
                [(row["context_id"], row["owner"], at + self._grace) for row in rows],
            )
            conn.execute("DELETE FROM tombstones WHERE forget_at <= ?", (at,))
        return [str(row["context_id"]) for row in rows]

    def _live(self, conn: sqlite3.Connection, context_id: str, owner: str | None) -> ContextRecord:
        """The row inside a transaction, or the protocol's error (an expired row is deleted)."""
        row = conn.execute(f"SELECT {_COLUMNS} FROM contexts WHERE context_id = ?", (context_id,)).fetchone()
        if row is None:
            stone = conn.execute(
                "SELECT owner, forget_at FROM tombstones WHERE context_id = ?", (context_id,)
            ).fetchone()
            if stone is None or stone["forget_at"] <= self._clock():
                raise not_found(context_id)
            if owner is not None and stone["owner"] != owner:
                raise forbidden(context_id)
            conn.execute("DELETE FROM tombstones WHERE context_id = ?", (context_id,))
            raise expired(context_id)
        record = _record(row)
        if owner is not None and record.owner != owner:
            raise forbidden(context_id)
        if record.expired(self._clock()):
            conn.execute("DELETE FROM contexts WHERE context_id = ?", (context_id,))
            raise expired(context_id)
        return record

    # --- API keys ----------------------------------------------------------------------------

    def add_key(self, identity: str, token_hash: str) -> None:
        """Register a key hash for ``identity``."""
        check_identity(identity)
        if not is_key_hash(token_hash):
            raise InvalidInputError("an API key must be registered by its sha256 hex digest, not as is")
        with self._tx() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO api_keys (token_hash, identity, created_at) VALUES (?, ?, ?)",
                (token_hash, identity, self._clock()),
            )

    def revoke_key(self, token_hash: str) -> bool:
        """Forget a key hash."""
        with self._tx() as conn:
            return conn.execute("DELETE FROM api_keys WHERE token_hash = ?", (token_hash,)).rowcount > 0

    def identity_for(self, token_hash: str) -> str | None:
        """The identity of a key hash, or None."""
        row = (
            self._conn()
            .execute("SELECT identity FROM api_keys WHERE token_hash = ?", (token_hash,))
            .fetchone()
        )
        return None if row is None else str(row["identity"])

    def list_identities(self) -> builtins.list[str]:
        """Every identity with a key, sorted."""
        rows = self._conn().execute("SELECT DISTINCT identity FROM api_keys ORDER BY identity").fetchall()
        return [str(row["identity"]) for row in rows]


def _record(row: sqlite3.Row) -> ContextRecord:
    return ContextRecord(
        context_id=str(row["context_id"]),
        owner=str(row["owner"]),
        model=str(row["model"]),
        tokens=decode_tokens(bytes(row["tokens"])),
        spans=dict(json.loads(row["spans"])),
        created_at=float(row["created_at"]),
        expires_at=float(row["expires_at"]),
        meta=dict(json.loads(row["meta"])),
    )
