"""The one error tree of tierflow.

Every error tierflow raises on purpose derives from :class:`TierflowError`.
Two branches tell a caller what to do next:

* :class:`UserError` -- the input is wrong (a bad model file, an unknown
  target, a malformed request). Retrying the same call will fail again; the
  CLI prints the message on one line and exits with code 2, HTTP maps it to 4xx.
* :class:`RecoverableError` -- the environment failed (a tier is down, a link
  dropped, a frame was rejected). The same call may succeed later or on another
  tier; the planner and router react to these.

Transport and node layers map these to wire status codes with ``raise ... from``.
"""

from __future__ import annotations


class TierflowError(Exception):
    """Base of every error tierflow raises on purpose."""


# --- user mistakes -----------------------------------------------------------


class UserError(TierflowError):
    """The caller gave something tierflow cannot use. Not worth retrying."""


class ModelNotFoundError(UserError):
    """A model path or bundled model name does not exist."""


class InvalidModelError(UserError):
    """A file is not a valid ONNX model, or not a model tierflow can drive."""


class UnsupportedModelError(InvalidModelError):
    """A valid ONNX model whose inputs/outputs tierflow does not know how to drive."""


class TokenizerError(UserError):
    """Text could not be encoded or decoded, or the model carries no tokenizer."""


class InvalidInputError(UserError):
    """A tensor or request argument has the wrong shape, dtype or value."""


class PackageError(InvalidModelError):
    """A unified model package (.tfm) is corrupt, tampered with or of an unknown version."""


class UnknownTargetError(UserError):
    """A target name (phone/edge/cloud or a custom one) is not in the package."""


class ConfigError(UserError):
    """A configuration file or value is invalid."""


class ExportError(UserError):
    """A PyTorch / Hugging Face model could not be exported to ONNX."""


class MissingExtraError(UserError):
    """An optional dependency (for example the ``export`` extra) is not installed."""


class FidelityError(UserError):
    """A compiled target falls below its configured fidelity floor.

    ``report`` is what the compiler measured (its ``CompileReport``), so a caller can show
    every target's numbers before the error; None when the error was raised without one.
    It is typed ``object`` because this module sits below the compiler and imports nothing.
    """

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class PlanError(UserError):
    """No split plan can satisfy the constraints (memory, reachable tiers)."""


class ContextError(UserError):
    """A context id is unknown, has expired, or belongs to someone else."""


class ContextNotFoundError(ContextError):
    """No context has this id (HTTP 404). Never answered with a silent new conversation."""


class ContextExpiredError(ContextError):
    """The context existed but its expiry has passed; it and its KV shards are gone (HTTP 410)."""


class ContextForbiddenError(ContextError):
    """The context belongs to another identity (HTTP 403)."""


class AuthenticationError(UserError):
    """A request carries no API key, or one the deployment does not know (HTTP 401)."""


class PrivacyBudgetError(UserError):
    """Releasing another tensor would exceed the configured differential-privacy budget."""


# --- failures of the environment --------------------------------------------


class RecoverableError(TierflowError):
    """Something outside the caller's control failed; retry later or elsewhere."""


class TierUnavailableError(RecoverableError):
    """A tier (node) cannot be reached or died during a request; ``tier`` names it when known."""

    def __init__(self, message: str, tier: str | None = None) -> None:
        super().__init__(message)
        self.tier = tier


class KVMissingError(TierUnavailableError):
    """A tier does not hold (any more) the KV cache a step needs: evicted, restarted, or never built.

    Recoverable without loss: the entry point rebuilds the shard from the context's token
    history (a prefill) and goes on. ``tier`` names the tier that lacks it.
    """


class TransportError(RecoverableError):
    """A connection failed or timed out."""


class ProxyUnavailableError(RecoverableError):
    """The cloud proxy has no reachable cloud node to delegate to."""


class FrameError(RecoverableError):
    """A secure tensor frame was rejected (tampered, replayed, truncated, wrong key or shape).

    The stream and its session keep working: the frame is dropped and another try may succeed
    (an attacker or a broken link altered this one), so it is a failure of the environment.
    """


class FrameFormatError(FrameError):
    """A frame is truncated, malformed, of an unknown version or beyond the receiver's limits."""


class TamperedFrameError(FrameError):
    """A frame failed authentication: altered in transit, sealed under another key or session."""


class ReplayedFrameError(FrameError):
    """A frame's sequence number was already accepted or has fallen behind the replay window."""


class FrameShapeError(FrameError):
    """A frame carries a shape or dtype other than the one the receiver expects."""


class KeyAgreementError(FrameError):
    """A peer's key share or identity binding for a secure channel was rejected."""
