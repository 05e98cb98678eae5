"""Issuing API keys and telling who a presented key belongs to, against any context store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from tierflow.context.ids import KEY_PREFIX, check_identity, hash_key, new_api_key, new_identity
from tierflow.errors import AuthenticationError


class KeyRegistry(Protocol):
    """The key half of a context store."""

    def add_key(self, identity: str, token_hash: str) -> None: ...

    def identity_for(self, token_hash: str) -> str | None: ...


@dataclass(frozen=True)
class IssuedKey:
    """A new key: ``key`` is shown to its holder once and never stored; ``key_hash`` is."""

    identity: str
    key: str
    key_hash: str


def issue_key(store: KeyRegistry, identity: str | None = None) -> IssuedKey:
    """Make a key for ``identity`` (a generated one if None) and register its hash in ``store``."""
    who = new_identity() if identity is None else check_identity(identity)
    key = new_api_key()
    digest = hash_key(key)
    store.add_key(who, digest)
    return IssuedKey(identity=who, key=key, key_hash=digest)


def authenticate(store: KeyRegistry, key: str | None) -> str:
    """The identity of a presented key, or AuthenticationError (HTTP 401).

    The lookup is by the key's sha256, so how long it takes says something about a hash the
    caller cannot steer, never about how much of a real key they guessed.
    """
    if not key:
        raise AuthenticationError("no API key: send 'Authorization: Bearer <api key>'")
    if not key.startswith(KEY_PREFIX):
        raise AuthenticationError("the API key is not a tierflow key")
    identity = store.identity_for(hash_key(key))
    if identity is None:
        raise AuthenticationError("the API key is not known to this deployment")
    return identity
