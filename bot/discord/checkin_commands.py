"""``/checkin set|off|show``: the bot writes first, by DM, each day at a local time the user
chose (see ``engine/checkins.py``). Every answer is ephemeral; bad input gets an ephemeral
error from the command tree.
"""

from __future__ import annotations

import discord
from discord import app_commands

from engine.checkins import CheckinScheduler, time_zone_names
from engine.errors import InputError

from .host import command_host, identity
from .translate import PLATFORM

CHECKINS_OFF = "Check-ins aren't enabled on this bot."
NO_CHECKINS = "You have no check-ins. `/checkin set time:08:00 timezone:Europe/Berlin` makes me DM you daily."


def _scheduler(interaction: discord.Interaction) -> CheckinScheduler:
    scheduler = command_host(interaction).checkins
    if scheduler is None:
        raise InputError(CHECKINS_OFF)
    return scheduler


class CheckinCommands(app_commands.Group):
    def __init__(self) -> None:
        super().__init__(name="checkin", description="Let the bot check in on you by DM at a time you choose")

    @app_commands.command(name="set", description="DM me every day at this local time")
    @app_commands.describe(
        time="your local time, HH:MM on the 24-hour clock (e.g. 08:00)",
        timezone="your time zone, e.g. Europe/Berlin or America/New_York",
    )
    async def set_checkin(self, interaction: discord.Interaction, time: str, timezone: str) -> None:
        scheduler = _scheduler(interaction)
        schedule = await scheduler.set_schedule(
            await identity(interaction),
            platform=PLATFORM,
            user_id=str(interaction.user.id),
            user_name=interaction.user.display_name,
            at=time,
            timezone=timezone,
        )
        await interaction.response.send_message(
            f"Done. {scheduler.describe(schedule)} `/checkin off` stops them.", ephemeral=True
        )

    @set_checkin.autocomplete("timezone")
    async def _time_zones(
        self, interaction: discord.Interaction, current: str
    ) -> list[app_commands.Choice[str]]:
        wanted = current.strip().lower().replace(" ", "_")
        names = [name for name in time_zone_names() if wanted in name.lower()]
        return [app_commands.Choice(name=name, value=name) for name in names[:25]]

    @app_commands.command(name="off", description="Stop the check-ins")
    async def off(self, interaction: discord.Interaction) -> None:
        stopped = await _scheduler(interaction).turn_off(await identity(interaction))
        text = "Check-ins are off: I won't DM you first." if stopped else NO_CHECKINS
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="show", description="Show when the bot checks in on you")
    async def show(self, interaction: discord.Interaction) -> None:
        scheduler = _scheduler(interaction)
        schedule = await scheduler.schedule_of(await identity(interaction))
        text = scheduler.describe(schedule) if schedule is not None else NO_CHECKINS
        await interaction.response.send_message(text, ephemeral=True)


__all__ = ["CheckinCommands"]
