"""Text <-> token ids, with the Hugging Face ``tokenizers`` library.

A model carries its tokenizer inside the ONNX file (metadata
``tierflow.tokenizer``), so one file is all a tier needs.
"""

from __future__ import annotations

from collections.abc import Sequence

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


class TextStream:
    """The text a growing list of generated tokens adds, token by token, decoding a short window.

    Decoding everything generated so far at each token costs time in the length of the output (a
    long stream's tokens get slower and slower). As vLLM's incremental detokenizer does, this decodes
    only the tokens since the last emitted text plus the window before them (a tokenizer may render
    a token differently at the start of a decode, e.g. drop a leading space), and holds text back
    while it ends in an incomplete UTF-8 sequence, until a later token completes it.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._prefix = 0  # the window's first token
        self._read = 0  # tokens up to here are emitted

    def add(self, tokens: Sequence[int]) -> str:
        """``tokens`` (everything generated so far, the newest last): the text to emit now."""
        before, text = self._decode(tokens)
        if len(text) <= len(before) or text.endswith("\ufffd"):
            return ""
        self._prefix, self._read = self._read, len(tokens)
        return text[len(before) :]

    def finish(self, tokens: Sequence[int]) -> str:
        """At the end of the generation, what :meth:`add` held back: an incomplete UTF-8 tail comes
        out as U+FFFD, as it does in the decoded whole."""
        before, text = self._decode(tokens)
        self._prefix = self._read = len(tokens)
        return text[len(before) :]

    def _decode(self, tokens: Sequence[int]) -> tuple[str, str]:
        """The window's text up to what is emitted, and all of it."""
        window = list(tokens[self._prefix :])
        return self.tokenizer.decode(window[: self._read - self._prefix]), self.tokenizer.decode(window)
