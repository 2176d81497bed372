"""Prometheus metrics of the process, served at ``GET /metrics`` by the web server.

:class:`PrometheusMetrics` implements the engine's :class:`engine.ports.Metrics` port
(messages, reply latency, time to first token, streamed LLM chunks and tokens, tool calls by
tool and outcome) and reads
the rest when scraped: queue depths (memory writer, relationship tracker, replies in
flight) and each LLM backend's failures from :meth:`engine.llm.ResilientLLM.stats`.

Every series is named ``whisperengine_*``. Each instance has its own registry, so two
apps in one process (tests) never share counters.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from engine.llm import BackendStats
from engine.ports import ToolOutcome

# Seconds: a streamed reply's first chunk is expected within a few seconds, a whole
# reply from a CPU model may take a minute.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)


@dataclass(frozen=True, slots=True)
class MetricsSnapshot:
    """The counters at one moment, for the owner's console (its charts are differences of two)."""

    messages: float
    """Messages handled so far, every platform and kind."""
    reply_buckets: tuple[tuple[float, float], ...]
    """The reply-time histogram, every platform together: (upper bound in seconds, cumulative
    count), ending with ``inf``."""
    llm_errors: float
    """Failed LLM calls so far, every backend."""
    queues: Mapping[str, int]


class PrometheusMetrics:
    """The engine's metrics port, exported in the Prometheus text format."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._messages = Counter(
            "whisperengine_messages_handled",
            "Messages the engine answered, by platform and outcome (answer, apology, rate_limited...).",
            ["platform", "kind"],
            registry=self.registry,
        )
        self._reply_seconds = Histogram(
            "whisperengine_reply_seconds",
            "Time from a message reaching the engine to its complete reply.",
            ["platform"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._first_token_seconds = Histogram(
            "whisperengine_reply_first_token_seconds",
            "Time from a message reaching the engine to the first chunk of its reply.",
            ["platform"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._chunks = Counter(
            "whisperengine_llm_chunks",
            "Text chunks streamed by each LLM backend.",
            ["backend"],
            registry=self.registry,
        )
        self._tokens = Counter(
            "whisperengine_llm_tokens",
            "Tokens streamed by each LLM backend (estimated from the text: about 3.5 characters each).",
            ["backend"],
            registry=self.registry,
        )
        self._tool_calls = Counter(
            "whisperengine_tool_calls",
            "Tool calls the model asked for, by tool and outcome (ok, error, timeout, refused).",
            ["tool", "outcome"],
            registry=self.registry,
        )
        self._tool_seconds = Histogram(
            "whisperengine_tool_call_seconds",
            "Time one tool call took, by tool.",
            ["tool"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._state = _StateCollector()
        self.registry.register(self._state)

    # --- the engine's port ---------------------------------------------------------------

    def message_handled(self, platform: str, kind: str) -> None:
        self._messages.labels(platform=platform, kind=kind).inc()

    def reply_timed(self, platform: str, *, total_s: float, first_token_s: float | None) -> None:
        self._reply_seconds.labels(platform=platform).observe(total_s)
        if first_token_s is not None:
            self._first_token_seconds.labels(platform=platform).observe(first_token_s)

    def llm_streamed(self, backend: str, *, chunks: int, approx_tokens: int) -> None:
        self._chunks.labels(backend=backend).inc(chunks)
        self._tokens.labels(backend=backend).inc(approx_tokens)

    def tool_called(self, tool: str, outcome: ToolOutcome, *, duration_s: float) -> None:
        self._tool_calls.labels(tool=tool, outcome=outcome).inc()
        self._tool_seconds.labels(tool=tool).observe(duration_s)

    # --- read when scraped -----------------------------------------------------------------

    def watch_queue(self, name: str, depth: Callable[[], int]) -> None:
        """Export ``depth()`` as ``whisperengine_queue_depth{queue=name}``."""
        self._state.queues[name] = depth

    def watch_llm(self, stats: Callable[[], Sequence[BackendStats]]) -> None:
        """Export each backend's attempts and failures from ``stats()``."""
        self._state.llm_stats = stats

    def render(self) -> bytes:
        """Every metric, in the Prometheus text exposition format."""
        return generate_latest(self.registry)

    def snapshot(self) -> MetricsSnapshot:
        """The counters now, summed over their labels."""
        messages = sum(
            s.value for m in self._messages.collect() for s in m.samples if s.name.endswith("_total")
        )
        buckets: dict[float, float] = {}
        for metric in self._reply_seconds.collect():
            for sample in metric.samples:
                if sample.name.endswith("_bucket"):
                    bound = float(sample.labels["le"])
                    buckets[bound] = buckets.get(bound, 0.0) + sample.value
        if not buckets:
            buckets = {bound: 0.0 for bound in (*LATENCY_BUCKETS, float("inf"))}
        stats = self._state.llm_stats() if self._state.llm_stats is not None else ()
        return MetricsSnapshot(
            messages=float(messages),
            reply_buckets=tuple(sorted(buckets.items())),
            llm_errors=float(sum(backend.failures for backend in stats)),
            queues={name: read() for name, read in self._state.queues.items()},
        )


class _StateCollector(Collector):
    def __init__(self) -> None:
        self.queues: dict[str, Callable[[], int]] = {}
        self.llm_stats: Callable[[], Sequence[BackendStats]] | None = None

    def collect(self) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "whisperengine_queue_depth", "Items waiting in each background queue.", labels=["queue"]
        )
        for name, read in self.queues.items():
            depth.add_metric([name], read())
        yield depth
        attempts = CounterMetricFamily(
            "whisperengine_llm_attempts", "Calls made to each LLM backend.", labels=["backend"]
        )
        errors = CounterMetricFamily(
            "whisperengine_llm_errors", "Failed calls to each LLM backend.", labels=["backend"]
        )
        for backend in self.llm_stats() if self.llm_stats is not None else ():
            attempts.add_metric([backend.name], backend.attempts)
            errors.add_metric([backend.name], backend.failures)
        yield attempts
        yield errors
