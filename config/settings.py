"""All settings, read from the environment and an optional ``.env`` file.

Variable names are the conventional upper-case forms of the field names
(``database_url`` ← ``DATABASE_URL``). With nothing set, everything runs embedded
under ``DATA_DIR``: SQLite, Chroma on disk, an in-process cache, and llama.cpp with
the bundled model.
"""

from __future__ import annotations

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
    llamacpp_threads: int | None = Field(None, description="CPU threads for llama.cpp; default: all cores.")
    llamacpp_context: int = Field(2048, description="llama.cpp context window in tokens.")
    llm_timeout_s: float = Field(60.0, gt=0, description="Longest wait for a complete reply.")
    llm_max_retries: int = Field(2, ge=0, le=10, description="Retries per backend before falling back.")
    llm_max_tokens: int = Field(256, gt=0, description="Longest reply, in tokens.")
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
    rate_limit_messages: int = Field(10, ge=0, description="Messages per user per window; 0 = no limit.")
    rate_limit_window_s: float = Field(60.0, gt=0, description="Length of the rate-limit window, in seconds.")
    max_message_chars: int = Field(8000, ge=1, description="Longest accepted message.")

    # --- front ends ----------------------------------------------------------------------
    web_enabled: bool = Field(True, description="Serve the web chat and REST API.")
    web_host: str = Field("127.0.0.1", description="Address of the web chat and REST API.")
    web_port: int = Field(8080, ge=0, le=65535, description="Port of the web chat and REST API.")
    api_token: SecretStr | None = Field(None, description="Bearer token the REST API requires when set.")

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

    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")

    @field_validator("llm_fallbacks", mode="before")
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
        configured = (self.openai_api_key, self.api_token, self.discord_token)  # discord: discord_token
        values = [s.get_secret_value() for s in configured if s is not None]
        return [v for v in values if v]
