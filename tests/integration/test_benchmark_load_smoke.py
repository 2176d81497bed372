"""The load benchmark runs end to end on tiny sizes and prints every figure it promises.

Real stack: ``whisperengine run`` as a child process on a fresh PostgreSQL database, Redis and a
Chroma server, against the fake Discord gateway and the fake LLM. The figures are parsed, not
judged: speed is the benchmark's business, not the test's.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from benchmarks.load import main
from tests.conftest import require_postgres, require_redis

pytestmark = pytest.mark.slow

NUMBER = r"(\d+(?:\.\d+)?|nan)"
EXPECTED = {
    "sent": rf"^sent: (\d+) messages measured \({NUMBER}/s\), (\d+) in all$",
    "throughput": rf"^throughput: {NUMBER} replies/s \((\d+) replies in the window\)$",
    "ttfr": rf"^time to first reply: p50 {NUMBER} ms, p99 {NUMBER} ms, max {NUMBER} ms$",
    "errors": r"^errors: (\d+) \(apologies (\d+), no reply within \d+ s (\d+), send failures (\d+), "
    r"bot log errors (\d+)\)$",
    "dropped": r"^dropped: (\d+) \(target 0\); duplicates: (\d+)$",
    "rss": rf"^peak RSS of the bot: {NUMBER} MiB; stopped in {NUMBER} s \(exit codes \[(\d+)\]\)$",
    "uptime": r"^uptime at start: .*load average",
}


def test_the_load_benchmark_prints_its_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    require_postgres()
    require_redis()
    out = tmp_path / "load.json"
    args = ["--duration", "3", "--warmup", "1", "--users", "6", "--think-s", "0.5", "--grace", "20"]
    code = main([*args, "--json", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    lines = printed.splitlines()
    for name, pattern in EXPECTED.items():
        assert any(re.match(pattern, line) for line in lines), f"no {name} line in:\n{printed}"
    results = json.loads(out.read_text())
    assert results["config"]["users"] == 6
    assert {"replies_per_s", "ttfr_ms", "errors", "dropped", "duplicates", "bots"} <= results.keys()
    assert results["sent"] >= results["measured_sent"]
    assert [bot["exit_code"] for bot in results["bots"]] == [0]
