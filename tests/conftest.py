"""Shared test fixtures: how tests find the machine's real services.

A test that needs PostgreSQL or Redis asks for it with ``require_postgres()`` /
``require_redis()``: when the service is unreachable the test is skipped with the reason,
unless ``CI`` is set, where a missing service is a failure.
"""

from __future__ import annotations

import os
import socket

import pytest

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0):
            return True
    except OSError:
        return False


def require_service(name: str, host: str, port: int) -> None:
    """Skip (or fail under CI) when ``host:port`` does not accept connections."""
    if _reachable(host, port):
        return
    reason = f"{name} is not reachable on {host}:{port}"
    if os.environ.get("CI"):
        pytest.fail(f"{reason}, and CI is set: the service must be running")
    pytest.skip(reason)


def require_postgres() -> str:
    require_service("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_URL


def require_redis() -> str:
    require_service("Redis", "127.0.0.1", 6379)
    return REDIS_URL
