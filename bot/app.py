"""Builds the python-telegram-bot Application: handlers, engine and store lifecycle, logging hygiene."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

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

from bot import handlers, keyboards, looks, redo, texts
from bot.config import Settings
from bot.services import SERVICES_KEY, Services
from bot.store import AsyncStore
from segmentation import MODEL_NAMES
from segmentation.engine import EngineConfig, InferenceEngine
from segmentation.engine_api import Engine

logger = logging.getLogger(__name__)

# Of BOT_SHUTDOWN_TIMEOUT, the seconds kept back for telling users their photo did not finish (at most a quarter).
REPLY_ALLOWANCE_S = 3.0

# Only what the handlers use: no edited messages (an edited caption must not re-run a photo), no channel posts.
ALLOWED_UPDATES = [Update.MESSAGE, Update.CALLBACK_QUERY]


def bot_commands(language: str) -> list[BotCommand]:
    """The command menu in one language."""
    t = texts.for_language(language)
    return [BotCommand(command, t.command_description(command)) for command in texts.COMMANDS]


BOT_COMMANDS = bot_commands(texts.DEFAULT_LANGUAGE)


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
_previous_factory: Callable[..., logging.LogRecord] | None = None


def _redacting_record_factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
    record = _previous_factory(*args, **kwargs)
    REDACTOR.filter(record)
    return record


def install_log_hygiene(token: str) -> None:
    """Quiet httpx (it logs every request URL, token included, at INFO) and redact the token from every record.

    The redaction sits in the log record factory, so it covers every logger and every handler, including
    loggers and handlers created after this call (a handler filter would only cover handlers present now).
    """
    global _previous_factory
    logging.getLogger("httpx").setLevel(logging.WARNING)
    REDACTOR.add_secret(token)
    if _previous_factory is None:
        _previous_factory = logging.getLogRecordFactory()
        logging.setLogRecordFactory(_redacting_record_factory)


class BotApplication(Application):
    """An Application whose stop() is the one shutdown path, bounded by BOT_SHUTDOWN_TIMEOUT.

    Application.stop() waits for every running handler, and a handler waits on the engine for its photo.
    Closing the engine at the same moment bounds that wait: accepted photos finish while time is left, the
    rest are told "the bot is restarting", and a handler still running at the bound is cancelled.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # Every update being handled (a photo, an album, a button tap, the error handler's answer), for the bound.
        self.update_tasks: set[asyncio.Task] = set()

    async def process_update(self, update: object) -> None:
        """Handle one update as Application does, remembering its task so that stop() can end it at the bound."""
        task = asyncio.current_task()
        if task is not None:
            self.update_tasks.add(task)
        try:
            await super().process_update(update)
        finally:
            self.update_tasks.discard(task)

    async def stop(self) -> None:
        """Stop fetching updates and pruning, close the engine and wait for the handlers, all within the bound."""
        svc: Services | None = self.bot_data.get(SERVICES_KEY)
        if svc is None:
            await super().stop()
            return
        bound = svc.settings.shutdown_timeout
        # The last seconds of the bound are for telling the users whose photos did not finish.
        work_bound = max(0.0, bound - min(REPLY_ALLOWANCE_S, bound / 4))
        svc.stop_maintenance()
        closing = asyncio.ensure_future(svc.engine.close(timeout=work_bound))
        stopping = asyncio.ensure_future(super().stop())
        done, _ = await asyncio.wait({stopping}, timeout=bound)
        if not done:
            logger.warning("shutdown bound of %g s reached: ending %d handlers", bound, len(self.update_tasks))
            for task in list(self.update_tasks):
                task.cancel()
        await stopping
        await closing
        logger.info("inference engine closed: %s", svc.engine.stats())


async def _post_init(application: Application) -> None:
    svc: Services = application.bot_data[SERVICES_KEY]
    await svc.store.open()
    await svc.engine.start()
    svc.start_maintenance()
    try:
        # The default menu (English), and the Russian one for users whose Telegram speaks Russian.
        await application.bot.set_my_commands(BOT_COMMANDS)
        for language in texts.LANGUAGES:
            if language != texts.DEFAULT_LANGUAGE:
                await application.bot.set_my_commands(bot_commands(language), language_code=language)
    except TelegramError as error:  # the menu is a nicety: the bot works without it
        logger.warning("could not set the command menu: %s", error)
    logger.info(
        "bot @%s ready: default model %s, queue %d, workers %d",
        application.bot.username,
        svc.settings.default_model,
        svc.settings.queue_size,
        svc.settings.workers,
    )


async def _post_shutdown(application: Application) -> None:
    # The engine is closed by stop(); the store closes last, after every handler has recorded its request.
    svc: Services = application.bot_data[SERVICES_KEY]
    await svc.store.close()


def webhook_options(settings: Settings) -> dict[str, Any] | None:
    """run_webhook's (and Updater.start_webhook's) arguments in webhook mode; None means long polling."""
    if not settings.webhook_url:
        return None
    return {
        "listen": settings.webhook_listen,
        "port": settings.webhook_port,
        # The path of the public URL is the path served locally: a reverse proxy forwards it unchanged.
        "url_path": urlsplit(settings.webhook_url).path.strip("/"),
        "webhook_url": settings.webhook_url,
        "secret_token": settings.webhook_secret.get_secret_value(),
        "allowed_updates": ALLOWED_UPDATES,
    }


def build_engine(settings: Settings) -> Engine:
    """The engine the settings name: the in-process one (default) or a client of the Ray Serve application."""
    if settings.engine == "ray":
        # Imported only here: Ray is an optional extra, and a local bot never needs it.
        from segmentation.serving import RayServeEngine, ServingConfig

        config = ServingConfig.from_bot_settings(settings)
        return RayServeEngine(config, address=settings.ray_address, deploy=settings.ray_address is None)
    return InferenceEngine(
        EngineConfig(queue_size=settings.queue_size, workers=settings.workers, max_pixels=settings.max_pixels)
    )


def build_application(settings: Settings, engine: Engine | None = None) -> Application:
    """The configured Application; it starts `engine` (or a new one from the settings) and closes it on stop."""
    token = settings.token.get_secret_value()
    install_log_hygiene(token)
    if settings.webhook_secret is not None:
        REDACTOR.add_secret(settings.webhook_secret.get_secret_value())
    if engine is None:
        engine = build_engine(settings)
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
    add_handlers(application, settings.admin_ids)
    return application


def add_handlers(application: Application, admin_ids: frozenset[int] = frozenset()) -> None:
    """Register every handler; order matters for /stats (admins first) and for the catch-alls at the end."""
    messages = filters.UpdateType.MESSAGE
    application.add_handlers(
        [
            CommandHandler("start", handlers.start_command),
            CommandHandler("help", handlers.help_command),
            CommandHandler("model", handlers.model_command),
            CommandHandler("lang", handlers.lang_command),
            CommandHandler("bg", handlers.bg_command),
            CommandHandler("crop", handlers.crop_command),
            CommandHandler("stats", handlers.stats_command, filters=filters.User(user_id=admin_ids)),
            CommandHandler("stats", handlers.stats_refused),  # everyone else
            CallbackQueryHandler(handlers.model_button, pattern=f"^{keyboards.MODEL_PREFIX}"),
            CallbackQueryHandler(handlers.lang_button, pattern=f"^{keyboards.LANG_PREFIX}"),
            CallbackQueryHandler(handlers.bg_button, pattern=f"^{looks.BG_PREFIX}"),
            # Everything else, the result buttons and forged or stale data included: always answered, briefly.
            CallbackQueryHandler(redo.result_button),
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
            # Anything else a user can send (a location, a contact, a poll, a dice...) gets the same short answer
            # as a video; service messages (members joining, a pinned message) are not the user's input.
            MessageHandler(messages & ~filters.StatusUpdate.ALL, handlers.other_media_message),
        ]
    )
    application.add_error_handler(handlers.error_handler)
