"""The text-to-image model's resolution stages (trained by :mod:`tierflow.compiler.train_upsamplers`).

Each stage is one ONNX file: ``image`` float32 [N, 3, h, w] in [-1, 1] (and, for the text-conditioned
refiner, ``pooled`` float32 [N, 128] from the text encoder) -> ``upsampled`` [N, 3, f h, f w].
"""

from __future__ import annotations

IMAGE_IN = "image"
POOLED_IN = "pooled"
UPSAMPLED = "upsampled"
