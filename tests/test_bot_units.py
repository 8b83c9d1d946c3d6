"""Unit tests of the bot's parts that need no network: settings, store, document triage, texts, redaction."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from pydantic import ValidationError

from bot import texts
from bot.app import RedactingFilter
from bot.config import Settings, describe_settings_error
from bot.naming import result_filename
from bot.store import AsyncStore, Store
from bot.triage import classify_document


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


def test_store_settings_and_stats_persist(tmp_path: Path) -> None:
    path = tmp_path / "bot.sqlite3"
    store = Store(path)
    assert store.get_model(1) is None
    store.set_model(1, "unet")
    store.set_model(1, "deeplab")
    store.set_model(2, "unet")
    now = time.time()
    store.record(1, "deeplab", "ok", 0.5, at=now - 10)
    store.record(1, "deeplab", "ok", 1.5, at=now - 5)
    store.record(3, "unet", "no_person", 2.0, at=now - 2 * 86_400)
    store.record(3, "unet", "busy", at=now)
    store.record(4, "deeplab", "not_image", at=now)
    store.close()

    store = Store(path)  # reopened: everything is still there
    assert store.get_model(1) == "deeplab"
    assert store.get_model(2) == "unet"
    stats = store.stats(now=now)
    store.close()
    assert stats.total == 5
    assert stats.last_24h == 4
    assert stats.outcomes == {"ok": 2, "busy": 1, "no_person": 1, "not_image": 1}
    assert (stats.successes, stats.failures) == (3, 2)
    assert stats.models["deeplab"].count == 2
    assert stats.models["deeplab"].p50 == pytest.approx(1.0)
    assert stats.models["deeplab"].p95 == pytest.approx(1.45)
    assert stats.models["unet"].count == 1 and stats.models["unet"].p95 == pytest.approx(2.0)
    assert stats.distinct_chats == 4  # 1, 2 (settings only), 3, 4


async def test_async_store_runs_off_the_loop(tmp_path: Path) -> None:
    store = AsyncStore(tmp_path / "nested")
    await store.open()
    await store.set_model(7, "unet")
    await store.record(7, "unet", "ok", 0.25)
    assert await store.get_model(7) == "unet"
    assert (await store.stats()).total == 1
    await store.close()
    assert (tmp_path / "nested" / "bot.sqlite3").is_file()


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
