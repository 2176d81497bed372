"""What the owner's console (``adapters/web/console.py``) reads from this process.

:class:`ProcessConsole` samples the Prometheus counters every ``CONSOLE_SAMPLE_S`` seconds into
a short history (the console's charts: each figure over the minute before its sample), keeps
the last WARNING-or-worse log records in a ring buffer (:class:`ProblemLog`, secrets redacted
with the same filter the log handler uses) and says which platforms are configured.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from adapters.web.console import LoggedProblem, MetricsPoint, PlatformState
from bot.logs import REDACTED, RedactSecrets
from bot.metrics import MetricsSnapshot, PrometheusMetrics

if TYPE_CHECKING:
    from bot.app import App

logger = logging.getLogger(__name__)

WINDOW_S = 60.0
HISTORY_S = 15 * 60.0
PROBLEMS_KEPT = 50


class ProblemLog(logging.Handler):
    """The last ``size`` records of WARNING or worse, their messages redacted, in memory."""

    def __init__(self, secrets: Iterable[str], *, size: int = PROBLEMS_KEPT) -> None:
        super().__init__(logging.WARNING)
        self.addFilter(RedactSecrets(secrets))
        self.problems: deque[LoggedProblem] = deque(maxlen=size)

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:  # the filter has formatted and redacted it
            message = f"{message}\n{record.exc_text.strip().splitlines()[-1]}"
        self.problems.append(LoggedProblem(record.created, record.levelname, record.name, message))


def quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The ``q`` quantile of a cumulative histogram, as Prometheus's ``histogram_quantile`` reads
    it (linear within a bucket; the last finite bound for the ``inf`` bucket). None: empty."""
    total = buckets[-1][1] if buckets else 0.0
    if total <= 0:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower
            inside = count - below
            return lower + (bound - lower) * ((rank - below) / inside if inside else 1.0)
        lower, below = bound, count
    return lower


def point_between(
    old: MetricsSnapshot, new: MetricsSnapshot, *, old_at: float, new_at: float
) -> MetricsPoint:
    """The figures of the time between two snapshots, per minute."""
    minutes = max(new_at - old_at, 1e-9) / 60.0
    recent = tuple(
        (bound, count - dict(old.reply_buckets).get(bound, 0.0)) for bound, count in new.reply_buckets
    )
    return MetricsPoint(
        at=new_at,
        messages_per_min=round(max(new.messages - old.messages, 0.0) / minutes, 2),
        reply_p50_s=quantile(0.5, recent),
        reply_p95_s=quantile(0.95, recent),
        llm_errors_per_min=round(max(new.llm_errors - old.llm_errors, 0.0) / minutes, 2),
        queue_depth=sum(new.queues.values()),
        queues=dict(new.queues),
    )


def redact(text: str, app: App) -> str:
    for secret in sorted(app.settings.secrets(), key=len, reverse=True):
        text = text.replace(secret, REDACTED)
    return text


class ProcessConsole:
    """The console's :class:`adapters.web.console.ConsoleSource` for this process."""

    def __init__(
        self,
        app: App,
        metrics: PrometheusMetrics,
        *,
        sample_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._app = app
        self._metrics = metrics
        self.sample_s = sample_s
        self._clock = clock
        size = max(int(HISTORY_S / sample_s), 2)
        self._snapshots: deque[tuple[float, MetricsSnapshot]] = deque(
            maxlen=size + int(WINDOW_S / sample_s) + 1
        )
        self._points: deque[MetricsPoint] = deque(maxlen=size)
        self.problem_log = ProblemLog(app.settings.secrets())
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Collect WARNING+ records from the root logger, and sample the metrics. The start-up's
        notes (logged as warnings before this handler was there) come first."""
        now = self._clock()
        for note in self._app.notes:
            self.problem_log.problems.append(
                LoggedProblem(now, "WARNING", "start-up", redact(note, self._app))
            )
        logging.getLogger().addHandler(self.problem_log)
        self.sample()
        self._task = asyncio.create_task(self._sampling(), name="console-sampler")

    async def aclose(self) -> None:
        logging.getLogger().removeHandler(self.problem_log)
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _sampling(self) -> None:
        while True:
            await asyncio.sleep(self.sample_s)
            self.sample()

    def sample(self) -> MetricsPoint:
        """Take one sample now: the figures over the last minute (or since the first sample)."""
        now, snapshot = self._clock(), self._metrics.snapshot()
        self._snapshots.append((now, snapshot))
        old_at, old = self._snapshots[0]
        for at, earlier in self._snapshots:
            if at >= now - WINDOW_S:
                break
            old_at, old = at, earlier
        if old_at == now:  # the first sample: nothing before it
            point = point_between(snapshot, snapshot, old_at=now - WINDOW_S, new_at=now)
        else:
            point = point_between(old, snapshot, old_at=old_at, new_at=now)
        self._points.append(point)
        return point

    # --- ConsoleSource --------------------------------------------------------------------

    def metrics_history(self) -> Sequence[MetricsPoint]:
        return list(self._points)

    def recent_problems(self) -> Sequence[LoggedProblem]:
        return list(self.problem_log.problems)

    def platforms(self) -> Sequence[PlatformState]:
        settings, running = self._app.settings, set(self._app.reporters)
        configured = {
            "discord": ("DISCORD_TOKEN", settings.discord_token is not None),
            "telegram": ("TELEGRAM_TOKEN", settings.telegram_token is not None),
            "slack": ("SLACK_BOT_TOKEN", settings.slack_bot_token is not None),
        }
        states = [
            PlatformState(
                "web",
                True,
                ("" if self._app.web is None else f"serving {self._app.web.url}, ")
                + ("API token required" if settings.api_token else "no API token: this machine only"),
            )
        ]
        for name, (variable, is_set) in configured.items():
            if not is_set:
                states.append(PlatformState(name, False, f"{variable} is not set"))
            else:
                states.append(
                    PlatformState(name, True, "" if name in running else "not started in this process")
                )
        return states
