"""Shared helpers for the wire tests: matched channel pairs over real X25519 + HKDF keys."""

from __future__ import annotations

import os
from typing import Any

import pytest

from tierflow.wire import ChannelConfig, KeyShare, SecureChannel, new_session_id


def make_pair(
    config: ChannelConfig | None = None,
    receiver_config: ChannelConfig | None = None,
    session_id: bytes | None = None,
    **sender_options: Any,
) -> tuple[SecureChannel, SecureChannel]:
    """Two ends of one session, as two peers with their own TLS fingerprints would build them.

    ``sender_options`` (privacy, accountant, rng) go to the first channel.
    """
    sid = session_id or new_session_id()
    fp_a, fp_b = os.urandom(32), os.urandom(32)
    share_a, share_b = KeyShare(), KeyShare()
    keys_a = share_a.agree(share_b.public, session_id=sid, local_fingerprint=fp_a, peer_fingerprint=fp_b)
    keys_b = share_b.agree(share_a.public, session_id=sid, local_fingerprint=fp_b, peer_fingerprint=fp_a)
    return SecureChannel(keys_a, config, **sender_options), SecureChannel(keys_b, receiver_config or config)


@pytest.fixture
def pair() -> tuple[SecureChannel, SecureChannel]:
    return make_pair()
