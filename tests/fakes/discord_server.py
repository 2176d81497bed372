"""A local fake of Discord: the REST API and the websocket gateway, for the real discord.py.

Usage::

    async with FakeDiscord() as discord:
        guild = discord.add_guild("Test server")
        general = discord.add_channel(guild, "general")
        alice = discord.add_user("alice")
        # point the client at it: DISCORD_API_BASE_URL=discord.api_base,
        # DISCORD_GATEWAY_URL=discord.gateway_url, DISCORD_TOKEN=discord.token
        ...
        await discord.wait_connected()
        sent = await discord.send_message(general, alice, f"<@{discord.bot_id}> hi")
        reply = await discord.wait_for_reply(sent["id"])

The world
    Guilds with text channels, threads, roles and members; users; DM channels. Every guild
    has an ``@everyone`` role whose id is the guild id.

Gateway (``/gw``)
    HELLO, heartbeat ACKs, IDENTIFY → READY then one GUILD_CREATE per guild of the shard
    (``(guild_id >> 22) % shard_count``), RESUME → RESUMED. Events are plain JSON text
    frames. ``send_message``, ``send_command``, ``click`` and ``create_thread`` dispatch
    MESSAGE_CREATE, INTERACTION_CREATE and THREAD_CREATE to the connection that owns the
    guild (DMs go to shard 0).

REST (``/api/v10``)
    Login (``/users/@me``, ``/oauth2/applications/@me``), ``/gateway/bot``, command sync
    (``PUT /applications/{id}/commands`` and the guild variant), messages (create with JSON
    or multipart files, edit, get), typing, threads from a message or not, interaction
    callbacks and webhooks follow-ups, attachment downloads (``/attachments/...``). A
    message the bot posts is also dispatched back as MESSAGE_CREATE, as Discord does; its
    ``flags`` are kept (8192: a voice message), and so are each uploaded attachment's
    ``duration_secs`` and ``waveform``.
    Anything else answers 404 and is recorded in ``unknown``.

Faults
    ``rate_limit_edits(n, retry_after)``: the next ``n`` message edits answer 429 with a
    ``retry_after`` body and the headers Discord sends. ``refuse_voice_messages = True``:
    voice messages answer 400 (code 50173), as in a channel that does not allow them.

Records
    ``requests`` (every REST call, unless ``record=False``), ``messages`` (current state of
    every message by id, edits applied), ``edits`` (every successful edit, in order),
    ``interaction_responses`` (callbacks and follow-ups per interaction id), ``downloads``
    (attachments fetched), ``typing``,
    ``delivered`` (ids of the MESSAGE_CREATE events sent to each shard's connection, by
    ``(shard_id, shard_count)``), and for benchmarks ``dispatched_at`` / ``first_reply_at``
    (monotonic times by the id of the user's message, the reply found through its
    ``message_reference``; in a DM, the bot's next message answers the oldest unanswered one).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import BodyPartReader, WSMsgType, web

from tests.fakes.faults import Fault, Faults
from tests.fakes.local_server import LocalServer

DISCORD_EPOCH_MS = 1420070400000
ALL_PERMISSIONS = (1 << 50) - 1
MANAGE_GUILD = 1 << 5
VOICE_MESSAGE = 1 << 13
CONTENT_TYPES = {".json": "application/json", ".ogg": "audio/ogg"}
MEMBER_PERMISSIONS = 0x0000_0000_0006_4C40 | (1 << 31) | (1 << 35) | (1 << 38)
"""View channel, send messages (and in threads), read history, attach files, use commands."""

Json = dict[str, Any]


def _iso(ts: float | None = None) -> str:
    return datetime.fromtimestamp(ts if ts is not None else time.time(), UTC).isoformat()


class _Snowflakes:
    def __init__(self) -> None:
        self._counter = itertools.count(1)

    def next(self) -> str:
        ms = int(time.time() * 1000) - DISCORD_EPOCH_MS
        return str((ms << 22) | (next(self._counter) & 0x3FFFFF))


@dataclass(slots=True)
class RecordedCall:
    method: str
    path: str
    query: dict[str, str]
    json: Any = None
    files: list[tuple[str, bytes]] = field(default_factory=list)
    at: float = field(default_factory=time.monotonic)


@dataclass(slots=True)
class Guild:
    id: str
    name: str
    owner_id: str
    channels: dict[str, Json] = field(default_factory=dict)
    threads: dict[str, Json] = field(default_factory=dict)
    roles: dict[str, Json] = field(default_factory=dict)
    members: dict[str, Json] = field(default_factory=dict)


@dataclass(slots=True)
class _Connection:
    ws: web.WebSocketResponse
    shard: tuple[int, int] = (0, 1)
    seq: int = 0
    identified: bool = False
    session_id: str = ""


class FakeDiscord(LocalServer):
    """An aiohttp server on 127.0.0.1 playing Discord's REST API and gateway."""

    def __init__(
        self,
        *,
        token: str = "fake-bot-token",
        bot_name: str = "WhisperBot",
        record: bool = True,
        echo_bot_messages: bool = True,
        heartbeat_interval_ms: int = 41250,
        port: int = 0,
    ) -> None:
        self.token = token
        self.record = record
        self.echo_bot_messages = echo_bot_messages
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self._ids = _Snowflakes()
        self.bot_id = self._ids.next()
        self.application_id = self._ids.next()
        self.bot_user: Json = self._user_payload(self.bot_id, bot_name, bot=True)
        self.users: dict[str, Json] = {self.bot_id: self.bot_user}
        self.guilds: dict[str, Guild] = {}
        self.dm_channels: dict[str, Json] = {}
        self.messages: dict[str, Json] = {}
        self.attachments: dict[str, bytes] = {}
        self.downloads: list[str] = []  # the key of each attachment downloaded, in order
        self.requests: list[RecordedCall] = []
        self.unknown: list[RecordedCall] = []
        self.edits: list[Json] = []
        self.typing: list[str] = []
        self.global_commands: list[Json] = []
        self.guild_commands: dict[str, list[Json]] = {}
        self.interactions: dict[str, Json] = {}
        self.interaction_responses: dict[str, list[Json]] = {}
        self.dispatched_at: dict[str, float] = {}
        self.first_reply_at: dict[str, float] = {}
        self.identify_payloads: list[Json] = []
        self.delivered: dict[tuple[int, int], list[str]] = {}
        self._unanswered_dms: dict[str, collections.deque[str]] = {}
        self._reply_waiters: dict[str, asyncio.Future[float]] = {}
        self._edit_faults: list[float] = []
        self._channel_faults = Faults()
        self.faulted: list[RecordedCall] = []
        """Requests answered by a fault of :meth:`fail_channels` / :meth:`hang_channels`."""
        self.refuse_voice_messages = False
        self._connections: list[_Connection] = []
        self._changed = asyncio.Condition()
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_get("/gw", self._gateway)
        app.router.add_get("/attachments/{key:.+}", self._download)
        app.router.add_route("*", "/api/v10/{tail:.*}", self._rest)
        super().__init__(app, port=port)

    # --- lifecycle ------------------------------------------------------------------------

    async def aclose(self) -> None:
        for conn in list(self._connections):
            await conn.ws.close()
        await super().aclose()

    @property
    def api_base(self) -> str:
        return f"{self.url}/api/v10"

    @property
    def gateway_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/gw"

    # --- the world ------------------------------------------------------------------------

    @staticmethod
    def _user_payload(user_id: str, name: str, *, bot: bool = False) -> Json:
        return {
            "id": user_id,
            "username": name,
            "global_name": name.capitalize(),
            "discriminator": "0",
            "avatar": None,
            "bot": bot,
            "public_flags": 0,
            "flags": 0,
        }

    def add_user(self, name: str, *, bot: bool = False) -> Json:
        user = self._user_payload(self._ids.next(), name, bot=bot)
        self.users[user["id"]] = user
        return user

    def add_guild(self, name: str = "Test server", *, owner: Json | None = None) -> Guild:
        guild_id = self._ids.next()
        owner_id = owner["id"] if owner else self._ids.next()
        guild = Guild(guild_id, name, owner_id)
        guild.roles[guild_id] = self._role_payload(guild_id, "@everyone", MEMBER_PERMISSIONS, position=0)
        self.guilds[guild_id] = guild
        self._add_member(guild, self.bot_user, [])
        return guild

    @staticmethod
    def _role_payload(role_id: str, name: str, permissions: int, *, position: int) -> Json:
        return {
            "id": role_id,
            "name": name,
            "color": 0,
            "colors": {"primary_color": 0, "secondary_color": None, "tertiary_color": None},
            "hoist": False,
            "icon": None,
            "unicode_emoji": None,
            "position": position,
            "permissions": str(permissions),
            "managed": False,
            "mentionable": False,
            "flags": 0,
        }

    def add_role(self, guild: Guild, name: str, permissions: int = 0) -> Json:
        role = self._role_payload(self._ids.next(), name, permissions, position=len(guild.roles))
        guild.roles[role["id"]] = role
        return role

    def _add_member(self, guild: Guild, user: Json, roles: Sequence[str]) -> Json:
        member = {
            "user": user,
            "nick": None,
            "avatar": None,
            "roles": list(roles),
            "joined_at": _iso(),
            "premium_since": None,
            "deaf": False,
            "mute": False,
            "pending": False,
            "flags": 0,
            "communication_disabled_until": None,
        }
        guild.members[user["id"]] = member
        return member

    def add_member(self, guild: Guild, user: Json, roles: Iterable[Json] = ()) -> Json:
        return self._add_member(guild, user, [r["id"] for r in roles])

    def add_channel(self, guild: Guild, name: str) -> str:
        channel = {
            "id": self._ids.next(),
            "type": 0,
            "guild_id": guild.id,
            "name": name,
            "position": len(guild.channels),
            "permission_overwrites": [],
            "nsfw": False,
            "parent_id": None,
            "topic": None,
            "last_message_id": None,
            "rate_limit_per_user": 0,
            "flags": 0,
        }
        guild.channels[channel["id"]] = channel
        return channel["id"]

    async def create_channel(self, guild: Guild, name: str) -> str:
        """A text channel created while the bot is connected (CHANNEL_CREATE is dispatched)."""
        channel_id = self.add_channel(guild, name)
        await self.dispatch("CHANNEL_CREATE", guild.channels[channel_id], guild_id=guild.id)
        return channel_id

    def dm_channel(self, user: Json) -> str:
        """The DM channel between ``user`` and the bot."""
        for channel_id, channel in self.dm_channels.items():
            if channel["recipients"][0]["id"] == user["id"]:
                return channel_id
        channel = {
            "id": self._ids.next(),
            "type": 1,
            "recipients": [user],
            "last_message_id": None,
            "flags": 0,
        }
        self.dm_channels[channel["id"]] = channel
        return channel["id"]

    def guild_of(self, channel_id: str) -> Guild | None:
        for guild in self.guilds.values():
            if channel_id in guild.channels or channel_id in guild.threads:
                return guild
        return None

    def channel(self, channel_id: str) -> Json:
        guild = self.guild_of(channel_id)
        if guild is not None:
            return guild.channels.get(channel_id) or guild.threads[channel_id]
        return self.dm_channels[channel_id]

    def _thread_payload(self, guild: Guild, parent_id: str, thread_id: str, name: str, owner_id: str) -> Json:
        return {
            "id": thread_id,
            "type": 11,
            "guild_id": guild.id,
            "parent_id": parent_id,
            "owner_id": owner_id,
            "name": name,
            "last_message_id": None,
            "message_count": 0,
            "member_count": 1,
            "total_message_sent": 0,
            "rate_limit_per_user": 0,
            "flags": 0,
            "applied_tags": [],
            "thread_metadata": {
                "archived": False,
                "auto_archive_duration": 1440,
                "archive_timestamp": _iso(),
                "locked": False,
                "create_timestamp": _iso(),
            },
        }

    async def create_thread(self, channel_id: str, name: str, owner: Json) -> str:
        """A user opens a thread in a channel; THREAD_CREATE is dispatched."""
        guild = self.guild_of(channel_id)
        assert guild is not None, "threads exist only in guild channels"
        thread = self._thread_payload(guild, channel_id, self._ids.next(), name, owner["id"])
        guild.threads[thread["id"]] = thread
        await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True}, guild_id=guild.id)
        return thread["id"]

    # --- events from users ----------------------------------------------------------------

    def _message_payload(
        self,
        channel_id: str,
        author: Json,
        content: str,
        *,
        mentions: Sequence[Json] = (),
        mention_roles: Sequence[str] = (),
        mention_everyone: bool = False,
        reply_to: str | None = None,
        attachments: Sequence[Json] = (),
        flags: int = 0,
        message_id: str | None = None,
    ) -> Json:
        guild = self.guild_of(channel_id)
        message: Json = {
            "id": message_id or self._ids.next(),
            "channel_id": channel_id,
            "author": author,
            "content": content,
            "timestamp": _iso(),
            "edited_timestamp": None,
            "tts": False,
            "mention_everyone": mention_everyone,
            "mentions": [dict(u) for u in mentions],
            "mention_roles": list(mention_roles),
            "attachments": list(attachments),
            "embeds": [],
            "components": [],
            "pinned": False,
            "type": 19 if reply_to else 0,
            "flags": flags,
        }
        if guild is not None:
            message["guild_id"] = guild.id
            member = guild.members.get(author["id"])
            if member is not None:
                message["member"] = {k: v for k, v in member.items() if k != "user"}
            for mentioned in message["mentions"]:
                m = guild.members.get(mentioned["id"])
                if m is not None:
                    mentioned["member"] = {k: v for k, v in m.items() if k != "user"}
        if reply_to:
            referenced = self.messages.get(reply_to)
            message["message_reference"] = {
                "type": 0,
                "message_id": reply_to,
                "channel_id": channel_id,
                **({"guild_id": guild.id} if guild else {}),
            }
            message["referenced_message"] = referenced
        return message

    def attachment(
        self,
        filename: str,
        data: bytes,
        content_type: str,
        *,
        duration_secs: float | None = None,
        waveform: str | None = None,
    ) -> Json:
        """An attachment payload whose ``url`` downloads ``data`` from this server."""
        attachment_id = self._ids.next()
        key = f"{attachment_id}/{filename}"
        self.attachments[key] = data
        payload: Json = {
            "id": attachment_id,
            "filename": filename,
            "size": len(data),
            "url": f"{self.url}/attachments/{key}",
            "proxy_url": f"{self.url}/attachments/{key}",
            "content_type": content_type,
        }
        if duration_secs is not None:
            payload["duration_secs"] = duration_secs
            payload["waveform"] = waveform or "AAAA"
        return payload

    async def send_message(
        self,
        channel_id: str,
        author: Json,
        content: str,
        *,
        mention_bot: bool = False,
        mentions: Sequence[Json] = (),
        mention_everyone: bool = False,
        reply_to: str | None = None,
        attachments: Sequence[Json] = (),
        voice: bool = False,
    ) -> Json:
        """A user posts a message; MESSAGE_CREATE is dispatched. Returns the message payload.

        ``mention_bot`` prefixes the content with the bot's mention and lists it.
        ``voice`` marks the message as a voice message (flag 8192).
        """
        mentioned = list(mentions)
        if mention_bot:
            content = f"<@{self.bot_id}> {content}"
            mentioned.append(self.bot_user)
        if reply_to and reply_to in self.messages:
            # Replying pings the author of the replied-to message by default.
            original_author = self.messages[reply_to]["author"]
            if all(u["id"] != original_author["id"] for u in mentioned):
                mentioned.append(original_author)
        message = self._message_payload(
            channel_id,
            author,
            content,
            mentions=mentioned,
            mention_everyone=mention_everyone,
            reply_to=reply_to,
            attachments=attachments,
            flags=8192 if voice else 0,
        )
        self.messages[message["id"]] = message
        guild = self.guild_of(channel_id)
        self.dispatched_at[message["id"]] = time.monotonic()
        if guild is None:
            self._unanswered_dms.setdefault(channel_id, collections.deque()).append(message["id"])
        await self.dispatch("MESSAGE_CREATE", message, guild_id=guild.id if guild else None)
        return message

    def _command_schema(self, name: str, guild_id: str | None) -> Json:
        commands = list(self.global_commands)
        if guild_id is not None:
            commands = self.guild_commands.get(guild_id, []) + commands
        for command in commands:
            if command["name"] == name:
                return command
        raise KeyError(f"command /{name} was not registered (synced: {[c['name'] for c in commands]})")

    @staticmethod
    def _options(
        schema: Json, path: Sequence[str], values: Mapping[str, Any], resolved: Json | None = None
    ) -> list[Json]:
        """Build the interaction's options from the registered schema, sub-commands included.

        An attachment option (type 11) takes a payload made by :meth:`attachment`: as in
        Discord, the option's value is its id and the payload goes to ``resolved``."""
        options = schema.get("options") or []
        if path:
            for option in options:
                if option["name"] == path[0] and option["type"] in (1, 2):
                    return [
                        {
                            "type": option["type"],
                            "name": option["name"],
                            "options": FakeDiscord._options(option, path[1:], values, resolved),
                        }
                    ]
            raise KeyError(f"no sub-command {path[0]!r} in /{schema['name']}")
        by_name = {o["name"]: o for o in options}
        built = []
        for key, value in values.items():
            if key not in by_name:
                raise KeyError(f"no option {key!r} in {schema['name']} (have {sorted(by_name)})")
            given = value
            if by_name[key]["type"] == 11 and resolved is not None:
                resolved.setdefault("attachments", {})[value["id"]] = value
                given = value["id"]
            built.append({"type": by_name[key]["type"], "name": key, "value": given})
        return built

    def _interaction_base(
        self, kind: int, user: Json, channel_id: str, permissions: int | None
    ) -> tuple[Json, Guild | None]:
        guild = self.guild_of(channel_id)
        interaction_id = self._ids.next()
        payload: Json = {
            "id": interaction_id,
            "application_id": self.application_id,
            "type": kind,
            "token": f"itoken-{interaction_id}",
            "version": 1,
            "channel_id": channel_id,
            "locale": "en-US",
            "attachment_size_limit": 10 * 1024 * 1024,
            "entitlements": [],
            "authorizing_integration_owners": {"0": guild.id} if guild else {"1": user["id"]},
            "app_permissions": str(ALL_PERMISSIONS),
            "context": 0 if guild else 1,
        }
        if guild is not None:
            member = guild.members.get(user["id"]) or self._add_member(guild, user, [])
            everyone = int(guild.roles[guild.id]["permissions"])
            role_perms = 0
            for role_id in member["roles"]:
                role_perms |= int(guild.roles[role_id]["permissions"])
            perms = permissions if permissions is not None else everyone | role_perms
            if user["id"] == guild.owner_id:
                perms = ALL_PERMISSIONS
            payload["guild_id"] = guild.id
            payload["guild_locale"] = "en-US"
            payload["guild"] = {"id": guild.id, "locale": "en-US", "features": []}
            payload["member"] = {**member, "permissions": str(perms)}
            payload["channel"] = dict(self.channel(channel_id))
        else:
            payload["user"] = user
            payload["channel"] = dict(self.dm_channels[channel_id])
        return payload, guild

    async def send_command(
        self,
        command: str,
        /,
        *subcommand: str,
        user: Json,
        channel_id: str,
        permissions: int | None = None,
        **options: Any,
    ) -> str:
        """A user runs ``/command sub... option=value``; returns the interaction id.

        ``permissions`` overrides the member's computed permissions in the guild.
        """
        payload, guild = self._interaction_base(2, user, channel_id, permissions)
        schema = self._command_schema(command, guild.id if guild else None)
        resolved: Json = {}
        payload["data"] = {
            "id": schema["id"],
            "name": command,
            "type": 1,
            "options": self._options(schema, subcommand, options, resolved),
            **({"guild_id": schema["guild_id"]} if schema.get("guild_id") else {}),
            **({"resolved": resolved} if resolved else {}),
        }
        self.interactions[payload["id"]] = payload
        self.interaction_responses[payload["id"]] = []
        await self.dispatch("INTERACTION_CREATE", payload, guild_id=guild.id if guild else None)
        return payload["id"]

    async def click(
        self, message_id: str, custom_id: str, *, user: Json, permissions: int | None = None
    ) -> str:
        """A user presses the button ``custom_id`` on a message; returns the interaction id."""
        message = self.messages[message_id]
        payload, guild = self._interaction_base(3, user, message["channel_id"], permissions)
        payload["message"] = message
        payload["data"] = {"custom_id": custom_id, "component_type": 2}
        self.interactions[payload["id"]] = payload
        self.interaction_responses[payload["id"]] = []
        await self.dispatch("INTERACTION_CREATE", payload, guild_id=guild.id if guild else None)
        return payload["id"]

    # --- gateway --------------------------------------------------------------------------

    def _shard_of(self, guild_id: str | None, shard_count: int) -> int:
        return 0 if guild_id is None else (int(guild_id) >> 22) % shard_count

    async def dispatch(self, event: str, data: Json, *, guild_id: str | None) -> None:
        """Send an event to the connection(s) owning ``guild_id``."""
        for conn in list(self._connections):
            if not conn.identified or conn.ws.closed:
                continue
            if self._shard_of(guild_id, conn.shard[1]) != conn.shard[0]:
                continue
            conn.seq += 1
            frame = json.dumps({"op": 0, "t": event, "s": conn.seq, "d": data})
            try:
                await conn.ws.send_str(frame)
            except ConnectionError:
                continue
            if self.record and event == "MESSAGE_CREATE":
                self.delivered.setdefault(conn.shard, []).append(str(data["id"]))

    async def _gateway(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        conn = _Connection(ws)
        self._connections.append(conn)
        await ws.send_json({"op": 10, "d": {"heartbeat_interval": self.heartbeat_interval_ms}})
        try:
            async for frame in ws:
                if frame.type != WSMsgType.TEXT:
                    continue
                msg = json.loads(frame.data)
                op = msg.get("op")
                if op == 1:
                    await ws.send_json({"op": 11})
                elif op == 2:
                    await self._identify(conn, msg["d"])
                elif op == 6:
                    conn.identified = True
                    conn.seq = msg["d"].get("seq") or conn.seq
                    conn.seq += 1
                    await ws.send_json({"op": 0, "t": "RESUMED", "s": conn.seq, "d": {}})
        finally:
            self._connections.remove(conn)
            await self._notify()
        return ws

    async def _identify(self, conn: _Connection, data: Json) -> None:
        self.identify_payloads.append(data)
        shard = data.get("shard") or [0, 1]
        conn.shard = (int(shard[0]), int(shard[1]))
        conn.session_id = self._ids.next()
        owned = [g for g in self.guilds.values() if self._shard_of(g.id, conn.shard[1]) == conn.shard[0]]
        ready = {
            "v": 10,
            "user": self.bot_user,
            "guilds": [{"id": g.id, "unavailable": True} for g in owned],
            "session_id": conn.session_id,
            "resume_gateway_url": self.gateway_url,
            "shard": list(conn.shard),
            "application": {"id": self.application_id, "flags": 0},
            "private_channels": [],
            "relationships": [],
        }
        conn.identified = True
        conn.seq += 1
        await conn.ws.send_str(json.dumps({"op": 0, "t": "READY", "s": conn.seq, "d": ready}))
        for guild in owned:
            conn.seq += 1
            frame = {"op": 0, "t": "GUILD_CREATE", "s": conn.seq, "d": self._guild_payload(guild)}
            await conn.ws.send_str(json.dumps(frame))
        await self._notify()

    def _guild_payload(self, guild: Guild) -> Json:
        return {
            "id": guild.id,
            "name": guild.name,
            "icon": None,
            "owner_id": guild.owner_id,
            "unavailable": False,
            "large": False,
            "member_count": len(guild.members),
            "members": list(guild.members.values()),
            "channels": list(guild.channels.values()),
            "threads": list(guild.threads.values()),
            "roles": list(guild.roles.values()),
            "emojis": [],
            "stickers": [],
            "features": [],
            "presences": [],
            "voice_states": [],
            "stage_instances": [],
            "guild_scheduled_events": [],
            "soundboard_sounds": [],
            "verification_level": 0,
            "default_message_notifications": 0,
            "explicit_content_filter": 0,
            "mfa_level": 0,
            "nsfw_level": 0,
            "premium_tier": 0,
            "preferred_locale": "en-US",
            "system_channel_flags": 0,
            "joined_at": _iso(),
        }

    @property
    def connected_shards(self) -> list[tuple[int, int]]:
        return sorted(c.shard for c in self._connections if c.identified)

    # --- waiting --------------------------------------------------------------------------

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, predicate: Callable[[], Any], timeout_s: float = 10.0) -> Any:
        """Wait until ``predicate()`` returns something truthy (checked on every change)."""

        async def wait() -> Any:
            async with self._changed:
                while not (result := predicate()):
                    await self._changed.wait()
                return result

        return await asyncio.wait_for(wait(), timeout_s)

    async def wait_connected(self, shards: int = 1, timeout_s: float = 10.0) -> None:
        await self.wait_for(lambda: len(self.connected_shards) >= shards, timeout_s)

    def replies_to(self, message_id: str) -> list[Json]:
        """The bot's messages that reply to ``message_id``, oldest first."""
        return [
            m
            for m in self.messages.values()
            if m["author"]["id"] == self.bot_id
            and (m.get("message_reference") or {}).get("message_id") == message_id
        ]

    def bot_messages(self, channel_id: str) -> list[Json]:
        return [
            m
            for m in self.messages.values()
            if m["author"]["id"] == self.bot_id
            and m["channel_id"] == channel_id
            and not m.get("_interaction")
        ]

    async def wait_for_reply(self, message_id: str, timeout_s: float = 10.0) -> Json:
        return (await self.wait_for(lambda: self.replies_to(message_id), timeout_s))[0]

    async def wait_interaction(self, interaction_id: str, n: int = 1, timeout_s: float = 10.0) -> list[Json]:
        """The first ``n`` responses (callback, follow-ups, edits) to an interaction."""
        return await self.wait_for(
            lambda: (
                self.interaction_responses[interaction_id][:n]
                if len(self.interaction_responses[interaction_id]) >= n
                else None
            ),
            timeout_s,
        )

    async def wait_first_reply(self, message_id: str, timeout_s: float = 30.0) -> float:
        """Monotonic time of the bot's first message replying to ``message_id`` (cheap: a future)."""
        if message_id in self.first_reply_at:
            return self.first_reply_at[message_id]
        waiter = self._reply_waiters.setdefault(message_id, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(asyncio.shield(waiter), timeout_s)

    def fail_channels(self, status: int = 503, *, times: int | None = None, only: str = "") -> None:
        """The next ``times`` requests on ``/channels/...`` (sending, editing, typing) whose path
        ends with ``only`` answer ``status``; ``times=None``: every one until :meth:`recover`."""
        self._channel_faults.add(Fault(status, 0.0, _ends_with(only)), times)

    def hang_channels(self, seconds: float, *, times: int | None = None, only: str = "") -> None:
        """Like :meth:`fail_channels`, but the requests hang ``seconds`` and then answer 504
        (nothing is done with them, as when a gateway in front of the API timed out)."""
        self._channel_faults.add(Fault(504, seconds, _ends_with(only)), times)

    def _take_channel_fault(self, method: str, path: str) -> Fault | None:
        if not path.startswith("/channels/") or method == "GET":
            return None
        return self._channel_faults.take(path)

    def recover(self) -> None:
        """Undo :meth:`fail_channels` and :meth:`hang_channels`."""
        self._channel_faults.clear()

    def rate_limit_edits(self, n: int = 1, retry_after: float = 0.5) -> None:
        """The next ``n`` message edits answer 429 Too Many Requests."""
        self._edit_faults.extend([retry_after] * n)

    # --- REST -----------------------------------------------------------------------------

    @staticmethod
    def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
        # discord.py requires exactly "application/json" (no charset parameter).
        response = web.Response(status=status, body=json.dumps(data).encode(), headers=headers)
        response.content_type = "application/json"
        return response

    def _error(self, status: int, message: str, code: int = 0) -> web.Response:
        return self._json({"message": message, "code": code}, status)

    async def _read_body(self, request: web.Request) -> tuple[Any, list[tuple[str, bytes]]]:
        if not request.can_read_body:
            return None, []
        if request.content_type.startswith("multipart/"):
            body: Any = None
            files: list[tuple[str, bytes]] = []
            reader = await request.multipart()
            async for part in reader:
                if not isinstance(part, BodyPartReader):
                    continue
                data = await part.read()
                if part.name == "payload_json":
                    body = json.loads(data)
                else:
                    files.append((part.filename or "file", bytes(data)))
            return body, files
        raw = await request.read()
        return (json.loads(raw) if raw else None), []

    async def _rest(self, request: web.Request) -> web.StreamResponse:
        body, files = await self._read_body(request)
        path = "/" + request.match_info["tail"]
        call = RecordedCall(request.method, path, dict(request.query), body, files)
        if self.record:
            self.requests.append(call)
        if request.headers.get("Authorization") != f"Bot {self.token}" and not path.startswith(
            ("/interactions/", "/webhooks/")
        ):
            return self._error(401, "401: Unauthorized")
        fault = self._take_channel_fault(request.method, path)
        if fault is not None:
            self.faulted.append(call)
            await self._notify()
            if fault.hang_s:
                await asyncio.sleep(fault.hang_s)
            return self._error(fault.status, f"{fault.status}: the fake Discord API is failing")
        try:
            response = await self._route(request.method, path.rstrip("/").split("/")[1:], call)
        finally:
            await self._notify()
        if response is None:
            self.unknown.append(call)
            return self._error(404, f"404: Not Found ({request.method} {path})", 10000)
        return response

    async def _route(self, method: str, parts: list[str], call: RecordedCall) -> web.Response | None:
        body = call.json or {}
        match method, parts:
            case "GET", ["users", "@me"]:
                return self._json(self.bot_user)
            case "GET", ["oauth2", "applications", "@me"]:
                return self._json(self._application())
            case "GET", ["gateway", "bot"]:
                return self._json(
                    {
                        "url": self.gateway_url,
                        "shards": 1,
                        "session_start_limit": {
                            "total": 1000,
                            "remaining": 1000,
                            "reset_after": 0,
                            "max_concurrency": 1,
                        },
                    }
                )
            case "GET", ["gateway"]:
                return self._json({"url": self.gateway_url})
            case "PUT", ["applications", _, "commands"]:
                self.global_commands = self._register_commands(call.json or [], None)
                return self._json(self.global_commands)
            case "PUT", ["applications", _, "guilds", guild_id, "commands"]:
                self.guild_commands[guild_id] = self._register_commands(call.json or [], guild_id)
                return self._json(self.guild_commands[guild_id])
            case "GET", ["applications", _, "commands"]:
                return self._json(self.global_commands)
            case "GET", ["channels", channel_id]:
                try:
                    return self._json(self.channel(channel_id))
                except KeyError:
                    return self._error(404, "Unknown Channel", 10003)
            case "POST", ["channels", channel_id, "typing"]:
                self.typing.append(channel_id)
                return web.Response(status=204)
            case "POST", ["channels", channel_id, "messages"]:
                if self.refuse_voice_messages and int(body.get("flags") or 0) & VOICE_MESSAGE:
                    return self._error(400, "Cannot send voice messages in this channel", 50173)
                return self._json(await self._bot_message(channel_id, body, call.files))
            case "GET", ["channels", _, "messages", message_id]:
                if message_id not in self.messages:
                    return self._error(404, "Unknown Message", 10008)
                return self._json(self.messages[message_id])
            case "PATCH", ["channels", _, "messages", message_id]:
                return self._edit_message(message_id, body)
            case "POST", ["channels", channel_id, "messages", message_id, "threads"]:
                return self._json(await self._bot_thread(channel_id, body, message_id))
            case "POST", ["channels", channel_id, "threads"]:
                return self._json(await self._bot_thread(channel_id, body, None))
            case "POST", ["users", "@me", "channels"]:
                user = self.users[str(body["recipient_id"])]
                return self._json(self.channel(self.dm_channel(user)))
            case "POST", ["interactions", interaction_id, _, "callback"]:
                return self._json(self._interaction_callback(interaction_id, body, call.files))
            case "POST", ["webhooks", _, token]:
                return self._json(self._followup(token, body, call.files))
            case "PATCH", ["webhooks", _, token, "messages", "@original"]:
                return self._json(self._edit_original(token, body, call.files))
            case "GET", ["webhooks", _, token, "messages", "@original"]:
                return self._json(self._original(token))
            case "PATCH", ["webhooks", _, token, "messages", message_id]:
                return self._edit_message(message_id, body, record_for=self._interaction_by_token(token))
            case "DELETE", ["webhooks", _, _token, "messages", _]:
                return web.Response(status=204)
        return None

    def _application(self) -> Json:
        return {
            "id": self.application_id,
            "name": self.bot_user["username"],
            "icon": None,
            "description": "",
            "bot_public": True,
            "bot_require_code_grant": False,
            "verify_key": "0" * 64,
            "flags": 0,
            "owner": {**self.bot_user, "bot": False, "id": self._ids.next(), "username": "owner"},
            "team": None,
            "summary": "",
        }

    def _register_commands(self, commands: list[Json], guild_id: str | None) -> list[Json]:
        registered = []
        for command in commands:
            entry = {
                **command,
                "id": self._ids.next(),
                "application_id": self.application_id,
                "version": self._ids.next(),
                "default_member_permissions": command.get("default_member_permissions"),
                "type": command.get("type", 1),
                "options": command.get("options", []),
            }
            if guild_id is not None:
                entry["guild_id"] = guild_id
            registered.append(entry)
        return registered

    def _store_files(self, message_id: str, payload: Json, files: list[tuple[str, bytes]]) -> list[Json]:
        attachments = []
        described = {str(a.get("id")): a for a in payload.get("attachments") or []}
        for index, (filename, data) in enumerate(files):
            entry = described.get(str(index), {})
            name = entry.get("filename") or filename
            key = f"{message_id}/{name}"
            self.attachments[key] = data
            attachment = {
                "id": self._ids.next(),
                "filename": name,
                "size": len(data),
                "url": f"{self.url}/attachments/{key}",
                "proxy_url": f"{self.url}/attachments/{key}",
                "content_type": CONTENT_TYPES.get(Path(name).suffix, "application/octet-stream"),
            }
            for voice_field in ("duration_secs", "waveform"):
                if voice_field in entry:
                    attachment[voice_field] = entry[voice_field]
            attachments.append(attachment)
        return attachments

    async def _bot_message(self, channel_id: str, body: Json, files: list[tuple[str, bytes]]) -> Json:
        reference = body.get("message_reference") or {}
        reply_to = str(reference["message_id"]) if reference.get("message_id") else None
        message = self._message_payload(
            channel_id, self.bot_user, body.get("content") or "", reply_to=reply_to
        )
        message["attachments"] = self._store_files(message["id"], body, files)
        message["components"] = body.get("components") or []
        message["flags"] = int(body.get("flags") or 0)
        if "allowed_mentions" in body:
            message["_allowed_mentions"] = body["allowed_mentions"]
        self.messages[message["id"]] = message
        if reply_to is None and self._unanswered_dms.get(channel_id):
            # a DM reply carries no reference: it answers the oldest unanswered DM (for timing)
            reply_to = self._unanswered_dms[channel_id].popleft()
        if reply_to is not None and reply_to not in self.first_reply_at:
            self.first_reply_at[reply_to] = at = time.monotonic()
            waiter = self._reply_waiters.pop(reply_to, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(at)
        if self.echo_bot_messages:
            guild = self.guild_of(channel_id)
            payload = {k: v for k, v in message.items() if not k.startswith("_")}
            await self.dispatch("MESSAGE_CREATE", payload, guild_id=guild.id if guild else None)
        return {k: v for k, v in message.items() if not k.startswith("_")}

    def _edit_message(self, message_id: str, body: Json, *, record_for: str | None = None) -> web.Response:
        if self._edit_faults:
            retry_after = self._edit_faults.pop(0)
            headers = {
                "Via": "1.1 google",
                "Retry-After": str(max(1, round(retry_after))),
                "X-RateLimit-Scope": "user",
                "X-RateLimit-Limit": "5",
                "X-RateLimit-Remaining": "0",
                "X-RateLimit-Reset-After": str(retry_after),
                "X-RateLimit-Bucket": "fake-edit-bucket",
            }
            payload = {"message": "You are being rate limited.", "retry_after": retry_after, "global": False}
            self.edits.append({"id": message_id, "rate_limited": True, "at": time.monotonic()})
            return self._json(payload, 429, headers)
        message = self.messages.get(message_id)
        if message is None:
            return self._error(404, "Unknown Message", 10008)
        if "content" in body:
            message["content"] = body["content"] or ""
        if "components" in body:
            message["components"] = body["components"] or []
        message["edited_timestamp"] = _iso()
        self.edits.append({"id": message_id, "content": message["content"], "at": time.monotonic()})
        if record_for is not None:
            self.interaction_responses[record_for].append(
                {"kind": "edit", "data": body, "files": [], "message_id": message_id}
            )
        return self._json({k: v for k, v in message.items() if not k.startswith("_")})

    async def _bot_thread(self, channel_id: str, body: Json, message_id: str | None) -> Json:
        guild = self.guild_of(channel_id)
        assert guild is not None
        thread_id = message_id or self._ids.next()
        thread = self._thread_payload(guild, channel_id, thread_id, body.get("name", "thread"), self.bot_id)
        guild.threads[thread_id] = thread
        await self.dispatch("THREAD_CREATE", {**thread, "newly_created": True}, guild_id=guild.id)
        return thread

    # --- interactions -----------------------------------------------------------------------

    def _interaction_by_token(self, token: str) -> str:
        for interaction_id, payload in self.interactions.items():
            if payload["token"] == token:
                return interaction_id
        raise KeyError(token)

    def _interaction_message(self, interaction_id: str, body: Json, files: list[tuple[str, bytes]]) -> Json:
        payload = self.interactions[interaction_id]
        message = self._message_payload(payload["channel_id"], self.bot_user, body.get("content") or "")
        message["attachments"] = self._store_files(message["id"], body, files)
        message["components"] = body.get("components") or []
        message["embeds"] = body.get("embeds") or []
        message["flags"] = int(body.get("flags") or 0)
        message["type"] = 20
        message["interaction_metadata"] = {
            "id": interaction_id,
            "type": payload["type"],
            "user": payload.get("user") or payload["member"]["user"],
            "authorizing_integration_owners": payload["authorizing_integration_owners"],
        }
        message["_interaction"] = interaction_id
        self.messages[message["id"]] = message
        return message

    def _interaction_callback(self, interaction_id: str, body: Json, files: list[tuple[str, bytes]]) -> Json:
        kind = int(body.get("type", 0))
        data = body.get("data") or {}
        payload = self.interactions[interaction_id]
        entry: Json = {"kind": "callback", "type": kind, "data": data, "files": files}
        interaction: Json = {"id": interaction_id, "type": payload["type"]}
        resource: Json | None = None
        if kind in (4, 5):
            message = self._interaction_message(interaction_id, data, files)
            payload["_original"] = message["id"]
            entry["message_id"] = message["id"]
            interaction.update(
                response_message_id=message["id"],
                response_message_loading=kind == 5,
                response_message_ephemeral=bool(int(data.get("flags") or 0) & 64),
            )
            resource = {"type": kind, "message": {k: v for k, v in message.items() if not k.startswith("_")}}
        elif kind == 7 and "message" in payload:
            message = self.messages[payload["message"]["id"]]
            if "content" in data:
                message["content"] = data["content"] or ""
            if "components" in data:
                message["components"] = data["components"] or []
            resource = {"type": kind, "message": {k: v for k, v in message.items() if not k.startswith("_")}}
        self.interaction_responses[interaction_id].append(entry)
        return {"interaction": interaction, **({"resource": resource} if resource else {})}

    def _followup(self, token: str, body: Json, files: list[tuple[str, bytes]]) -> Json:
        interaction_id = self._interaction_by_token(token)
        message = self._interaction_message(interaction_id, body, files)
        self.interaction_responses[interaction_id].append(
            {"kind": "followup", "data": body, "files": files, "message_id": message["id"]}
        )
        return {k: v for k, v in message.items() if not k.startswith("_")}

    def _original(self, token: str) -> Json:
        interaction_id = self._interaction_by_token(token)
        message = self.messages[self.interactions[interaction_id]["_original"]]
        return {k: v for k, v in message.items() if not k.startswith("_")}

    def _edit_original(self, token: str, body: Json, files: list[tuple[str, bytes]]) -> Json:
        interaction_id = self._interaction_by_token(token)
        message = self.messages[self.interactions[interaction_id]["_original"]]
        if "content" in body:
            message["content"] = body["content"] or ""
        if "components" in body:
            message["components"] = body["components"] or []
        if files:
            message["attachments"] = self._store_files(message["id"], body, files)
        self.interaction_responses[interaction_id].append(
            {"kind": "edit", "data": body, "files": files, "message_id": message["id"]}
        )
        return {k: v for k, v in message.items() if not k.startswith("_")}

    async def _download(self, request: web.Request) -> web.StreamResponse:
        self.downloads.append(request.match_info["key"])
        data = self.attachments.get(request.match_info["key"])
        if data is None:
            return web.Response(status=404)
        return web.Response(body=data, content_type="application/octet-stream")


# --- WhisperEngine against the fakes ----------------------------------------------------------


def _ends_with(only: str) -> Callable[[str], bool]:
    return lambda path: path.endswith(only)


def discord_settings(discord_server: FakeDiscord) -> dict[str, Any]:
    """The Settings values that point the Discord adapter at ``discord_server``."""
    return {
        "discord_token": discord_server.token,
        "discord_api_base_url": discord_server.api_base,
        "discord_gateway_url": discord_server.gateway_url,
        "discord_edit_interval_s": 0.2,
    }


@contextlib.asynccontextmanager
async def running_whisperengine(
    discord_server: FakeDiscord,
    llm_base_url: str,
    data_dir: Path,
    *,
    stt: Any = None,
    **settings: Any,
) -> AsyncIterator[tuple[Any, Any]]:
    """``whisperengine run``'s code path (``build_app`` + ``start_discord``) against the fakes.

    Yields ``(app, adapter)`` once the bot is connected to the fake gateway. ``settings``
    override the Settings fields (e.g. ``discord_shard_count=2``).
    """
    from bot.app import build_app
    from bot.platforms import start_discord
    from config.settings import Settings

    values: dict[str, Any] = {
        "llm_backend": "openai",
        "openai_base_url": llm_base_url,
        "openai_api_key": "test",
        "llm_max_retries": 0,
        "data_dir": data_dir,
        "web_enabled": False,
        **discord_settings(discord_server),
        **settings,
    }
    config = Settings(_env_file=None, **values)  # type: ignore[call-arg]
    shards = len(config.discord_shard_ids) or config.discord_shard_count or 1
    async with build_app(config) as app, contextlib.AsyncExitStack() as stack:
        adapter = await start_discord(app, stack, stt=stt)
        assert adapter is not None
        await discord_server.wait_connected(shards)
        yield app, adapter
