"""The model metadata module: typed reads and writes, and one error for a malformed value."""

from __future__ import annotations

import onnx
import pytest

from tierflow.errors import InvalidModelError
from tierflow.model import metadata as md
from tierflow.types import ModelKind


def test_what_is_written_reads_back_typed_and_in_order() -> None:
    model = onnx.ModelProto()
    md.write_metadata(model, kind=ModelKind.IMAGE_GENERATOR, blocks=["a/out", "b/out"],
                      dims={"h": 32, "w": 32}, resolutions=[256, 512], latent_factor=8)
    assert [p.key for p in model.metadata_props] == [md.KIND, md.BLOCKS, md.DIMS, md.RESOLUTIONS,
                                                     md.LATENT_FACTOR]
    assert md.kind(model) is ModelKind.IMAGE_GENERATOR
    assert md.blocks(model) == ["a/out", "b/out"]
    assert md.dims(model) == {"h": 32, "w": 32}
    assert md.resolutions(model) == [256, 512] and md.latent_factor(model) == 8
    md.write_metadata(model, latent_factor=4)  # replaced in place
    md.drop_metadata(model, md.BLOCKS)
    assert md.props(model)[md.LATENT_FACTOR] == "4" and md.blocks(model) is None
    assert [p.key for p in model.metadata_props][-1] == md.LATENT_FACTOR


def test_absent_keys_read_as_nothing() -> None:
    assert md.kind({}) is None and md.blocks({}) is None and md.max_seq_len({}) is None
    assert md.dims({}) == {} and md.resolutions({}) == []


@pytest.mark.parametrize(
    ("key", "value", "read"),
    [
        (md.KIND, "spaceship", md.kind),
        (md.DIMS, "not json", md.dims),
        (md.DIMS, "[1, 2]", md.dims),
        (md.DIMS, '{"h": "big"}', md.dims),
        (md.DIMS, '{"h": -1}', md.dims),
        (md.BLOCKS, '{"a": 1}', md.blocks),
        (md.BLOCKS, '["a", 2]', md.blocks),
        (md.MAX_SEQ_LEN, "0", md.max_seq_len),
        (md.NUM_LAYERS, "six", md.num_layers),
        (md.RESOLUTIONS, "256,big", md.resolutions),
    ],
)
def test_a_malformed_value_is_an_invalid_model(key: str, value: str, read: object) -> None:
    with pytest.raises(InvalidModelError, match=key.replace(".", r"\.")):
        read({key: value})  # type: ignore[operator]
