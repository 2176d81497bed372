"""All settings, read from the environment and an optional ``.env`` file.

Variable names are the conventional upper-case forms of the field names
(``database_url`` ← ``DATABASE_URL``). With nothing set, everything runs embedded
under ``DATA_DIR``: SQLite, Chroma on disk, an in-process cache, and llama.cpp with
the bundled model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

LLMBackendName = Literal["openai", "ollama", "llamacpp"]

PACKAGED_PERSONAS = Path(__file__).parent / "personas"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- where data lives ---------------------------------------------------------
    data_dir: Path = Field(Path("./data"), description="Directory for embedded databases and files.")
    database_url: str | None = Field(
        None,
        description="SQL database: sqlite:///path or postgresql://...; default $DATA_DIR/whisperengine.db.",
    )
    redis_url: str | None = Field(None, description="Redis for the cache; unset = in-process cache.")
    redis_prefix: str = Field("we:", description="Prefix of every Redis key.")
    conversation_lock_ttl_s: float = Field(
        30.0,
        gt=0,
        description="With Redis: expiry of a conversation's lock, renewed while it is held.",
    )
    conversation_lock_wait_s: float = Field(
        120.0, gt=0, description="Longest wait for a conversation busy with another message."
    )
    chroma_url: str | None = Field(
        None, description="Chroma server (http://host:port); unset = embedded Chroma."
    )
    chroma_path: Path | None = Field(None, description="Embedded Chroma directory; default $DATA_DIR/chroma.")

    # --- language model ------------------------------------------------------------
    llm_backend: Literal["auto", "openai", "ollama", "llamacpp"] = Field(
        "auto", description="auto: OpenAI if OPENAI_API_KEY is set, else Ollama if reachable, else llama.cpp."
    )
    llm_fallbacks: Annotated[list[LLMBackendName], NoDecode] = Field(
        default_factory=list,
        description="Backends to try, in order, when the main one fails (comma-separated).",
    )
    llm_model: str = Field("gpt-4o-mini", description="Model name for the OpenAI-compatible API.")
    openai_api_key: SecretStr | None = Field(None, description="API key for the OpenAI-compatible API.")
    openai_base_url: str | None = Field(None, description="Base URL of an OpenAI-compatible API (…/v1).")
    ollama_host: str = Field("http://127.0.0.1:11434", description="Ollama server.")
    ollama_model: str = Field("llama3.2", description="Ollama model name.")
    llamacpp_model_path: Path | None = Field(
        None, description="GGUF file for llama.cpp; default: bundled SmolLM2."
    )
    llamacpp_threads: int | None = Field(
        None,
        description="CPU threads for llama.cpp; default: half the cores (its threads spin while they wait, "
        "which would starve the rest of the process).",
    )
    llamacpp_context: int = Field(2048, description="llama.cpp context window in tokens.")
    llamacpp_saved_states_mb: int = Field(
        256,
        ge=0,
        description="Memory for the model states of recent conversations, so that switching between "
        "conversations does not read a whole prompt again; 0 = keep only the last one.",
    )
    llm_timeout_s: float = Field(60.0, gt=0, description="Longest wait for a complete reply.")
    llm_max_retries: int = Field(2, ge=0, le=10, description="Retries per backend before falling back.")
    llm_max_tokens: int = Field(
        256, gt=0, description="Longest reply, in tokens (a reply asked to be longer; see REPLY_MAX_TOKENS)."
    )
    prompt_style: Literal["auto", "compact", "full"] = Field(
        "auto",
        description="compact: a short prompt for a small model (short persona, a few turns, facts as a "
        "short list); full: everything for a large one. auto: compact when the main backend is llama.cpp "
        "in this process.",
    )
    reply_max_sentences: int | None = Field(
        None,
        ge=0,
        description="A usual reply ends after this many sentences; a message that asks for more (a "
        "story, details, a list) is not capped. 0 = no cap; default: 3 with compact prompts, none with full.",
    )
    reply_max_tokens: int | None = Field(
        None,
        gt=0,
        description="Longest usual reply, in tokens (a message that asks for more gets LLM_MAX_TOKENS); "
        "default: 96 with compact prompts, LLM_MAX_TOKENS with full.",
    )
    llm_temperature: float = Field(0.7, ge=0, le=2, description="Sampling temperature of replies.")
    context_token_budget: int = Field(2048, ge=256, description="Prompt + reply token budget.")

    # --- behaviour -------------------------------------------------------------------
    bot_name: str = Field("WhisperEngine", description="How the bot is named in stored turns.")
    default_persona: str = Field("ember", description="Persona used where none was chosen.")
    persona_dir: Path | None = Field(
        None, description="Extra persona YAML files; default $DATA_DIR/personas."
    )
    recent_turns: int = Field(
        20, ge=0, le=200, description="Short-term context: turns kept per conversation."
    )
    memory_top_k: int = Field(8, ge=0, le=100, description="Most long-term memories recalled per message.")
    memory_min_similarity: float = Field(0.25, ge=-1, le=1, description="Weakest recall still used.")
    memory_queue_size: int = Field(1000, ge=1, description="Bound of the background memory-write queue.")
    memory_worker: Literal["in-process", "external"] = Field(
        "in-process",
        description="Where the background memory work (writes, care, facts, summaries) runs: in every "
        "bot process, or (external) in `whisperengine worker` processes that take it from the Redis "
        "queue, so bot processes only answer. external needs REDIS_URL.",
    )
    memory_jobs_alive_s: float = Field(
        30.0,
        gt=0,
        description="A process that has not renewed its heartbeat in Redis for this long is taken "
        "for dead: the memory jobs it held go to another.",
    )
    rate_limit_messages: int = Field(10, ge=0, description="Messages per user per window; 0 = no limit.")
    rate_limit_window_s: float = Field(60.0, gt=0, description="Length of the rate-limit window, in seconds.")
    max_message_chars: int = Field(8000, ge=1, description="Longest accepted message.")
    engine_max_preparing: int = Field(
        16,
        ge=1,
        description="Messages gathering their context (stored turn, recall, persona) at once; "
        "the rest of a burst waits its turn in arrival order instead of crowding the database.",
    )

    # --- front ends ----------------------------------------------------------------------
    web_enabled: bool = Field(True, description="Serve the web chat and REST API.")
    web_host: str = Field("127.0.0.1", description="Address of the web chat and REST API.")
    web_port: int = Field(8080, ge=0, le=65535, description="Port of the web chat and REST API.")
    api_token: SecretStr | None = Field(None, description="Bearer token the REST API requires when set.")
    console_enabled: bool = Field(
        True,
        description="Serve the owner's console at /admin of the web chat (login with API_TOKEN; "
        "without one, only from this machine).",
    )
    console_sample_s: float = Field(
        5.0, gt=0, description="How often the owner's console samples the metrics for its charts, in seconds."
    )

    # --- discord ---------------------------------------------------------------------------
    discord_token: SecretStr | None = Field(None, description="Discord bot token; Discord starts when set.")
    discord_guild_ids: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="Sync slash commands to these servers only (instant; for development), comma-separated.",
    )
    discord_api_base_url: str = Field(
        "https://discord.com/api/v10", description="Discord REST API base URL (a fake server in tests)."
    )
    discord_gateway_url: str | None = Field(
        None, description="Discord gateway websocket URL; default: the one Discord announces."
    )
    discord_shard_count: int | None = Field(
        None, ge=1, description="Total shards of the bot, over all processes."
    )
    discord_shard_ids: Annotated[list[int], NoDecode] = Field(
        default_factory=list,
        description="Shards this process owns (comma-separated); default: all of DISCORD_SHARD_COUNT.",
    )
    discord_ignore_bots: bool = Field(True, description="Ignore messages written by other bots.")
    discord_admin_role: str | None = Field(
        None, description="Role (name or id) allowed to run admin commands besides Manage Server."
    )
    discord_thread_mode: Literal["off", "auto", "always"] = Field(
        "off",
        description="off: answer in the channel; auto: move long replies into a thread; "
        "always: open a thread for each new exchange. Per server with /config.",
    )
    discord_edit_interval_s: float = Field(
        1.0, ge=0.2, le=30, description="Least time between two edits of a streaming reply."
    )
    discord_sync_commands: bool = Field(True, description="Register slash commands with Discord on start.")

    @field_validator("discord_guild_ids", "discord_shard_ids", mode="before")
    @classmethod
    def _split_ids(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        if isinstance(value, int):
            return [value]
        return value

    # --- end discord -----------------------------------------------------------------------

    # --- telegram --------------------------------------------------------------------------
    telegram_token: SecretStr | None = Field(
        None, description="Telegram bot token from @BotFather; Telegram starts when set."
    )
    telegram_api_base_url: str = Field(
        "https://api.telegram.org/bot",
        description="Bot API base URL; the token is appended (or put {token} where it goes).",
    )
    telegram_file_base_url: str = Field(
        "https://api.telegram.org/file/bot",
        description="Bot API file download base URL; the token is appended like TELEGRAM_API_BASE_URL.",
    )
    telegram_webhook_url: str | None = Field(
        None,
        description="Public HTTPS URL Telegram posts updates to; unset = long polling. Its path is "
        "the route served on TELEGRAM_WEBHOOK_HOST:TELEGRAM_WEBHOOK_PORT.",
    )
    telegram_webhook_secret: SecretStr | None = Field(
        None,
        description="Secret Telegram sends in X-Telegram-Bot-Api-Secret-Token (A-Z a-z 0-9 _ -, "
        "1-256 chars); unset = a random one per start.",
    )
    telegram_webhook_host: str = Field("127.0.0.1", description="Address the Telegram webhook listens on.")
    telegram_webhook_port: int = Field(
        8443, ge=0, le=65535, description="Port the Telegram webhook listens on."
    )
    telegram_edit_interval_s: float = Field(
        1.0, ge=0.2, le=30, description="Least time between two edits of a streaming Telegram reply."
    )

    @field_validator("telegram_webhook_secret")
    @classmethod
    def _check_telegram_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{1,256}", value.get_secret_value()):
            raise ValueError("must be 1-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    # --- end telegram ----------------------------------------------------------------------

    # --- slack -----------------------------------------------------------------------------
    slack_bot_token: SecretStr | None = Field(
        None, description="Slack bot token (xoxb-...); Slack starts when set."
    )
    slack_signing_secret: SecretStr | None = Field(
        None, description="Slack signing secret; required for the HTTP Events API (no SLACK_APP_TOKEN)."
    )
    slack_app_token: SecretStr | None = Field(
        None, description="Slack app-level token (xapp-...); when set, Slack connects over Socket Mode."
    )
    slack_api_base_url: str = Field(
        "https://slack.com/api/", description="Slack Web API base URL (a fake server in tests)."
    )
    slack_events_host: str = Field("127.0.0.1", description="Address of the Slack Events API endpoint.")
    slack_events_port: int = Field(3000, ge=0, le=65535, description="Port of the Slack Events API endpoint.")
    slack_events_path: str = Field("/slack/events", description="Path of the Slack Events API endpoint.")
    slack_edit_interval_s: float = Field(
        1.0, ge=0.2, le=30, description="Least time between two edits of a streaming Slack reply."
    )

    # --- end slack -------------------------------------------------------------------------

    # --- voice -----------------------------------------------------------------------------
    stt_backend: Literal["auto", "faster-whisper", "openai", "off"] = Field(
        "auto",
        description="Speech-to-text for voice messages. auto: faster-whisper if installed, "
        "else the OpenAI API if OPENAI_API_KEY is set, else off.",
    )
    whisper_model: str | None = Field(
        None,
        description="faster-whisper model: a name (tiny.en, base, small, large-v3...; downloaded on "
        "first use) or a local CTranslate2 directory; default: the bundled tiny.en.",
    )
    whisper_device: str = Field("cpu", description="faster-whisper device: cpu, cuda or auto.")
    whisper_compute_type: str = Field(
        "int8", description="faster-whisper compute type: int8, int8_float16, float16 or float32."
    )
    whisper_threads: int = Field(
        0, ge=0, description="CPU threads per transcription; 0 = CTranslate2's default."
    )
    whisper_beam_size: int = Field(1, ge=1, le=10, description="Beam size; 1 = greedy, the fastest.")
    stt_language: str | None = Field(
        None, description="Language of voice messages (ISO 639-1, e.g. en); unset = detect it."
    )
    stt_fallbacks: Annotated[list[Literal["faster-whisper", "openai"]], NoDecode] = Field(
        default_factory=list,
        description="Speech-to-text engines to try, in order, when STT_BACKEND's engine fails or its "
        "circuit is open (comma-separated).",
    )
    openai_stt_model: str = Field(
        "whisper-1", description="Transcription model of the OpenAI API (STT_BACKEND=openai)."
    )
    tts_backends: Annotated[list[Literal["piper", "espeak", "coqui", "openai", "off"]], NoDecode] = Field(
        default=["piper", "espeak", "coqui", "openai"],
        description="Text-to-speech engines in order of preference (comma-separated); those not "
        "installed or configured are skipped. off (or empty) = no speech.",
    )
    tts_voice: str | None = Field(
        None,
        description="Voice when the persona names none: a Piper voice name or .onnx path, an "
        "espeak-ng voice, or engine:voice (openai:nova); default: each engine's own default.",
    )
    piper_voice_dir: Path | None = Field(
        None, description="Directory of Piper voices (NAME.onnx + NAME.onnx.json); default $DATA_DIR/voices."
    )
    espeak_binary: str = Field("espeak-ng", description="The espeak-ng program.")
    espeak_voice: str = Field("en-us", description="espeak-ng's default voice.")
    coqui_model: str | None = Field(
        None,
        description="Coqui TTS model: a name (tts_models/en/ljspeech/vits) or a local directory with "
        "config.json and a .pth checkpoint; unset = Coqui is skipped.",
    )
    coqui_vocoder: str | None = Field(
        None, description="Coqui vocoder (name or path) for spectrogram models; unset = Griffin-Lim."
    )
    openai_tts_model: str = Field("gpt-4o-mini-tts", description="Speech model of the OpenAI API.")
    openai_tts_voice: str = Field("alloy", description="Default voice of the OpenAI speech API.")
    voice_max_bytes: int = Field(
        20_000_000, ge=1, description="Largest voice message or audio file accepted, in bytes."
    )
    voice_max_seconds: float = Field(300.0, gt=0, description="Longest voice message accepted, in seconds.")
    tts_max_chars: int = Field(2000, ge=1, description="Longest text spoken in one voice reply.")
    voice_workers: int = Field(
        1, ge=1, le=16, description="Transcriptions (and syntheses) run at once, per engine."
    )
    voice_queue_size: int = Field(
        8, ge=0, description="Voice jobs that may wait per engine; more are refused as busy."
    )

    @field_validator("tts_backends", mode="before")
    @classmethod
    def _split_tts_backends(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip().lower() for part in value.split(",") if part.strip()]
        return value

    # --- end voice -------------------------------------------------------------------------

    # --- emotion ---------------------------------------------------------------------------
    emotion_model: str | None = Field(
        None,
        description="Hugging Face text-classification model (name or local path) for the emotion of "
        "each message; needs the emotion-transformer extra. Unset = the built-in classifier "
        "(MiniLM prototypes + lexicon).",
    )

    # --- end emotion -----------------------------------------------------------------------

    # --- memory care -----------------------------------------------------------------------
    memory_care_interval_s: float = Field(
        3600.0, gt=0, description="Seconds between memory-care runs (cleanup of idle, unimportant memories)."
    )
    memory_retention_days: float = Field(
        365.0,
        gt=0,
        description="Days a memory may sit unused before cleanup may delete it (only unimportant ones "
        "never said twice).",
    )
    memory_care_batch_size: int = Field(200, ge=1, description="Most memories one memory-care run looks at.")
    memory_use_llm: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Use the chat LLM in the background to extract lasting facts from what users say, "
        "to confirm that a newer statement replaces an older one, and to summarise old sessions; off "
        "(or when the LLM fails) = rule-based only (a failed confirmation replaces nothing). auto: on "
        "unless the chat model is llama.cpp in this process (it would take CPU from replies).",
    )
    memory_llm_calls_per_minute: int = Field(
        6, ge=1, description="Most background memory LLM calls (fact extraction and summaries) per minute."
    )
    memory_llm_max_tokens: int = Field(
        200, ge=16, description="Longest answer of one background memory LLM call, in tokens."
    )
    memory_llm_timeout_s: float = Field(
        30.0, gt=0, description="Longest wait for one background memory LLM call."
    )
    memory_extraction_batch_turns: int = Field(
        8, ge=1, le=50, description="Most user messages sent in one fact-extraction call."
    )
    memory_compaction_after_days: float = Field(
        2.0, gt=0, description="Turns older than this many days are compacted into session summaries."
    )
    memory_session_gap_minutes: float = Field(
        60.0, gt=0, description="A silence longer than this starts a new session (for summaries)."
    )
    memory_compaction_max_sessions: int = Field(
        20, ge=1, description="Most sessions summarised per memory-care run."
    )
    memory_summary_max_chars: int = Field(
        500, ge=50, description="Longest session summary, in characters (time span not counted)."
    )

    # --- end memory care -------------------------------------------------------------------

    # --- check-ins -------------------------------------------------------------------------
    checkins_enabled: bool = Field(
        True,
        description="Let users opt in to check-ins (/checkin): the bot writes first, by direct message on "
        "Discord or Telegram, at a local time they choose. Run them in one process only.",
    )
    checkin_tick_s: float = Field(
        60.0, gt=0, le=600, description="Seconds between two looks for due check-ins."
    )
    checkin_grace_minutes: float = Field(
        30.0,
        gt=0,
        le=720,
        description="A check-in later than this (the bot was down) is skipped, not sent late.",
    )
    checkin_max_per_tick: int = Field(
        20, ge=1, description="Most check-ins written per look; the rest wait for the next one."
    )

    # --- end check-ins ---------------------------------------------------------------------

    # --- tools over MCP ---------------------------------------------------------------------
    mcp_servers: str | None = Field(
        None,
        description="MCP servers whose tools personas may use: a JSON object naming each server, "
        'with "command" and "args" (stdio) or "url" (streamable HTTP), or the path of a JSON or YAML '
        "file holding one; see Tools over MCP. Unset = no tools.",
    )
    mcp_tool_timeout_s: float = Field(
        20.0, gt=0, description="Longest wait for one tool call; the model is told when a tool takes longer."
    )
    mcp_max_tool_rounds: int = Field(
        3, ge=1, le=10, description="Most rounds of tool calls in one reply, before the model must answer."
    )
    mcp_connect_timeout_s: float = Field(
        20.0,
        gt=0,
        description="Longest wait for an MCP server to start and list its tools; one that does not is "
        "left out (the bot answers without its tools) and tried again in the background.",
    )
    # --- end tools over MCP -----------------------------------------------------------------

    # --- store spool -----------------------------------------------------------------------
    store_spool_max_entries: int = Field(
        10_000,
        ge=0,
        description="Writes kept in the local spool ($DATA_DIR/spool) while the database is unreachable, "
        "written when it returns; beyond this, new messages are refused with an apology (replies and "
        "memories of messages already taken may use twice the room). 0 = no spool.",
    )
    store_spool_max_mb: float = Field(
        64.0, gt=0, description="Most disk space the store spool may use, in MiB."
    )
    store_spool_replay_interval_s: float = Field(
        2.0,
        gt=0,
        description="Seconds between checks whether the database is back, while writes are spooled.",
    )
    # --- end store spool -------------------------------------------------------------------

    # --- failover --------------------------------------------------------------------------
    breaker_failures: int = Field(
        3,
        ge=1,
        description="Consecutive failures after which a service (LLM backend, vector store, speech "
        "engine, chat platform) is skipped until a trial call succeeds.",
    )
    breaker_reset_s: float = Field(
        30.0, gt=0, description="Seconds a skipped service waits before one trial call is let through."
    )
    platform_timeout_s: float = Field(
        20.0,
        gt=0,
        description="Longest wait for one call to a chat platform's API (Discord, Telegram, Slack: "
        "sending or editing a reply); a call that takes longer counts as a failure.",
    )
    platform_retries: int = Field(
        2,
        ge=0,
        le=10,
        description="Retries of a chat platform API call that failed with a server error, a network "
        "error or a timeout; refusals (400, 403) are never retried.",
    )
    platform_backoff_s: float = Field(
        0.5, gt=0, description="Wait before the first retry of a platform API call; doubled per retry."
    )
    failover_probe_interval_s: float = Field(
        5.0, gt=0, description="Seconds between checks whether Redis or the vector store is back."
    )
    cache_timeout_s: float = Field(
        1.0, gt=0, description="Longest wait for one Redis call before the in-process cache answers instead."
    )
    vector_timeout_s: float = Field(
        5.0,
        gt=0,
        description="Longest wait for one vector-store call; after it, recall goes without long-term "
        "memory and writes wait in the database.",
    )
    vector_outbox_batch_size: int = Field(
        100, ge=1, description="Queued memory writes replayed per batch when the vector store is back."
    )
    # --- end failover ----------------------------------------------------------------------

    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: Literal["text", "json"] = Field(
        "text", description="text: readable lines; json: one JSON object per line (for log collectors)."
    )
    encryption_key: SecretStr | None = Field(
        None,
        description="Fernet key that encrypts secrets stored at run time (e.g. a server's own API key); "
        "make one with `whisperengine secret new-key`. Unset = storing secrets is refused.",
    )

    @field_validator("llm_fallbacks", "stt_fallbacks", mode="before")
    @classmethod
    def _split_fallbacks(cls, value: object) -> object:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    # --- derived ---------------------------------------------------------------------------

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'whisperengine.db').as_posix()}"

    @property
    def effective_chroma_path(self) -> Path:
        return self.chroma_path or self.data_dir / "chroma"

    @property
    def persona_dirs(self) -> list[Path]:
        return [PACKAGED_PERSONAS, self.persona_dir or self.data_dir / "personas"]

    def secrets(self) -> list[str]:
        """Every configured secret value, for log redaction and the secret-leak test."""
        configured: tuple[SecretStr | None, ...] = (self.openai_api_key, self.api_token, self.discord_token)
        configured += (self.telegram_token, self.telegram_webhook_secret)  # telegram
        configured += (self.slack_bot_token, self.slack_signing_secret, self.slack_app_token)  # slack
        configured += (self.encryption_key,)  # secrets at rest
        values = [s.get_secret_value() for s in configured if s is not None]
        values += mcp_secrets(self.mcp_servers)  # tool servers' environment and headers
        return [v for v in values if v]


def mcp_secrets(raw: str | None) -> list[str]:
    """The values of MCP_SERVERS that may be credentials (none when it does not parse: then the
    app refuses to start, saying why)."""
    from config.mcp import parse_mcp_servers
    from engine.errors import ConfigError

    try:
        servers = parse_mcp_servers(raw)
    except ConfigError:
        return []
    return [value for server in servers.values() for value in server.secret_values()]
