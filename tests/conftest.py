"""Fixtures shared by the whole suite."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tierflow_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One tierflow home for the tests that start ``tierflow up``: the bundled image model is compiled
    into its package once per run (about a minute), not once per deployment."""
    from tierflow.compiler.bundled import bundled_package

    home = tmp_path_factory.mktemp("tierflow-home")
    bundled_package("demo-image", home)
    return home
