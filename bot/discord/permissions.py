"""Who may run admin commands: Manage Server, or the configured admin role.

In a DM the only other party is the bot, so the user is the admin of their own DM.
"""

from __future__ import annotations

import discord
from discord import app_commands


class NotAdmin(app_commands.CheckFailure):
    def __init__(self, admin_role: str | None) -> None:
        extra = f" or the {admin_role} role" if admin_role else ""
        super().__init__(f"Only people with the Manage Server permission{extra} can do that.")


def has_admin_role(member: discord.Member, admin_role: str | None) -> bool:
    if not admin_role:
        return False
    wanted = admin_role.strip().lstrip("@")
    if wanted.isdigit():
        return member.get_role(int(wanted)) is not None
    return any(role.name.lower() == wanted.lower() for role in member.roles)


def is_admin(interaction: discord.Interaction, admin_role: str | None) -> bool:
    if interaction.guild_id is None:
        return True
    if interaction.permissions.manage_guild or interaction.permissions.administrator:
        return True
    user = interaction.user
    return isinstance(user, discord.Member) and has_admin_role(user, admin_role)
