"""X25519 + HKDF agreement: matching per-direction keys, identity binding, rotation chain."""

from __future__ import annotations

import os

import pytest

from tierflow.errors import InvalidInputError, KeyAgreementError
from tierflow.wire import KeyShare, new_session_id, next_epoch_key


def _agree(sid: bytes, fp_a: bytes, fp_b: bytes, fp_b_seen_by_a: bytes | None = None):  # noqa: ANN202
    a, b = KeyShare(), KeyShare()
    ka = a.agree(b.public, session_id=sid, local_fingerprint=fp_a, peer_fingerprint=fp_b_seen_by_a or fp_b)
    kb = b.agree(a.public, session_id=sid, local_fingerprint=fp_b, peer_fingerprint=fp_a)
    return ka, kb


def test_both_sides_derive_matching_distinct_direction_keys() -> None:
    sid, fp_a, fp_b = new_session_id(), os.urandom(32), os.urandom(32)
    ka, kb = _agree(sid, fp_a, fp_b)
    assert ka.send_key == kb.recv_key and ka.recv_key == kb.send_key
    assert ka.send_key != ka.recv_key and len(ka.send_key) == 32
    assert ka.session_id == kb.session_id == sid
    assert ka.send_key.hex() not in repr(ka) and repr(ka.send_key) not in repr(ka)


def test_same_certificate_on_both_sides_still_splits_directions() -> None:
    fp = os.urandom(32)
    ka, kb = _agree(new_session_id(), fp, fp)
    assert ka.send_key == kb.recv_key and ka.send_key != ka.recv_key


def test_keys_are_bound_to_the_tls_identities() -> None:
    """If A sees a different certificate for its peer than B really has (a relay), keys disagree."""
    sid, fp_a, fp_b = new_session_id(), os.urandom(32), os.urandom(32)
    ka, kb = _agree(sid, fp_a, fp_b, fp_b_seen_by_a=os.urandom(32))
    assert ka.send_key != kb.recv_key and ka.recv_key != kb.send_key


def test_fresh_shares_give_fresh_keys() -> None:
    sid, fp_a, fp_b = new_session_id(), os.urandom(32), os.urandom(32)
    assert _agree(sid, fp_a, fp_b)[0].send_key != _agree(sid, fp_a, fp_b)[0].send_key


def test_bad_peer_shares_are_rejected() -> None:
    sid, fp = new_session_id(), os.urandom(32)
    for bad in (bytes(32), b"\x01" + bytes(31), b"short"):  # 0 and 1 are low-order points
        with pytest.raises(KeyAgreementError):
            KeyShare().agree(bad, session_id=sid, local_fingerprint=fp, peer_fingerprint=fp)
    share = KeyShare()
    with pytest.raises(KeyAgreementError, match="our own"):
        share.agree(share.public, session_id=sid, local_fingerprint=fp, peer_fingerprint=fp)


def test_a_share_is_used_once() -> None:
    sid, fp = new_session_id(), os.urandom(32)
    share, peer = KeyShare(), KeyShare()
    share.agree(peer.public, session_id=sid, local_fingerprint=fp, peer_fingerprint=fp)
    with pytest.raises(KeyAgreementError, match="already used"):
        share.agree(peer.public, session_id=sid, local_fingerprint=fp, peer_fingerprint=fp)


def test_argument_lengths_are_checked() -> None:
    peer = KeyShare().public
    with pytest.raises(InvalidInputError, match="session id"):
        KeyShare().agree(peer, session_id=b"x", local_fingerprint=bytes(32), peer_fingerprint=bytes(32))
    with pytest.raises(InvalidInputError, match="fingerprint"):
        KeyShare().agree(peer, session_id=bytes(16), local_fingerprint=bytes(31), peer_fingerprint=bytes(32))


def test_epoch_keys_form_a_deterministic_chain() -> None:
    sid, k0 = new_session_id(), os.urandom(32)
    k1 = next_epoch_key(k0, sid, 1)
    assert k1 == next_epoch_key(k0, sid, 1) and k1 != k0 and len(k1) == 32
    assert next_epoch_key(k1, sid, 2) not in (k0, k1)
    assert next_epoch_key(k0, new_session_id(), 1) != k1  # bound to the session
    with pytest.raises(KeyAgreementError):
        next_epoch_key(k0, sid, 0)
    with pytest.raises(KeyAgreementError):
        next_epoch_key(k0, sid, 2**32)
