"""Context ids and API keys: shape, randomness, hashing, comparison."""

from __future__ import annotations

import hashlib

import pytest

from tierflow.context.ids import (
    check_identity,
    hash_key,
    is_context_id,
    is_key_hash,
    key_matches,
    keys_equal,
    new_api_key,
    new_context_id,
    new_identity,
)
from tierflow.context.spans import format_span, parse_span
from tierflow.errors import InvalidInputError


def test_context_ids_are_prefixed_and_unique() -> None:
    ids = {new_context_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(i.startswith("ctx_") and len(i) == 4 + 32 and is_context_id(i) for i in ids)
    assert not is_context_id("ctx_short") and not is_context_id("id_" + "a" * 32)


def test_api_keys_are_hashed_and_compared_in_constant_time() -> None:
    key = new_api_key()
    assert key.startswith("tf_") and len(key) == 3 + 43
    assert new_api_key() != key
    digest = hash_key(key)
    assert digest == hashlib.sha256(key.encode()).hexdigest() and is_key_hash(digest)
    assert not is_key_hash(key)
    assert key_matches(key, digest) and not key_matches(key + "x", digest)
    assert keys_equal("abc", "abc") and not keys_equal("abc", "abd") and not keys_equal("abc", "ab")


def test_identities() -> None:
    assert new_identity().startswith("id_") and new_identity() != new_identity()
    assert check_identity("alice@example.com") == "alice@example.com"
    for bad in ("", " alice", "a" * 65, "al ice", "-x"):
        with pytest.raises(InvalidInputError):
            check_identity(bad)


def test_spans() -> None:
    assert parse_span("2-4") == (2, 4) and format_span(2, 4) == "2-4"
    for bad in ("4-2", "a-b", "3", "-1-2"):
        with pytest.raises(InvalidInputError):
            parse_span(bad)
