"""Procedural scenes: a small grammar, a renderer at any resolution, prompts and their parser.

The data set that the text-to-image model and its quality classifier learn from is drawn by this
module; nothing is downloaded. A :class:`Scene` is one to three objects (kind, colour, size,
horizontal position) on a background, in day or night light, with an optional crack on a pipe or
a wall::

    scene = Scene((SceneObject(Kind.TRUCK, Colour.BLUE, Size.LARGE, Position.LEFT),
                   SceneObject(Kind.BALL, Colour.YELLOW, Size.SMALL, Position.RIGHT)),
                  Background.GRASS)
    prompt_of(scene)    # 'a large blue truck on the left and a small yellow ball on the right, on grass'
    render(scene, 512, seed=3).image   # uint8 [512, 512, 3]

**One geometry at every resolution.** Every shape is a signed distance field in normalised image
coordinates (x to the right, y down, both in [0, 1]); a pixel's coverage is its distance to the
edge in pixels (analytic anti-aliasing), and lines or dots thinner than a pixel keep their ink
(a line half a pixel wide is drawn one pixel wide at half strength). The random parts of a scene
(positions jitter, texture noise lattices, crack paths, stars) come from ``seed`` alone, never
from the resolution. What does depend on the resolution is only what a pixel cannot show: noise
octaves finer than about two pixels are faded out, and crack paths are drawn at the refinement
level that their pixels resolve. So a 512 px render box-filtered to 64 px is close to the 64 px
render (the tests measure it), and (low-res, high-res) pairs for super-resolution come from
rendering the same ``(scene, seed)`` twice.

**The grammar** (:data:`BACKGROUNDS_OF`): vehicles (car, van, truck) stand on roads; simple objects
(ball, box, cone) on grass, roads or sand; pipes in front of plain walls (concrete, brick) or on
grass or sand; wall sections on grass, sand or roads. Only pipes and walls can carry a crack.

**Text.** :func:`prompt_of` writes a scene's canonical prompt; :func:`parse_prompt` reads any
text back, ignoring and reporting the words it does not know; :data:`VOCABULARY` and
:func:`tokenize` give the fixed word ids a text encoder is trained on.

**The modules**, one job each:

- :mod:`~tierflow.model.scenes.grammar`: the word sets (:class:`Kind`, :class:`Colour`, ...), the
  tables per kind, colour and position, :class:`Scene`, :class:`SceneObject`, :class:`RenderedScene`;
- :mod:`~tierflow.model.scenes.sampling`: :func:`random_scene`;
- :mod:`~tierflow.model.scenes.text`: :data:`VOCABULARY`, :func:`words_of`, :func:`tokenize`,
  :func:`prompt_of`, :func:`parse_prompt`;
- :mod:`~tierflow.model.scenes.canvas`: the canvas, its regions, signed-distance primitives, noise;
- :mod:`~tierflow.model.scenes.backgrounds`: the horizon, ground and floor lines, the backgrounds;
- :mod:`~tierflow.model.scenes.objects`: drawing the objects (car, van, truck, ball, box, cone,
  pipe, wall);
- :mod:`~tierflow.model.scenes.cracks`: crack paths and drawing them;
- :mod:`~tierflow.model.scenes.render`: :func:`render`, the objects' boxes, :func:`downsample`.

numpy only; this module imports nothing of tierflow but the error tree.
"""

from tierflow.model.scenes.cracks import _crack_paths
from tierflow.model.scenes.grammar import (
    BACKGROUNDS_OF,
    CRACKABLE,
    MAX_OBJECTS,
    RGB,
    VEHICLES,
    Background,
    Colour,
    Kind,
    Lighting,
    Position,
    Scene,
    SceneObject,
    Size,
)
from tierflow.model.scenes.render import downsample, render
from tierflow.model.scenes.sampling import random_scene
from tierflow.model.scenes.text import (
    DEFAULT_SCENE,
    MAX_TOKENS,
    PAD_ID,
    UNK_ID,
    VOCABULARY,
    parse_prompt,
    prompt_of,
    tokenize,
    words_of,
)

__all__ = [
    "BACKGROUNDS_OF",
    "Background",
    "CRACKABLE",
    "Colour",
    "DEFAULT_SCENE",
    "Kind",
    "Lighting",
    "MAX_OBJECTS",
    "MAX_TOKENS",
    "PAD_ID",
    "Position",
    "RGB",
    "Scene",
    "SceneObject",
    "Size",
    "UNK_ID",
    "VEHICLES",
    "VOCABULARY",
    "_crack_paths",
    "downsample",
    "parse_prompt",
    "prompt_of",
    "random_scene",
    "render",
    "tokenize",
    "words_of",
]
