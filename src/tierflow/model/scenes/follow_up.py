"""A follow-up to a picture: "make it blue", "the van on the left", "now at night", "higher resolution".

The previous prompt is read into a :class:`Scene`; the follow-up's scene words change that scene and
nothing else, and the result is written back as a prompt (:func:`prompt_of`):

- colour, size and position words change the object the follow-up names ("make the van blue"); with
  no object word, the main object ("make it blue");
- an object word the scene does not hold replaces the main object's kind ("make it a truck");
- background, light and crack words replace the scene's;
- resolution words ("higher resolution", "hd", "sharper") ask for the picture at a larger size.

Words that do none of this are reported, as a prompt's unknown words are.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from tierflow.model.scenes.grammar import (
    CRACKABLE,
    Colour,
    Kind,
    Position,
    Scene,
    SceneObject,
    Size,
)
from tierflow.model.scenes.text import VOCABULARY, crack_said, parse_prompt, prompt_of, words_of

RESOLUTION_WORDS = frozenset(("higher", "resolution", "hd", "sharper", "upscale", "detail", "detailed"))
COMMAND_WORDS = frozenset((  # what a follow-up says around its scene words
    "make", "now", "instead", "paint", "turn", "change", "but", "same", "please", "again", "colour",
    "color", "be", "into",
))
_KNOWN = frozenset(VOCABULARY) | RESOLUTION_WORDS | COMMAND_WORDS
_KINDS = frozenset(str(k) for k in Kind)


@dataclass(frozen=True)
class FollowUp:
    """What a follow-up asks for."""

    prompt: str  # the changed scene as a prompt (the previous one when nothing changed)
    changes: tuple[str, ...]  # what changed, in words: ("colour of the car: red -> blue",)
    upscale: bool  # the follow-up asked for the picture at a larger size
    ignored_words: tuple[str, ...]  # words of the follow-up that changed nothing


def follow_up(previous: str, text: str) -> FollowUp:
    """Apply the follow-up ``text`` to the scene of the ``previous`` prompt."""
    before = parse_prompt(previous).scene
    words = words_of(text)
    objects = list(before.objects)
    changes: list[str] = []
    pending: list[tuple[str, Colour | Size | Position]] = []  # attribute words waiting for their object
    target: int | None = None  # the object the follow-up named last
    for word in words:
        if word in _KINDS:
            kind = Kind(word)
            target = _match(objects, kind)
            if target is None:  # a kind the scene lacks replaces the main object's
                target = 0
                changes.append(f"the {objects[0].kind} -> a {kind}")
                objects[0] = replace(objects[0], kind=kind)
            for attr, value in pending:
                objects[target] = _set(objects[target], attr, value, changes)
            pending = []
        elif (found := _attribute(word)) is not None:
            pending.append(found)
    for attr, value in pending:  # after the last object word ("make the van blue"), or with none at all
        index = 0 if target is None else target
        objects[index] = _set(objects[index], attr, value, changes)
    said = parse_prompt(text)
    background = said.scene.background if "background" in said.stated else before.background
    lighting = said.scene.lighting if "lighting" in said.stated else before.lighting
    crack = before.crack
    for i in range(len(words)):
        crack = next(c for c in (crack_said(words, i), crack) if c is not None)
    crack = crack and any(ob.kind in CRACKABLE for ob in objects)  # only a pipe or a wall has one
    scene = Scene(tuple(objects), background, lighting, crack)
    for attr in ("background", "lighting", "crack"):
        old, new = getattr(before, attr), getattr(scene, attr)
        if old != new:
            changes.append(f"{attr}: {_word(old)} -> {_word(new)}")
    return FollowUp(
        prompt=prompt_of(scene) if changes else previous,
        changes=tuple(changes),
        upscale=any(w in RESOLUTION_WORDS for w in words),
        ignored_words=tuple(dict.fromkeys(w for w in words if w not in _KNOWN)),
    )


def _attribute(word: str) -> tuple[str, Colour | Size | Position] | None:
    for attr, values in (("colour", Colour), ("size", Size), ("position", Position)):
        if word in {str(v) for v in values}:
            return attr, values(word)
    return None


def _match(objects: list[SceneObject], kind: Kind) -> int | None:
    return next((i for i, ob in enumerate(objects) if ob.kind is kind), None)


def _set(ob: SceneObject, attr: str, value: Colour | Size | Position, changes: list[str]) -> SceneObject:
    old = getattr(ob, attr)
    if old == value:
        return ob
    changes.append(f"{attr} of the {ob.kind}: {old} -> {value}")
    return replace(ob, **{attr: value})  # type: ignore[arg-type]  # attr names the field of value's type


def _word(value: object) -> str:
    if isinstance(value, bool):  # the crack
        return "with a crack" if value else "without"
    return str(value)
