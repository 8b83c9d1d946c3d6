"""Builds the python-telegram-bot Application: handlers, engine and store lifecycle, logging hygiene."""

from __future__ import annotations

import logging
from urllib.parse import quote

from telegram import BotCommand, Update
from telegram.error import TelegramError
from telegram.ext import (
    AIORateLimiter,
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    MessageHandler,
    filters,
)

from bot import handlers
from bot.config import Settings
from bot.handlers import SERVICES_KEY, Services
from bot.store import AsyncStore
from segmentation import MODEL_NAMES
from segmentation.engine import EngineConfig, InferenceEngine

logger = logging.getLogger(__name__)

# Only what the handlers use: no edited messages (an edited caption must not re-run a photo), no channel posts.
ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY]

BOT_COMMANDS = [
    BotCommand("start", "What this bot does"),
    BotCommand("help", "How to use it"),
    BotCommand("model", "Show or switch the segmentation model"),
]


class RedactingFilter(logging.Filter):
    """Replaces registered secrets (the bot token) in a record's message and traceback: defence in depth."""

    def __init__(self) -> None:
        super().__init__("redact-secrets")
        self._secrets: list[str] = []

    def add_secret(self, secret: str) -> None:
        """Redact this secret, its URL-encoded form, and the part after the bot id (the real secret)."""
        variants = {secret, quote(secret, safe=""), secret.partition(":")[2]}
        for variant in sorted(variants, key=len, reverse=True):  # longest first, so a whole token is one marker
            if len(variant) >= 8 and variant not in self._secrets:
                self._secrets.append(variant)
        self._secrets.sort(key=len, reverse=True)

    def _redact(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "[REDACTED]")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the record in place; never drops it."""
        if not self._secrets:
            return True
        try:
            message = record.getMessage()
        except Exception:  # a malformed record: leave it to the formatter to complain
            return True
        # Freeze the message as text even when nothing matched: arguments are live objects, and python-telegram-bot
        # logs getFile's result dict before it writes the tokenised download URL into that very dict.
        record.msg, record.args = self._redact(message), None
        if record.exc_info and record.exc_info[1] is not None:
            if not record.exc_text:
                record.exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_text = self._redact(record.exc_text)
        if record.stack_info:
            record.stack_info = self._redact(record.stack_info)
        return True


REDACTOR = RedactingFilter()


def install_log_hygiene(token: str) -> None:
    """Quiet httpx (it logs every request URL, token included, at INFO) and redact the token from all handlers."""
    logging.getLogger("httpx").setLevel(logging.WARNING)
    REDACTOR.add_secret(token)
    # Handler filters see records from every logger that propagates to them; a logger filter would only see
    # records created on that exact logger. httpx gets one too in case someone gives it its own handler.
    targets: list[logging.Filterer] = [*logging.getLogger().handlers, logging.getLogger("httpx")]
    for target in targets:
        if REDACTOR not in target.filters:
            target.addFilter(REDACTOR)


class BotApplication(Application):
    """An Application whose stop() is bounded: it closes the engine while waiting for the handlers.

    Application.stop() waits for every running handler. A handler waiting on the engine would keep it waiting
    until its photo is done, however long the queue. Closing the engine at the same moment bounds that wait by
    BOT_SHUTDOWN_TIMEOUT: accepted work finishes within it, the rest is told "the bot is restarting".
    """

    async def stop(self) -> None:
        """Stop fetching updates, close the engine within the shutdown bound, and wait for the handlers."""
        svc: Services | None = self.bot_data.get(SERVICES_KEY)
        closing = svc.close_engine() if svc is not None else None
        try:
            await super().stop()
        finally:
            if closing is not None:
                await closing


async def _post_init(application: Application) -> None:
    svc: Services = application.bot_data[SERVICES_KEY]
    await svc.store.open()
    await svc.engine.start()
    try:
        await application.bot.set_my_commands(BOT_COMMANDS)
    except TelegramError as error:  # the menu is a nicety: the bot works without it
        logger.warning("could not set the command menu: %s", error)
    logger.info(
        "bot @%s ready: default model %s, queue %d, workers %d",
        application.bot.username,
        svc.settings.default_model,
        svc.settings.queue_size,
        svc.settings.workers,
    )


async def _post_stop(application: Application) -> None:
    svc: Services = application.bot_data[SERVICES_KEY]
    await svc.close_engine()
    logger.info("inference engine closed: %s", svc.engine.stats())


async def _post_shutdown(application: Application) -> None:
    svc: Services = application.bot_data[SERVICES_KEY]
    await svc.close_engine()  # no-op when stop() already closed it; needed if start-up failed half-way
    await svc.store.close()


def build_application(settings: Settings, engine: InferenceEngine | None = None) -> Application:
    """The configured Application; it starts `engine` (or a new one from the settings) and closes it on stop."""
    token = settings.token.get_secret_value()
    install_log_hygiene(token)
    if engine is None:
        engine = InferenceEngine(
            EngineConfig(queue_size=settings.queue_size, workers=settings.workers, max_pixels=settings.max_pixels)
        )
    builder = (
        ApplicationBuilder()
        .application_class(BotApplication)
        .token(token)
        .rate_limiter(AIORateLimiter(max_retries=2))  # retry a RetryAfter instead of losing a result
        # Every update runs as its own task, so a photo being processed never delays /stats or another chat.
        .concurrent_updates(True)
        # Uploading a multi-megabyte PNG over a slow link takes longer than the 5 s default write timeout.
        .media_write_timeout(60)
        .post_init(_post_init)
        .post_stop(_post_stop)
        .post_shutdown(_post_shutdown)
    )
    if settings.api_base_url:
        builder = builder.base_url(settings.api_base_url)
    if settings.api_base_file_url:
        builder = builder.base_file_url(settings.api_base_file_url)
    application = builder.build()

    application.bot_data[SERVICES_KEY] = Services(
        settings=settings, engine=engine, store=AsyncStore(settings.data_dir), model_names=tuple(MODEL_NAMES)
    )
    add_handlers(application)
    return application


def add_handlers(application: Application) -> None:
    """Register every handler; order matters only for the catch-alls at the end."""
    messages = filters.UpdateType.MESSAGE
    application.add_handlers(
        [
            CommandHandler("start", handlers.start_command),
            CommandHandler("help", handlers.help_command),
            CommandHandler("model", handlers.model_command),
            CommandHandler("stats", handlers.stats_command),
            CallbackQueryHandler(handlers.model_button, pattern=f"^{handlers.MODEL_CALLBACK_PREFIX}"),
            MessageHandler(messages & filters.PHOTO, handlers.photo_message),
            MessageHandler(messages & filters.Document.ALL, handlers.document_message),
            MessageHandler(
                messages
                & (
                    filters.VIDEO
                    | filters.ANIMATION
                    | filters.VIDEO_NOTE
                    | filters.AUDIO
                    | filters.VOICE
                    | filters.Sticker.ALL
                ),
                handlers.other_media_message,
            ),
            MessageHandler(messages & filters.COMMAND, handlers.unknown_command),
            MessageHandler(messages & filters.TEXT & ~filters.COMMAND, handlers.text_message),
        ]
    )
    application.add_error_handler(handlers.error_handler)
