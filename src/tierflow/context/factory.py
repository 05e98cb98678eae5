"""One setting names the context store: a ``redis://`` / ``rediss://`` / ``unix://`` url or a file path."""

from __future__ import annotations

import os
from pathlib import Path

from tierflow.context.redis_store import RedisContextStore
from tierflow.context.sqlite_store import SQLiteContextStore
from tierflow.context.store import ContextStore

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")


def open_store(spec: str | os.PathLike[str]) -> ContextStore:
    """A Redis store for a Redis url (several machines share it), else a SQLite file at that path."""
    text = os.fspath(spec)
    if text.startswith(_REDIS_SCHEMES):
        return RedisContextStore(text)
    return SQLiteContextStore(Path(text).expanduser())
