"""The top-level ``tierflow`` package: a typed ``load``, the exported names, one error tree."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

import tierflow
from tierflow import errors
from tierflow.engine import load as engine_load
from tierflow.transport.dataplane import error_code_for
from tierflow.transport.messages import ErrorCode, StageError, StageResponse


def test_importing_tierflow_loads_no_transport_and_load_is_a_function() -> None:
    code = (
        "import sys, inspect, tierflow; "
        "loaded = {'tierflow.transport.dataplane', 'tierflow.engine'} & set(sys.modules); "
        "assert not loaded, sorted(sys.modules); "
        "assert inspect.isfunction(tierflow.load); "
        "print(inspect.signature(tierflow.load))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("-> 'LoadedModel'")


def test_load_has_the_engine_loaders_signature() -> None:
    ours, theirs = inspect.signature(tierflow.load), inspect.signature(engine_load.load)
    assert [(p.name, p.default, p.kind) for p in ours.parameters.values()] == [
        (p.name, p.default, p.kind) for p in theirs.parameters.values()
    ]
    assert ours.return_annotation == theirs.return_annotation == "LoadedModel"


def test_every_exported_name_exists() -> None:
    for name in tierflow.__all__:
        assert getattr(tierflow, name) is not None, name
    assert {"RecoverableError", "UserError", "TierflowError", "TextModel", "ImageModel", "GenericModel",
            "GenerationResult", "ImageResult", "ModelKind", "load"} <= set(tierflow.__all__)


@pytest.mark.parametrize(
    "frame_error",
    [errors.FrameError, errors.FrameFormatError, errors.TamperedFrameError, errors.ReplayedFrameError,
     errors.FrameShapeError, errors.KeyAgreementError],
)
def test_a_rejected_frame_is_a_recoverable_error(frame_error: type[errors.FrameError]) -> None:
    # the stream keeps working and another try may succeed: the environment failed, not the input
    assert issubclass(frame_error, errors.RecoverableError)
    assert not issubclass(frame_error, errors.UserError)
    # the data plane still names it for what it is, and the client maps it back to a FrameError
    assert error_code_for(frame_error("bad tag")) == ErrorCode.FRAME_REJECTED
    reply = StageResponse(1, error=StageError(ErrorCode.FRAME_REJECTED, "tampered"))
    with pytest.raises(errors.FrameError, match="tier 'edge': tampered"):
        reply.raise_for_error("edge")


def test_every_error_is_in_exactly_one_branch() -> None:
    tree = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.TierflowError)]
    for cls in tree:
        if cls is errors.TierflowError:
            continue
        branches = issubclass(cls, errors.UserError) + issubclass(cls, errors.RecoverableError)
        assert branches == 1, cls


def test_fidelity_error_carries_its_report() -> None:
    report = object()
    assert errors.FidelityError("below the floor", report=report).report is report
    assert errors.FidelityError("below the floor").report is None
