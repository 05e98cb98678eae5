"""Text <-> token ids, with the Hugging Face ``tokenizers`` library.

A model carries its tokenizer inside the ONNX file (metadata
``tierflow.tokenizer``), so one file is all a tier needs.
"""

from __future__ import annotations

from tokenizers import Tokenizer as _HFTokenizer

from tierflow.errors import TokenizerError


class Tokenizer:
    """A thin wrapper that turns library errors into :class:`TokenizerError`."""

    def __init__(self, hf: _HFTokenizer) -> None:
        self._hf = hf

    @classmethod
    def from_json(cls, document: str) -> Tokenizer:
        try:
            return cls(_HFTokenizer.from_str(document))
        except Exception as exc:
            raise TokenizerError(f"the model's tokenizer cannot be loaded: {exc}") from exc

    def to_json(self) -> str:
        return str(self._hf.to_str())

    @property
    def vocab_size(self) -> int:
        return int(self._hf.get_vocab_size())

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"prompt must be text, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise TokenizerError(f"prompt is not valid Unicode text: {exc.reason} at {exc.start}") from exc
        ids = list(self._hf.encode(text, add_special_tokens=False).ids)
        if not ids:
            raise TokenizerError("prompt encodes to no tokens; give some text")
        return ids

    def decode(self, ids: list[int]) -> str:
        return str(self._hf.decode(ids, skip_special_tokens=True))

    def token_id(self, token: str) -> int | None:
        tid = self._hf.token_to_id(token)
        return None if tid is None else int(tid)
