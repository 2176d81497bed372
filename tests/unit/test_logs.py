"""The entry point's logging: text or one JSON object per line, secrets always redacted."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest

from bot.logs import configure_logging, redact_also

SECRET = "sk-log-Vb38xQ0pLm"
LATER_SECRET = "stored-Hq72nZ5kWt"


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def test_json_format_writes_one_object_per_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", [SECRET], "json")
    log = logging.getLogger("whisperengine.test")
    log.info("hello %s, key %s", "wörld\nsecond line", SECRET)
    try:
        raise ValueError(f"bad key {SECRET}")
    except ValueError:
        log.exception("it failed")
    log.debug("not shown at INFO")

    records = [json.loads(line) for line in lines(capsys.readouterr().err)]
    assert len(records) == 2
    first, second = records
    assert set(first) == {"time", "level", "logger", "message"}
    assert first["level"] == "INFO" and first["logger"] == "whisperengine.test"
    assert first["message"] == "hello wörld\nsecond line, key ***"
    assert first["time"].endswith("+00:00")
    assert second["level"] == "ERROR" and second["message"] == "it failed"
    assert "ValueError: bad key ***" in second["exception"]
    assert SECRET not in json.dumps(records)


def test_text_format_is_the_default(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", [SECRET])
    logging.getLogger("whisperengine.test").warning("using %s", SECRET)
    (line,) = lines(capsys.readouterr().err)
    assert line.endswith("WARNING whisperengine.test: using ***")
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_secrets_learnt_after_start_up_are_redacted_too(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("INFO", [SECRET], "json")
    log = logging.getLogger("whisperengine.test")
    redact_also([LATER_SECRET])
    log.info("keys %s and %s", SECRET, LATER_SECRET)
    (line,) = lines(capsys.readouterr().err)
    assert json.loads(line)["message"] == "keys *** and ***"
