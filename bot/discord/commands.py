"""Slash commands.

    /persona set|show|list     the channel's (or server's) persona; set is for admins
    /persona import card       a character card (PNG or JSON attachment) as a new persona (admins)
    /memory show|forget|export a user's own memories; forget asks for confirmation
    /privacy forget-me         erase everything held about the user (asks for confirmation)
    /link [code]               link the user's accounts on several platforms into one identity
    /channel mode              mention-only | always | off for this channel (admins)
    /status                    backends, LLM, latency, queue depth, degraded services
    /checkin set|off|show      the bot DMs the user first each day at a local time they chose
    /config show|thread-mode|rate-limit   per-server settings (admins)

Admin commands need Manage Server or the configured admin role. Everything that shows
data is ephemeral; a refused or invalid command gets an ephemeral error.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Awaitable, Callable
from typing import Literal, TypeVar

import discord
from discord import app_commands

from engine.cards import check_card_size, read_card
from engine.errors import ConfigError, InputError, WhisperEngineError
from engine.events import UniversalMessage
from engine.identity import link_instructions, linked_message
from engine.persona import channel_scope, guild_scope

from .checkin_commands import CheckinCommands
from .config import DISCORD_LIMIT
from .data import export_json, export_user_data, forget_memories
from .host import CommandHost, account_key, command_host, identity
from .permissions import NotAdmin, is_admin
from .settings import ChannelMode, GuildRateLimit, ThreadMode
from .translate import PLATFORM

logger = logging.getLogger(__name__)

T = TypeVar("T")

CONFIRM_TIMEOUT_S = 120.0
MEMORIES_SHOWN = 15


def _conversation_channel_id(interaction: discord.Interaction) -> int:
    """The channel a persona applies to: a thread uses its parent's."""
    channel = interaction.channel
    if isinstance(channel, discord.Thread) and channel.parent_id is not None:
        return channel.parent_id
    return interaction.channel_id or 0


def admin_only() -> Callable[[T], T]:
    """A check: Manage Server, or the configured admin role (see ``permissions``)."""

    async def predicate(interaction: discord.Interaction) -> bool:
        admin_role = command_host(interaction).config.admin_role
        if not is_admin(interaction, admin_role):
            raise NotAdmin(admin_role)
        return True

    return app_commands.check(predicate)


def _clip(text: str, limit: int = DISCORD_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ConfirmView(discord.ui.View):
    """Erase-or-cancel buttons; only the user who asked can press them."""

    def __init__(self, user_id: int, action: Callable[[], Awaitable[str]], *, confirm_label: str) -> None:
        super().__init__(timeout=CONFIRM_TIMEOUT_S)
        self.user_id = user_id
        self._action = action
        self.confirm.label = confirm_label

    async def interaction_check(self, interaction: discord.Interaction) -> bool:
        if interaction.user.id != self.user_id:
            await interaction.response.send_message("These buttons aren't for you.", ephemeral=True)
            return False
        return True

    @discord.ui.button(label="Erase", style=discord.ButtonStyle.danger, custom_id="we:confirm")
    async def confirm(self, interaction: discord.Interaction, button: discord.ui.Button[ConfirmView]) -> None:
        self.stop()
        result = await self._action()
        await interaction.response.edit_message(content=result, view=None)

    @discord.ui.button(label="Cancel", style=discord.ButtonStyle.secondary, custom_id="we:cancel")
    async def cancel(self, interaction: discord.Interaction, button: discord.ui.Button[ConfirmView]) -> None:
        self.stop()
        await interaction.response.edit_message(content="Cancelled: nothing was erased.", view=None)


async def _confirm_or_run(
    interaction: discord.Interaction,
    *,
    confirm: bool,
    question: str,
    confirm_label: str,
    action: Callable[[], Awaitable[str]],
) -> None:
    if confirm:
        await interaction.response.defer(ephemeral=True, thinking=True)
        await interaction.followup.send(await action(), ephemeral=True)
        return
    view = ConfirmView(interaction.user.id, action, confirm_label=confirm_label)
    await interaction.response.send_message(question, view=view, ephemeral=True)


# --- /persona ---------------------------------------------------------------------------------


class PersonaCommands(app_commands.Group):
    def __init__(self) -> None:
        super().__init__(name="persona", description="Who the bot is in this channel or server")

    @app_commands.command(name="list", description="List the personas this bot knows")
    async def list_personas(self, interaction: discord.Interaction) -> None:
        library = command_host(interaction).engine.personas.library
        lines = []
        for name in library.names():
            persona = library.get(name)
            description = f" — {persona.description}" if persona and persona.description else ""
            default = " (default)" if name == library.default.name else ""
            lines.append(f"• **{name}**{default}{description}")
        await interaction.response.send_message(_clip("\n".join(lines) or "No personas."), ephemeral=True)

    @app_commands.command(name="show", description="Show the persona active in this channel")
    async def show_persona(self, interaction: discord.Interaction) -> None:
        engine = command_host(interaction).engine
        probe = UniversalMessage(
            content="",
            user_id=str(interaction.user.id),
            user_name=interaction.user.display_name,
            platform=PLATFORM,
            channel_id=str(_conversation_channel_id(interaction)),
            guild_id=str(interaction.guild_id) if interaction.guild_id else None,
        )
        persona = await engine.personas.for_message(probe)
        description = f": {persona.description}" if persona.description else ""
        await interaction.response.send_message(
            f"The persona here is **{persona.name}**{description}", ephemeral=True
        )

    @app_commands.command(name="set", description="Choose the persona for this channel or the whole server")
    @app_commands.describe(name="persona name (see /persona list)", scope="this channel, or the whole server")
    @admin_only()
    async def set_persona(
        self,
        interaction: discord.Interaction,
        name: str,
        scope: Literal["channel", "server"] = "channel",
    ) -> None:
        engine = command_host(interaction).engine
        if scope == "server":
            if interaction.guild_id is None:
                raise InputError("scope:server only works in a server.")
            target = guild_scope(PLATFORM, str(interaction.guild_id))
            where = "this server"
        else:
            target = channel_scope(PLATFORM, str(_conversation_channel_id(interaction)))
            where = "this channel"
        persona = await engine.personas.set(target, name)
        assert persona is not None
        await interaction.response.send_message(f"The persona for {where} is now **{persona.name}**.")

    @app_commands.command(name="import", description="Import a character card (PNG or JSON) as a persona")
    @app_commands.describe(
        card="the character card: a PNG with the card inside, or a JSON file",
        replace="overwrite a persona of the same name",
    )
    @admin_only()
    async def import_persona(
        self, interaction: discord.Interaction, card: discord.Attachment, replace: bool = False
    ) -> None:
        engine = command_host(interaction).engine
        library = engine.personas.library
        check_card_size(card.size, card.filename)  # before downloading it
        await interaction.response.defer(ephemeral=True, thinking=True)
        try:
            data = await card.read()
        except discord.HTTPException as exc:
            raise InputError(f"could not download {card.filename}: {exc}") from None
        imported = read_card(data, filename=card.filename)
        persona, _ = library.install(imported.document, replace=replace)
        name = persona.name
        await interaction.followup.send(
            _clip(f"{imported.summary(engine.config.budget)}\nChoose it with `/persona set name:{name}`."),
            ephemeral=True,
        )

    @set_persona.autocomplete("name")
    async def _persona_names(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        names = command_host(interaction).engine.personas.library.names()
        return [app_commands.Choice(name=n, value=n) for n in names if current.lower() in n][:25]


# --- /memory and /privacy ---------------------------------------------------------------------


class MemoryCommands(app_commands.Group):
    def __init__(self) -> None:
        super().__init__(name="memory", description="What the bot remembers about you")

    @app_commands.command(name="show", description="Show what the bot remembers about you (only you see it)")
    async def show_memories(self, interaction: discord.Interaction) -> None:
        adapter = command_host(interaction)
        store = adapter.store
        user_key = await identity(interaction)
        total = await store.count_memories(user_key)
        about = await _about_us(adapter, user_key)
        if total == 0:
            await interaction.response.send_message(
                "\n\n".join(["I don't remember anything about you yet.", *about]), ephemeral=True
            )
            return
        memories = await store.list_memories(user_key, limit=MEMORIES_SHOWN)
        header = f"I remember {total} thing{'s' if total != 1 else ''} about you (newest first):"
        lines = [header]
        footer = ""
        if total > len(memories):
            footer = f"…and {total - len(memories)} more. `/memory export` gives you all of them."
        budget = DISCORD_LIMIT - len(footer) - 2 - sum(len(x) + 2 for x in about)
        for memory in memories:
            line = f"• {_clip(memory.text, 300)} (`{memory.id[:8]}`)"
            if sum(len(x) + 1 for x in lines) + len(line) > budget:
                footer = "…and more. `/memory export` gives you all of them."
                break
            lines.append(line)
        if footer:
            lines.append(footer)
        await interaction.response.send_message("\n\n".join(["\n".join(lines), *about]), ephemeral=True)

    @app_commands.command(name="forget", description="Erase your memories (asks first)")
    @app_commands.describe(
        memory_id="erase only this memory (the code shown by /memory show)",
        confirm="skip the confirmation buttons",
    )
    async def forget(
        self, interaction: discord.Interaction, memory_id: str | None = None, confirm: bool = False
    ) -> None:
        adapter = command_host(interaction)
        user_key = await identity(interaction)
        ids: list[str] | None = None
        if memory_id is not None:
            prefix = memory_id.strip().strip("`")
            if len(prefix) < 4:
                raise InputError("memory_id needs at least 4 characters of the code from /memory show.")
            matching = [
                m.id for m in await adapter.store.list_memories(user_key, 10_000) if m.id.startswith(prefix)
            ]
            if not matching:
                raise InputError(f"You have no memory with the code `{prefix}`.")
            ids = matching
        elif await adapter.store.count_memories(user_key) == 0:
            await interaction.response.send_message("There is nothing to forget.", ephemeral=True)
            return

        async def action() -> str:
            removed = await forget_memories(adapter.engine, adapter.store, adapter.vectors, user_key, ids)
            return f"Done: I forgot {removed} memor{'y' if removed == 1 else 'ies'}."

        what = "this memory" if ids else "everything I remember about you"
        await _confirm_or_run(
            interaction,
            confirm=confirm,
            question=f"Erase {what}? Your conversation history stays; this can't be undone.",
            confirm_label="Erase memories",
            action=action,
        )

    @app_commands.command(name="export", description="Get everything stored about you as a JSON file")
    async def export(self, interaction: discord.Interaction) -> None:
        adapter = command_host(interaction)
        await interaction.response.defer(ephemeral=True, thinking=True)
        data = await export_user_data(adapter.engine, adapter.store, await identity(interaction))
        payload = export_json(data)
        if len(payload) > interaction.filesize_limit:
            await interaction.followup.send(
                "Your data is larger than the file size Discord allows here; ask the bot's operator.",
                ephemeral=True,
            )
            return
        file = discord.File(io.BytesIO(payload), filename=f"whisperengine-{interaction.user.id}.json")
        summary = f"{len(data['memories'])} memories and {len(data['messages'])} messages."
        await interaction.followup.send(f"Here is your data: {summary}", file=file, ephemeral=True)


async def _about_us(adapter: CommandHost, user_key: str) -> list[str]:
    """The relationship profile in one line (stage, interactions, trend, preferred name)."""
    profile = await adapter.store.get_user(user_key)
    if profile is None:
        return []
    relationship = await adapter.engine.relationships.get(user_key, profile)
    n = relationship.interactions
    parts = [
        f"About us: we are **{relationship.stage()}**",
        f"{n} message{'s' if n != 1 else ''} since {profile.first_seen:%Y-%m-%d}",
    ]
    if trend := relationship.trend().summary:
        parts.append(trend)
    if relationship.preferred_name:
        parts.append(f"I call you **{_clip(relationship.preferred_name, 40)}**")
    return [" · ".join(parts)]


class PrivacyCommands(app_commands.Group):
    def __init__(self) -> None:
        super().__init__(name="privacy", description="Your data")

    @app_commands.command(
        name="forget-me", description="Erase everything the bot holds about you (asks first)"
    )
    @app_commands.describe(confirm="skip the confirmation buttons")
    async def forget_me(self, interaction: discord.Interaction, confirm: bool = False) -> None:
        adapter = command_host(interaction)
        user_key = account_key(interaction)

        async def action() -> str:
            removed = await adapter.engine.forget_user(user_key)
            logger.info("user %s asked to be forgotten: %d rows removed", user_key, removed)
            return "Done: I erased your messages, memories and profile. I don't know you anymore."

        await _confirm_or_run(
            interaction,
            confirm=confirm,
            question="Erase your messages, memories and profile everywhere? This can't be undone.",
            confirm_label="Erase everything",
            action=action,
        )


# --- /channel, /config, /status -----------------------------------------------------------------


class ChannelCommands(app_commands.Group):
    def __init__(self) -> None:
        super().__init__(name="channel", description="How the bot behaves in this channel")

    @app_commands.command(name="mode", description="Answer mentions only, every message, or nothing here")
    @app_commands.describe(mode="mention-only (default), always, or off; leave empty to see the current mode")
    @admin_only()
    async def mode(
        self, interaction: discord.Interaction, mode: Literal["mention-only", "always", "off"] | None = None
    ) -> None:
        settings = command_host(interaction).settings
        channel_id = interaction.channel_id
        if channel_id is None:
            raise InputError("This command works in a channel.")
        if mode is None:
            parent = (
                interaction.channel.parent_id if isinstance(interaction.channel, discord.Thread) else None
            )
            current = await settings.channel_mode(channel_id, parent)
            await interaction.response.send_message(f"This channel's mode is **{current}**.", ephemeral=True)
            return
        chosen = ChannelMode(mode)
        await settings.set_channel_mode(channel_id, chosen)
        meaning = {
            ChannelMode.MENTION_ONLY: "I answer when mentioned or replied to.",
            ChannelMode.ALWAYS: "I answer every message here.",
            ChannelMode.OFF: "I ignore messages here (slash commands still work).",
        }[chosen]
        await interaction.response.send_message(f"Channel mode set to **{chosen}**: {meaning}")


@app_commands.guild_only()
class ConfigCommands(app_commands.Group):
    def __init__(self) -> None:
        super().__init__(name="config", description="Settings for this server")

    @app_commands.command(name="show", description="Show this server's settings")
    @admin_only()
    async def show(self, interaction: discord.Interaction) -> None:
        adapter = command_host(interaction)
        assert interaction.guild_id is not None
        config = await adapter.settings.guild_config(interaction.guild_id)
        thread = config.thread_mode or adapter.config.thread_mode
        engine_limit = adapter.engine.config
        lines = [
            f"Thread mode: **{thread}**{'' if config.thread_mode else ' (default)'}",
            (
                f"Server rate limit: **{config.rate_limit.messages}** messages per "
                f"{config.rate_limit.window_s:g}s per user"
                if config.rate_limit and config.rate_limit.messages > 0
                else "Server rate limit: none"
            ),
            f"Bot-wide rate limit: {engine_limit.rate_limit_messages} messages per "
            f"{engine_limit.rate_limit_window_s:g}s per user"
            if engine_limit.rate_limit_messages > 0
            else "Bot-wide rate limit: none",
        ]
        await interaction.response.send_message("\n".join(lines), ephemeral=True)

    @app_commands.command(name="thread-mode", description="Answer in the channel, or in threads")
    @app_commands.describe(
        mode="off: in the channel; auto: long replies continue in a thread; always: a thread per exchange"
    )
    @admin_only()
    async def thread_mode(
        self, interaction: discord.Interaction, mode: Literal["off", "auto", "always", "default"]
    ) -> None:
        adapter = command_host(interaction)
        assert interaction.guild_id is not None
        chosen = None if mode == "default" else ThreadMode(mode)
        await adapter.settings.set_thread_mode(interaction.guild_id, chosen)
        shown = chosen or f"{adapter.config.thread_mode} (default)"
        await interaction.response.send_message(f"Thread mode is now **{shown}**.", ephemeral=True)

    @app_commands.command(name="rate-limit", description="Messages each user may send per window here")
    @app_commands.describe(messages="0 removes the limit", window_seconds="length of the window")
    @admin_only()
    async def rate_limit(
        self,
        interaction: discord.Interaction,
        messages: app_commands.Range[int, 0, 1000],
        window_seconds: app_commands.Range[int, 1, 86400] = 60,
    ) -> None:
        if not 0 <= messages <= 1000:
            raise InputError("messages must be between 0 and 1000.")
        if not 1 <= window_seconds <= 86400:
            raise InputError("window_seconds must be between 1 and 86400.")
        adapter = command_host(interaction)
        assert interaction.guild_id is not None
        limit = GuildRateLimit(messages, float(window_seconds)) if messages > 0 else None
        await adapter.settings.set_rate_limit(interaction.guild_id, limit)
        text = (
            f"Each user may now send {messages} messages per {window_seconds}s here."
            if limit
            else "The server rate limit is removed."
        )
        await interaction.response.send_message(text, ephemeral=True)


@app_commands.command(name="link", description="Link your accounts on other platforms (only you see it)")
@app_commands.describe(code="the code /link gave you on your other account; leave empty to get a code")
async def link(interaction: discord.Interaction, code: str | None = None) -> None:
    engine = command_host(interaction).engine
    user_key = account_key(interaction)
    if code is None:
        issued = await engine.start_link(user_key)
        await interaction.response.send_message(link_instructions(issued, emphasis="**"), ephemeral=True)
        return
    await interaction.response.defer(ephemeral=True, thinking=True)  # moving data takes a moment
    result = await engine.link_accounts(user_key, code)
    await interaction.followup.send(linked_message(result, user_key), ephemeral=True)


@app_commands.command(name="status", description="Health of the bot: backends, LLM, latency, queues")
async def status(interaction: discord.Interaction) -> None:
    adapter = command_host(interaction)
    await interaction.response.defer(ephemeral=True, thinking=True)
    await interaction.followup.send(await adapter.status_text(), ephemeral=True)


# --- the tree -----------------------------------------------------------------------------------


class WhisperCommandTree(app_commands.CommandTree):
    """Adds every command and turns errors into ephemeral answers."""

    def __init__(self, client: discord.Client) -> None:
        super().__init__(client)
        for group in (
            PersonaCommands(),
            MemoryCommands(),
            PrivacyCommands(),
            ChannelCommands(),
            ConfigCommands(),
        ):
            self.add_command(group)
        self.add_command(status)
        self.add_command(CheckinCommands())
        self.add_command(link)

    async def on_error(self, interaction: discord.Interaction, error: app_commands.AppCommandError) -> None:
        original = error.original if isinstance(error, app_commands.CommandInvokeError) else error
        if isinstance(original, app_commands.CheckFailure) and str(original):
            text = str(original)
        elif isinstance(original, app_commands.NoPrivateMessage):
            text = "That command only works in a server."
        elif isinstance(original, app_commands.TransformerError):
            text = f"Invalid value {original.value!r} for that option."
        elif isinstance(original, (InputError, ConfigError)):
            text = str(original)
        elif isinstance(original, WhisperEngineError):
            logger.error(
                "/%s failed: %s", interaction.command.qualified_name if interaction.command else "?", original
            )
            text = "Sorry, that didn't work: a service the bot needs is having trouble."
        else:
            logger.exception(
                "/%s failed",
                interaction.command.qualified_name if interaction.command else "?",
                exc_info=original,
            )
            text = "Sorry, something went wrong running that command."
        try:
            if interaction.response.is_done():
                await interaction.followup.send(text, ephemeral=True)
            else:
                await interaction.response.send_message(text, ephemeral=True)
        except discord.HTTPException as exc:
            logger.warning("could not report a command error to the user: %s", exc)
