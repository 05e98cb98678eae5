"""Secure tensor frames: what crosses a cut between tiers.

Tensors are quantized (int8 per tensor or per channel, fp16, or raw), sealed with AES-256-GCM under
per-direction session keys from an X25519 + HKDF agreement bound to both peers' TLS identities, and
numbered so a replayed or reordered-too-far frame is rejected. Optional Gaussian-mechanism
differential privacy runs before quantization. Frame layout and key schedule: docs/WIRE.md.
"""

from tierflow.types.quant import QuantMode
from tierflow.wire.channel import ChannelConfig, SecureChannel
from tierflow.wire.frame import FrameHeader, FrameLimits, parse_frame
from tierflow.wire.keys import KeyShare, SessionKeys, new_session_id, next_epoch_key
from tierflow.wire.privacy import (
    GaussianMechanism,
    PrivacyAccountant,
    analytic_sigma,
    classic_sigma,
)
from tierflow.wire.quantize import Quantized, QuantParams, dequantize, quantize
from tierflow.wire.replay import ReplayWindow

__all__ = [
    "ChannelConfig",
    "FrameHeader",
    "FrameLimits",
    "GaussianMechanism",
    "KeyShare",
    "PrivacyAccountant",
    "QuantMode",
    "QuantParams",
    "Quantized",
    "ReplayWindow",
    "SecureChannel",
    "SessionKeys",
    "analytic_sigma",
    "classic_sigma",
    "dequantize",
    "new_session_id",
    "next_epoch_key",
    "parse_frame",
    "quantize",
]
