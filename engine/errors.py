"""The one error tree of WhisperEngine.

Every error the engine raises or lets through is a :class:`WhisperEngineError`.
SDK exceptions (openai, asyncpg, redis, chromadb, discord.py, ...) are converted at the
boundary of the module that talks to that SDK, so callers only ever see these::

    WhisperEngineError
    ├── ConfigError            a setting is missing or invalid; names the variable to fix
    ├── BackendUnavailable     a configured service cannot be reached; names it and its variable
    ├── StorageError           a store failed an operation it should have been able to do
    ├── LLMError               the language model could not produce a reply
    │   └── LLMTimeout         ... because it took longer than the configured timeout
    └── InputError             a message, attachment or option is malformed or too large

``bot/cli.py`` turns ConfigError and BackendUnavailable into one-line messages at start-up;
each dispatched task has one error boundary that logs anything else with ``logger.exception``.
"""

from __future__ import annotations


class WhisperEngineError(Exception):
    """Base of every error WhisperEngine raises on purpose."""


class ConfigError(WhisperEngineError):
    """A setting is missing or invalid. ``variable`` names the environment variable to fix."""

    def __init__(self, message: str, *, variable: str | None = None) -> None:
        super().__init__(message)
        self.variable = variable

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (set {self.variable})" if self.variable else text


class BackendUnavailable(WhisperEngineError):
    """A configured service (database, cache, vector store, LLM) cannot be reached."""

    def __init__(self, service: str, detail: str, *, variable: str | None = None) -> None:
        super().__init__(f"{service} is unreachable: {detail}")
        self.service = service
        self.detail = detail
        self.variable = variable

    def __str__(self) -> str:
        text = super().__str__()
        return f"{text} (check {self.variable})" if self.variable else text


class StorageError(WhisperEngineError):
    """A store failed an operation."""


class LLMError(WhisperEngineError):
    """The language model could not produce a reply; ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class LLMTimeout(LLMError):
    """The language model did not answer within the configured timeout."""


class InputError(WhisperEngineError):
    """Input from a user or a platform is malformed or exceeds a limit."""
