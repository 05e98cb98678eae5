"""Fixtures of the context tests: one real Redis server for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.redis_server import redis_server


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The url of a real redis-server started for this test session (tests/support/redis_server.py)."""
    with redis_server() as url:
        yield url
