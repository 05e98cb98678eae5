"""Follow-ups to a picture's prompt (model/scenes/follow_up.py)."""

from __future__ import annotations

import pytest

from tierflow.model.scenes import parse_prompt
from tierflow.model.scenes.follow_up import follow_up

TWO = "a red car on the left and a white van on the right, on a road"


@pytest.mark.parametrize(
    ("previous", "text", "prompt", "changes"),
    [
        ("a red car on a road", "make it blue", "a blue car on a road", ["colour of the car: red -> blue"]),
        ("a red car on a road", "paint the car blue", "a blue car on a road",
         ["colour of the car: red -> blue"]),
        (TWO, "make the van green",
         "a large red car on the left and a large green van on the right, on a road",
         ["colour of the van: white -> green"]),
        ("a red car on a road", "now at night", "a red car on a road at night", ["lighting: day -> night"]),
        ("a red car on a road", "make it a truck", "a red truck on a road", ["the car -> a truck"]),
        ("a red car on a road", "a small one on the left", "a small red car on the left on a road",
         ["size of the car: large -> small", "position of the car: center -> left"]),
        ("a grey pipe in front of a concrete wall", "with a crack",
         "a grey pipe with a crack in front of a concrete wall", ["crack: without -> with a crack"]),
        ("a grey pipe with a crack in front of a concrete wall", "without a crack",
         "a grey pipe in front of a concrete wall", ["crack: with a crack -> without"]),
        ("a red car on a road", "on grass", "a red car on grass", ["background: road -> grass"]),
    ],
)
def test_a_follow_up_changes_what_it_names_and_nothing_else(
    previous: str, text: str, prompt: str, changes: list[str]
) -> None:
    done = follow_up(previous, text)
    assert done.prompt == prompt and list(done.changes) == changes
    assert not done.upscale and done.ignored_words == ()
    before, after = parse_prompt(previous).scene, parse_prompt(done.prompt).scene
    assert len(after.objects) == len(before.objects)  # no object appears or goes


def test_resolution_words_ask_for_a_larger_picture_of_the_same_scene() -> None:
    done = follow_up("a red car on a road at night", "higher resolution please")
    assert done.upscale and done.changes == () and done.prompt == "a red car on a road at night"
    both = follow_up("a red car on a road", "hd and make it blue")
    assert both.upscale and both.prompt == "a blue car on a road"


def test_words_that_change_nothing_are_reported() -> None:
    done = follow_up("a red car on a road", "make it sparkle blue")
    assert done.prompt == "a blue car on a road" and done.ignored_words == ("sparkle",)
    nothing = follow_up("a red car on a road", "make it red")  # already red
    assert nothing.changes == () and nothing.prompt == "a red car on a road"
    # a crack needs a pipe or a wall: on a car it changes nothing
    assert follow_up("a red car on a road", "with a crack").changes == ()
