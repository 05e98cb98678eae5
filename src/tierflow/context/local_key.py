"""The local API key of a one-machine deployment: made on first run, kept in a 0600 file, reused."""

from __future__ import annotations

import os
from pathlib import Path

from tierflow.context.auth import KeyRegistry, issue_key
from tierflow.context.ids import KEY_PREFIX, hash_key

LOCAL_IDENTITY = "local"


def local_key(store: KeyRegistry, path: Path) -> str:
    """The key in ``path`` if ``store`` still knows it; otherwise a new one, written to ``path``."""
    if path.is_file():
        key = path.read_text().strip()
        if key.startswith(KEY_PREFIX) and store.identity_for(hash_key(key)) is not None:
            return key
    issued = issue_key(store, LOCAL_IDENTITY)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # never readable by others
    with os.fdopen(fd, "w") as out:
        out.write(issued.key + "\n")
    tmp.replace(path)
    return issued.key
