"""Health of the process's components: each is ``ok``, ``degraded`` or ``down``."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Literal

from engine.breaker import BreakerSnapshot, BreakerState
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


def with_circuits(checked: ComponentHealth, circuits: Sequence[BreakerSnapshot]) -> ComponentHealth:
    """A component's probed health, corrected by the circuit breakers of its backends.

    Every circuit open: ``down`` (calls are refused at once, whatever the probe says). Some not
    closed: at best ``degraded``, naming them. All closed (or no breakers): as probed.
    """
    troubled = [c for c in circuits if c.state is not BreakerState.CLOSED]
    if not troubled:
        return checked
    detail = "; ".join(
        f"{c.name}: circuit {c.state}" + (f" ({c.last_error})" if c.last_error else "") for c in troubled
    )
    if checked.detail:
        detail = f"{checked.detail}; {detail}"
    all_open = all(c.state is BreakerState.OPEN for c in circuits)
    status: Status = "down" if all_open or checked.status == "down" else "degraded"
    return replace(checked, status=status, detail=detail)
