"""Slack: slack-bolt (async) in front of the engine; see ``adapter.py``.

``whisperengine run`` starts it with ``bot.platforms.start_slack`` when ``SLACK_BOT_TOKEN`` is
set: Socket Mode when ``SLACK_APP_TOKEN`` is set, else the HTTP Events API.
"""
