"""End-to-end tests: the real Application long-polling a local Bot API stand-in, with the real engine and weights."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from bot_fixtures import (
    ADMIN_ID,
    TOKEN,
    WEIGHTS_DIR,
    big_photo,
    decode_result,
    encode,
    fixture_mask,
    fixture_photo,
    gated_engine,
    make_engine,
    make_settings,
    nobody_engine,
    running_bot,
    seconds_to_stop,
    small_photo,
    start_bot,
    weights_available,
)
from botapi_stub import BotApiStub
from PIL import Image
from telegram.constants import FileSizeLimit
from telegram.ext import Application

from bot import texts
from segmentation.engine import QueueFullError, Reservation

REPO = Path(__file__).resolve().parent.parent
SECRET_PART = TOKEN.partition(":")[2]

WEIGHTS_SHOWN = WEIGHTS_DIR or "segmentation/weights"
# In CI (CI=true) nothing skips: missing shipped weights must fail the run, not hide these tests.
IN_CI = bool(os.environ.get("CI"))
needs_deeplab = pytest.mark.skipif(
    not weights_available("deeplab") and not IN_CI, reason=f"no deeplab weights in {WEIGHTS_SHOWN} yet"
)
needs_unet = pytest.mark.skipif(
    not weights_available("unet") and not IN_CI,
    reason=f"no unet weights in {WEIGHTS_SHOWN} yet (the UNet trains longest)",
)


# Every test here checks that no log record carries the bot token (the fixture is in conftest.py).
pytestmark = pytest.mark.usefixtures("token_never_logged")


def assert_friendly(stub: BotApiStub, *chats: int) -> None:
    """No user ever sees a stack trace or an exception name."""
    for chat in chats:
        for message in stub.transcript(chat, include_deleted=True):
            shown = " ".join(filter(None, [message.text, message.caption, *message.edits]))
            assert "Traceback" not in shown and "Error" not in shown, shown


def final_texts(stub: BotApiStub, chat: int) -> list[str]:
    """The visible texts of a chat, without place-in-line messages (those are edited or deleted later)."""
    return [text for text in stub.texts(chat) if not text.startswith("You're number")]


def answered(stub: BotApiStub, chat: int, count: int) -> bool:
    """Whether a chat has `count` final answers (documents plus final texts)."""
    return len(stub.documents(chat)) + len(final_texts(stub, chat)) >= count


async def wait_recorded(application: Application, count: int, timeout: float = 10.0) -> None:
    """Wait until the store holds `count` requests."""
    store = application.bot_data["services"].store
    deadline = time.monotonic() + timeout
    while (await store.stats()).total < count:
        assert time.monotonic() < deadline, f"fewer than {count} requests recorded"
        await asyncio.sleep(0.02)


def alpha_of(data: bytes, size: tuple[int, int]) -> np.ndarray:
    """The alpha channel of a result, after checking it is an RGBA PNG of the expected size."""
    image = decode_result(data)
    assert image.mode == "RGBA"
    assert image.size == size
    return np.array(image)[..., 3]


def person_centre(mask: np.ndarray) -> tuple[int, int]:
    """The (x, y) of the mask point farthest from its edge: the middle of the torso."""
    inside = mask.copy()
    while True:
        eroded = (
            inside & np.roll(inside, 1, 0) & np.roll(inside, -1, 0) & np.roll(inside, 1, 1) & np.roll(inside, -1, 1)
        )
        if not eroded.any():
            break
        inside = eroded
    ys, xs = np.nonzero(inside)
    return int(np.median(xs)), int(np.median(ys))


def assert_separates(alpha: np.ndarray, mask: np.ndarray) -> None:
    """The person is opaque at its centre and clearly more opaque than the background on the whole."""
    x, y = person_centre(mask)
    assert alpha[y - 2 : y + 3, x - 2 : x + 3].mean() >= 160, (x, y, alpha[y - 2 : y + 3, x - 2 : x + 3])
    assert alpha[mask].mean() - alpha[~mask].mean() >= 100, (alpha[mask].mean(), alpha[~mask].mean())


def assert_cut_out(alpha: np.ndarray, mask: np.ndarray) -> None:
    """A transparent background (corners ~0, little alpha off the person) around an opaque person."""
    for corner in (alpha[0, 0], alpha[0, -1], alpha[-1, 0], alpha[-1, -1]):
        assert corner <= 25, corner
    assert_separates(alpha, mask)
    assert alpha[mask].mean() >= 150
    assert alpha[~mask].mean() <= 40


@needs_deeplab
async def test_photo_comes_back_as_transparent_png(botapi: BotApiStub, tmp_path: Path) -> None:
    photo = fixture_photo()
    thumbnail = photo.resize((59, 90))
    async with running_bot(make_settings(tmp_path, botapi)):
        original = botapi.push_photo(
            11, encode(photo, quality=92), photo.size, thumbnails=[(encode(thumbnail), thumbnail.size)]
        )
        (result,) = await botapi.wait_for(lambda: botapi.documents(11), 60, "the result document")

    assert result.document.filename == "photo_nobg.png"
    assert "deeplab" in result.caption and " s." in result.caption
    assert texts.NO_PERSON_NOTE not in result.caption
    assert_cut_out(alpha_of(result.document.data, photo.size), fixture_mask())
    # The largest size was downloaded (never the thumbnail), and the chat showed "sending a file" meanwhile.
    (get_file,) = botapi.calls_of("getFile")
    assert get_file.params["file_id"] == original
    actions = [call for call in botapi.calls_of("sendChatAction") if call.params["chat_id"] == "11"]
    assert actions and all(call.params["action"] == "upload_document" for call in actions)
    assert actions[0].at < botapi.calls_of("sendDocument")[0].at
    assert botapi.texts(11) == []  # nobody was ahead: no place-in-line message
    assert_friendly(botapi, 11)


@needs_deeplab
async def test_image_documents_come_back_as_png_documents(botapi: BotApiStub, tmp_path: Path) -> None:
    photo = fixture_photo()
    other = (Path(__file__).parent / "fixtures" / "bot_person_0021.webp").read_bytes()
    async with running_bot(make_settings(tmp_path, botapi)):
        botapi.push_document(21, encode(photo, "WEBP", quality=90), "Portrait of Ana.webp", "image/webp")
        botapi.push_document(22, encode(photo, "PNG"), "street.PNG", None)  # no mime type: the extension decides
        botapi.push_document(23, other, "IMG_0021.webp", "image/webp")
        await botapi.wait_for(lambda: all(botapi.documents(chat) for chat in (21, 22, 23)), 90, "three results")

    (webp,) = botapi.documents(21)
    assert webp.document.filename == "Portrait of Ana_nobg.png"
    assert_cut_out(alpha_of(webp.document.data, photo.size), fixture_mask())
    (png,) = botapi.documents(22)
    assert png.document.filename == "street_nobg.png"
    assert_cut_out(alpha_of(png.document.data, photo.size), fixture_mask())
    # A second person and background, from the validation split: judged on separation, not on spotless corners.
    (second,) = botapi.documents(23)
    assert second.document.filename == "IMG_0021_nobg.png"
    assert_separates(alpha_of(second.document.data, (200, 300)), fixture_mask("bot_person_0021_mask.png"))
    assert_friendly(botapi, 21, 22, 23)


async def test_model_choice_is_per_chat_and_survives_restart(botapi: BotApiStub, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, botapi)
    async with running_bot(settings):
        botapi.push_text(31, "/model")
        (menu,) = await botapi.wait_for(lambda: botapi.transcript(31), 20, "/model answer")
        assert menu.text == texts.model_current("deeplab")
        buttons = [button["callback_data"] for button in menu.reply_markup["inline_keyboard"][0]]
        assert buttons == ["model:deeplab", "model:unet"]

        botapi.push_callback(31, "model:unet", menu.message_id)
        await botapi.wait_for(lambda: botapi.calls_of("answerCallbackQuery"), 20, "the callback answer")
        await botapi.wait_for(lambda: menu.text == texts.model_current("unet"), 20, "the menu to update")
        labels = [button["text"] for button in menu.reply_markup["inline_keyboard"][0]]
        assert labels == ["deeplab", "✓ unet"]

        botapi.push_text(32, "/model unet")
        botapi.push_text(33, "/model resnet")
        await botapi.wait_for(lambda: botapi.texts(32) and botapi.texts(33), 20, "two answers")
        assert botapi.texts(32) == [texts.model_switched("unet")]
        assert botapi.texts(33) == [texts.model_unknown("resnet", ("deeplab", "unet"))]

    # A new Application on the same data dir: the choices are still there, and other chats kept the default.
    async with running_bot(settings):
        for chat in (31, 32, 33):
            botapi.push_text(chat, "/help")
        await botapi.wait_for(lambda: all(len(botapi.texts(chat)) == 2 for chat in (32, 33)), 20, "/help answers")
        await botapi.wait_for(lambda: len(botapi.texts(31)) == 2, 20, "/help answer")
        assert "unet (current)" in botapi.texts(31)[-1]
        assert "unet (current)" in botapi.texts(32)[-1]
        assert "deeplab (current)" in botapi.texts(33)[-1]
        assert "as a file" in botapi.texts(33)[-1]


@needs_deeplab
@needs_unet
async def test_model_switch_changes_the_next_result(botapi: BotApiStub, tmp_path: Path) -> None:
    async with running_bot(make_settings(tmp_path, botapi)):
        botapi.push_text(41, "/model unet")
        await botapi.wait_for(lambda: botapi.texts(41), 20, "the switch")
        botapi.push_photo(41, small_photo(), (196, 300))
        (result,) = await botapi.wait_for(lambda: botapi.documents(41), 60, "the unet result")
        assert "unet" in result.caption and "deeplab" not in result.caption
        # The UNet is the smaller-budget model: held to separating the person, not to spotless corners.
        assert_separates(alpha_of(result.document.data, (196, 300)), fixture_mask())


async def test_bad_inputs_get_specific_answers_and_stats(botapi: BotApiStub, tmp_path: Path) -> None:
    photo = encode(fixture_photo())
    big_canvas = encode(Image.new("RGB", (1250, 1000), (200, 180, 160)), "PNG")
    cases = {
        51: lambda: botapi.push_document(51, b"%PDF-1.7 not an image", "report.pdf", "application/pdf"),
        52: lambda: botapi.push_document(52, b"\x00\x00\x00\x18ftypmp42", "clip.mp4", "video/mp4"),
        53: lambda: botapi.push_document(53, b"this is not a jpeg at all" * 20, "photo.jpg", "image/jpeg"),
        54: lambda: botapi.push_document(54, photo[: len(photo) * 2 // 3], "cut.jpg", "image/jpeg"),
        55: lambda: botapi.push_document(55, big_canvas, "huge.png", "image/png"),
        56: lambda: botapi.push_document(56, b"\xff\xd8\xff", "raw.jpg", "image/jpeg", file_size=25 * 1024 * 1024),
        57: lambda: botapi.push_photo(57, b"\xff\xd8\xff", (4000, 3000), file_size=21 * 1024 * 1024),
        58: lambda: botapi.push_text(58, "hello there"),
        59: lambda: botapi.push_video(59),
        60: lambda: botapi.push_text(60, "/frobnicate"),
    }
    settings = make_settings(tmp_path, botapi, max_pixels=1_000_000)
    async with running_bot(settings) as application:
        for push in cases.values():
            push()
        await botapi.wait_for(lambda: all(answered(botapi, chat, 1) for chat in cases), 60, "an answer in every chat")

        answer = {chat: botapi.texts(chat) for chat in cases}
        assert answer[51] == [texts.not_an_image("a PDF document")]
        assert answer[52] == [texts.not_an_image("a video")]
        # The reason comes from the decoder; the bot wraps it in its own sentence.
        assert len(answer[53]) == 1 and answer[53][0].startswith("I couldn't read that image: ")
        assert "not an image" in answer[53][0]
        assert len(answer[54]) == 1 and answer[54][0].startswith("I couldn't read that image: ")
        assert "truncated" in answer[54][0]
        assert answer[55] == [texts.too_many_pixels(1_250_000, 1_000_000)]
        assert answer[56] == [texts.file_too_big(25 * 1024 * 1024, FileSizeLimit.FILESIZE_DOWNLOAD)]
        assert answer[57] == [texts.file_too_big(21 * 1024 * 1024, FileSizeLimit.FILESIZE_DOWNLOAD)]
        assert "(26 MB)" in answer[56][0] and "up to 20 MB" in answer[56][0]
        assert answer[58] == [texts.TEXT_HINT]
        assert answer[59] == [texts.OTHER_MEDIA]
        assert answer[60] == [texts.UNKNOWN_COMMAND]
        assert "1.2 megapixels" in answer[55][0] and "1 megapixels" in answer[55][0]
        # Refused before any download: PDFs, videos and over-limit files never reach getFile.
        fetched = {call.params["file_id"] for call in botapi.calls_of("getFile")}
        assert len(fetched) == 3  # 53, 54, 55
        assert not any(document.document for chat in cases for document in botapi.transcript(chat))
        assert_friendly(botapi, *cases)

        # /stats: a stranger learns nothing; the admin sees the failures by kind.
        await wait_recorded(application, 7)
        botapi.push_text(61, "/stats", user_id=999)
        botapi.push_text(ADMIN_ID, "/stats", user_id=ADMIN_ID)
        await botapi.wait_for(lambda: botapi.texts(61) and botapi.texts(ADMIN_ID), 20, "/stats answers")
        assert botapi.texts(61) == [texts.STATS_REFUSED]
        report = botapi.texts(ADMIN_ID)[0]
        assert "Requests: 7 total, 7 in the last 24 hours" in report
        assert "Succeeded: 0" in report
        for label in ("not an image 2", "unreadable image 2", "too many pixels 1", "file over the download limit 2"):
            assert label in report, report
        assert "Now: 0 waiting, 0 in progress" in report
        assert "Distinct chats: 7" in report
        assert "Uptime:" in report

    # Statistics survive a restart.
    async with running_bot(settings):
        botapi.push_text(ADMIN_ID, "/stats", user_id=ADMIN_ID)
        await botapi.wait_for(lambda: len(botapi.texts(ADMIN_ID)) == 2, 20, "/stats after restart")
        assert "Requests: 7 total" in botapi.texts(ADMIN_ID)[1]


async def test_no_person_still_gets_a_result_with_a_note(botapi: BotApiStub, tmp_path: Path) -> None:
    # A real engine, decoder and encoder, but a network that finds nobody: the shipped weights, trained only on
    # photos with people, see "someone" in many plain images, so they cannot make this case deterministic.
    settings = make_settings(tmp_path, botapi)
    async with running_bot(settings, nobody_engine(settings)) as application:
        botapi.push_document(71, encode(Image.new("RGB", (240, 320), (90, 140, 210)), "PNG"), "sky.png", "image/png")
        (result,) = await botapi.wait_for(lambda: botapi.documents(71), 60, "the result")
        assert texts.NO_PERSON_NOTE in result.caption
        assert result.document.filename == "sky_nobg.png"
        assert alpha_of(result.document.data, (240, 320)).max() == 0
        await wait_recorded(application, 1)  # the request is recorded just after its reply went out
        botapi.push_text(ADMIN_ID, "/stats", user_id=ADMIN_ID)
        (report,) = await botapi.wait_for(lambda: botapi.texts(ADMIN_ID), 20, "/stats")
        assert "Succeeded: 1 (no person found 1)" in report
        assert "deeplab: 1 done, p50 " in report
        assert application.bot_data["services"].engine.stats()["completed"] == 1


async def test_a_result_over_the_upload_limit_gets_its_own_answer(botapi: BotApiStub, tmp_path: Path) -> None:
    # A 50 MB PNG takes a huge photo to make; lowering the limit exercises the same path with a small one.
    settings = make_settings(tmp_path, botapi, max_upload_bytes=100)
    async with running_bot(settings, nobody_engine(settings)):
        botapi.push_document(72, encode(Image.new("RGB", (240, 320), (90, 140, 210)), "PNG"), "sky.png", "image/png")
        (reply,) = await botapi.wait_for(lambda: botapi.texts(72), 60, "the too-big answer")
        assert reply.startswith("The result is ") and reply.endswith("Please send a smaller photo.")
        assert not botapi.documents(72)


async def test_a_full_cluster_after_the_place_was_taken_is_answered_as_busy(
    botapi: BotApiStub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Ray client admits up to its own bound, then Serve may refuse at submit time (fewer replicas up than
    # the bound counts on): the user hears "busy", and /stats counts it so, not as our error.
    async def cluster_full(self: Reservation, data: bytes, **options: object) -> None:
        raise QueueFullError("the cluster is full: every replica is busy and its queue is full")

    monkeypatch.setattr(Reservation, "submit", cluster_full)
    settings = make_settings(tmp_path, botapi)
    async with running_bot(settings, nobody_engine(settings)) as application:
        botapi.push_photo(73, small_photo(), (196, 300))
        await botapi.wait_for(lambda: answered(botapi, 73, 1), 30, "the answer")
        assert final_texts(botapi, 73) == [texts.BUSY]
        await wait_recorded(application, 1)
        botapi.push_text(ADMIN_ID, "/stats", user_id=ADMIN_ID)
        (report,) = await botapi.wait_for(lambda: botapi.texts(ADMIN_ID), 20, "/stats")
    assert "queue full 1" in report, report
    assert_friendly(botapi, 73)


@needs_deeplab
async def test_burst_beyond_the_queue_every_photo_answered(botapi: BotApiStub, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, botapi, queue_size=2, user_pending_limit=10)
    engine = make_engine(settings)
    chats = (81, 82, 83)
    async with running_bot(settings, engine):
        # One big photo first keeps the only worker busy, so the burst below must overflow the queue of 2.
        botapi.push_photo(80, big_photo(), (1800, 2700))
        await botapi.wait_for(lambda: engine.in_flight == 1, 30, "the big photo to start")
        for round_ in range(3):
            for chat in chats:
                botapi.push_photo(chat, small_photo(chat * 10 + round_), (196, 300))
        await botapi.wait_for(
            lambda: answered(botapi, 80, 1) and all(answered(botapi, chat, 3) for chat in chats),
            90,
            "an answer to each of the 10 photos",
        )
    results = sum(len(botapi.documents(chat)) for chat in (80, *chats))
    busy = [text for chat in chats for text in final_texts(botapi, chat)]
    assert results + len(busy) == 10  # nothing silently lost, nothing answered twice
    assert busy and set(busy) == {texts.BUSY}
    assert results >= 1 + settings.queue_size
    # Those who had to wait were told their place in line, and that message went away with the result.
    waited = [
        m for chat in chats for m in botapi.transcript(chat, include_deleted=True) if m.text and "in line" in m.text
    ]
    assert waited and all(message.deleted for message in waited)
    assert_friendly(botapi, 80, *chats)


@needs_deeplab
async def test_per_user_pending_limit(botapi: BotApiStub, tmp_path: Path) -> None:
    async with running_bot(make_settings(tmp_path, botapi, user_pending_limit=2)):
        for seed in range(4):
            botapi.push_photo(91, small_photo(seed), (196, 300))
        await botapi.wait_for(lambda: answered(botapi, 91, 4), 60, "four answers")
        await asyncio.sleep(0.2)  # any stray extra message would show up now
    assert len(botapi.documents(91)) == 2
    assert botapi.texts(91) == [texts.user_limit(2)] * 2


@needs_deeplab
async def test_a_photo_over_the_time_limit_gets_the_timeout_answer(botapi: BotApiStub, tmp_path: Path) -> None:
    async with running_bot(make_settings(tmp_path, botapi, request_timeout=0.3)):
        botapi.push_photo(95, big_photo(), (1800, 2700))  # about a second of work, even with the model loaded
        await botapi.wait_for(lambda: answered(botapi, 95, 1), 30, "the answer")
    assert botapi.texts(95) == [texts.TIMEOUT]
    assert botapi.documents(95) == []


# No network runs here (the in-flight photo is held, the queued ones are answered), so no weights are needed.
async def test_shutdown_in_the_middle_of_work(botapi: BotApiStub, tmp_path: Path) -> None:
    # A bound of 1 s leaves a quarter of it for the three "restarting" replies (at 0.2 s, 0.05 s was too
    # little on a busy machine: the in-flight photo's handler was cancelled before its reply went out).
    settings = make_settings(tmp_path, botapi, shutdown_timeout=1.0)
    engine = make_engine(settings)
    # Hold the big photo in its worker thread until the bot has stopped, so that it is still in the middle
    # of its work at the bound however fast this machine runs the network.
    release = threading.Event()

    def held_run(job: object) -> None:
        release.wait(30)
        raise RuntimeError("released after the bot stopped")

    engine._run = held_run
    application = await start_bot(settings, engine)
    try:
        botapi.push_photo(101, big_photo(), (1800, 2700))
        await botapi.wait_for(lambda: engine.in_flight == 1, 30, "the big photo to start")
        botapi.push_photo(102, small_photo(1), (196, 300))
        botapi.push_photo(103, small_photo(2), (196, 300))
        await botapi.wait_for(lambda: engine.queue_depth == 2, 30, "two photos to queue")
    finally:
        stopping = await seconds_to_stop(application, release)
    # Stopping is bounded by the shutdown timeout (plus the last long-poll and the replies), not by the work.
    assert stopping < 5, stopping
    for chat in (101, 102, 103):
        assert answered(botapi, chat, 1), chat
    assert botapi.texts(101) == [texts.RESTARTING]
    assert botapi.documents(101) == []
    assert botapi.texts(102) == [texts.RESTARTING]
    assert botapi.texts(103) == [texts.RESTARTING]
    assert_friendly(botapi, 101, 102, 103)


async def test_an_unexpected_error_is_logged_and_apologised_for(
    botapi: BotApiStub, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async with running_bot(make_settings(tmp_path, botapi)) as application:

        async def broken(chat_id: int) -> str:
            raise RuntimeError("the disk is on fire")

        application.bot_data["services"].store.get_model = broken
        botapi.push_text(112, "/help")
        await botapi.wait_for(lambda: botapi.texts(112), 20, "an apology")
    assert botapi.texts(112) == [texts.GENERIC_ERROR]
    (logged,) = [record for record in caplog.records if record.getMessage().startswith("unhandled error")]
    assert "the disk is on fire" in logged.exc_text


async def test_token_is_redacted_even_from_chatty_loggers(botapi: BotApiStub, tmp_path: Path, caplog) -> None:
    async with running_bot(make_settings(tmp_path, botapi)):
        assert logging.getLogger("httpx").level == logging.WARNING
        # Turn httpx back up: it logs every request URL, which contains the token. The filter must catch it.
        caplog.set_level(logging.DEBUG, logger="httpx")
        botapi.push_text(111, "/start")
        await botapi.wait_for(lambda: botapi.texts(111), 20, "/start answer")
        logging.getLogger("bot.test").error("oops with %s", TOKEN)
    httpx_lines = [record.getMessage() for record in caplog.records if record.name == "httpx"]
    assert httpx_lines and all("[REDACTED]" in line for line in httpx_lines if "/bot" in line)
    assert "oops with [REDACTED]" in caplog.text


def refused_start(env: dict[str, str], tmp_path: Path) -> str:
    """Run `python -m bot` in env, expect the configuration-error exit (2), and return its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "bot"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 2, done.stderr[-2000:]
    return done.stderr


def test_missing_token_is_a_one_line_error(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("BOT_")}
    env["PYTHONPATH"] = str(REPO)
    stderr = refused_start(env, tmp_path)
    assert stderr.strip().count("\n") == 0, stderr
    assert "BOT_TOKEN is not set" in stderr and "Traceback" not in stderr


def bot_process_env(botapi: BotApiStub, tmp_path: Path, token: str, **extra: str) -> dict[str, str]:
    """The environment of a `python -m bot` child: no inherited BOT_* settings, pointed at the stand-in."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("BOT_")}
    env.update(
        PYTHONPATH=str(REPO),
        BOT_TOKEN=token,
        BOT_API_BASE_URL=botapi.base_url,
        BOT_API_BASE_FILE_URL=botapi.base_file_url,
        BOT_DATA_DIR=str(tmp_path / "data"),
        **extra,
    )
    return env


def test_python_m_bot_polls_and_stops_on_sigterm(botapi: BotApiStub, tmp_path: Path) -> None:
    env = bot_process_env(botapi, tmp_path, TOKEN, BOT_LOG_LEVEL="DEBUG")
    process = subprocess.Popen(
        [sys.executable, "-m", "bot"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        botapi.push_text(121, "/start")
        deadline = time.monotonic() + 90
        while not botapi.texts(121) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert botapi.texts(121), "no answer to /start"
        assert botapi.calls_of("setMyCommands")
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr[-2000:]
    assert "Application is stopping" in stderr and "inference engine closed" in stderr
    assert SECRET_PART not in stderr
    assert (tmp_path / "data" / "bot.sqlite3").is_file()


def test_a_bf16_setting_that_is_not_a_switch_stops_the_start(botapi: BotApiStub, tmp_path: Path) -> None:
    stderr = refused_start(bot_process_env(botapi, tmp_path, TOKEN, SEGMENTATION_BF16="fast"), tmp_path)
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.endswith("cannot start: SEGMENTATION_BF16 must be 0 or 1 (or unset to follow the CPU), not 'fast'")
    assert "Traceback" not in stderr
    assert not botapi.calls_of("getUpdates")  # it stopped before reaching Telegram


def test_a_rejected_token_exits_2_without_leaking_it(botapi: BotApiStub, tmp_path: Path) -> None:
    wrong = "4242:AAH-a-WRONG-token-0000000000"
    stderr = refused_start(bot_process_env(botapi, tmp_path, wrong), tmp_path)
    last_line = stderr.strip().splitlines()[-1]
    assert last_line.endswith(
        "ERROR bgremover-bot: cannot start: Telegram rejected BOT_TOKEN (check it with @BotFather)"
    )
    # python-telegram-bot's own error message quotes the token; the logging filter must have caught it.
    assert wrong.partition(":")[2] not in stderr
    assert "[REDACTED]" in stderr


def file_ids_fetched(stub: BotApiStub) -> set[str]:
    """The file_ids the bot asked getFile for (a download always starts with getFile)."""
    return {call.params["file_id"] for call in stub.calls_of("getFile")}


async def test_a_full_queue_answers_busy_before_any_download(botapi: BotApiStub, tmp_path: Path) -> None:
    settings = make_settings(tmp_path, botapi, queue_size=1, user_pending_limit=5)
    gate = threading.Event()
    engine = gated_engine(settings, gate)
    photo = encode(Image.new("RGB", (120, 90), (90, 140, 210)))
    try:
        async with running_bot(settings, engine) as application:
            running = botapi.push_photo(201, photo, (120, 90))
            await botapi.wait_for(lambda: engine.in_flight == 1, 30, "the first photo to run")
            waiting = botapi.push_photo(202, photo, (120, 90))
            await botapi.wait_for(lambda: engine.queue_depth == 1, 30, "the second photo to queue")
            refused = botapi.push_photo(203, photo, (120, 90))
            await botapi.wait_for(lambda: botapi.texts(203), 30, "the busy answer")

            assert botapi.texts(203) == [texts.BUSY]
            assert file_ids_fetched(botapi) == {running, waiting}  # the refused photo was never downloaded
            assert refused not in {call.params["file_path"].split("/")[0] for call in botapi.calls_of("download")}
            assert botapi.texts(202) == [texts.queued(1)]  # admitted, so promised a place

            gate.set()
            await botapi.wait_for(lambda: botapi.documents(201) and botapi.documents(202), 30, "both results")
            await wait_recorded(application, 3)
            svc = application.bot_data["services"]
            assert not svc.pending and engine.reserved == 0 and engine.queue_depth == 0
    finally:
        gate.set()
    # The place-in-line message went away with the result; the refused chat never saw one.
    assert botapi.texts(202) == []
    assert all("in line" not in (m.text or "") for m in botapi.transcript(203, include_deleted=True))
    assert_friendly(botapi, 201, 202, 203)


async def test_the_users_slot_and_the_queue_place_come_back_on_every_path(botapi: BotApiStub, tmp_path: Path) -> None:
    # One photo per user at a time: each answer below could only come if the previous photo gave its slot back.
    settings = make_settings(tmp_path, botapi, user_pending_limit=1, max_pixels=1_000_000)
    user, chat = 211, 211
    big_canvas = encode(Image.new("RGB", (1250, 1000), (200, 180, 160)), "PNG")
    sky = encode(Image.new("RGB", (240, 320), (90, 140, 210)), "PNG")
    async with running_bot(settings, nobody_engine(settings)) as application:
        engine = application.bot_data["services"].engine

        async def send(push, expected_answers: int) -> None:
            push()
            await botapi.wait_for(lambda: answered(botapi, chat, expected_answers), 30, f"answer {expected_answers}")

        # Telegram states the photo's size: refused before a place is taken or anything is downloaded.
        await send(lambda: botapi.push_photo(chat, b"\xff\xd8\xff", (4000, 3000), user_id=user), 1)
        assert not botapi.calls_of("getFile")
        # Refused from the header alone, after the download and before the line.
        await send(lambda: botapi.push_document(chat, big_canvas, "huge.png", "image/png", user_id=user), 2)
        await send(lambda: botapi.push_document(chat, b"GIF89a" + b"\x00" * 5, "x.gif", "image/gif", user_id=user), 3)
        botapi.file_server_down = True
        await send(lambda: botapi.push_document(chat, sky, "sky.png", "image/png", user_id=user), 4)
        botapi.file_server_down = False
        await send(lambda: botapi.push_document(chat, sky, "sky.png", "image/png", user_id=user), 5)
        await wait_recorded(application, 5)
        assert not application.bot_data["services"].pending
        assert (engine.reserved, engine.queue_depth, engine.in_flight) == (0, 0, 0)
        assert engine.stats()["completed"] + engine.stats()["failed"] == 1  # only the good file reached a worker

    answers = botapi.texts(chat)
    assert answers[0] == texts.too_many_pixels(12_000_000, 1_000_000)
    assert answers[1] == texts.too_many_pixels(1_250_000, 1_000_000)
    assert answers[2].startswith("I couldn't read that image: ")
    assert answers[3] == texts.DOWNLOAD_FAILED
    assert len(answers) == 4 and len(botapi.documents(chat)) == 1
    assert texts.user_limit(1) not in answers
    assert_friendly(botapi, chat)


async def test_stats_only_for_admins_and_only_in_a_private_chat(botapi: BotApiStub, tmp_path: Path) -> None:
    group = -5001
    async with running_bot(make_settings(tmp_path, botapi)):
        botapi.push_text(group, "/stats", user_id=ADMIN_ID)
        botapi.push_text(group - 1, "/stats", user_id=999)
        await botapi.wait_for(lambda: botapi.texts(group) and botapi.texts(group - 1), 20, "both group answers")
        botapi.push_text(ADMIN_ID, "/stats", user_id=ADMIN_ID)
        await botapi.wait_for(lambda: botapi.texts(ADMIN_ID), 20, "the private answer")
    assert botapi.texts(group) == [texts.STATS_PRIVATE_ONLY]  # no figures where the group can read them
    assert botapi.texts(group - 1) == [texts.STATS_REFUSED]
    assert botapi.texts(ADMIN_ID)[0].startswith("Bot statistics")


async def test_a_failed_button_press_is_still_answered(botapi: BotApiStub, tmp_path: Path) -> None:
    async with running_bot(make_settings(tmp_path, botapi)) as application:
        botapi.push_text(221, "/model")
        (menu,) = await botapi.wait_for(lambda: botapi.transcript(221), 20, "/model answer")

        async def broken(chat_id: int, model: str) -> None:
            raise RuntimeError("the disk is full")

        application.bot_data["services"].store.set_model = broken
        botapi.push_callback(221, "model:unet", menu.message_id)
        (answer,) = await botapi.wait_for(lambda: botapi.calls_of("answerCallbackQuery"), 20, "the callback answer")
    assert answer.params["text"] == texts.GENERIC_ERROR  # the spinner stops, with an apology instead of the switch
    assert menu.text == texts.model_current("deeplab")


@needs_deeplab
def test_sigterm_in_the_middle_of_a_burst_answers_every_photo(botapi: BotApiStub, tmp_path: Path) -> None:
    shutdown_timeout = 2.0
    env = bot_process_env(
        botapi, tmp_path, TOKEN, BOT_QUEUE_SIZE="3", BOT_SHUTDOWN_TIMEOUT=str(shutdown_timeout), BOT_LOG_LEVEL="INFO"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "bot"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    chats = range(301, 309)
    try:
        botapi.push_text(300, "/start")  # ready once it answers
        deadline = time.monotonic() + 90
        while not botapi.texts(300) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.1)
        assert botapi.texts(300), "the bot never started"
        photo = big_photo(1200, 1800)
        for chat in chats:  # one running, three waiting, the rest busy
            botapi.push_photo(chat, photo, (1200, 1800))
        deadline = time.monotonic() + 60
        while not any(botapi.texts(chat) for chat in chats) and time.monotonic() < deadline:
            time.sleep(0.02)  # until the burst has been triaged: someone is in line or refused
        process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        _, stderr = process.communicate(timeout=60)
        exited_after = time.monotonic() - signalled
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, stderr[-3000:]
    # Bounded by BOT_SHUTDOWN_TIMEOUT, plus the last long poll and the interpreter's exit (generous: a busy machine).
    assert exited_after < shutdown_timeout + 15, exited_after
    finals = {chat: final_texts(botapi, chat) for chat in chats}
    for chat in chats:
        assert len(botapi.documents(chat)) + len(finals[chat]) == 1, (chat, finals[chat])
        assert all(text in (texts.BUSY, texts.RESTARTING) for text in finals[chat]), finals[chat]
    accepted = [chat for chat in chats if texts.BUSY not in finals[chat]]
    assert len(accepted) >= 2  # the work that was under way was answered, with a result or "restarting"
    assert "inference engine closed" in stderr and "Traceback" not in stderr
    assert SECRET_PART not in stderr
