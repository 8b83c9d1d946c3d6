"""Webhook mode: updates posted to the bot's own HTTP port, accepted only with the secret token."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from bot_fixtures import TOKEN, make_engine, make_settings, stop_bot
from botapi_stub import BotApiStub, UploadedFile
from pydantic import ValidationError
from telegram.ext import Application

from bot.app import build_application, webhook_options
from bot.config import Settings

SECRET = "webhook-Secret_0123456789abcdef"
PATH = "telegram/updates"


class WebhookBotApiStub(BotApiStub):
    """The Bot API stand-in, also answering setWebhook (a webhook bot registers its URL at start)."""

    def __init__(self, token: str) -> None:
        super().__init__(token)
        self.webhooks: list[dict[str, Any]] = []

    def _handle_locked(self, method: str, params: dict[str, Any], files: dict[str, UploadedFile]) -> tuple[int, dict]:
        if method == "setWebhook":
            self.webhooks.append(params)
            return self._ok(True)
        return super()._handle_locked(method, params, files)


def free_port() -> int:
    """A TCP port of 127.0.0.1 nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def command_update(update_id: int, chat_id: int, text: str = "/help") -> dict[str, Any]:
    """An update as Telegram posts it to a webhook: a private message holding a command."""
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private", "first_name": f"User{chat_id}"},
            "from": {"id": chat_id, "is_bot": False, "first_name": f"User{chat_id}", "language_code": "en"},
            "text": text,
            "entities": [{"type": "bot_command", "offset": 0, "length": len(text)}],
        },
    }


@pytest.fixture
def botapi() -> Iterator[WebhookBotApiStub]:
    """A fresh stand-in per test; any request it could not understand fails the test."""
    stub = WebhookBotApiStub(TOKEN).start()
    yield stub
    stub.stop()
    assert not stub.errors, stub.errors


@pytest.fixture
async def webhook_bot(
    botapi: WebhookBotApiStub, tmp_path, caplog: pytest.LogCaptureFixture
) -> AsyncIterator[tuple[Application, str]]:
    """The bot in webhook mode on a local port, started the way run_webhook starts it; yields it and its URL."""
    caplog.set_level(logging.DEBUG)  # from the start: setWebhook's parameters (the secret) are logged at DEBUG
    port = free_port()
    settings = make_settings(
        tmp_path,
        botapi,
        webhook_url=f"https://bot.example.org/{PATH}",
        webhook_listen="127.0.0.1",
        webhook_port=port,
        webhook_secret=SECRET,
    )
    application = build_application(settings, make_engine(settings))
    await application.initialize()
    await application.post_init(application)
    await application.updater.start_webhook(**webhook_options(settings))
    await application.start()
    try:
        yield application, f"http://127.0.0.1:{port}/{PATH}"
    finally:
        await stop_bot(application)


async def test_an_update_is_taken_only_with_the_secret_token(
    webhook_bot: tuple[Application, str], botapi: WebhookBotApiStub, caplog: pytest.LogCaptureFixture
) -> None:
    _, url = webhook_bot
    assert [(hook["url"], hook["secret_token"]) for hook in botapi.webhooks] == [
        (f"https://bot.example.org/{PATH}", SECRET)
    ]
    async with httpx.AsyncClient(timeout=10) as client:
        missing = await client.post(url, json=command_update(1, chat_id=501))
        wrong = await client.post(
            url, json=command_update(2, chat_id=502), headers={"X-Telegram-Bot-Api-Secret-Token": "x" * 20}
        )
        accepted = await client.post(
            url, json=command_update(3, chat_id=503), headers={"X-Telegram-Bot-Api-Secret-Token": SECRET}
        )
    assert (missing.status_code, wrong.status_code, accepted.status_code) == (403, 403, 200)
    await botapi.wait_for(lambda: botapi.texts(503), timeout=10, what="the answer to the accepted update")
    assert "photo" in botapi.texts(503)[0].lower()  # /help describes what to send
    # The refused posts never reached a handler: nothing was sent to their chats.
    assert botapi.texts(501) == [] and botapi.texts(502) == []
    # Whatever logs it (a library's debug line of setWebhook's parameters, a traceback), the secret is redacted.
    logging.getLogger("anything").warning("posting with %s", SECRET)
    assert "posting with [REDACTED]" in caplog.text
    assert SECRET not in caplog.text
    assert TOKEN.partition(":")[2] not in caplog.text


def test_webhook_settings() -> None:
    base = {"token": TOKEN, "webhook_url": "https://bot.example.org/hook"}
    with pytest.raises(ValidationError, match="BOT_WEBHOOK_SECRET must be set"):
        Settings(_env_file=None, **base)
    with pytest.raises(ValidationError, match="16-256 characters"):
        Settings(_env_file=None, **base, webhook_secret="short")
    with pytest.raises(ValidationError, match="16-256 characters"):
        Settings(_env_file=None, **base, webhook_secret="has spaces in it, not allowed")
    settings = Settings(_env_file=None, **base, webhook_secret=SECRET, webhook_port=8080)
    options = webhook_options(settings)
    assert (options["url_path"], options["port"], options["secret_token"]) == ("hook", 8080, SECRET)
    assert webhook_options(Settings(_env_file=None, token=TOKEN)) is None  # long polling stays the default


def test_blank_webhook_settings_mean_long_polling() -> None:
    """docker compose passes unset variables as empty strings: they must not switch the mode or fail."""
    settings = Settings(_env_file=None, token=TOKEN, webhook_url="", webhook_secret="", ray_address="")
    assert webhook_options(settings) is None and settings.ray_address is None
