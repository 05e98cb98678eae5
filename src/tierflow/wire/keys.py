"""Session keys for secure channels: X25519 ephemeral agreement, HKDF-SHA256, per-epoch rotation.

Each side makes a :class:`KeyShare` per session and sends its public half to the peer over the
mutually authenticated TLS connection. Both sides then derive, from the X25519 shared secret,

    okm = HKDF-SHA256(ikm=shared, salt=session_id, info=transcript, length=64)
    transcript = "tierflow-wire/v1 keys" || session_id || fp_A || fp_B || pub_A || pub_B

where A and B are the two sides ordered by (certificate fingerprint, public key): the first 32
bytes key A->B, the last 32 B->A. Binding both TLS fingerprints means a key share relayed by
anyone else yields keys the real peer does not have. The key of epoch e+1 is
HKDF(ikm=key_e, info="tierflow-wire/v1 rotate" || session_id || e+1), so both sides rotate
without a round trip, and an old key cannot be computed from a newer one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from tierflow.errors import InvalidInputError, KeyAgreementError
from tierflow.wire.frame import MAX_EPOCH, SESSION_ID_LEN

KEY_LEN = 32  # AES-256
PUBLIC_KEY_LEN = 32
FINGERPRINT_LEN = 32  # SHA-256 of the DER certificate (tierflow.transport.tls.cert_fingerprint)
_LABEL_KEYS = b"tierflow-wire/v1 keys"
_LABEL_ROTATE = b"tierflow-wire/v1 rotate"


def new_session_id() -> bytes:
    return os.urandom(SESSION_ID_LEN)


@dataclass(frozen=True)
class SessionKeys:
    """Epoch-0 keys of one session, one per direction, as seen from one side."""

    session_id: bytes
    send_key: bytes = field(repr=False)
    recv_key: bytes = field(repr=False)


class KeyShare:
    """One side's ephemeral X25519 key for one session; usable for a single agreement."""

    def __init__(self) -> None:
        self._private: X25519PrivateKey | None = X25519PrivateKey.generate()
        self.public: bytes = self._private.public_key().public_bytes_raw()

    def agree(
        self,
        peer_public: bytes,
        *,
        session_id: bytes,
        local_fingerprint: bytes,
        peer_fingerprint: bytes,
    ) -> SessionKeys:
        """Derive this side's send/receive keys. The private key is forgotten afterwards."""
        _check_len("session id", session_id, SESSION_ID_LEN)
        _check_len("local fingerprint", local_fingerprint, FINGERPRINT_LEN)
        _check_len("peer fingerprint", peer_fingerprint, FINGERPRINT_LEN)
        if self._private is None:
            raise KeyAgreementError("this key share was already used; make a new one per session")
        if not isinstance(peer_public, bytes) or len(peer_public) != PUBLIC_KEY_LEN:
            raise KeyAgreementError(f"peer key share must be {PUBLIC_KEY_LEN} bytes")
        if peer_public == self.public:
            raise KeyAgreementError("peer sent back our own key share")
        private, self._private = self._private, None
        try:
            shared = private.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError:  # a low-order point gives an all-zero secret
            raise KeyAgreementError("peer key share is not a usable X25519 public key") from None
        local, peer = (local_fingerprint, self.public), (peer_fingerprint, peer_public)
        first, second = sorted((local, peer))
        transcript = _LABEL_KEYS + session_id + first[0] + second[0] + first[1] + second[1]
        okm = HKDF(hashes.SHA256(), 2 * KEY_LEN, salt=session_id, info=transcript).derive(shared)
        first_to_second, second_to_first = okm[:KEY_LEN], okm[KEY_LEN:]
        if local == first:
            return SessionKeys(session_id, send_key=first_to_second, recv_key=second_to_first)
        return SessionKeys(session_id, send_key=second_to_first, recv_key=first_to_second)


def next_epoch_key(key: bytes, session_id: bytes, epoch: int) -> bytes:
    """The key of ``epoch`` from the key of ``epoch - 1`` (one direction)."""
    if not 0 < epoch <= MAX_EPOCH:
        raise KeyAgreementError(f"key epoch {epoch} is out of range; start a new session")
    info = _LABEL_ROTATE + session_id + epoch.to_bytes(4, "big")
    return HKDF(hashes.SHA256(), KEY_LEN, salt=None, info=info).derive(key)


def _check_len(what: str, value: bytes, n: int) -> None:
    if not isinstance(value, bytes) or len(value) != n:
        raise InvalidInputError(f"{what} must be {n} bytes")
