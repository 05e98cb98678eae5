"""Procedural scenes, the grammar: its word sets, the tables per kind, colour and position, and
:class:`Scene`, :class:`SceneObject`, :class:`RenderedScene`."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from tierflow.errors import InvalidInputError

FloatArray = npt.NDArray[np.floating[Any]]  # float32 at run time
ImageArray = npt.NDArray[np.uint8]
MaskArray = npt.NDArray[np.bool_]


class Kind(StrEnum):
    CAR = "car"
    VAN = "van"
    TRUCK = "truck"
    BALL = "ball"
    BOX = "box"
    CONE = "cone"
    PIPE = "pipe"
    WALL = "wall"


class Colour(StrEnum):
    RED = "red"
    GREEN = "green"
    BLUE = "blue"
    YELLOW = "yellow"
    WHITE = "white"
    BLACK = "black"
    ORANGE = "orange"
    PURPLE = "purple"
    GREY = "grey"


class Size(StrEnum):
    SMALL = "small"
    LARGE = "large"


class Position(StrEnum):
    LEFT = "left"
    CENTER = "center"
    RIGHT = "right"


class Background(StrEnum):
    ROAD = "road"
    GRASS = "grass"
    SAND = "sand"
    CONCRETE = "concrete wall"  # a plain wall with a floor, for the crack scenes
    BRICK = "brick wall"  # a plain wall with a floor, for the crack scenes


class Lighting(StrEnum):
    DAY = "day"
    NIGHT = "night"


VEHICLES: tuple[Kind, ...] = (Kind.CAR, Kind.VAN, Kind.TRUCK)
SIMPLE_OBJECTS: tuple[Kind, ...] = (Kind.BALL, Kind.BOX, Kind.CONE)
CRACKABLE: tuple[Kind, ...] = (Kind.PIPE, Kind.WALL)
PLAIN_WALLS: tuple[Background, ...] = (Background.CONCRETE, Background.BRICK)
MAX_OBJECTS = 3

#: Where each kind is sampled by :func:`random_scene`; the first entry is the kind's default
#: background when a prompt names none. (A :class:`Scene` may combine any kind and background.)
BACKGROUNDS_OF: dict[Kind, tuple[Background, ...]] = {
    Kind.CAR: (Background.ROAD,),
    Kind.VAN: (Background.ROAD,),
    Kind.TRUCK: (Background.ROAD,),
    Kind.BALL: (Background.GRASS, Background.ROAD, Background.SAND),
    Kind.BOX: (Background.GRASS, Background.ROAD, Background.SAND),
    Kind.CONE: (Background.ROAD, Background.GRASS, Background.SAND),
    Kind.PIPE: (Background.CONCRETE, Background.BRICK, Background.GRASS, Background.SAND),
    Kind.WALL: (Background.GRASS, Background.SAND, Background.ROAD),
}

#: The colour a prompt gets for an object whose colour it does not name.
DEFAULT_COLOUR: dict[Kind, Colour] = {
    Kind.CAR: Colour.RED,
    Kind.VAN: Colour.WHITE,
    Kind.TRUCK: Colour.BLUE,
    Kind.BALL: Colour.RED,
    Kind.BOX: Colour.ORANGE,
    Kind.CONE: Colour.ORANGE,
    Kind.PIPE: Colour.GREY,
    Kind.WALL: Colour.GREY,
}

#: The paint of each colour in day light (sRGB, 0..255).
RGB: dict[Colour, tuple[int, int, int]] = {
    Colour.RED: (200, 32, 32),
    Colour.GREEN: (36, 150, 54),
    Colour.BLUE: (34, 72, 200),
    Colour.YELLOW: (236, 206, 34),
    Colour.WHITE: (236, 236, 232),
    Colour.BLACK: (28, 28, 32),
    Colour.ORANGE: (242, 122, 22),
    Colour.PURPLE: (122, 44, 162),
    Colour.GREY: (130, 130, 130),
}

#: An object's extent (normalised units of the image side): a vehicle's, pipe's or wall's
#: length, a ball's diameter, a box's width, a cone's height.
EXTENT: dict[Kind, dict[Size, float]] = {
    Kind.CAR: {Size.LARGE: 0.36, Size.SMALL: 0.22},
    Kind.VAN: {Size.LARGE: 0.36, Size.SMALL: 0.22},
    Kind.TRUCK: {Size.LARGE: 0.48, Size.SMALL: 0.30},
    Kind.BALL: {Size.LARGE: 0.20, Size.SMALL: 0.11},
    Kind.BOX: {Size.LARGE: 0.22, Size.SMALL: 0.13},
    Kind.CONE: {Size.LARGE: 0.26, Size.SMALL: 0.15},
    Kind.PIPE: {Size.LARGE: 0.42, Size.SMALL: 0.26},
    Kind.WALL: {Size.LARGE: 0.40, Size.SMALL: 0.24},
}

#: The centre x of each position (normalised), before the seed's jitter.
POSITION_X: dict[Position, float] = {Position.LEFT: 0.2, Position.CENTER: 0.5, Position.RIGHT: 0.8}


@dataclass(frozen=True)
class SceneObject:
    kind: Kind
    colour: Colour
    size: Size = Size.LARGE
    position: Position = Position.CENTER


@dataclass(frozen=True)
class Scene:
    """One to three objects at distinct positions; ``crack`` is on the first pipe or wall."""

    objects: tuple[SceneObject, ...]
    background: Background = Background.ROAD
    lighting: Lighting = Lighting.DAY
    crack: bool = False

    def __post_init__(self) -> None:
        objects = tuple(self.objects)
        object.__setattr__(self, "objects", objects)
        if not 1 <= len(objects) <= MAX_OBJECTS:
            raise InvalidInputError(f"a scene holds 1 to {MAX_OBJECTS} objects, not {len(objects)}")
        for ob in objects:
            if not isinstance(ob, SceneObject):
                raise InvalidInputError(f"scene objects must be SceneObject, not {type(ob).__name__}")
            Kind(ob.kind), Colour(ob.colour), Size(ob.size), Position(ob.position)
        Background(self.background), Lighting(self.lighting)
        positions = [ob.position for ob in objects]
        if len(set(positions)) != len(positions):
            raise InvalidInputError(
                f"scene objects need distinct positions, got {[str(p) for p in positions]}"
            )
        if self.crack and self.cracked_index is None:
            raise InvalidInputError("only a pipe or a wall can have a crack")

    @property
    def main(self) -> SceneObject:
        """The first object: the one a single-object label (the classifier's) is about."""
        return self.objects[0]

    @property
    def cracked_index(self) -> int | None:
        """Index of the object that carries the crack when there is one (the first pipe or wall)."""
        for i, ob in enumerate(self.objects):
            if ob.kind in CRACKABLE:
                return i
        return None


@dataclass(frozen=True, eq=False)
class RenderedScene:
    """A render and its labels.

    ``object_ids`` marks each object's visible silhouette (0 = background, k = ``scene.objects[k-1]``,
    pixels at least half covered); ``paint_ids`` the pixels where the object's own colour shows
    nearly pure (not its edges, windows, wheels, lights or cracks); ``boxes`` each object's
    bounding box in normalised ``(x0, y0, x1, y1)`` (of the visible silhouette).
    """

    scene: Scene
    seed: int
    image: ImageArray
    crack_mask: MaskArray
    object_ids: npt.NDArray[np.uint8]
    paint_ids: npt.NDArray[np.uint8]
    boxes: tuple[tuple[float, float, float, float], ...]

    @property
    def resolution(self) -> int:
        return int(self.image.shape[0])
