"""One photo's way through the bot, shared by single photos, albums and the Other model button.

Admission (limits and a queue place, before any download), the download, the header check, the engine with a
place-in-line message that moves, and what each failure tells the user. Nothing here sends the result itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

from telegram import Document, Message, PhotoSize
from telegram.constants import ChatAction
from telegram.error import BadRequest, TelegramError

from bot.outcomes import Outcome
from bot.services import Services
from bot.texts import Texts
from segmentation.decoding import ImageTooLargeError, UnsupportedImageError, read_header
from segmentation.effects import Look
from segmentation.engine import (
    CutoutResult,
    EngineClosedError,
    ModelUnavailableError,
    QueueFullError,
    RequestTimeoutError,
    Reservation,
)

logger = logging.getLogger(__name__)

# Telegram shows a chat action for about 5 seconds; renew it a little before it fades.
CHAT_ACTION_INTERVAL_S = 4.5


@dataclass
class PhotoOutcome:
    """How one admitted photo ended: a result, or the text that tells the user why not."""

    outcome: Outcome
    result: CutoutResult | None = None
    failure: str | None = None
    latency_s: float | None = None  # the engine's own (queue + processing), for the statistics
    data: bytes | None = None  # the photo's bytes, for the cache


async def record(svc: Services, chat_id: int, model: str, outcome: Outcome, latency_s: float | None = None) -> None:
    """Record a request for /stats; statistics are best-effort, so a failing disk never costs the user an answer."""
    try:
        await svc.store.record(chat_id, model, outcome, latency_s)
    except Exception:
        logger.exception("could not record a request in the statistics")


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


def refusal_before_download(
    svc: Services, t: Texts, attachment: PhotoSize | Document, pixels: int | None, user_id: int
) -> tuple[str, Outcome] | None:
    """The refusals Telegram's own figures allow (size, pixels, the user's pending photos), or None."""
    settings = svc.settings
    if attachment.file_size is not None and attachment.file_size > settings.max_download_bytes:
        return t.file_too_big(attachment.file_size, settings.max_download_bytes), Outcome.FILE_TOO_BIG
    if pixels is not None and pixels > settings.max_pixels:
        return t.too_many_pixels(pixels, settings.max_pixels), Outcome.TOO_MANY_PIXELS
    if svc.pending[user_id] >= settings.user_pending_limit:
        return t.user_limit(svc.pending[user_id]), Outcome.USER_LIMIT
    return None


def take_place(svc: Services, t: Texts) -> Reservation | tuple[str, Outcome]:
    """A place in the engine's queue, or the refusal (full, or shutting down)."""
    try:
        return svc.engine.reserve()
    except QueueFullError:
        return t.BUSY, Outcome.BUSY
    except EngineClosedError:
        return t.RESTARTING, Outcome.SHUTDOWN


async def download(svc: Services, t: Texts, attachment: PhotoSize | Document) -> bytes | tuple[str, Outcome]:
    """The attachment's bytes, or what to tell the user and the outcome of a failed download."""
    limit = svc.settings.max_download_bytes
    try:
        telegram_file = await attachment.get_file()
        if telegram_file.file_size is not None and telegram_file.file_size > limit:
            return t.file_too_big(telegram_file.file_size, limit), Outcome.FILE_TOO_BIG
        return bytes(await telegram_file.download_as_bytearray())
    except BadRequest as error:
        if "too big" in error.message.lower():
            return t.file_too_big(None, limit), Outcome.FILE_TOO_BIG
        logger.warning("could not download a file: %s", error.message)
    except TelegramError as error:  # NetworkError, TimedOut, and odd answers from the file server
        logger.warning("could not download a file: %s", error.message)
    return t.DOWNLOAD_FAILED, Outcome.DOWNLOAD_FAILED


async def check_header(svc: Services, t: Texts, data: bytes) -> tuple[str, Outcome] | None:
    """Only the header: an oversized or undecodable upload is refused now instead of after waiting in line."""
    try:
        await asyncio.to_thread(read_header, data, svc.settings.max_pixels)
    except ImageTooLargeError as error:
        return t.too_many_pixels(error.pixels, error.limit), Outcome.TOO_MANY_PIXELS
    except UnsupportedImageError as error:
        return t.unreadable_image(str(error)), Outcome.UNSUPPORTED_IMAGE
    return None


async def wait_in_line(
    svc: Services, t: Texts, status: Message | None, shown: int, place: Reservation, submitted: asyncio.Future
) -> CutoutResult:
    """Wait for a submitted photo, editing its place-in-line message (sent showing `shown`) as the line moves.

    At most one edit every BOT_QUEUE_UPDATE_INTERVAL seconds, and only when the number changed. Cancelling the
    wait cancels the photo.
    """
    try:
        while status is not None:
            done, _ = await asyncio.wait({submitted}, timeout=svc.settings.queue_update_interval)
            if done:
                break
            now = place.ahead()
            if 0 < now != shown:  # 0: it is running, and the answer replaces the message soon
                with contextlib.suppress(TelegramError):  # cosmetic: the answer still comes
                    await status.edit_text(t.queued(now))
                shown = now
        return await submitted
    finally:
        if not submitted.done():
            submitted.cancel()


async def run_admitted(
    svc: Services,
    t: Texts,
    attachment: PhotoSize | Document | bytes,
    place: Reservation,
    model: str,
    look: Look,
    message: Message | None = None,
) -> tuple[PhotoOutcome, Message | None]:
    """Download (unless given bytes), check the header, run the engine in the reserved place.

    Returns how it ended and the place-in-line message still shown (when `message` was given), never raising
    for what a user can cause; an unexpected error is logged and becomes the generic apology.
    """
    if isinstance(attachment, bytes):
        data = attachment
    else:
        downloaded = await download(svc, t, attachment)
        if isinstance(downloaded, tuple):
            return PhotoOutcome(downloaded[1], failure=downloaded[0]), None
        data = downloaded
    refused = await check_header(svc, t, data)
    if refused is not None:
        return PhotoOutcome(refused[1], failure=refused[0]), None
    ahead = svc.engine.ahead_of_next()
    status = None
    if message is not None and ahead > 0:  # the place is reserved: the promise of a place in line is kept
        status = await message.reply_text(t.queued(ahead))
    submitted = asyncio.ensure_future(place.submit(data, model=model, look=look, timeout=svc.settings.request_timeout))
    try:
        result = await wait_in_line(svc, t, status, ahead, place, submitted)
    except Exception as error:
        return _failure(svc, t, error, model), status
    limit = svc.settings.max_upload_bytes
    if len(result.png) > limit:
        return PhotoOutcome(Outcome.RESULT_TOO_BIG, failure=t.result_too_big(len(result.png), limit)), status
    # Statistics use the engine's own latency (queue + processing), comparable across models and with engine.stats().
    latency = result.timings.get("total", 0.0) + result.timings.get("queue", 0.0)
    outcome = Outcome.OK if result.person_found else Outcome.NO_PERSON
    return PhotoOutcome(outcome, result=result, latency_s=latency, data=data), status


def _failure(svc: Services, t: Texts, error: Exception, model: str) -> PhotoOutcome:
    if isinstance(error, ImageTooLargeError):  # the header passed, but decoding found more (e.g. a rotated frame)
        return PhotoOutcome(Outcome.TOO_MANY_PIXELS, failure=t.too_many_pixels(error.pixels, error.limit))
    if isinstance(error, UnsupportedImageError):  # the header was fine, the pixels are damaged
        return PhotoOutcome(Outcome.UNSUPPORTED_IMAGE, failure=t.unreadable_image(str(error)))
    if isinstance(error, QueueFullError):  # a Ray cluster's back-pressure, met after the place was reserved
        return PhotoOutcome(Outcome.BUSY, failure=t.BUSY)
    if isinstance(error, RequestTimeoutError):
        return PhotoOutcome(Outcome.TIMEOUT, failure=t.TIMEOUT)
    if isinstance(error, EngineClosedError):
        return PhotoOutcome(Outcome.SHUTDOWN, failure=t.RESTARTING)
    if isinstance(error, ModelUnavailableError):
        logger.error("model %s could not be loaded: %s", model, error)
        return PhotoOutcome(Outcome.MODEL_UNAVAILABLE, failure=t.model_unavailable(model, svc.model_names))
    # Anything else is our fault, not the user's: log it, apologise, no details.
    logger.error("background removal failed (model %s)", model, exc_info=error)
    return PhotoOutcome(Outcome.ERROR, failure=t.GENERIC_ERROR)
