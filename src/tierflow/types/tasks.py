"""What a request asks for, as the router sees it: its task kind and what its SLA prefers."""

from __future__ import annotations

from enum import StrEnum

from tierflow.errors import InvalidInputError

# The output sizes the bundled image generator has a level for (tierflow.model.demo.image.RESOLUTIONS).
IMAGE_RESOLUTIONS: tuple[int, ...] = (256, 512, 1024, 2048)


class TaskKind(StrEnum):
    """The kinds of work the router keeps a row of the task-resource matrix for."""

    TEXT_SHORT = "text_short"
    TEXT_LONG = "text_long"
    IMAGE_256 = "image_256"
    IMAGE_512 = "image_512"
    IMAGE_1024 = "image_1024"
    IMAGE_2048 = "image_2048"
    IMAGE_EDIT = "image_edit"
    CLIP = "clip"
    CRACK_DETECT = "crack_detect"
    REALTIME_STREAM = "realtime_stream"

    @classmethod
    def parse(cls, value: TaskKind | str) -> TaskKind:
        """A kind from its name (any case, ``-`` for ``_``); an unknown one raises InvalidInputError."""
        if isinstance(value, TaskKind):
            return value
        try:
            return cls(str(value).strip().lower().replace("-", "_"))
        except ValueError:
            raise InvalidInputError(
                f"unknown task kind {value!r} (one of: {', '.join(k.value for k in cls)})"
            ) from None

    @classmethod
    def image(cls, resolution: int) -> TaskKind:
        """The image-generation kind at ``resolution`` px; a size with no level raises InvalidInputError."""
        if isinstance(resolution, bool) or resolution not in IMAGE_RESOLUTIONS:
            raise InvalidInputError(
                f"no image level for resolution {resolution!r} (one of: "
                f"{', '.join(str(r) for r in IMAGE_RESOLUTIONS)})"
            )
        return cls(f"image_{resolution}")

    @property
    def resolution(self) -> int | None:
        """The output size of an image-generation kind (``image_512`` -> 512); None for the others."""
        head, _, size = self.value.partition("_")
        return int(size) if head == "image" and size.isdigit() else None


class Prefer(StrEnum):
    """What to optimise among the offers that meet an SLA."""

    LATENCY = "latency"  # the fastest
    QUALITY = "quality"  # the highest quality, then the fastest
    ENERGY = "energy"  # the least device energy, then the fastest

    @classmethod
    def parse(cls, value: Prefer | str) -> Prefer:
        """A preference from its name (any case); an unknown one raises InvalidInputError."""
        if isinstance(value, Prefer):
            return value
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise InvalidInputError(
                f"unknown preference {value!r} (one of: {', '.join(p.value for p in cls)})"
            ) from None
