"""Health of the process's components: each is ``ok``, ``degraded`` or ``down``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Literal

from engine.errors import WhisperEngineError

Status = Literal["ok", "degraded", "down"]


@dataclass(frozen=True, slots=True)
class ComponentHealth:
    name: str
    status: Status
    backend: str
    detail: str = ""
    latency_ms: float | None = None


Probe = Callable[[], Awaitable[None]]


async def probe(name: str, backend: str, check: Probe, *, timeout_s: float = 2.0) -> ComponentHealth:
    """Run one health check: ok when it returns, down when it raises or times out."""
    started = time.perf_counter()
    try:
        await asyncio.wait_for(check(), timeout_s)
    except TimeoutError:
        return ComponentHealth(name, "down", backend, f"no answer within {timeout_s:g}s")
    except WhisperEngineError as exc:
        return ComponentHealth(name, "down", backend, str(exc))
    return ComponentHealth(name, "ok", backend, latency_ms=(time.perf_counter() - started) * 1000)


def overall(components: Mapping[str, ComponentHealth]) -> Status:
    statuses = {c.status for c in components.values()}
    if not statuses or statuses == {"ok"}:
        return "ok"
    return "degraded"
