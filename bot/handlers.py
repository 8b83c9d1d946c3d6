"""The bot's update handlers: commands, photos and image files, the model buttons, and the error handler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Message, Update
from telegram.constants import ChatAction
from telegram.error import BadRequest, NetworkError, TelegramError
from telegram.ext import ContextTypes

from bot import texts
from bot.config import Settings
from bot.store import AsyncStore
from segmentation.decoding import ImageTooLargeError, UnsupportedImageError
from segmentation.engine import (
    EngineClosedError,
    InferenceEngine,
    ModelUnavailableError,
    QueueFullError,
    RequestTimeoutError,
)

logger = logging.getLogger(__name__)

SERVICES_KEY = "services"
MODEL_CALLBACK_PREFIX = "model:"
# The Bot API accepts uploads of up to 50 MB from a bot.
MAX_UPLOAD_BYTES = 50 * 1024 * 1024
# Telegram shows a chat action for about 5 seconds; renew it a little before it fades.
CHAT_ACTION_INTERVAL_S = 4.5


def _suffixes(names: str) -> frozenset[str]:
    return frozenset(f".{name}" for name in names.split())


# Extensions we accept as images even when Telegram reports no (or a generic) mime type. The decoder has the
# last word: anything it cannot read gets its specific "couldn't read" answer after the download.
IMAGE_EXTENSIONS = _suffixes(
    "jpg jpeg jpe jfif png webp bmp dib gif tif tiff heic heif avif ico ppm pgm pbm pnm tga jp2 j2k jpf jpx psd dds "
    "pcx sgi qoi"
)
VIDEO_EXTENSIONS = _suffixes("mp4 mov avi mkv webm m4v 3gp wmv flv mpeg mpg")
AUDIO_EXTENSIONS = _suffixes("mp3 ogg oga opus wav flac m4a aac")
ARCHIVE_EXTENSIONS = _suffixes("zip rar 7z tar gz tgz bz2 xz")
TEXT_EXTENSIONS = _suffixes("txt doc docx odt rtf md csv xls xlsx ppt pptx json xml html")
GENERIC_MIME_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


@dataclass
class Services:
    """What the handlers share: settings, the engine, the store, and the per-user pending counts."""

    settings: Settings
    engine: InferenceEngine
    store: AsyncStore
    model_names: tuple[str, ...]
    started_at: float = field(default_factory=time.monotonic)
    # Photos each user has in progress (downloading, queued or running). The event loop is single-threaded,
    # so plain increments are race-free.
    pending: Counter[int] = field(default_factory=Counter)
    _engine_closing: asyncio.Future[None] | None = field(default=None, init=False, repr=False)

    def close_engine(self) -> asyncio.Future[None]:
        """Start closing the engine (once) within the shutdown bound; returns the closing task."""
        if self._engine_closing is None:
            self._engine_closing = asyncio.ensure_future(self.engine.close(timeout=self.settings.shutdown_timeout))
        return self._engine_closing


def services(context: ContextTypes.DEFAULT_TYPE) -> Services:
    """The shared services of the application that runs this handler."""
    return context.bot_data[SERVICES_KEY]


async def record(svc: Services, chat_id: int, model: str, outcome: str, latency_s: float | None = None) -> None:
    """Record a request for /stats; statistics are best-effort, so a failing disk never costs the user an answer."""
    try:
        await svc.store.record(chat_id, model, outcome, latency_s)
    except Exception:
        logger.exception("could not record a request in the statistics")


async def chat_model(svc: Services, chat_id: int) -> str:
    """The chat's chosen model, or the default (also when a stored choice is no longer offered)."""
    chosen = await svc.store.get_model(chat_id)
    return chosen if chosen in svc.model_names else svc.settings.default_model


def model_keyboard(current: str, models: tuple[str, ...]) -> InlineKeyboardMarkup:
    """One button per model; the current one is ticked."""
    buttons = [
        InlineKeyboardButton(("✓ " if name == current else "") + name, callback_data=MODEL_CALLBACK_PREFIX + name)
        for name in models
    ]
    return InlineKeyboardMarkup([buttons])


def classify_document(file_name: str | None, mime_type: str | None) -> str | None:
    """None when a document may be an image; otherwise what it looks like (for the refusal), without downloading."""
    mime = (mime_type or "").lower().strip()
    suffix = PurePosixPath(file_name or "").suffix.lower()
    if mime == "image/svg+xml" or suffix in (".svg", ".svgz"):
        return "a vector drawing (SVG)"
    if mime.startswith("image/") or suffix in IMAGE_EXTENSIONS:
        return None
    if mime == "application/pdf" or suffix == ".pdf":
        return "a PDF document"
    if mime.startswith("video/") or suffix in VIDEO_EXTENSIONS:
        return "a video"
    if mime.startswith("audio/") or suffix in AUDIO_EXTENSIONS:
        return "an audio file"
    if suffix in ARCHIVE_EXTENSIONS or mime in {"application/zip", "application/x-rar-compressed", "application/gzip"}:
        return "an archive"
    if mime.startswith("text/") or suffix in TEXT_EXTENSIONS:
        return "a text document"
    if mime in GENERIC_MIME_TYPES and not suffix:
        return None  # nothing to go on: let the decoder decide after the download
    return f"a {suffix.lstrip('.').upper()} file" if suffix else f"a file of type {mime}"


def result_filename(original: str | None) -> str:
    """`<stem>_nobg.png` for a named file, `photo_nobg.png` for a photo (photos have no name)."""
    if not original:
        return "photo_nobg.png"
    # PurePosixPath drops any directory part; Windows-style separators are flattened the same way.
    stem = PurePosixPath(original.replace("\\", "/")).stem.strip()[:100]
    return f"{stem or 'image'}_nobg.png"


@contextlib.asynccontextmanager
async def chat_action(message: Message, action: str = ChatAction.UPLOAD_DOCUMENT) -> AsyncIterator[None]:
    """Show "sending a file" in the chat, renewed until the block ends."""

    async def keep_showing() -> None:
        while True:
            # A failed chat action is cosmetic: never let it disturb the real work.
            with contextlib.suppress(TelegramError):
                await message.get_bot().send_chat_action(message.chat_id, action)
            await asyncio.sleep(CHAT_ACTION_INTERVAL_S)

    task = asyncio.create_task(keep_showing(), name=f"chat-action-{message.chat_id}")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


async def answer(message: Message, text: str, status: Message | None = None) -> None:
    """Tell the user something: by editing the place-in-line message when there is one, else a new reply."""
    if status is not None:
        try:
            await status.edit_text(text)
            return
        except BadRequest:
            pass  # the status message is gone (deleted by the user?): fall back to a new message
    await message.reply_text(text)


async def drop(status: Message | None) -> None:
    """Delete the place-in-line message, if any; failing to delete it is harmless."""
    if status is not None:
        with contextlib.suppress(TelegramError):
            await status.delete()


async def start_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Greet the user: what the bot does, how to send a photo, the models and the current one."""
    await help_command(update, context)


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Explain the bot: what it does, how to send a photo, the models and the current one."""
    svc = services(context)
    message = update.effective_message
    current = await chat_model(svc, message.chat_id)
    await message.reply_text(texts.welcome(current, svc.model_names, svc.settings.max_download_bytes))


async def model_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Show the chat's model with buttons to switch (/model), or switch to a named one (/model unet)."""
    svc = services(context)
    message = update.effective_message
    if not context.args:
        current = await chat_model(svc, message.chat_id)
        await message.reply_text(texts.model_current(current), reply_markup=model_keyboard(current, svc.model_names))
        return
    name = context.args[0].strip().lower()
    if name not in svc.model_names:
        current = await chat_model(svc, message.chat_id)
        await message.reply_text(
            texts.model_unknown(context.args[0], svc.model_names), reply_markup=model_keyboard(current, svc.model_names)
        )
        return
    await svc.store.set_model(message.chat_id, name)
    await message.reply_text(texts.model_switched(name))


async def model_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Switch the chat's model from an inline button and update the buttons."""
    svc = services(context)
    query = update.callback_query
    name = (query.data or "").removeprefix(MODEL_CALLBACK_PREFIX)
    chat = update.effective_chat
    if chat is None or name not in svc.model_names:
        await query.answer(texts.model_unknown(name, svc.model_names), show_alert=True)
        return
    await svc.store.set_model(chat.id, name)
    await query.answer(texts.model_switched(name))
    # The message may be too old to edit, or already show this choice: the switch itself has happened.
    with contextlib.suppress(BadRequest):
        await query.edit_message_text(texts.model_current(name), reply_markup=model_keyboard(name, svc.model_names))


async def stats_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Show usage statistics to the admins; everyone else gets a refusal that reveals nothing."""
    svc = services(context)
    message = update.effective_message
    user = update.effective_user
    if user is None or user.id not in svc.settings.admin_ids:
        await message.reply_text(texts.STATS_REFUSED)
        return
    stats = await svc.store.stats()
    report = texts.stats_report(stats, time.monotonic() - svc.started_at, svc.engine.queue_depth, svc.engine.in_flight)
    await message.reply_text(report)


async def photo_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Remove the background of a photo, using the largest size Telegram offers."""
    message = update.effective_message
    largest = max(message.photo, key=lambda size: size.width * size.height)
    await process_image(update, context, largest.file_id, largest.file_size, result_filename(None))


async def document_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Remove the background of an image sent as a file; refuse other files before downloading them."""
    svc = services(context)
    message = update.effective_message
    document = message.document
    kind = classify_document(document.file_name, document.mime_type)
    if kind is not None:
        await message.reply_text(texts.not_an_image(kind))
        await record(svc, message.chat_id, await chat_model(svc, message.chat_id), "not_image")
        return
    await process_image(update, context, document.file_id, document.file_size, result_filename(document.file_name))


async def other_media_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Explain that videos, voice notes, stickers and the like can't be processed."""
    await update.effective_message.reply_text(texts.OTHER_MEDIA)


async def text_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer plain text with a hint to send a photo."""
    await update.effective_message.reply_text(texts.TEXT_HINT)


async def unknown_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer commands the bot doesn't have."""
    await update.effective_message.reply_text(texts.UNKNOWN_COMMAND)


async def process_image(
    update: Update, context: ContextTypes.DEFAULT_TYPE, file_id: str, file_size: int | None, filename: str
) -> None:
    """Check limits, download, run the engine, reply with the PNG document (or a specific answer), and record it."""
    svc = services(context)
    message = update.effective_message
    chat_id = message.chat_id
    user_id = update.effective_user.id if update.effective_user else chat_id
    model = await chat_model(svc, chat_id)
    limit = svc.settings.max_download_bytes

    # Both refusals come before getFile: Telegram would refuse a big file anyway, and a limited user costs nothing.
    if file_size is not None and file_size > limit:
        await message.reply_text(texts.file_too_big(file_size, limit))
        await record(svc, chat_id, model, "file_too_big")
        return
    if svc.pending[user_id] >= svc.settings.user_pending_limit:
        await message.reply_text(texts.user_limit(svc.pending[user_id]))
        await record(svc, chat_id, model, "user_limit")
        return

    svc.pending[user_id] += 1
    outcome, latency = "error", None
    try:
        async with chat_action(message):
            outcome, latency = await _remove_background(svc, message, file_id, model, filename)
    finally:
        svc.pending[user_id] -= 1
        if svc.pending[user_id] <= 0:
            del svc.pending[user_id]
        # Recorded even when a reply failed (outcome "error"), so /stats counts every request.
        await record(svc, chat_id, model, outcome, latency)


async def _remove_background(
    svc: Services, message: Message, file_id: str, model: str, filename: str
) -> tuple[str, float | None]:
    """Download, queue, reply; returns the outcome kind and, on success, the engine latency in seconds."""
    started = time.monotonic()
    limit = svc.settings.max_download_bytes
    try:
        telegram_file = await message.get_bot().get_file(file_id)
        if telegram_file.file_size is not None and telegram_file.file_size > limit:
            await message.reply_text(texts.file_too_big(telegram_file.file_size, limit))
            return "file_too_big", None
        data = bytes(await telegram_file.download_as_bytearray())
    except BadRequest as error:
        if "too big" in error.message.lower():
            await message.reply_text(texts.file_too_big(None, limit))
            return "file_too_big", None
        logger.warning("could not download a file: %s", error.message)
        await message.reply_text(texts.DOWNLOAD_FAILED)
        return "download_failed", None
    except TelegramError as error:  # NetworkError, TimedOut, and odd answers from the file server
        logger.warning("could not download a file: %s", error.message)
        await message.reply_text(texts.DOWNLOAD_FAILED)
        return "download_failed", None

    engine = svc.engine
    # Photos that must finish before this one starts: the waiting ones, plus running ones beyond the free workers.
    ahead = engine.queue_depth + max(0, engine.in_flight - svc.settings.workers + 1)
    status = None
    # When the queue is already full the answer will be "busy": don't first promise a place in line.
    if ahead > 0 and engine.queue_depth < svc.settings.queue_size:
        status = await message.reply_text(texts.queued(ahead))

    try:
        result = await engine.submit(data, model=model, timeout=svc.settings.request_timeout)
    except QueueFullError:
        await answer(message, texts.BUSY, status)
        return "busy", None
    except ImageTooLargeError as error:
        await answer(message, texts.too_many_pixels(error.pixels, error.limit), status)
        return "too_many_pixels", None
    except UnsupportedImageError as error:
        await answer(message, texts.unreadable_image(str(error)), status)
        return "unsupported_image", None
    except RequestTimeoutError:
        await answer(message, texts.TIMEOUT, status)
        return "timeout", None
    except EngineClosedError:
        await answer(message, texts.RESTARTING, status)
        return "shutdown", None
    except ModelUnavailableError:
        logger.exception("model %s could not be loaded", model)
        await answer(message, texts.model_unavailable(model, svc.model_names), status)
        return "model_unavailable", None
    except Exception:
        # Anything else (e.g. missing weights) is our fault, not the user's: log it, apologise, no details.
        logger.exception("background removal failed (model %s)", model)
        await answer(message, texts.GENERIC_ERROR, status)
        return "error", None

    if len(result.png) > MAX_UPLOAD_BYTES:
        await answer(message, texts.result_too_big(len(result.png), MAX_UPLOAD_BYTES), status)
        return "result_too_big", None
    await drop(status)
    seconds = time.monotonic() - started  # what the user waited for: download, queue and processing
    await message.reply_document(
        document=result.png,
        filename=filename,
        caption=texts.result_caption(model, seconds, result.person_found),
    )
    # Statistics use the engine's own latency (queue + processing), comparable across models and with engine.stats().
    latency = result.timings.get("total", seconds) + result.timings.get("queue", 0.0)
    return ("ok" if result.person_found else "no_person"), latency


async def error_handler(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log an unhandled error (the token is redacted by the logging filter) and apologise to the user."""
    if isinstance(context.error, NetworkError) and not isinstance(update, Update):
        # Polling hiccups: python-telegram-bot retries by itself; a traceback per blip would be noise.
        logger.warning("network problem talking to Telegram: %s", context.error)
        return
    logger.error("unhandled error while handling an update", exc_info=context.error)
    if isinstance(update, Update) and update.effective_chat is not None:
        with contextlib.suppress(TelegramError):
            await context.bot.send_message(update.effective_chat.id, texts.GENERIC_ERROR)
