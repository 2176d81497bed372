"""The one error tree of WhisperEngine.

Every error the engine raises or lets through is a :class:`WhisperEngineError`.
SDK exceptions (openai, asyncpg, redis, chromadb, discord.py, ...) are converted at the
boundary of the module that talks to that SDK, so callers only ever see these::

    WhisperEngineError
    ├── ConfigError            a setting is missing or invalid; names the variable to fix
    ├── BackendUnavailable     a configured service cannot be reached; names it and its variable
    │   ├── CircuitOpen        ... and its circuit breaker is open, so it was not even asked
    │   └── WriteRefused       ... and the local spool that holds writes meanwhile is full
    ├── StorageError           a store failed an operation it should have been able to do
    │   └── ConversationBusy   ... a conversation stayed locked longer than the wait limit
    ├── LLMError               the language model could not produce a reply
    │   └── LLMTimeout         ... because it took longer than the configured timeout
    ├── ToolError              a tool the model called failed; the message is told to the model
    │   └── ToolTimeout        ... because it took longer than the tool timeout
    └── InputError             a message, attachment or option is malformed or too large
        └── LinkRefused        ... an account-link code was wrong, used, expired or guessed at

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


class WriteRefused(BackendUnavailable):
    """The database is unreachable and the local spool that keeps writes until it returns is
    full: nothing was stored, and whoever sent the data must be told to try again later."""


class CircuitOpen(BackendUnavailable):
    """A call was refused without trying: the service's circuit breaker is open
    (``engine/breaker.py``) after repeated failures."""


class StorageError(WhisperEngineError):
    """A store failed an operation."""


class ConversationBusy(StorageError):
    """Another message of the conversation held its lock for longer than the wait limit."""

    def __init__(self, conversation_key: str, waited_s: float) -> None:
        super().__init__(
            f"conversation {conversation_key} is still busy with another message after {waited_s:.1f} s"
        )
        self.conversation_key = conversation_key
        self.waited_s = waited_s


class LLMError(WhisperEngineError):
    """The language model could not produce a reply; ``status`` is the HTTP status, if any."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class LLMTimeout(LLMError):
    """The language model did not answer within the configured timeout."""


class ToolError(WhisperEngineError):
    """A tool the model called (``engine/tools.py``) failed; the message is fit to hand the model
    as the tool's result, and never holds the call's arguments."""


class ToolTimeout(ToolError):
    """A tool did not answer within the tool timeout."""


class InputError(WhisperEngineError):
    """Input from a user or a platform is malformed or exceeds a limit."""


class LinkRefused(InputError):
    """An account-link code was refused; the message is fit to show the user.

    ``reason``: ``malformed``, ``unknown`` (never issued, or expired), ``used``, ``own`` (entered
    on the account that asked for it), ``already`` (the accounts are linked) or ``too_many``
    (too many codes tried lately).
    """

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
