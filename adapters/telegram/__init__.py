"""Telegram: python-telegram-bot in front of the engine; see ``adapter.py``.

``whisperengine run`` starts it with ``bot.platforms.start_telegram`` when ``TELEGRAM_TOKEN`` is
set: long polling, or the webhook route when ``TELEGRAM_WEBHOOK_URL`` is set.
"""
