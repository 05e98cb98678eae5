"""The text ``demo-lm`` learns from: Python's own reference documentation.

Every Python ships ``pydoc_data.topics.topics`` (the text ``help("for")``
prints): about 80 topics, ~465 KB of English about the language, with code
examples. This module cleans it and splits it deterministically into a
training part and a held-out part (~5 % of the paragraphs) that the compiler
uses to measure perplexity.

Cleaning: reStructuredText heading underlines are dropped, typographic quotes
and dashes become ASCII, trailing spaces go, and hard-wrapped prose paragraphs
are joined into one line each (code, grammar rules and tables keep their
lines and indentation).
"""

from __future__ import annotations

import hashlib
import re
import sys
from functools import lru_cache

HELDOUT_EVERY = 20  # one paragraph in 20 (by content hash) is held out: ~5 %

_ASCII = str.maketrans({"\u2019": "'", "\u2018": "'", "\u201c": '"', "\u201d": '"',
                        "\u2013": "-", "\u2014": "--", "\u2026": "...", "\u00a0": " "})
_UNDERLINE = re.compile(r"^\s*([*=\-^~#+])\1{2,}\s*$")
_BULLET = re.compile(r"^(\s*)([*\-]|\d+\.|\(\d+\)|\[\d+\])\s+")
_CODE_HINTS = (">>>", "::=", "+--", "\t")


def corpus_name() -> str:
    """A one-line label of the corpus, recorded in the model's metadata."""
    v = sys.version_info
    return f"pydoc_data.topics (Python {v.major}.{v.minor}.{v.micro}) sha256:{corpus_digest()[:16]}"


def corpus_digest() -> str:
    """SHA-256 of the cleaned corpus (training and held-out text together)."""
    return hashlib.sha256("\n\n".join(_paragraphs()).encode("utf-8")).hexdigest()


def training_documents() -> list[str]:
    """The training text, one document per help topic (topics in sorted order)."""
    return [doc for doc in ("\n\n".join(p for p in paras if not _held_out(p)) for paras in _topics()) if doc]


def training_text() -> str:
    """All training documents joined by blank lines."""
    return "\n\n".join(training_documents())


def heldout_text() -> str:
    """The held-out paragraphs (~5 % of the corpus) joined by blank lines."""
    return "\n\n".join(p for p in _paragraphs() if _held_out(p))


def _held_out(paragraph: str) -> bool:
    # A content hash, not a position: stable across Python versions for unchanged
    # paragraphs, and a paragraph repeated in two topics lands on one side only.
    digest = hashlib.sha256(paragraph.encode("utf-8")).digest()
    return int.from_bytes(digest[:4], "big") % HELDOUT_EVERY == 0


def _paragraphs() -> list[str]:
    return [p for paras in _topics() for p in paras]


@lru_cache(maxsize=1)
def _topics() -> tuple[tuple[str, ...], ...]:
    from pydoc_data.topics import topics

    return tuple(tuple(_clean_topic(topics[name])) for name in sorted(topics))


def _clean_topic(text: str) -> list[str]:
    lines = [line.rstrip() for line in text.translate(_ASCII).split("\n")]
    lines = [line for line in lines if not _UNDERLINE.match(line)]
    paragraphs: list[list[str]] = [[]]
    for line in lines:
        if line:
            paragraphs[-1].append(line)
        elif paragraphs[-1]:
            paragraphs.append([])
    return [_clean_paragraph(p) for p in paragraphs if p]


def _clean_paragraph(lines: list[str]) -> str:
    if not _is_prose(lines):
        # Code, grammar and tables: keep the layout, drop the common indentation.
        indent = min(len(line) - len(line.lstrip()) for line in lines)
        return "\n".join(line[indent:] for line in lines)
    text = " ".join(line.strip() for line in lines)
    return re.sub(r"\s{2,}", " ", text)


def _is_prose(lines: list[str]) -> bool:
    """True for a hard-wrapped paragraph of sentences (safe to join into one line)."""
    if len(lines) == 1:
        return True  # a single line: joining changes nothing but its indentation
    first = lines[0]
    bullet = _BULLET.match(first)
    body_indent = len(bullet.group(0)) if bullet else len(first) - len(first.lstrip())
    for line in lines[1:]:
        if len(line) - len(line.lstrip()) != body_indent:
            return False  # nested indentation: code or a definition list
    body = " ".join(line.strip() for line in lines)
    if any(hint in body for hint in _CODE_HINTS):
        return False
    wordy = sum(ch.isalpha() or ch == " " for ch in body) / len(body)
    long_lines = all(len(line.strip()) >= 35 for line in lines[:-1])
    return wordy >= 0.75 and long_lines
