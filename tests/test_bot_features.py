"""End-to-end tests of the bot's features against the Bot API stand-in: languages, /bg, /crop, the result buttons
and their cache, stickers, albums, and the place in line that moves. The networks are boxes (bot_fixtures)."""

from __future__ import annotations

import asyncio
import io
import json
import threading
from pathlib import Path

import numpy as np
import pytest
from bot_fixtures import (
    TOKEN,
    NetworkCalls,
    boxed_engine,
    decode_result,
    make_settings,
    nobody_engine,
    running_bot,
    seconds_to_stop,
    start_bot,
    tiny_photo,
)
from botapi_stub import BotApiStub, SentMessage
from PIL import Image

from bot import looks, redo, texts
from segmentation.effects import WHITE, Look
from segmentation.engine_api import QueueFullError, RequestTimeoutError

SECRET_PART = TOKEN.partition(":")[2]
RU = texts.for_language("ru")
EN = texts.ENGLISH


# Every test here checks that no log record carries the bot token (the fixture is in conftest.py).
pytestmark = pytest.mark.usefixtures("token_never_logged")


def assert_friendly(stub: BotApiStub, *chats: int) -> None:
    """No user ever sees a stack trace or an exception name, in a message or a button's answer."""
    shown = [text for text in stub.callback_answers()]
    for chat in chats:
        for message in stub.transcript(chat, include_deleted=True):
            shown += [message.text or "", message.caption or "", *message.edits]
    for text in shown:
        assert "Traceback" not in text and "Error" not in text, text


def buttons(message: SentMessage) -> dict[str, str]:
    """A message's inline buttons: label -> callback data."""
    rows = (message.reply_markup or {}).get("inline_keyboard", [])
    return {button["text"]: button["callback_data"] for row in rows for button in row}


async def first_result(stub: BotApiStub, chat: int) -> SentMessage:
    """Wait for the chat's first result document."""
    return (await stub.wait_for(lambda: stub.documents(chat), 30, "a result"))[0]


async def tap(stub: BotApiStub, chat: int, message: SentMessage, data: str, user: int | None = None) -> str:
    """Press a button and return the text its press was answered with."""
    before = len(stub.calls_of("answerCallbackQuery"))
    stub.push_callback(chat, data, message.message_id, user_id=user)
    await stub.wait_for(lambda: len(stub.calls_of("answerCallbackQuery")) > before, 20, "the tap to be answered")
    return stub.callback_answers()[before]


def image_of(message: SentMessage) -> Image.Image:
    """The picture of a result document."""
    return decode_result(message.document.data)


# ------------------------------------------------------------------------------------------------ languages


async def test_language_follows_telegram_then_lang_and_survives_a_restart(botapi: BotApiStub, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, botapi)
    botapi.languages[301] = "ru-RU"
    async with running_bot(settings, boxed_engine(settings)):
        botapi.push_text(301, "/help")
        botapi.push_text(302, "/help")  # English by default
        await botapi.wait_for(lambda: botapi.texts(301) and botapi.texts(302), 20, "both help texts")
        assert botapi.texts(301)[0].startswith("Привет!") and "/bg" in botapi.texts(301)[0]
        assert botapi.texts(302)[0].startswith("Hi!") and "/lang" in botapi.texts(302)[0]
        # The command menu: the default one and the Russian one.
        calls = botapi.calls_of("setMyCommands")
        menus = {
            call.params.get("language_code", ""): {
                item["command"]: item["description"] for item in json.loads(call.params["commands"])
            }
            for call in calls
        }
        assert set(menus) == {"", "ru"}
        assert set(menus[""]) == set(menus["ru"]) == set(texts.COMMANDS)
        assert menus[""]["bg"] == EN.command_description("bg") and menus["ru"]["bg"] == RU.command_description("bg")

        botapi.push_text(301, "/lang en")
        await botapi.wait_for(lambda: len(botapi.texts(301)) == 2, 20, "the switch")
        assert botapi.texts(301)[1] == EN.LANG_SET
        botapi.push_text(301, "/lang")
        menu = (await botapi.wait_for(lambda: botapi.transcript(301)[2:], 20, "the language menu"))[0]
        assert menu.text == EN.LANG_CHOOSE and set(buttons(menu).values()) == {"lang:en", "lang:ru"}
        botapi.push_text(301, "/lang klingon")
        await botapi.wait_for(lambda: len(botapi.texts(301)) == 4, 20, "the refusal")
        assert botapi.texts(301)[3] == EN.LANG_UNKNOWN
    async with running_bot(settings, boxed_engine(settings)):  # a restart keeps the choice
        botapi.push_text(301, "hello")
        await botapi.wait_for(lambda: len(botapi.texts(301)) == 5, 20, "the hint")
        assert botapi.texts(301)[4] == EN.TEXT_HINT
        # The language buttons switch back, and the menu message shows the choice.
        assert await tap(botapi, 301, menu, "lang:ru") == RU.LANG_SET
        await botapi.wait_for(lambda: menu.text == RU.LANG_SET, 20, "the menu to update")
        botapi.push_text(301, "/bg purple-ish")
        await botapi.wait_for(lambda: len(botapi.texts(301)) == 6, 20, "the refusal")
        assert botapi.texts(301)[5] == RU.background_invalid("purple-ish")
        assert await tap(botapi, 301, menu, "lang:xx") == RU.BUTTON_INVALID
    assert_friendly(botapi, 301, 302)


# ------------------------------------------------------------------------------------------------ /bg and /crop


async def test_bg_and_crop_defaults_captions_and_restart(botapi: BotApiStub, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, botapi)
    chat = 311
    async with running_bot(settings, boxed_engine(settings)):
        botapi.push_text(chat, "/bg")
        menu = (await botapi.wait_for(lambda: botapi.transcript(chat), 20, "the /bg menu"))[0]
        assert menu.text == EN.background_current("transparent")
        assert looks.background_data("white") in buttons(menu).values()
        assert len(buttons(menu)) == 3 + len(looks.PALETTE)

        botapi.push_text(chat, "/bg navy")
        await botapi.wait_for(lambda: len(botapi.texts(chat)) == 2, 20, "the answer")
        assert botapi.texts(chat)[1] == EN.background_set("#000080")
        botapi.push_text(chat, "/bg #12345")
        await botapi.wait_for(lambda: len(botapi.texts(chat)) == 3, 20, "the refusal")
        assert botapi.texts(chat)[2] == EN.background_invalid("#12345")

        botapi.push_photo(chat, tiny_photo(), (96, 64))
        navy = image_of(await first_result(botapi, chat))
        assert navy.mode == "RGB" and navy.size == (96, 64)
        assert navy.getpixel((0, 0)) == (0, 0, 128)

        # A caption overrides the background for that photo only.
        botapi.push_photo(chat, tiny_photo(seed=1), (96, 64), caption="#00ff00")
        await botapi.wait_for(lambda: len(botapi.documents(chat)) == 2, 30, "the captioned result")
        assert image_of(botapi.documents(chat)[1]).getpixel((0, 0)) == (0, 255, 0)

        # A /bg button sets the default, and the menu shows it.
        assert await tap(botapi, chat, menu, looks.background_data("white")) == EN.background_set("white")
        await botapi.wait_for(lambda: menu.text == EN.background_current("white"), 20, "the menu to update")

        botapi.push_text(chat, "/crop")
        botapi.push_text(chat, "/crop on")
        await botapi.wait_for(lambda: EN.CROP_ON in botapi.texts(chat), 20, "crop on")
        assert EN.crop_usage(False) in botapi.texts(chat)
    async with running_bot(settings, boxed_engine(settings)):  # both settings survive a restart
        botapi.push_photo(chat, tiny_photo(seed=2), (96, 64))
        await botapi.wait_for(lambda: len(botapi.documents(chat)) == 3, 30, "the result after the restart")
        cropped = image_of(botapi.documents(chat)[2])
        assert cropped.mode == "RGB" and cropped.width < 96 and cropped.height < 64  # white, cropped to the box
        assert cropped.getpixel((0, 0)) == (255, 255, 255)
        botapi.push_text(chat, "/crop off")
        await botapi.wait_for(lambda: EN.CROP_OFF in botapi.texts(chat), 20, "crop off")
    assert_friendly(botapi, chat)


# ------------------------------------------------------------------------------------------------ result buttons


async def test_every_result_button_answers_with_a_new_message_from_the_cache(
    botapi: BotApiStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redo, "TAP_INTERVAL_S", 0.0)  # one user presses every button in turn
    settings = make_settings(tmp_path, botapi)
    calls = NetworkCalls()
    chat = 321
    async with running_bot(settings, boxed_engine(settings, calls)) as application:
        svc = application.bot_data["services"]
        botapi.push_photo(chat, tiny_photo(), (96, 64))
        result = await first_result(botapi, chat)
        original = image_of(result)
        assert original.mode == "RGBA" and original.size == (96, 64)
        keys = buttons(result)
        assert list(keys) == [
            EN.BTN_OTHER_MODEL,
            EN.BTN_STICKER,
            EN.BTN_WHITE,
            EN.BTN_BLUR,
            EN.BTN_COLOUR,
            EN.BTN_TRANSPARENT,
            EN.BTN_CROP,
        ]
        assert all(len(data.encode()) <= 64 for data in keys.values())
        networks_run = calls.count

        async def press(label: str, on: SentMessage = result) -> SentMessage:
            before = len(botapi.transcript(chat))
            assert await tap(botapi, chat, on, buttons(on)[label]) == ""
            answer = await botapi.wait_for(lambda: botapi.transcript(chat)[before:], 20, f"the answer to {label}")
            # The tap's handler finishes just after its answer is sent; until then the photo counts as busy.
            await botapi.wait_for(lambda: not svc.busy_photos, 20, "the tap to finish")
            return answer[0]

        white = image_of(await press(EN.BTN_WHITE))
        assert white.mode == "RGB" and white.size == (96, 64) and white.getpixel((0, 0)) == (255, 255, 255)
        alpha = np.asarray(original)[..., 3]
        person = alpha == 255
        assert np.array_equal(np.asarray(white)[person], np.asarray(original)[..., :3][person])

        blurred = image_of(await press(EN.BTN_BLUR))
        source = np.asarray(Image.open(io.BytesIO(tiny_photo())).convert("RGB")).astype(int)
        background = alpha == 0
        assert np.abs(np.diff(np.asarray(blurred).astype(int), axis=1))[background[:, 1:]].mean() < 0.5 * (
            np.abs(np.diff(source, axis=1))[background[:, 1:]].mean()
        )

        palette = await press(EN.BTN_COLOUR)
        assert palette.text == EN.PALETTE_PROMPT and len(buttons(palette)) == len(looks.PALETTE)
        red_label, red = looks.PALETTE[2]
        coloured = image_of(await press(red_label, on=palette))
        assert coloured.getpixel((0, 0)) == tuple(int(red[i : i + 2], 16) for i in (1, 3, 5))

        sticker_message = await press(EN.BTN_STICKER)
        sticker = Image.open(io.BytesIO(sticker_message.sticker.data))
        assert sticker.format == "WEBP" and max(sticker.size) == 512

        transparent = await press(EN.BTN_TRANSPARENT)
        assert image_of(transparent).mode == "RGBA"
        cropped_message = await press(EN.BTN_CROP)
        cropped = image_of(cropped_message)
        assert cropped.mode == "RGBA" and cropped.width < 96 and cropped.height < 64
        # Under a cropped result, the crop button offers the whole frame back, in the same look.
        assert EN.BTN_UNCROP in buttons(cropped_message)
        assert looks.parse_result_data(buttons(cropped_message)[EN.BTN_UNCROP]).look == Look("transparent", False)

        assert calls.count == networks_run  # none of these ran a network

        other = await press(EN.BTN_OTHER_MODEL)
        assert "unet" in other.caption and calls.count == networks_run + 1
        assert np.count_nonzero(np.asarray(image_of(other))[..., 3] == 255) > np.count_nonzero(person)
        back = looks.parse_result_data(buttons(other)[EN.BTN_OTHER_MODEL])
        assert back.key != looks.parse_result_data(keys[EN.BTN_OTHER_MODEL]).key  # the unet result has its own key

        # Nothing already sent was edited.
        assert all(not message.edits for message in botapi.transcript(chat))
    assert_friendly(botapi, chat)


async def test_stale_forged_and_foreign_buttons_get_a_short_answer(botapi: BotApiStub, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, botapi)
    async with running_bot(settings, boxed_engine(settings)):
        botapi.push_photo(331, tiny_photo(), (96, 64))
        result = await first_result(botapi, 331)
        white = buttons(result)[EN.BTN_WHITE]
        # Forged or garbled data, and a button from a version that never existed.
        for forged in ("r:zzzz", "garbage", "r:0123abcd:lq0", "r:0123abcd:lt0:" + "x" * 40):
            assert await tap(botapi, 331, result, forged) == EN.BUTTON_INVALID
        assert await tap(botapi, 331, result, "r:0123abcd:lw0") == EN.SEND_AGAIN  # well formed, not in the cache
        # The same key pressed in another chat (a forwarded keyboard, or a forgery).
        botapi.push_text(332, "hi")
        other_chat = (await botapi.wait_for(lambda: botapi.transcript(332), 20, "a message in chat 332"))[0]
        assert await tap(botapi, 332, other_chat, white) == EN.BUTTON_INVALID
    async with running_bot(settings, boxed_engine(settings)):  # after a restart the cache is empty
        assert await tap(botapi, 331, result, white) == EN.SEND_AGAIN
    assert len(botapi.documents(331)) == 1 and not botapi.documents(332)
    assert_friendly(botapi, 331, 332)


async def test_twenty_taps_a_second_are_answered_once(
    botapi: BotApiStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The default second between a user's taps, stretched so a slow shared machine cannot split the burst.
    monkeypatch.setattr(redo, "TAP_INTERVAL_S", 30.0)
    settings = make_settings(tmp_path, botapi)
    async with running_bot(settings, boxed_engine(settings)):
        botapi.push_photo(341, tiny_photo(), (96, 64))
        result = await first_result(botapi, 341)
        before = len(botapi.calls_of("answerCallbackQuery"))
        for _ in range(20):
            botapi.push_callback(341, buttons(result)[EN.BTN_WHITE], result.message_id)
        await botapi.wait_for(lambda: len(botapi.calls_of("answerCallbackQuery")) == before + 20, 20, "20 answers")
        await botapi.wait_for(lambda: len(botapi.documents(341)) == 2, 20, "the one new result")
        answers = botapi.callback_answers()[before:]
        assert answers.count("") == 1  # the tap that was worked on
        assert set(answers) - {""} <= {EN.TAP_ACK, EN.PHOTO_BUSY}
        # Every tap was answered exactly once, and only one result came.
        assert len(botapi.documents(341)) == 2
    assert_friendly(botapi, 341)


async def test_a_tap_while_the_photo_is_processed_gets_a_short_answer(botapi: BotApiStub, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, botapi)
    calls = NetworkCalls(gated=True)
    async with running_bot(settings, boxed_engine(settings, calls)):
        botapi.push_photo(-351, tiny_photo(), (96, 64), user_id=35)
        calls.let_one_through()
        result = await first_result(botapi, -351)
        assert await tap(botapi, -351, result, buttons(result)[EN.BTN_OTHER_MODEL], user=35) == ""
        await botapi.wait_for(lambda: calls.count == 2, 20, "the other model to start")
        # Another member of the group taps the same photo while its other model runs.
        assert await tap(botapi, -351, result, buttons(result)[EN.BTN_WHITE], user=36) == EN.PHOTO_BUSY
        calls.let_one_through()
        await botapi.wait_for(lambda: len(botapi.documents(-351)) == 2, 20, "the other model's result")
        assert "unet" in botapi.documents(-351)[1].caption
    assert_friendly(botapi, -351)


async def test_other_model_running_does_not_hold_the_users_other_taps(
    botapi: BotApiStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redo, "TAP_INTERVAL_S", 0.0)
    settings = make_settings(tmp_path, botapi)
    calls = NetworkCalls(gated=True)
    async with running_bot(settings, boxed_engine(settings, calls)):
        botapi.push_photo(361, tiny_photo(seed=1), (96, 64))
        calls.let_one_through()
        first = await first_result(botapi, 361)
        botapi.push_photo(361, tiny_photo(seed=2), (96, 64))
        calls.let_one_through()
        second = (await botapi.wait_for(lambda: botapi.documents(361)[1:], 20, "the second result"))[0]
        assert await tap(botapi, 361, first, buttons(first)[EN.BTN_OTHER_MODEL]) == ""
        await botapi.wait_for(lambda: calls.count == 3, 20, "the other model to start")
        # While the first photo's other model is held in the network, a re-render of the second is worked on.
        assert await tap(botapi, 361, second, buttons(second)[EN.BTN_WHITE]) == ""
        await botapi.wait_for(lambda: len(botapi.documents(361)) == 3, 20, "the white re-render")
        assert calls.count == 3  # the re-render ran no network
        calls.let_one_through()
        await botapi.wait_for(lambda: len(botapi.documents(361)) == 4, 20, "the other model's result")
        assert "unet" in botapi.documents(361)[3].caption
    assert_friendly(botapi, 361)


async def test_a_tap_under_way_at_shutdown_is_told_the_bot_is_restarting(botapi: BotApiStub, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, botapi, shutdown_timeout=1.0)
    engine = boxed_engine(settings)
    application = await start_bot(settings, engine)
    release = threading.Event()
    try:
        botapi.push_photo(371, tiny_photo(), (96, 64))
        result = await first_result(botapi, 371)

        def held_render(*args: object) -> bytes:
            release.wait(30)
            raise RuntimeError("released after the bot stopped")

        engine._recompose_png = held_render
        assert await tap(botapi, 371, result, buttons(result)[EN.BTN_WHITE]) == ""
        await botapi.wait_for(lambda: engine._recomposing, 20, "the re-render to start")
    finally:
        stopping = await seconds_to_stop(application, release)
    assert stopping < 5, stopping  # bounded by the shutdown timeout, not by the held re-render
    assert botapi.texts(371) == [EN.RESTARTING]
    assert len(botapi.documents(371)) == 1
    assert_friendly(botapi, 371)


async def test_shutdown_ends_a_tap_still_running_at_the_bound(botapi: BotApiStub, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, botapi, shutdown_timeout=1.0)
    engine = boxed_engine(settings)
    application = await start_bot(settings, engine)
    try:
        botapi.push_photo(372, tiny_photo(), (96, 64))
        result = await first_result(botapi, 372)
        stuck, ended = asyncio.Event(), asyncio.Event()

        async def stuck_render(*args: object) -> bytes:  # e.g. an upload that hangs: not the engine's to end
            stuck.set()
            try:
                await asyncio.sleep(30)
            except asyncio.CancelledError:
                ended.set()
                raise
            return b""

        engine.recompose = stuck_render
        assert await tap(botapi, 372, result, buttons(result)[EN.BTN_WHITE]) == ""
        await asyncio.wait_for(stuck.wait(), 20)
    finally:
        stopping = await seconds_to_stop(application)
    assert stopping < 5, stopping
    assert ended.is_set()  # the tap was ended at the bound, not left running past the stop
    assert_friendly(botapi, 372)


async def test_the_cache_evicts_by_bytes(botapi: BotApiStub, tmp_path: Path) -> None:
    # One photo's file and matte (about 5 KB and 6 KB) fit, two do not.
    settings = make_settings(tmp_path, botapi, cache_bytes=20_000)
    async with running_bot(settings, boxed_engine(settings)) as application:
        cache = application.bot_data["services"].cache
        botapi.push_photo(361, tiny_photo(seed=1), (96, 64))
        first = await first_result(botapi, 361)
        assert len(cache) == 1 and cache.nbytes > 10_000
        botapi.push_photo(361, tiny_photo(seed=2), (96, 64))
        await botapi.wait_for(lambda: len(botapi.documents(361)) == 2, 30, "the second result")
        second = botapi.documents(361)[1]
        assert len(cache) == 1 and cache.nbytes <= 20_000 and cache.evicted == 1
        assert await tap(botapi, 361, first, buttons(first)[EN.BTN_WHITE]) == EN.SEND_AGAIN
        assert await tap(botapi, 361, second, buttons(second)[EN.BTN_WHITE], user=362) == ""
        await botapi.wait_for(lambda: len(botapi.documents(361)) == 3, 20, "the re-rendered second photo")
    assert_friendly(botapi, 361)


async def test_a_sticker_of_nobody_gets_a_clear_answer(botapi: BotApiStub, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, botapi)
    async with running_bot(settings, nobody_engine(settings)):
        botapi.push_photo(371, tiny_photo(), (96, 64))
        result = await first_result(botapi, 371)
        assert await tap(botapi, 371, result, buttons(result)[EN.BTN_STICKER]) == ""
        await botapi.wait_for(lambda: EN.NO_PERSON_STICKER in botapi.texts(371), 20, "the answer")
        assert not botapi.stickers(371)
    assert_friendly(botapi, 371)


# ------------------------------------------------------------------------------------------------ albums


async def test_an_album_of_ten_comes_back_in_order_with_its_one_failure_named(
    botapi: BotApiStub, tmp_path: Path
) -> None:
    settings = make_settings(tmp_path, botapi, user_pending_limit=10, queue_size=10)
    photos = [(tiny_photo(40 + index, 30 + index, seed=index), (40 + index, 30 + index)) for index in range(10)]
    photos[3] = (b"\xff\xd8\xff\xe0 this is not really a JPEG" * 4, (43, 33))  # the fourth is broken
    async with running_bot(settings, boxed_engine(settings)):
        botapi.push_album(381, photos)
        await botapi.wait_for(lambda: len(botapi.documents(381)) == 9 and botapi.texts(381), 60, "the album")
    groups = botapi.calls_of("sendMediaGroup")
    assert len(groups) == 1
    documents = botapi.documents(381)
    assert len({document.media_group_id for document in documents}) == 1
    shown = [index for index in range(10) if index != 3]
    for document, index in zip(documents, shown, strict=True):
        assert document.caption == EN.album_caption(index + 1, 10)
        assert image_of(document).size == (40 + index, 30 + index)  # the same order as sent
        assert document.document.filename == f"photo-{index + 1}_nobg.png"
    (failure,) = botapi.texts(381)
    assert failure.startswith("Photo 4 of 10: I couldn't read that image")
    assert_friendly(botapi, 381)


async def test_an_album_over_the_pending_limit_names_the_photos_left_out(botapi: BotApiStub, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, botapi, user_pending_limit=3)
    photos = [(tiny_photo(50 + index, 40, seed=index), (50 + index, 40)) for index in range(5)]
    async with running_bot(settings, boxed_engine(settings)) as application:
        botapi.push_album(391, photos)
        await botapi.wait_for(lambda: len(botapi.documents(391)) == 3 and botapi.texts(391), 60, "the album")
        pending = application.bot_data["services"].pending
        await botapi.wait_for(lambda: not pending, 20, "every slot to come back")
    assert [image_of(document).size[0] for document in botapi.documents(391)] == [50, 51, 52]
    (failures,) = botapi.texts(391)
    assert failures.splitlines() == [
        EN.album_failure(4, 5, EN.album_over_limit(3)),
        EN.album_failure(5, 5, EN.album_over_limit(3)),
    ]


# ------------------------------------------------------------------------------------------------ place in line


async def test_the_place_in_line_moves_and_goes_when_the_answer_comes(botapi: BotApiStub, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, botapi, queue_update_interval=0.05)
    calls = NetworkCalls(gated=True)
    async with running_bot(settings, boxed_engine(settings, calls)):
        botapi.push_photo(401, tiny_photo(seed=1), (96, 64))
        await botapi.wait_for(lambda: calls.count == 1, 20, "the first photo to run")
        botapi.push_photo(402, tiny_photo(seed=2), (96, 64))
        await botapi.wait_for(lambda: botapi.texts(402), 20, "the second photo's place")
        botapi.push_photo(403, tiny_photo(seed=3), (96, 64))
        await botapi.wait_for(lambda: botapi.texts(403), 20, "the third photo's place")
        assert botapi.texts(402) == [EN.queued(1)] and botapi.texts(403) == [EN.queued(2)]
        status = botapi.transcript(403)[0]
        calls.let_one_through()  # the first finishes, the second runs: the third moves up
        await botapi.wait_for(lambda: status.text == EN.queued(1), 20, "the place to move")
        assert status.edits == [EN.queued(2)]
        calls.let_one_through(2)
        for chat in (401, 402, 403):
            await botapi.wait_for(lambda chat=chat: botapi.documents(chat), 20, "every result")
        await botapi.wait_for(lambda: status.deleted, 20, "the place-in-line message to go")
        assert not botapi.texts(402) and not botapi.texts(403)  # both deleted, only the results remain
    assert_friendly(botapi, 401, 402, 403)


async def test_a_russian_user_gets_russian_results_and_buttons(botapi: BotApiStub, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, botapi)
    botapi.languages[411] = "ru"
    async with running_bot(settings, boxed_engine(settings)):
        botapi.push_text(411, "/bg размытие")
        await botapi.wait_for(lambda: botapi.texts(411), 20, "the answer")
        assert botapi.texts(411) == [RU.background_set("blur")]
        botapi.push_photo(411, tiny_photo(), (96, 64))
        result = await first_result(botapi, 411)
        assert result.caption.startswith("Фон убран моделью deeplab за")
        assert list(buttons(result))[:2] == [RU.BTN_OTHER_MODEL, RU.BTN_STICKER]
        assert image_of(result).mode == "RGB"  # blurred background, no transparency
        assert await tap(botapi, 411, result, "garbage") == RU.BUTTON_INVALID
        botapi.push_text(411, "/lang English")
        await botapi.wait_for(lambda: len(botapi.texts(411)) == 2, 20, "the switch")
        assert botapi.texts(411)[1] == EN.LANG_SET
    assert_friendly(botapi, 411)


@pytest.mark.parametrize(
    ("method", "button", "error", "answer"),
    [
        # Our fault: logged for us, an apology without details for the user.
        ("recompose", EN.BTN_BLUR, RuntimeError("the render farm is on fire"), EN.GENERIC_ERROR),
        # The Ray engine bounds a re-render by BOT_REQUEST_TIMEOUT (a replica that never answers).
        ("sticker", EN.BTN_STICKER, RequestTimeoutError("no picture within 120 s"), EN.TIMEOUT),
        # A Ray cluster's back-pressure: the replicas and their queues are full.
        ("recompose", EN.BTN_BLUR, QueueFullError("Serve's queue is full"), EN.BUSY),
    ],
)
async def test_a_failing_re_render_gets_an_answer_without_details(
    botapi: BotApiStub,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    method: str,
    button: str,
    error: Exception,
    answer: str,
) -> None:
    settings = make_settings(tmp_path, botapi)
    engine = boxed_engine(settings)

    async def broken(*args: object) -> bytes:
        raise error

    async with running_bot(settings, engine):
        botapi.push_photo(421, tiny_photo(), (96, 64))
        result = await first_result(botapi, 421)
        setattr(engine, method, broken)
        assert await tap(botapi, 421, result, buttons(result)[button]) == ""
        await botapi.wait_for(lambda: botapi.texts(421), 20, "the answer")
    assert botapi.texts(421) == [answer]
    if answer == EN.GENERIC_ERROR:
        assert str(error) in caplog.text  # logged for us, never shown to the user
    assert_friendly(botapi, 421)


async def test_other_model_counts_against_the_users_pending_limit(botapi: BotApiStub, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, botapi, user_pending_limit=1)
    calls = NetworkCalls(gated=True)
    async with running_bot(settings, boxed_engine(settings, calls)) as application:
        botapi.push_photo(431, tiny_photo(seed=1), (96, 64))
        calls.let_one_through()
        result = await first_result(botapi, 431)
        botapi.push_photo(431, tiny_photo(seed=2), (96, 64))  # held in the network: the user's one slot is taken
        await botapi.wait_for(lambda: calls.count == 2, 20, "the second photo to run")
        assert await tap(botapi, 431, result, buttons(result)[EN.BTN_OTHER_MODEL]) == ""
        await botapi.wait_for(lambda: botapi.texts(431), 20, "the refusal")
        assert botapi.texts(431) == [EN.user_limit(1)]
        calls.let_one_through()
        await botapi.wait_for(lambda: len(botapi.documents(431)) == 2, 20, "the second result")
        pending = application.bot_data["services"].pending
        await botapi.wait_for(lambda: not pending, 20, "the slot to come back")
    assert calls.count == 2  # the refused tap ran no network
    assert_friendly(botapi, 431)


# ---------------------------------------------------------------- delivery failures and other messages


async def test_a_failed_upload_after_a_tap_is_told_in_the_chat(botapi: BotApiStub, tmp_path: Path) -> None:
    """The tap was answered already, so the apology goes to the chat (the error handler's answer would be refused)."""
    settings = make_settings(tmp_path, botapi)
    chat = 901
    async with running_bot(settings, boxed_engine(settings)):
        botapi.push_photo(chat, tiny_photo(), (96, 64))
        result = (await botapi.wait_for(lambda: botapi.documents(chat), 30, "a result"))[0]
        white = next(
            button["callback_data"]
            for row in result.reply_markup["inline_keyboard"]
            for button in row
            if looks.parse_result_data(button["callback_data"]).look == Look(WHITE, False)
        )
        botapi.failing_methods.add("sendDocument")
        botapi.push_callback(chat, white, result.message_id)
        await botapi.wait_for(lambda: texts.GENERIC_ERROR in botapi.texts(chat), 20, "an apology in the chat")


async def test_a_result_that_could_not_be_uploaded_counts_as_an_error(botapi: BotApiStub, tmp_path: Path) -> None:
    """/stats counts a result as delivered only once Telegram took it."""
    botapi.failing_methods.add("sendDocument")
    settings = make_settings(tmp_path, botapi)
    async with running_bot(settings, boxed_engine(settings)) as application:
        botapi.push_photo(902, tiny_photo(), (96, 64))
        await botapi.wait_for(lambda: texts.GENERIC_ERROR in botapi.texts(902), 30, "the apology")
        store = application.bot_data["services"].store
        for _ in range(250):
            if (stats := await store.stats()).total:
                break
            await asyncio.sleep(0.02)
        assert stats.outcomes == {"error": 1}, stats.outcomes


async def test_a_location_a_contact_and_a_dice_are_answered(botapi: BotApiStub, tmp_path: Path) -> None:
    """Messages the bot has no use for get the still-images answer, not silence."""
    settings = make_settings(tmp_path, botapi)
    contents = [
        {"location": {"latitude": 55.75, "longitude": 37.62}},
        {"contact": {"phone_number": "+10000000000", "first_name": "A"}},
        {"dice": {"emoji": "🎲", "value": 3}},
    ]
    async with running_bot(settings, boxed_engine(settings)):
        for chat, content in enumerate(contents, start=921):
            botapi.push_message(chat, **content)
        for chat in range(921, 921 + len(contents)):
            await botapi.wait_for(lambda chat=chat: botapi.texts(chat), 20, f"an answer in chat {chat}")
            assert botapi.texts(chat) == [texts.OTHER_MEDIA]
