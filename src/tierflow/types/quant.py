"""How a tensor's values travel in a secure frame: one word for the wire, the data plane and the planner."""

from __future__ import annotations

from enum import StrEnum

from tierflow.errors import InvalidInputError


class QuantMode(StrEnum):
    """How a float tensor travels; other dtypes always travel ``raw``.

    * ``raw`` -- the tensor's own bytes (exact).
    * ``fp16`` -- cast to float16.
    * ``int8`` -- one scale for the whole tensor.
    * ``int8_channel`` -- one scale per slice along an axis.

    The value is the name that rides in JSON (data-plane headers, planner snapshots, CLI
    options); :attr:`code` is the number a frame header carries (docs/WIRE.md).
    """

    RAW = "raw"
    FP16 = "fp16"
    INT8 = "int8"
    INT8_CHANNEL = "int8_channel"

    @classmethod
    def parse(cls, value: QuantMode | str) -> QuantMode:
        """A mode from its name (any case, ``-`` for ``_``); an unknown one raises InvalidInputError."""
        if isinstance(value, QuantMode):
            return value
        try:
            return cls(str(value).strip().lower().replace("-", "_"))
        except ValueError:
            names = ", ".join(m.value for m in cls)
            raise InvalidInputError(f"unknown quantization mode {value!r} (one of: {names})") from None

    @classmethod
    def from_code(cls, code: int) -> QuantMode:
        """The mode a frame header's code stands for; an unknown code raises ValueError."""
        try:
            return _BY_CODE[code]
        except KeyError:
            raise ValueError(f"unknown quantization mode code {code}") from None

    @property
    def code(self) -> int:
        """The mode's code in the frame header (0 raw, 1 fp16, 2 int8, 3 int8_channel)."""
        return _CODES[self]

    @property
    def is_int8(self) -> bool:
        return self is QuantMode.INT8 or self is QuantMode.INT8_CHANNEL


_CODES: dict[QuantMode, int] = {
    QuantMode.RAW: 0, QuantMode.FP16: 1, QuantMode.INT8: 2, QuantMode.INT8_CHANNEL: 3,
}
_BY_CODE: dict[int, QuantMode] = {code: mode for mode, code in _CODES.items()}
