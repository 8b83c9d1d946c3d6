"""The bot's update handlers: commands, settings buttons, photos and image files, and the error handler.

Every sentence comes from `bot.texts` in the user's language; the result buttons live in `bot.redo`, albums
in `bot.albums`, one photo's way through the engine in `bot.photos`.
"""

from __future__ import annotations

import contextlib
import logging
import time

from telegram import Bot, Document, PhotoSize, Update
from telegram.constants import ChatType
from telegram.error import BadRequest, NetworkError, TelegramError
from telegram.ext import ContextTypes

from bot import albums, texts
from bot.keyboards import (
    LANG_PREFIX,
    MODEL_PREFIX,
    background_keyboard,
    language_keyboard,
    model_keyboard,
    result_keyboard,
)
from bot.looks import parse_background, parse_background_data
from bot.matte_cache import CachedPhoto
from bot.naming import result_filename
from bot.outcomes import Outcome
from bot.photos import (
    PhotoOutcome,
    answer,
    chat_action,
    drop,
    record,
    refusal_before_download,
    run_admitted,
    take_place,
)
from bot.services import Services, services
from bot.texts import LANGUAGES, Texts
from bot.triage import classify_document, declared_pixels
from segmentation.effects import Look

logger = logging.getLogger(__name__)

_CROP_WORDS = {"on": True, "yes": True, "1": True, "вкл": True, "да": True, "off": False, "no": False, "0": False}
_CROP_WORDS |= {"выкл": False, "нет": False}
# What /lang accepts: the codes, and each language's name in both languages.
_LANGUAGE_WORDS = {"en": "en", "english": "en", "английский": "en", "ru": "ru", "russian": "ru", "русский": "ru"}


async def _texts(update: Update, context: ContextTypes.DEFAULT_TYPE) -> Texts:
    return await services(context).texts_for(update.effective_user)


async def start_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Greet the user: what the bot does, the commands, the models and the current one."""
    await help_command(update, context)


async def help_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Explain the bot: photos, albums, the buttons, /bg, /crop, /model, /lang, and the models."""
    svc = services(context)
    message = update.effective_message
    t = await _texts(update, context)
    current = await svc.chat_model(message.chat_id)
    await message.reply_text(t.welcome(current, svc.model_names, svc.settings.max_download_bytes))


async def model_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Show the chat's model with buttons to switch (/model), or switch to a named one (/model unet)."""
    svc = services(context)
    message = update.effective_message
    t = await _texts(update, context)
    if not context.args:
        current = await svc.chat_model(message.chat_id)
        await message.reply_text(t.model_current(current), reply_markup=model_keyboard(current, svc.model_names))
        return
    name = context.args[0].strip().lower()
    if name not in svc.model_names:
        current = await svc.chat_model(message.chat_id)
        await message.reply_text(
            t.model_unknown(context.args[0], svc.model_names), reply_markup=model_keyboard(current, svc.model_names)
        )
        return
    await svc.store.set_model(message.chat_id, name)
    await message.reply_text(t.model_switched(name))


async def model_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Switch the chat's model from an inline button and update the buttons (a failure is answered by error_handler)."""
    svc = services(context)
    query = update.callback_query
    name = (query.data or "").removeprefix(MODEL_PREFIX)
    chat = update.effective_chat
    t = await _texts(update, context)
    if chat is None or name not in svc.model_names:
        await query.answer(t.model_unknown(name, svc.model_names), show_alert=True)
        return
    await svc.store.set_model(chat.id, name)
    await query.answer(t.model_switched(name))
    # The message may be too old to edit, or already show this choice: the switch itself has happened.
    with contextlib.suppress(BadRequest):
        await query.edit_message_text(t.model_current(name), reply_markup=model_keyboard(name, svc.model_names))


async def lang_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Show the language with buttons (/lang), or set it (/lang en, /lang ru); kept per user across restarts."""
    svc = services(context)
    message = update.effective_message
    t = await _texts(update, context)
    if not context.args:
        await message.reply_text(t.LANG_CHOOSE, reply_markup=language_keyboard(t.language))
        return
    language = _LANGUAGE_WORDS.get(context.args[0].strip().lower())
    if language not in LANGUAGES or update.effective_user is None:
        await message.reply_text(t.LANG_UNKNOWN, reply_markup=language_keyboard(t.language))
        return
    await svc.store.set_language(update.effective_user.id, language)
    await message.reply_text(texts.for_language(language).LANG_SET)


async def lang_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Set the user's language from a /lang button."""
    svc = services(context)
    query = update.callback_query
    language = (query.data or "").removeprefix(LANG_PREFIX)
    if language not in LANGUAGES:
        t = await _texts(update, context)
        await query.answer(t.BUTTON_INVALID)
        return
    await svc.store.set_language(query.from_user.id, language)
    chosen = texts.for_language(language)
    await query.answer(chosen.LANG_SET)
    with contextlib.suppress(BadRequest):  # already showing this choice, or too old to edit
        await query.edit_message_text(chosen.LANG_SET, reply_markup=language_keyboard(language))


async def bg_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Show the chat's background with buttons (/bg), or set it: /bg white|blur|transparent|#RRGGBB|<colour>."""
    svc = services(context)
    message = update.effective_message
    t = await _texts(update, context)
    look = await svc.chat_look(message.chat_id)
    if not context.args:
        await message.reply_text(
            t.background_current(look.background), reply_markup=background_keyboard(look.background, t)
        )
        return
    typed = " ".join(context.args)
    background = parse_background(typed)
    if background is None:
        await message.reply_text(t.background_invalid(typed), reply_markup=background_keyboard(look.background, t))
        return
    await svc.store.set_look(message.chat_id, background=background)
    await message.reply_text(t.background_set(background))


async def bg_button(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Set the chat's background from a /bg button."""
    svc = services(context)
    query = update.callback_query
    t = await _texts(update, context)
    background = parse_background_data(query.data)
    chat = update.effective_chat
    if background is None or chat is None:
        await query.answer(t.BUTTON_INVALID)
        return
    await svc.store.set_look(chat.id, background=background)
    await query.answer(t.background_set(background))
    with contextlib.suppress(BadRequest):
        await query.edit_message_text(t.background_current(background), reply_markup=background_keyboard(background, t))


async def crop_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/crop on|off: trim this chat's results to the people, with a small margin (kept across restarts)."""
    svc = services(context)
    message = update.effective_message
    t = await _texts(update, context)
    choice = _CROP_WORDS.get(context.args[0].strip().lower()) if context.args else None
    if choice is None:
        look = await svc.chat_look(message.chat_id)
        await message.reply_text(t.crop_usage(look.crop))
        return
    await svc.store.set_look(message.chat_id, crop=choice)
    await message.reply_text(t.CROP_ON if choice else t.CROP_OFF)


async def stats_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Show usage statistics to an admin (app.py routes only admins here), in a private chat only."""
    svc = services(context)
    message = update.effective_message
    t = await _texts(update, context)
    if message.chat.type != ChatType.PRIVATE:
        # The figures are global: never post them where others can read them.
        await message.reply_text(t.STATS_PRIVATE_ONLY)
        return
    stats = await svc.store.stats()
    report = t.stats_report(stats, time.monotonic() - svc.started_at, svc.engine.queue_depth, svc.engine.in_flight)
    await message.reply_text(report)


async def stats_refused(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """/stats from anyone but an admin: a refusal that reveals nothing."""
    await update.effective_message.reply_text((await _texts(update, context)).STATS_REFUSED)


async def photo_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Remove the background of a photo, using the largest size Telegram offers (the last one)."""
    message = update.effective_message
    largest = message.photo[-1]
    pixels = declared_pixels(largest.width, largest.height)
    if message.media_group_id:
        await albums.gather(update, context, largest, result_filename(None), pixels)
        return
    await process_image(update, context, largest, result_filename(None), pixels)


async def document_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Remove the background of an image sent as a file; refuse other files before downloading them."""
    svc = services(context)
    message = update.effective_message
    document = message.document
    kind = classify_document(document.file_name, document.mime_type)
    if kind is not None:
        t = await _texts(update, context)
        await message.reply_text(t.not_an_image(kind))
        await record(svc, message.chat_id, await svc.chat_model(message.chat_id), Outcome.NOT_IMAGE)
        return
    if message.media_group_id:
        await albums.gather(update, context, document, result_filename(document.file_name), None)
        return
    await process_image(update, context, document, result_filename(document.file_name), None)


async def other_media_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Explain that videos, voice notes, stickers and the like can't be processed."""
    await update.effective_message.reply_text((await _texts(update, context)).OTHER_MEDIA)


async def text_message(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer plain text with a hint to send a photo."""
    await update.effective_message.reply_text((await _texts(update, context)).TEXT_HINT)


async def unknown_command(update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Answer commands the bot doesn't have."""
    await update.effective_message.reply_text((await _texts(update, context)).UNKNOWN_COMMAND)


async def photo_look(svc: Services, chat_id: int, caption: str | None) -> Look:
    """The chat's look, with the background a photo's caption names (white, blur, #00ff00), if it names one."""
    look = await svc.chat_look(chat_id)
    background = parse_background(caption) if caption else None
    return Look(background, look.crop) if background else look


async def process_image(
    update: Update,
    context: ContextTypes.DEFAULT_TYPE,
    attachment: PhotoSize | Document,
    filename: str,
    pixels: int | None,
) -> None:
    """Admit (limits, a queue place), download, check the header, run the engine, reply with buttons, record."""
    svc = services(context)
    message = update.effective_message
    chat_id = message.chat_id
    user_id = update.effective_user.id if update.effective_user else chat_id
    t = await svc.texts_for(update.effective_user)
    model = await svc.chat_model(chat_id)
    look = await photo_look(svc, chat_id, message.caption)

    # Every refusal that Telegram's own figures allow comes before a place is taken and before any download.
    refusal = refusal_before_download(svc, t, attachment, pixels, user_id)
    place = take_place(svc, t) if refusal is None else None
    if isinstance(place, tuple):
        refusal = place
    if refusal is not None:
        text, outcome = refusal
        await message.reply_text(text)
        await record(svc, chat_id, model, outcome)
        return

    outcome, latency = Outcome.ERROR, None
    started = time.monotonic()
    try:
        with svc.pending_slot(user_id):
            async with place, chat_action(message):
                done, status = await run_admitted(svc, t, attachment, place, model, look, message)
                if done.result is None:
                    outcome = done.outcome
                    await answer(message, done.failure, status)
                    return
                # Still Outcome.ERROR: the result counts as delivered only once send_result returns.
                await drop(status)
                seconds = time.monotonic() - started  # what the user waited for: download, queue and processing
                outcome = await send_result(svc, t, message.get_bot(), chat_id, done, model, look, filename, seconds)
                latency = done.latency_s if outcome.succeeded else None
    finally:
        # Recorded even when a reply failed (outcome "error"), so /stats counts every request.
        await record(svc, chat_id, model, outcome, latency)


async def send_result(
    svc: Services,
    t: Texts,
    bot: Bot,
    chat_id: int,
    done: PhotoOutcome,
    model: str,
    look: Look,
    filename: str,
    seconds: float,
    photo_id: str = "",
) -> Outcome:
    """Send a result document with its buttons, keeping the photo and matte for them; returns the outcome."""
    result = done.result
    photo = CachedPhoto(chat_id, done.data, result.matte, model, filename, result.person_found, photo_id=photo_id)
    key = svc.cache.put(photo)
    markup = result_keyboard(key, look, t) if key is not None else None
    try:
        await bot.send_document(
            chat_id,
            document=result.png,
            filename=filename,
            caption=t.result_caption(model, seconds, result.person_found),
            reply_markup=markup,
        )
    except TelegramError as error:
        if "too large" not in error.message.lower():  # e.g. "Request Entity Too Large" from a smaller server limit
            raise
        await bot.send_message(chat_id, t.result_too_big(len(result.png), svc.settings.max_upload_bytes))
        return Outcome.RESULT_TOO_BIG
    return done.outcome


async def error_handler(update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
    """Log an unhandled error (the token is redacted by the logging filter) and apologise to the user."""
    if isinstance(context.error, NetworkError) and not isinstance(update, Update):
        # Polling hiccups: python-telegram-bot retries by itself; a traceback per blip would be noise.
        logger.warning("network problem talking to Telegram: %s", context.error)
        return
    logger.error("unhandled error while handling an update", exc_info=context.error)
    if not isinstance(update, Update):
        return
    # Telegram's language only: the store may be what failed.
    user = update.effective_user
    t = texts.for_language(texts.language_of(user.language_code if user else None))
    if update.callback_query is not None:
        # Always answer a button press, or its spinner keeps turning; one already answered refuses quietly.
        with contextlib.suppress(TelegramError):
            await update.callback_query.answer(t.GENERIC_ERROR, show_alert=True)
        return
    if update.effective_chat is not None:
        with contextlib.suppress(TelegramError):
            await context.bot.send_message(update.effective_chat.id, t.GENERIC_ERROR)
