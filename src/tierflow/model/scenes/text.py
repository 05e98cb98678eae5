"""Procedural scenes, text: the vocabulary and its word ids, :func:`prompt_of` (a scene's
canonical prompt) and :func:`parse_prompt` (any text back to a scene)."""

from __future__ import annotations

import re
from dataclasses import dataclass

from tierflow.errors import InvalidInputError
from tierflow.model.scenes.grammar import (
    BACKGROUNDS_OF,
    CRACKABLE,
    DEFAULT_COLOUR,
    MAX_OBJECTS,
    PLAIN_WALLS,
    Background,
    Colour,
    Kind,
    Lighting,
    Position,
    Scene,
    SceneObject,
    Size,
)

_FILLER_WORDS = (  # words a prompt may hold that name no attribute
    "a an the on in of at and with front to is are there side next by during "
    "under sky scene picture photo image standing parked lying one some plain its it has very"
)
_FILLERS: tuple[str, ...] = tuple(_FILLER_WORDS.split())
_NEGATIONS = ("without", "no", "not")
_SYNONYMS: dict[str, str] = {
    "gray": "grey",
    "centre": "center",
    "middle": "center",
    "big": "large",
    "huge": "large",
    "little": "small",
    "tiny": "small",
    "lorry": "truck",
    "daytime": "day",
    "daylight": "day",
    "nighttime": "night",
    "cracked": "crack",
    "cracks": "crack",
    "street": "road",
}
_PLURALS = {f"{k}s": str(k) for k in Kind if k is not Kind.BOX} | {"boxes": "box"}
_SYNONYMS |= _PLURALS
_BACKGROUND_WORDS: dict[str, Background] = {
    "road": Background.ROAD,
    "grass": Background.GRASS,
    "sand": Background.SAND,
    "concrete": Background.CONCRETE,
    "brick": Background.BRICK,
}
_CRACK_WORDS = ("crack", "intact")

#: Every word the parser and the tokenizer know (synonyms map to these); ids are list indices.
PAD, UNK = "<pad>", "<unk>"
VOCABULARY: tuple[str, ...] = (
    PAD,
    UNK,
    *(str(k) for k in Kind),
    *(str(c) for c in Colour),
    *(str(s) for s in Size),
    *(str(p) for p in Position),
    *_BACKGROUND_WORDS,
    *(str(light) for light in Lighting),
    *_CRACK_WORDS,
    *_NEGATIONS,
    *_FILLERS,
)
PAD_ID, UNK_ID = 0, 1
MAX_TOKENS = 48
_WORD_ID = {w: i for i, w in enumerate(VOCABULARY)}
_WORD_RE = re.compile(r"[a-z]+")
_KIND_WORDS = frozenset(str(k) for k in Kind)
_COLOUR_WORDS = frozenset(str(c) for c in Colour)
_SIZE_WORDS = frozenset(str(s) for s in Size)
_POSITION_WORDS = frozenset(str(p) for p in Position)
_LIGHTING_WORDS = frozenset(str(light) for light in Lighting)


def words_of(text: str) -> list[str]:
    """The lower-case words of ``text`` (letters only), synonyms and plurals mapped to their word."""
    return [_SYNONYMS.get(w, w) for w in _WORD_RE.findall(text.lower())]


def tokenize(text: str, length: int = MAX_TOKENS) -> list[int]:
    """Word ids over :data:`VOCABULARY`: :data:`UNK_ID` for unknown words, cut or padded with
    :data:`PAD_ID` to ``length``."""
    if length < 1:
        raise InvalidInputError(f"token length must be >= 1, not {length}")
    ids = [_WORD_ID.get(w, UNK_ID) for w in words_of(text)][:length]
    return ids + [PAD_ID] * (length - len(ids))


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


_POSITION_PHRASE = {
    Position.LEFT: "on the left",
    Position.CENTER: "in the center",
    Position.RIGHT: "on the right",
}
_BACKGROUND_PHRASE = {
    Background.ROAD: "on a road",
    Background.GRASS: "on grass",
    Background.SAND: "on sand",
    Background.CONCRETE: "in front of a concrete wall",
    Background.BRICK: "in front of a brick wall",
}


def prompt_of(scene: Scene) -> str:
    """The canonical prompt of ``scene``; :func:`parse_prompt` reads it back to the same scene.

    A lone object's size and position are said only when they are not the defaults (large,
    center); with several objects every size and position is said."""
    single = len(scene.objects) == 1
    phrases = []
    for i, ob in enumerate(scene.objects):
        words = [] if single and ob.size is Size.LARGE else [str(ob.size)]
        words += [str(ob.colour), str(ob.kind)]
        text = f"{_article(words[0])} {' '.join(words)}"
        if scene.crack and i == scene.cracked_index:
            text += " with a crack"
        if not (single and ob.position is Position.CENTER):
            text += " " + _POSITION_PHRASE[ob.position]
        phrases.append(text)
    text = " and ".join(phrases)
    text += (" " if single else ", ") + _BACKGROUND_PHRASE[scene.background]
    if scene.lighting is Lighting.NIGHT:
        text += " at night"
    return text


DEFAULT_SCENE = Scene((SceneObject(Kind.CAR, Colour.RED, Size.LARGE, Position.CENTER),), Background.ROAD)


@dataclass(frozen=True)
class ParsedPrompt:
    """What :func:`parse_prompt` read: the scene (defaults filled in), the words it does not
    know (in order, once each), which attributes the text stated (``"background"``,
    ``"lighting"``, ``"crack"``, ``"0.kind"``, ``"0.colour"``, ``"1.position"``, ...) and notes
    on what it had to change or drop."""

    scene: Scene
    unknown: tuple[str, ...]
    stated: frozenset[str]
    notes: tuple[str, ...] = ()


@dataclass
class _Draft:
    kind: Kind
    colour: Colour | None
    size: Size | None
    position: Position | None = None


def parse_prompt(text: str) -> ParsedPrompt:
    """Read a prompt into a scene. Never raises on odd text: unknown words are ignored and
    reported, a prompt without an object word gives :data:`DEFAULT_SCENE`'s object.

    Size and colour words attach to the next object word; a position word to the object just
    named (or, when none is waiting for one, to the next); ``concrete``/``brick`` (``wall``) and
    ``road``/``grass``/``sand`` name the background; ``night``/``day`` the light; ``crack`` sets
    the crack unless ``without``/``no``/``not`` stands within the two words before it."""
    words = words_of(text)
    unknown: list[str] = []
    notes: list[str] = []
    stated: set[str] = set()
    drafts: list[_Draft] = []
    colour: Colour | None = None
    size: Size | None = None
    position: Position | None = None
    background: Background | None = None
    lighting: Lighting | None = None
    crack: bool | None = None
    i = 0
    while i < len(words):
        word = words[i]
        if word in _BACKGROUND_WORDS:
            background = _BACKGROUND_WORDS[word]
            if background in PLAIN_WALLS and i + 1 < len(words) and words[i + 1] == "wall":
                i += 1
        elif word in _KIND_WORDS:
            if len(drafts) == MAX_OBJECTS:
                notes.append(f"more than {MAX_OBJECTS} objects: dropped a {word}")
            else:
                drafts.append(_Draft(Kind(word), colour, size, position))
            colour = size = position = None
        elif word in _COLOUR_WORDS:
            colour = Colour(word)
        elif word in _SIZE_WORDS:
            size = Size(word)
        elif word in _POSITION_WORDS:
            last = drafts[-1] if drafts else None
            if last is not None and last.position is None and colour is None and size is None:
                last.position = Position(word)
            else:
                position = Position(word)
        elif word in _LIGHTING_WORDS:
            lighting = Lighting(word)
        elif (said := crack_said(words, i)) is not None:
            crack = said
        elif word not in _WORD_ID and word not in unknown:
            unknown.append(word)
        i += 1
    if colour is not None or size is not None or position is not None:
        notes.append("size, colour or position words after the last object were ignored")
    if not drafts:
        main = DEFAULT_SCENE.main
        drafts = [_Draft(main.kind, None, None)]
    else:
        stated.update(f"{n}.kind" for n in range(len(drafts)))
    for n, d in enumerate(drafts):
        stated.update(
            f"{n}.{attr}" for attr in ("colour", "size", "position") if getattr(d, attr) is not None
        )
    positions = _assign_positions(drafts, notes, stated)
    objects = tuple(
        SceneObject(d.kind, d.colour or DEFAULT_COLOUR[d.kind], d.size or Size.LARGE, p)
        for d, p in zip(drafts, positions, strict=True)
    )
    if background is not None:
        stated.add("background")
    if lighting is not None:
        stated.add("lighting")
    if crack is not None:
        stated.add("crack")
    if crack and not any(ob.kind in CRACKABLE for ob in objects):
        notes.append("a crack needs a pipe or a wall: ignored")
        stated.discard("crack")
        crack = False
    scene = Scene(
        objects,
        background or BACKGROUNDS_OF[objects[0].kind][0],
        lighting or Lighting.DAY,
        bool(crack),
    )
    return ParsedPrompt(scene, tuple(unknown), frozenset(stated), tuple(notes))


def crack_said(words: list[str], i: int) -> bool | None:
    """What ``words[i]`` says of a crack: ``crack`` sets it unless ``without``/``no``/``not`` stands
    within the two words before; ``intact`` clears it; any other word says nothing (None)."""
    if words[i] == "crack":
        return not any(w in _NEGATIONS for w in words[max(i - 2, 0) : i])
    return False if words[i] == "intact" else None


def _assign_positions(drafts: list[_Draft], notes: list[str], stated: set[str]) -> list[Position]:
    """Stated positions where free; the others fill the free slots (a lone object: center)."""
    taken: list[Position | None] = []
    for n, d in enumerate(drafts):
        if d.position is not None and d.position in taken:
            notes.append(f"two objects on the {d.position}: moved the {d.kind}")
            stated.discard(f"{n}.position")
            taken.append(None)
        else:
            taken.append(d.position)
    if len(drafts) == 1:
        preference = [Position.CENTER, Position.LEFT, Position.RIGHT]
    elif len(drafts) == 2:
        preference = [Position.LEFT, Position.RIGHT, Position.CENTER]
    else:
        preference = [Position.LEFT, Position.CENTER, Position.RIGHT]
    free = [p for p in preference if p not in taken]
    out: list[Position] = []
    for p in taken:
        out.append(p if p is not None else free.pop(0))
    return out
