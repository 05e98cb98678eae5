"""Context ids and API keys: unguessable tokens, keys kept only as hashes, constant-time checks.

A context id is a bearer capability for nothing on its own (every use also needs the owner's key),
but it must still be unguessable so that ids cannot be enumerated. An API key is a secret: the
deployment stores only its sha256 hash, so a stolen store does not hand out working keys. The
identity a key stands for is a short name (or a generated one), the owner of contexts.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import uuid

from tierflow.errors import InvalidInputError

CONTEXT_PREFIX = "ctx_"
KEY_PREFIX = "tf_"
CONTEXT_ID_BYTES = 24  # 192 random bits: far beyond enumeration
KEY_BYTES = 32  # 256 random bits

_CONTEXT_ID = re.compile(r"^ctx_[A-Za-z0-9_-]{16,128}$")
_IDENTITY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")
_HASH = re.compile(r"^[0-9a-f]{64}$")


def new_context_id() -> str:
    """A fresh, unguessable context id: ``ctx_`` + url-safe random bytes."""
    return CONTEXT_PREFIX + secrets.token_urlsafe(CONTEXT_ID_BYTES)


def is_context_id(value: str) -> bool:
    """Whether ``value`` has the shape of a context id (says nothing about whether it exists)."""
    return bool(_CONTEXT_ID.match(value))


def new_api_key() -> str:
    """A fresh API key: ``tf_`` + 32 url-safe random bytes. Show it once; store :func:`hash_key`."""
    return KEY_PREFIX + secrets.token_urlsafe(KEY_BYTES)


def hash_key(key: str) -> str:
    """The sha256 hex digest a store keeps instead of the key itself."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def is_key_hash(value: str) -> bool:
    """Whether ``value`` is a lower-case sha256 hex digest (what stores accept in ``add_key``)."""
    return bool(_HASH.match(value))


def keys_equal(presented: str, expected: str) -> bool:
    """Compare two secrets (keys or their hashes) in constant time, so timing leaks no prefix."""
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def key_matches(presented: str, stored_hash: str) -> bool:
    """Whether a presented key hashes to ``stored_hash``; the comparison is constant-time."""
    return keys_equal(hash_key(presented), stored_hash)


def new_identity() -> str:
    """A generated identity name (``id_`` + 12 hex digits of a uuid4) for a key issued without one."""
    return "id_" + uuid.uuid4().hex[:12]


def check_identity(identity: str) -> str:
    """``identity`` if it is a usable name (1-64 of letters, digits, ``_ . @ -``), else a UserError."""
    if not _IDENTITY.match(identity):
        raise InvalidInputError(
            f"identity {identity!r} is not 1-64 characters of letters, digits, '_', '.', '@' or '-'"
        )
    return identity
