"""The bot's update handlers: commands, photos and image files, the model buttons, and the error handler."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator

from telegram import Document, InlineKeyboardButton, InlineKeyboardMarkup, Message, PhotoSize, Update
from telegram.constants import ChatAction, ChatType
from telegram.error import BadRequest, NetworkError, TelegramError
from telegram.ext import ContextTypes

from bot import texts
from bot.naming import result_filename
from bot.outcomes import Outcome
from bot.services import Services, services
from bot.triage import classify_document, declared_pixels
from segmentation.decoding import ImageTooLargeError, UnsupportedImageError, read_header
from segmentation.engine import (
    EngineClosedError,
    ModelUnavailableError,
    QueueFullError,
    RequestTimeoutError,
    Reservation,
)

logger = logging.getLogger(__name__)

MODEL_CALLBACK_PREFIX = "model:"
# Telegram shows a chat action for about 5 seconds; renew it a little before it fades.
CHAT_ACTION_INTERVAL_S = 4.5


async def record(svc: Services, chat_id: int, model: str, outcome: Outcome, latency_s: float | None = None) -> None:
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


@contextlib.asynccontextmanager
async def chat_action(message: Message, action: str = ChatAction.UPLOAD_DOCUMENT) -> AsyncIterator[None]:
    """Show "sending a file" in the chat, renewed until the block ends."""

    async def keep_showing() -> None:
        while True:
            # A failed chat action is cosmetic: never let it disturb the real work.
            with contextlib.suppress(TelegramError):
                await message.reply_chat_action(action)
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
    """Switch the chat's model from an inline button and update the buttons (a failure is answered by error_handler)."""
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
    """Show usage statistics to an admin (app.py routes only admins here), in a private chat only."""
    svc = services(context)
    message = update.effective_message
    if message.chat.type != ChatType.PRIVATE:
        # The figures are global: never post them where others can read them.
        await message.reply_text(texts.STATS_PRIVATE_ONLY)
        return
    stats = await svc.store.stats()
    report = texts.stats_report(stats, time.monotonic() - svc.started_at, svc.engine.queue_depth, svc.engine.in_flight)
    await message.reply_text(report)


async def stats_refused(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/stats from anyone but an admin: a refusal that reveals nothing."""
    await update.effective_message.reply_text(texts.STATS_REFUSED)


async def photo_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Remove the background of a photo, using the largest size Telegram offers (the last one)."""
    largest = update.effective_message.photo[-1]
    pixels = declared_pixels(largest.width, largest.height)
    await process_image(update, context, largest, result_filename(None), pixels)


async def document_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Remove the background of an image sent as a file; refuse other files before downloading them."""
    svc = services(context)
    message = update.effective_message
    document = message.document
    kind = classify_document(document.file_name, document.mime_type)
    if kind is not None:
        await message.reply_text(texts.not_an_image(kind))
        await record(svc, message.chat_id, await chat_model(svc, message.chat_id), Outcome.NOT_IMAGE)
        return
    await process_image(update, context, document, result_filename(document.file_name), None)


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
    update: Update,
    context: ContextTypes.DEFAULT_TYPE,
    attachment: PhotoSize | Document,
    filename: str,
    pixels: int | None,
) -> None:
    """Admit (limits, a queue place), download, check the header, run the engine, reply, and record the request."""
    svc = services(context)
    settings = svc.settings
    message = update.effective_message
    chat_id = message.chat_id
    user_id = update.effective_user.id if update.effective_user else chat_id
    model = await chat_model(svc, chat_id)

    # Every refusal that Telegram's own figures allow comes before a place is taken and before any download.
    refusal: tuple[str, Outcome] | None = None
    if attachment.file_size is not None and attachment.file_size > settings.max_download_bytes:
        refusal = texts.file_too_big(attachment.file_size, settings.max_download_bytes), Outcome.FILE_TOO_BIG
    elif pixels is not None and pixels > settings.max_pixels:
        refusal = texts.too_many_pixels(pixels, settings.max_pixels), Outcome.TOO_MANY_PIXELS
    elif svc.pending[user_id] >= settings.user_pending_limit:
        refusal = texts.user_limit(svc.pending[user_id]), Outcome.USER_LIMIT
    else:
        try:
            place = svc.engine.reserve()
        except QueueFullError:
            refusal = texts.BUSY, Outcome.BUSY
        except EngineClosedError:
            refusal = texts.RESTARTING, Outcome.SHUTDOWN
    if refusal is not None:
        text, outcome = refusal
        await message.reply_text(text)
        await record(svc, chat_id, model, outcome)
        return

    outcome, latency = Outcome.ERROR, None
    try:
        with svc.pending_slot(user_id):
            async with place, chat_action(message):
                outcome, latency = await _remove_background(svc, message, attachment, place, model, filename)
    finally:
        # Recorded even when a reply failed (outcome "error"), so /stats counts every request.
        await record(svc, chat_id, model, outcome, latency)


async def _download(svc: Services, message: Message, attachment: PhotoSize | Document) -> bytes | Outcome:
    """The attachment's bytes, or the outcome of a failed download (the user has been told)."""
    limit = svc.settings.max_download_bytes
    try:
        telegram_file = await attachment.get_file()
        if telegram_file.file_size is not None and telegram_file.file_size > limit:
            await message.reply_text(texts.file_too_big(telegram_file.file_size, limit))
            return Outcome.FILE_TOO_BIG
        return bytes(await telegram_file.download_as_bytearray())
    except BadRequest as error:
        if "too big" in error.message.lower():
            await message.reply_text(texts.file_too_big(None, limit))
            return Outcome.FILE_TOO_BIG
        logger.warning("could not download a file: %s", error.message)
    except TelegramError as error:  # NetworkError, TimedOut, and odd answers from the file server
        logger.warning("could not download a file: %s", error.message)
    await message.reply_text(texts.DOWNLOAD_FAILED)
    return Outcome.DOWNLOAD_FAILED


async def _remove_background(
    svc: Services, message: Message, attachment: PhotoSize | Document, place: Reservation, model: str, filename: str
) -> tuple[Outcome, float | None]:
    """Download, check the header, queue in the reserved place, reply; returns the outcome and the engine latency."""
    started = time.monotonic()
    settings = svc.settings
    data = await _download(svc, message, attachment)
    if isinstance(data, Outcome):
        return data, None
    try:
        # Only the header: an oversized or undecodable upload is refused now instead of after waiting in line.
        await asyncio.to_thread(read_header, data, settings.max_pixels)
    except ImageTooLargeError as error:
        await message.reply_text(texts.too_many_pixels(error.pixels, error.limit))
        return Outcome.TOO_MANY_PIXELS, None
    except UnsupportedImageError as error:
        await message.reply_text(texts.unreadable_image(str(error)))
        return Outcome.UNSUPPORTED_IMAGE, None

    engine = svc.engine
    ahead = engine.ahead_of_next()
    # The place is reserved: the promise of a place in line is kept.
    status = await message.reply_text(texts.queued(ahead)) if ahead > 0 else None

    try:
        result = await place.submit(data, model=model, timeout=settings.request_timeout)
    except ImageTooLargeError as error:  # the header passed, but decoding found more (e.g. a rotated frame)
        await answer(message, texts.too_many_pixels(error.pixels, error.limit), status)
        return Outcome.TOO_MANY_PIXELS, None
    except UnsupportedImageError as error:  # the header was fine, the pixels are damaged
        await answer(message, texts.unreadable_image(str(error)), status)
        return Outcome.UNSUPPORTED_IMAGE, None
    except RequestTimeoutError:
        await answer(message, texts.TIMEOUT, status)
        return Outcome.TIMEOUT, None
    except EngineClosedError:
        await answer(message, texts.RESTARTING, status)
        return Outcome.SHUTDOWN, None
    except ModelUnavailableError:
        logger.exception("model %s could not be loaded", model)
        await answer(message, texts.model_unavailable(model, svc.model_names), status)
        return Outcome.MODEL_UNAVAILABLE, None
    except Exception:
        # Anything else is our fault, not the user's: log it, apologise, no details.
        logger.exception("background removal failed (model %s)", model)
        await answer(message, texts.GENERIC_ERROR, status)
        return Outcome.ERROR, None

    size_limit = settings.max_upload_bytes
    if len(result.png) > size_limit:
        await answer(message, texts.result_too_big(len(result.png), size_limit), status)
        return Outcome.RESULT_TOO_BIG, None
    await drop(status)
    seconds = time.monotonic() - started  # what the user waited for: download, queue and processing
    try:
        await message.reply_document(
            document=result.png, filename=filename, caption=texts.result_caption(model, seconds, result.person_found)
        )
    except TelegramError as error:
        if "too large" not in error.message.lower():  # e.g. "Request Entity Too Large" from a smaller server limit
            raise
        await message.reply_text(texts.result_too_big(len(result.png), size_limit))
        return Outcome.RESULT_TOO_BIG, None
    # Statistics use the engine's own latency (queue + processing), comparable across models and with engine.stats().
    latency = result.timings.get("total", seconds) + result.timings.get("queue", 0.0)
    return (Outcome.OK if result.person_found else Outcome.NO_PERSON), latency


async def error_handler(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log an unhandled error (the token is redacted by the logging filter) and apologise to the user."""
    if isinstance(context.error, NetworkError) and not isinstance(update, Update):
        # Polling hiccups: python-telegram-bot retries by itself; a traceback per blip would be noise.
        logger.warning("network problem talking to Telegram: %s", context.error)
        return
    logger.error("unhandled error while handling an update", exc_info=context.error)
    if not isinstance(update, Update):
        return
    if update.callback_query is not None:
        # Always answer a button press, or its spinner keeps turning; one already answered refuses quietly.
        with contextlib.suppress(TelegramError):
            await update.callback_query.answer(texts.GENERIC_ERROR, show_alert=True)
        return
    if update.effective_chat is not None:
        with contextlib.suppress(TelegramError):
            await context.bot.send_message(update.effective_chat.id, texts.GENERIC_ERROR)
