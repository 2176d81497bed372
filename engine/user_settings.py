"""The keys of the settings kept under a user's own scope (scope = user_key): exported with the
user's data (``Engine.export_user``) and erased with it."""

from __future__ import annotations

from engine.persona import PERSONA_SETTING
from engine.relationship import RELATIONSHIP_SETTING

CHECKIN_SETTING = "checkin"
"""The user's check-in schedule (``engine/checkins.py``)."""

USER_SETTINGS = (RELATIONSHIP_SETTING, PERSONA_SETTING, CHECKIN_SETTING)
