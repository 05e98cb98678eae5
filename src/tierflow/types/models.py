"""What kind of model a file is: its ``tierflow.kind`` metadata, a package's ``model.kind``."""

from __future__ import annotations

from enum import StrEnum


class ModelKind(StrEnum):
    """The kinds of model tierflow drives; each has its own runner and its own way of being cut."""

    CAUSAL_LM = "causal-lm"  # the LM contract (tierflow.model.lm_contract)
    # an image generator: the text-to-image pipeline (demo-image) or the latent contract (random-image)
    IMAGE_GENERATOR = "image-generator"
    VISION = "vision"  # an image classifier (demo-vision)
    CRACK_DETECTOR = "crack-detector"  # crack probability per pixel and per frame (crack-edge, crack-cloud)
    GENERIC = "generic"  # any other ONNX model: run on given or generated inputs
