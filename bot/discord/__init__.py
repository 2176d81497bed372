"""Discord: the real discord.py client in front of the engine; see ``client.py`` for behaviour.

``whisperengine run`` starts it with ``bot.platforms.start_discord`` when ``DISCORD_TOKEN`` is
set: it logs in, registers the slash commands and connects to the gateway in the background.
"""
