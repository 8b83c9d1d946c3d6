"""Unit tests of the bot's parts that need no network: settings, store, document triage, texts, redaction."""

from __future__ import annotations

import io
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from bot import looks, texts
from bot.app import RedactingFilter
from bot.config import Settings, describe_settings_error
from bot.looks import parse_background
from bot.matte_cache import CachedPhoto, MatteCache
from bot.naming import result_filename
from bot.triage import classify_document
from segmentation.decoding import UnsupportedImageError, decode_image
from segmentation.effects import Look


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No BOT_* variables and no .env from the developer's machine."""
    import os

    for key in list(os.environ):
        if key.startswith("BOT_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_settings_from_environment(clean_env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BOT_TOKEN", "1:abc")
    monkeypatch.setenv("BOT_ADMIN_IDS", "1001, 1002,,")
    monkeypatch.setenv("BOT_QUEUE_SIZE", "8")
    monkeypatch.setenv("BOT_API_BASE_URL", "http://127.0.0.1:8081/bot")
    monkeypatch.setenv("BOT_LOG_LEVEL", "debug")
    settings = Settings()
    assert settings.token.get_secret_value() == "1:abc"
    assert "1:abc" not in repr(settings)  # SecretStr
    assert settings.admin_ids == frozenset({1001, 1002})
    assert settings.queue_size == 8
    assert settings.api_base_url == "http://127.0.0.1:8081/bot"
    assert settings.api_base_file_url is None
    assert settings.log_level == "DEBUG"
    assert settings.default_model == "deeplab"
    assert settings.data_dir == Path("data")


def test_settings_from_dotenv_and_single_admin(clean_env: Path) -> None:
    (clean_env / ".env").write_text("BOT_TOKEN=2:xyz\nBOT_ADMIN_IDS=42\nBOT_DEFAULT_MODEL=unet\n")
    settings = Settings()
    assert settings.token.get_secret_value() == "2:xyz"
    assert settings.admin_ids == frozenset({42})
    assert settings.default_model == "unet"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, "BOT_TOKEN is not set"),
        ({"BOT_TOKEN": "  "}, "BOT_TOKEN: BOT_TOKEN is empty"),
        ({"BOT_TOKEN": "1:a", "BOT_ADMIN_IDS": "alice"}, "BOT_ADMIN_IDS: BOT_ADMIN_IDS must be comma-separated"),
        ({"BOT_TOKEN": "1:a", "BOT_DEFAULT_MODEL": "resnet"}, "BOT_DEFAULT_MODEL: unknown model 'resnet'; choose one"),
        ({"BOT_TOKEN": "1:a", "BOT_QUEUE_SIZE": "0"}, "BOT_QUEUE_SIZE: Input should be greater than or equal to 1"),
    ],
)
def test_settings_errors_are_one_clear_line(
    clean_env: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    line = describe_settings_error(caught.value)
    assert expected in line
    assert "\n" not in line


@pytest.mark.parametrize(
    ("name", "mime", "verdict"),
    [
        ("a.jpg", "image/jpeg", None),
        ("a.webp", None, None),
        ("A.HEIC", "application/octet-stream", None),
        (None, None, None),  # nothing to go on: the decoder decides
        ("scan", "image/png", None),
        ("report.pdf", "application/pdf", "a PDF document"),
        ("report", "application/pdf", "a PDF document"),
        ("clip.mov", "video/quicktime", "a video"),
        ("song.mp3", None, "an audio file"),
        ("logo.svg", "image/svg+xml", "a vector drawing (SVG)"),
        ("photos.zip", "application/zip", "an archive"),
        ("notes.txt", "text/plain", "a text document"),
        ("model.stl", "application/sla", "a STL file"),
    ],
)
def test_classify_document(name: str | None, mime: str | None, verdict: str | None) -> None:
    assert classify_document(name, mime) == verdict


def test_result_filename() -> None:
    assert result_filename(None) == "photo_nobg.png"
    assert result_filename("Holiday 2024.JPG") == "Holiday 2024_nobg.png"
    assert result_filename("archive.tar.webp") == "archive.tar_nobg.png"
    assert result_filename("../../etc/passwd.png") == "passwd_nobg.png"
    assert result_filename("C:\\Users\\me\\pic.png") == "pic_nobg.png"
    assert result_filename(".png") == ".png_nobg.png"


def test_texts_read_well() -> None:
    welcome = texts.welcome("unet", ("deeplab", "unet"), 20_000_000)
    assert (
        "unet (current)" in welcome and "deeplab — " in welcome and "20 MB" in welcome and "/model deeplab" in welcome
    )
    assert texts.queued(1) == (
        "You're number 2 in line: 1 photo is ahead of yours. I'll send the result when it's ready."
    )
    assert "(25 MB)" in texts.file_too_big(25_000_000, 20_000_000)
    long_name = "x" * 5000  # "/model xxxx…": echoed whole, the reply would pass Telegram's 4,096 characters
    assert len(texts.model_unknown(long_name, ("deeplab", "unet"))) < 200
    assert "x" * 19 + "…" in texts.model_unknown(long_name, ("deeplab", "unet"))
    assert "“unet2”" in texts.model_unknown("unet2", ("deeplab", "unet"))
    assert texts.result_caption("deeplab", 1.234, True) == "Background removed with deeplab in 1.2 s."


def test_redacting_filter_covers_messages_args_and_tracebacks() -> None:
    token = "123456:SECRET-part-of-the-token"
    redactor = RedactingFilter()
    redactor.add_secret(token)
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "url %s", (f"https://api/bot{token}/getMe",), None)
    assert redactor.filter(record)
    assert record.getMessage() == "url https://api/bot[REDACTED]/getMe"
    try:
        raise RuntimeError(f"failed calling bot{token.replace(':', '%3A')}")
    except RuntimeError:
        import sys

        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "boom", (), sys.exc_info())
    redactor.filter(record)
    assert "SECRET" not in logging.Formatter().format(record)
    # The public bot id alone is not a secret and stays readable.
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "bot id 123456", (), None)
    redactor.filter(record)
    assert record.getMessage() == "bot id 123456"


def test_redaction_covers_loggers_and_handlers_created_after_it_was_installed(tmp_path: Path) -> None:
    from bot.app import install_log_hygiene

    token = "777:SECRET-late-handler-token"
    install_log_hygiene(token)
    late_file = tmp_path / "late.log"
    handler = logging.FileHandler(late_file)
    late_logger = logging.getLogger("a.library.configured.later")
    late_logger.propagate = False  # reaches no handler of the root logger: only its own
    late_logger.addHandler(handler)
    try:
        late_logger.warning("calling https://api.telegram.org/bot%s/getMe", token)
        try:
            raise RuntimeError(f"failed with {token}")
        except RuntimeError:
            late_logger.exception("boom")
    finally:
        late_logger.removeHandler(handler)
        handler.close()
    written = late_file.read_text()
    assert "SECRET-late" not in written
    assert "bot[REDACTED]/getMe" in written and "failed with [REDACTED]" in written


@pytest.mark.parametrize(
    ("name", "mime", "verdict"),
    [
        ("clip.mpg", None, "a video"),  # in Pillow's registry, but not a photo
        ("scan.tif", None, None),
        ("icon.qoi", None, None),
        ("page.PCX", "application/octet-stream", None),
    ],
)
def test_classify_document_with_pillows_extensions(name: str, mime: str | None, verdict: str | None) -> None:
    assert classify_document(name, mime) == verdict


def test_outcomes_are_one_enum_with_labels() -> None:
    from bot.outcomes import SUCCESSES, Outcome, parse_outcome

    assert {outcome for outcome in Outcome if outcome.succeeded} == SUCCESSES == {Outcome.OK, Outcome.NO_PERSON}
    assert all(outcome.label and outcome.label != outcome.value for outcome in Outcome)
    assert parse_outcome("busy") is Outcome.BUSY and parse_outcome("nonsense") is None
    assert f"{Outcome.TIMEOUT}" == "timeout"  # stored and compared as plain text


def test_size_limits_are_telegrams() -> None:
    from telegram.constants import FileSizeLimit

    from bot.config import MAX_DOWNLOAD_BYTES, MAX_UPLOAD_BYTES

    assert (MAX_DOWNLOAD_BYTES, MAX_UPLOAD_BYTES) == (FileSizeLimit.FILESIZE_DOWNLOAD, FileSizeLimit.FILESIZE_UPLOAD)
    assert texts.megabytes(FileSizeLimit.FILESIZE_UPLOAD) == "50 MB"


def test_every_text_exists_in_english_and_russian() -> None:
    assert set(texts.CATALOGUE["en"]) == set(texts.CATALOGUE["ru"])
    for language in texts.LANGUAGES:
        for key, template in texts.CATALOGUE[language].items():
            assert template.strip(), (language, key)
    assert texts.language_of("ru") == "ru" and texts.language_of("ru-RU") == "ru"
    assert texts.language_of("en-GB") == "en" and texts.language_of("uk") == "en" and texts.language_of(None) == "en"
    russian = texts.for_language("ru")
    assert russian.BUSY != texts.BUSY and "очередь" in russian.BUSY
    assert russian.queued(4) == "Вы 5-й в очереди: перед вашим 4 фото. Пришлю результат, как только он будет готов."
    assert "(выбрана)" in russian.welcome("unet", ("deeplab", "unet"), 20_000_000) and "20 МБ" in russian.welcome(
        "unet", ("deeplab", "unet"), 20_000_000
    )
    assert russian.not_an_image("a PDF document").startswith("Похоже, это документ PDF")
    # Both menus describe the same commands; /help names each of them.
    for language in texts.LANGUAGES:
        t = texts.for_language(language)
        welcome = t.welcome("deeplab", ("deeplab", "unet"), 20_000_000)
        for command in texts.COMMANDS:
            assert t.command_description(command)
            if command not in ("start", "help"):
                assert f"/{command}" in welcome, (language, command)


def test_handlers_hold_no_sentences() -> None:
    """Every user-facing sentence comes from the catalogue: no string literal in a reply call of the handlers."""
    import ast

    for module in ("handlers", "redo", "albums", "photos", "keyboards"):
        tree = ast.parse((Path(__file__).resolve().parent.parent / "bot" / f"{module}.py").read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in {
                "reply_text",
                "send_message",
                "edit_text",
                "answer",
                "edit_message_text",
            }:
                for argument in [*node.args, *(keyword.value for keyword in node.keywords)]:
                    assert not (isinstance(argument, ast.Constant) and isinstance(argument.value, str)), (
                        module,
                        ast.unparse(node),
                    )


@pytest.mark.parametrize(
    ("typed", "background"),
    [
        ("white", "white"),
        (" White ", "white"),
        ("#FFFFFF", "white"),
        ("blur", "blur"),
        ("размытие", "blur"),
        ("transparent", "transparent"),
        ("прозрачный", "transparent"),
        ("#00ff00", "#00ff00"),
        ("00FF00", "#00ff00"),
        ("#0f0", "#00ff00"),
        ("navy", "#000080"),
        ("синий", "#0000ff"),
        ("rgb(1, 2, 3)", "#010203"),
        ("#00ff0", None),
        ("rgb(300, 0, 0)", None),
        ("rgb(1000%, 0%, 0%)", None),
        ("hsv(0, 200%, 100%)", None),
        ("#gggggg", None),
        ("plaid", None),
        ("", None),
        ("x" * 500, None),
    ],
)
def test_parse_background(typed: str, background: str | None) -> None:
    assert parse_background(typed) == background


def test_result_button_data_round_trips_and_refuses_forgeries() -> None:
    for look in (Look(), Look("white", True), Look("blur"), Look("#12ab34", True)):
        for verb in (looks.LOOK, looks.OTHER_MODEL, looks.PALETTE_MENU, looks.STICKER):
            data = looks.result_data("0123abcd", verb, look)
            assert len(data.encode()) <= 64
            assert looks.parse_result_data(data) == looks.ResultAction("0123abcd", verb, look)
    for forged in (
        None,
        "",
        "r:0123abcd:x" + "t0",
        "r:0123ABCD:lt0",
        "r:0123abc:lt0",
        "r:0123abcd:lt2",
        "r:0123abcd:lzz0",
        "r:0123abcd:lt0:extra",
        "r:../../etc:lt0",
        "model:deeplab",
        "r:" + "a" * 60,
    ):
        assert looks.parse_result_data(forged) is None, forged
    assert looks.parse_background_data(looks.background_data("#abcdef")) == "#abcdef"
    assert looks.parse_background_data("bg:purple") is None


def cached(chat: int, size: int) -> CachedPhoto:
    return CachedPhoto(chat, b"j" * size, np.zeros((10, 10), np.uint8), "deeplab", "photo_nobg.png", True)


def test_matte_cache_evicts_by_count_bytes_and_age() -> None:
    now = [0.0]
    cache = MatteCache(max_entries=3, max_bytes=1000, max_age_s=60, clock=lambda: now[0])
    first = cache.put(cached(1, 100))  # 100 + 100 bytes of matte
    second = cache.put(cached(1, 100))
    assert cache.nbytes == 400 and len(cache) == 2
    assert cache.get(first).chat_id == 1  # now the most recently used
    third = cache.put(cached(1, 400))  # 500 more: 900 in all
    assert len(cache) == 3
    fourth = cache.put(cached(1, 100))  # over the count: the least recently used (second) goes
    assert second not in cache and first in cache and third in cache and fourth in cache
    big = cache.put(cached(1, 600))  # 700 bytes: first, third go (least recently used first) until it fits
    assert big in cache and fourth in cache and first not in cache and third not in cache
    assert cache.nbytes == 900 and cache.nbytes <= cache.max_bytes
    assert cache.put(cached(1, 5000)) is None  # larger than the whole cache: never kept
    now[0] = 61.0
    assert cache.get(big) is None and len(cache) == 0 and cache.nbytes == 0  # expired
    assert cache.evicted == 5


def _nan_tiff() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((4, 4), np.nan, dtype=np.float32), mode="F").save(buffer, "TIFF")
    return buffer.getvalue()


def _truncated_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "PNG")
    return buffer.getvalue()[:-40]


@pytest.mark.parametrize("data", [b"", b"%PDF-1.4 not a picture", _truncated_png(), _nan_tiff()])
def test_unreadable_reasons_are_translated(data: bytes) -> None:
    with pytest.raises(UnsupportedImageError) as caught:
        decode_image(data)
    reason = str(caught.value)
    russian = texts.for_language("ru").unreadable_image(reason)
    assert reason not in russian, russian
    assert reason in texts.ENGLISH.unreadable_image(reason)
