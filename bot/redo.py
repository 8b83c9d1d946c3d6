"""The buttons under a result: another look, a sticker, the colour palette, or the other model, from the cache.

A tap answers with a new message (a document, a sticker, the palette) and edits nothing already sent. A look or a
sticker is re-rendered from the cached photo and matte on the engine's re-compose threads (no network, no
inference worker); Other model queues the cached photo like a new one. Every tap is answered, once.
"""

from __future__ import annotations

import logging
import math
import time

from telegram import Update
from telegram.error import TelegramError
from telegram.ext import ContextTypes

from bot import looks
from bot.handlers import send_result
from bot.keyboards import palette_keyboard, result_keyboard
from bot.matte_cache import CachedPhoto
from bot.outcomes import Outcome
from bot.photos import record, run_admitted, take_place
from bot.services import Services, services
from bot.texts import Texts
from segmentation.effects import Look
from segmentation.engine import EngineClosedError, QueueFullError, RequestTimeoutError

logger = logging.getLogger(__name__)

# One tap per user per this many seconds is worked on; faster taps are acknowledged and dropped.
TAP_INTERVAL_S = 1.0
# Past this many users remembered, forget those whose last tap is older than the interval.
LAST_TAP_PRUNE_AT = 10_000


def _admit_tap(svc: Services, user_id: int) -> bool:
    """Whether a user's tap is worked on now (none of theirs in progress, none in the last TAP_INTERVAL_S)."""
    now = time.monotonic()
    if user_id in svc.tapping_users or now - svc.last_tap.get(user_id, -math.inf) < TAP_INTERVAL_S:
        return False
    if len(svc.last_tap) >= LAST_TAP_PRUNE_AT:
        for user, at in list(svc.last_tap.items()):
            if now - at >= TAP_INTERVAL_S:
                del svc.last_tap[user]
    svc.last_tap[user_id] = now
    return True


async def result_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """A tap on a result button: validate, then re-render, make a sticker, show the palette or run the other model."""
    svc = services(context)
    query = update.callback_query
    t = await svc.texts_for(update.effective_user)
    action = looks.parse_result_data(query.data)
    chat = update.effective_chat
    if action is None or chat is None:  # forged, garbled, or from a future version
        await query.answer(t.BUTTON_INVALID)
        return
    photo = svc.cache.get(action.key)
    if photo is None:  # evicted, expired, or from before a restart
        await query.answer(t.SEND_AGAIN, show_alert=True)
        return
    if photo.chat_id != chat.id:  # a key lifted into another chat's button
        await query.answer(t.BUTTON_INVALID)
        return
    if photo.photo_id in svc.busy_photos:
        await query.answer(t.PHOTO_BUSY)
        return
    user_id = query.from_user.id
    if not _admit_tap(svc, user_id):
        await query.answer(t.TAP_ACK)
        return
    # A re-render takes a moment and holds the user's other taps until it is sent; Other model waits in the queue
    # and the network for up to the request timeout, so it holds only its own photo (the pending limit bounds it).
    holds_user = action.verb != looks.OTHER_MODEL
    if holds_user:
        svc.tapping_users.add(user_id)
    svc.busy_photos.add(photo.photo_id)
    try:
        await query.answer()
        await _act(svc, t, context, chat.id, user_id, action, photo)
    finally:
        svc.busy_photos.discard(photo.photo_id)
        if holds_user:
            svc.tapping_users.discard(user_id)


async def _act(
    svc: Services,
    t: Texts,
    context: ContextTypes.DEFAULT_TYPE,
    chat_id: int,
    user_id: int,
    action: looks.ResultAction,
    photo: CachedPhoto,
) -> None:
    bot = context.bot
    started = time.monotonic()
    try:
        if action.verb == looks.PALETTE_MENU:
            await bot.send_message(chat_id, t.PALETTE_PROMPT, reply_markup=palette_keyboard(action.key, action.look))
        elif action.verb == looks.STICKER:
            sticker = await svc.engine.sticker(photo.data, photo.matte)
            if sticker is None:
                await bot.send_message(chat_id, t.NO_PERSON_STICKER)
            else:
                await bot.send_sticker(chat_id, sticker=sticker)
        elif action.verb == looks.LOOK:
            png = await svc.engine.recompose(photo.data, photo.matte, action.look)
            if len(png) > svc.settings.max_upload_bytes:
                await bot.send_message(chat_id, t.result_too_big(len(png), svc.settings.max_upload_bytes))
                return
            await bot.send_document(
                chat_id,
                document=png,
                filename=photo.filename,
                caption=t.result_caption(photo.model, time.monotonic() - started, photo.person_found),
                reply_markup=result_keyboard(action.key, action.look, t),
            )
        elif action.verb == looks.OTHER_MODEL:
            await _other_model(svc, t, context, chat_id, user_id, action.look, photo)
    except EngineClosedError:
        answer = t.RESTARTING
    except RequestTimeoutError:  # a replica that never answered (the in-process engine has no such bound)
        answer = t.TIMEOUT
    except QueueFullError:  # a Ray cluster's back-pressure (the in-process engine never refuses a re-render)
        answer = t.BUSY
    except TelegramError as error:
        # The tap was answered already, so the error handler's answer would be refused and the user would hear
        # nothing: log it and say so in the chat.
        logger.warning("a result button's answer could not be sent (%s): %s", action.verb, error)
        answer = t.GENERIC_ERROR
    except Exception:
        # Our fault, not the user's: log it, apologise, no details.
        logger.exception("a result button failed (%s)", action.verb)
        answer = t.GENERIC_ERROR
    else:
        return
    try:
        await bot.send_message(chat_id, answer)
    except TelegramError as error:  # Telegram itself may be what failed: nothing more to tell the user through it
        logger.warning("a result button's failure could not be reported (%s): %s", action.verb, error)


async def _other_model(
    svc: Services,
    t: Texts,
    context: ContextTypes.DEFAULT_TYPE,
    chat_id: int,
    user_id: int,
    look: Look,
    photo: CachedPhoto,
) -> None:
    """The cached photo through the other network, admitted like a new photo (user limit, queue place)."""
    bot = context.bot
    model = next((name for name in svc.model_names if name != photo.model), photo.model)
    place = None
    if svc.pending[user_id] >= svc.settings.user_pending_limit:
        refusal = t.user_limit(svc.pending[user_id]), Outcome.USER_LIMIT
    else:
        place = take_place(svc, t)
        refusal = place if isinstance(place, tuple) else None
    if refusal is not None:
        await bot.send_message(chat_id, refusal[0])
        await record(svc, chat_id, model, refusal[1])
        return
    outcome, latency = Outcome.ERROR, None
    started = time.monotonic()
    try:
        with svc.pending_slot(user_id):
            async with place:
                done, _ = await run_admitted(svc, t, photo.data, place, model, look)
                if done.result is None:
                    outcome = done.outcome
                    await bot.send_message(chat_id, done.failure)
                    return
                # Still Outcome.ERROR: the result counts as delivered only once send_result returns.
                seconds = time.monotonic() - started
                outcome = await send_result(
                    svc, t, bot, chat_id, done, model, look, photo.filename, seconds, photo_id=photo.photo_id
                )
                latency = done.latency_s if outcome.succeeded else None
    finally:
        await record(svc, chat_id, model, outcome, latency)
