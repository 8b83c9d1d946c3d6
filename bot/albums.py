"""Albums: a media group of up to 10 photos, answered as one album of PNG documents in the same order.

Telegram delivers an album as one update per photo, moments apart; the first photo's handler gathers the rest
until none has arrived for ALBUM_QUIET_S, then admits them in order against the user's pending limit (photos
over it are named, not dropped), runs the admitted ones side by side, and answers with one `send_media_group`
plus one message naming each photo that got no result.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from telegram import Document, InputMediaDocument, Message, PhotoSize, Update
from telegram.ext import ContextTypes

from bot.looks import parse_background
from bot.outcomes import Outcome
from bot.photos import PhotoOutcome, chat_action, record, refusal_before_download, run_admitted, take_place
from bot.services import services
from bot.texts import Texts
from segmentation.effects import Look

# Telegram sends an album's photos within a fraction of a second; wait this long after the last one.
ALBUM_QUIET_S = 0.8
MAX_ALBUM = 10  # Telegram's own limit on a media group


@dataclass
class AlbumPhoto:
    """One photo of an album as it arrived."""

    message: Message
    attachment: PhotoSize | Document
    filename: str
    pixels: int | None


@dataclass
class _Album:
    photos: list[AlbumPhoto] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


def album_filename(filename: str, index: int) -> str:
    """Photos have no names: number them so the album's files stay apart ("photo-3_nobg.png")."""
    return filename.replace("photo_nobg", f"photo-{index}_nobg", 1) if filename.startswith("photo_nobg") else filename


async def gather(
    update: Update,
    context: ContextTypes.DEFAULT_TYPE,
    attachment: PhotoSize | Document,
    filename: str,
    pixels: int | None,
) -> None:
    """Add a photo to its album; the handler of the album's first photo answers the whole album."""
    svc = services(context)
    message = update.effective_message
    key = f"{message.chat_id}:{message.media_group_id}"
    photo = AlbumPhoto(message, attachment, filename, pixels)
    album = svc.albums.get(key)
    if album is not None:
        album.photos.append(photo)
        album.arrived.set()
        return
    album = svc.albums[key] = _Album([photo])
    try:
        while len(album.photos) < MAX_ALBUM:
            album.arrived.clear()
            try:
                await asyncio.wait_for(album.arrived.wait(), ALBUM_QUIET_S)
            except TimeoutError:
                break  # quiet: the album is complete
    finally:
        del svc.albums[key]
    # Updates may arrive out of order: the user's order is the order of the message ids.
    await answer_album(update, context, sorted(album.photos, key=lambda item: item.message.message_id))


async def answer_album(update: Update, context: ContextTypes.DEFAULT_TYPE, photos: list[AlbumPhoto]) -> None:
    """Admit, run and answer an album's photos, in order."""
    svc = services(context)
    first = photos[0].message
    chat_id = first.chat_id
    user_id = update.effective_user.id if update.effective_user else chat_id
    t = await svc.texts_for(update.effective_user)
    model = await svc.chat_model(chat_id)
    look = await svc.chat_look(chat_id)
    caption = next((item.message.caption for item in photos if item.message.caption), None)
    background = parse_background(caption) if caption else None
    if background:
        look = Look(background, look.crop)

    total = len(photos)
    outcomes: list[PhotoOutcome | None] = [None] * total
    try:
        async with contextlib.AsyncExitStack() as held:
            runs: dict[int, asyncio.Future] = {}
            for index, item in enumerate(photos):
                # In order: each admitted photo takes one of the user's pending slots before the next is looked at.
                refusal = refusal_before_download(svc, t, item.attachment, item.pixels, user_id)
                place = take_place(svc, t) if refusal is None else None
                if isinstance(place, tuple):
                    refusal = place
                if refusal is not None:
                    text, outcome = refusal
                    if outcome is Outcome.USER_LIMIT:
                        text = t.album_over_limit(svc.settings.user_pending_limit)
                    outcomes[index] = PhotoOutcome(outcome, failure=text)
                    continue
                held.enter_context(svc.pending_slot(user_id))
                await held.enter_async_context(place)
                runs[index] = asyncio.ensure_future(run_admitted(svc, t, item.attachment, place, model, look))
            if runs:
                async with chat_action(first):
                    try:
                        finished = await asyncio.gather(*runs.values())
                    finally:
                        for run in runs.values():
                            run.cancel()
                for index, (done, _) in zip(runs, finished, strict=True):
                    outcomes[index] = done
            await _send_album(first, t, photos, outcomes)
    finally:
        # Recorded even when the answer failed, so /stats counts every photo of the album.
        for done in outcomes:
            if done is not None:
                await record(svc, chat_id, model, done.outcome, done.latency_s)


async def _send_album(first: Message, t: Texts, photos: list[AlbumPhoto], outcomes: list[PhotoOutcome]) -> None:
    """One album of the results in order, then one message naming each photo that got no result."""
    total = len(photos)
    results = [
        (done.result.png, album_filename(item.filename, index), t.album_caption(index, total))
        for index, (item, done) in enumerate(zip(photos, outcomes, strict=True), start=1)
        if done.result is not None
    ]
    bot = first.get_bot()
    try:
        if len(results) >= 2:
            media = [InputMediaDocument(png, filename=name, caption=caption) for png, name, caption in results]
            await bot.send_media_group(first.chat_id, media=media)
        elif results:  # an album of one is a plain document
            png, name, caption = results[0]
            await bot.send_document(first.chat_id, document=png, filename=name, caption=caption)
    except BaseException:
        # Not delivered: the statistics must not count these photos as results.
        for index, done in enumerate(outcomes):
            if done.result is not None:
                outcomes[index] = PhotoOutcome(Outcome.ERROR)
        raise
    failures = [
        t.album_failure(index, total, done.failure)
        for index, done in enumerate(outcomes, start=1)
        if done.result is None
    ]
    if failures:
        await bot.send_message(first.chat_id, "\n".join(failures))
