"""The owner's console's figures: histogram quantiles, per-minute rates, the problem log, charts."""

from __future__ import annotations

import logging
import math

import pytest

from adapters.web.console import sparkline
from bot.console import ProblemLog, point_between, quantile
from bot.metrics import MetricsSnapshot, PrometheusMetrics

INF = math.inf


def test_quantiles_are_read_from_the_histogram_like_prometheus_does() -> None:
    assert quantile(0.5, ((1.0, 0.0), (2.0, 0.0), (INF, 0.0))) is None
    # 10 replies, all between 1 s and 2 s: the median halfway through that bucket
    assert quantile(0.5, ((1.0, 0.0), (2.0, 10.0), (INF, 10.0))) == pytest.approx(1.5)
    # 9 under 0.5 s, 1 past the last bound: p95 is the last finite bound
    buckets = ((0.5, 9.0), (1.0, 9.0), (INF, 10.0))
    assert quantile(0.5, buckets) == pytest.approx(0.5 * 5 / 9)
    assert quantile(0.95, buckets) == 1.0


def test_a_point_is_the_rate_per_minute_between_two_snapshots() -> None:
    metrics = PrometheusMetrics()
    metrics.watch_queue("memory_writer", lambda: 3)
    metrics.watch_queue("vector_outbox", lambda: 4)
    before = metrics.snapshot()
    for _ in range(6):
        metrics.message_handled("web", "answer")
        metrics.reply_timed("web", total_s=0.3, first_token_s=0.1)
    metrics.message_handled("discord", "apology")
    metrics.reply_timed("discord", total_s=10.0, first_token_s=None)
    after = metrics.snapshot()
    assert after.messages == 7.0

    point = point_between(before, after, old_at=100.0, new_at=130.0)  # half a minute
    assert point.messages_per_min == 14.0
    assert point.reply_p50_s is not None and 0.25 < point.reply_p50_s <= 0.5
    assert point.reply_p95_s is not None and 8.0 < point.reply_p95_s <= 15.0
    assert point.queue_depth == 7 and point.queues == {"memory_writer": 3, "vector_outbox": 4}
    assert point.llm_errors_per_min == 0.0

    quiet = point_between(after, after, old_at=130.0, new_at=190.0)
    assert quiet.messages_per_min == 0.0 and quiet.reply_p50_s is None


def test_llm_errors_come_from_the_backends_stats() -> None:
    from engine.llm import BackendStats

    failures = [0]
    metrics = PrometheusMetrics()
    metrics.watch_llm(lambda: [BackendStats(name="openai", attempts=10, failures=failures[0])])
    before = metrics.snapshot()
    failures[0] = 3
    point = point_between(before, metrics.snapshot(), old_at=0.0, new_at=60.0)
    assert point.llm_errors_per_min == 3.0


def test_the_problem_log_keeps_warnings_and_worse_with_secrets_redacted() -> None:
    secret = "sk-very-secret-value"
    log = ProblemLog([secret], size=3)
    name = "tests.console.problems"
    source = logging.getLogger(name)
    source.addHandler(log)
    source.setLevel(logging.DEBUG)
    try:
        source.info("fine, %s", secret)
        source.warning("the key %s was refused", secret)
        try:
            raise RuntimeError(f"boom with {secret}")
        except RuntimeError:
            source.exception("failed")
        for i in range(3):
            source.error("again %d", i)
    finally:
        source.removeHandler(log)
    problems = list(log.problems)
    assert [p.message for p in problems] == ["again 0", "again 1", "again 2"]  # the last three
    log2 = ProblemLog([secret])
    source.addHandler(log2)
    try:
        source.warning("the key %s was refused", secret)
        try:
            raise RuntimeError(f"boom with {secret}")
        except RuntimeError:
            source.exception("failed")
    finally:
        source.removeHandler(log2)
    first, second = log2.problems
    assert first.level == "WARNING" and first.message == "the key *** was refused"
    assert second.level == "ERROR" and second.message == "failed\nRuntimeError: boom with ***"
    assert all(secret not in p.message for p in log2.problems)


def test_a_sparkline_is_an_svg_path_with_gaps_for_missing_values() -> None:
    svg = sparkline([1.0, 2.0, None, 3.0, 4.0], label="p95 <ms>")
    assert svg.startswith("<svg") and 'aria-label="p95 &lt;ms&gt;"' in svg
    assert svg.count("<path") == 2  # the gap splits the line
    assert "<circle" in sparkline([None, 5.0], label="one")
    assert "<path" not in sparkline([], label="none")


def test_an_empty_registry_still_has_the_reply_buckets() -> None:
    snapshot = PrometheusMetrics().snapshot()
    assert isinstance(snapshot, MetricsSnapshot)
    assert snapshot.messages == 0.0 and snapshot.reply_buckets[-1] == (INF, 0.0)


async def test_the_process_console_samples_lists_platforms_and_keeps_start_up_notes() -> None:
    from types import SimpleNamespace

    from bot.console import ProcessConsole
    from config.settings import Settings

    settings = Settings(_env_file=None, telegram_token="123:telegram-secret-token", api_token="tok-tok-tok")  # type: ignore[call-arg]
    app = SimpleNamespace(
        settings=settings,
        notes=["Redis did not answer; the key 123:telegram-secret-token stays out of this"],
        reporters={"telegram": lambda: None},
        web=None,
    )
    clock = [1000.0]
    metrics = PrometheusMetrics()
    console = ProcessConsole(app, metrics, sample_s=60, clock=lambda: clock[0])  # type: ignore[arg-type]
    await console.start()
    try:
        (note,) = console.recent_problems()
        assert (
            note.logger == "start-up"
            and "telegram-secret-token" not in note.message
            and "***" in note.message
        )
        logging.getLogger("tests.console").warning("later %s", "tok-tok-tok")
        assert console.recent_problems()[-1].message == "later ***"

        for _ in range(3):
            metrics.message_handled("web", "answer")
        clock[0] += 30.0
        point = console.sample()
        assert point.messages_per_min == 6.0  # 3 in half a minute
        clock[0] += 90.0  # the window is the last minute: the earlier messages drop out
        assert console.sample().messages_per_min == 0.0
        assert len(console.metrics_history()) == 3
    finally:
        await console.aclose()
    logging.getLogger("tests.console").warning("after the close")
    assert console.recent_problems()[-1].message == "later ***"

    states = {p.name: p for p in console.platforms()}
    assert states["telegram"].configured and states["telegram"].detail == ""
    assert not states["discord"].configured and states["discord"].detail == "DISCORD_TOKEN is not set"
    assert "API token required" in states["web"].detail
