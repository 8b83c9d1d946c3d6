"""The bot's settings: the one place in the project that reads environment variables (prefix ``BOT_``, or ``.env``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from telegram.constants import FileSizeLimit

from segmentation import MODEL_NAMES  # torch-free: the names only

# decoding is Pillow and numpy only: importing it here keeps a missing-token error instant (no torch yet).
from segmentation.decoding import DEFAULT_MAX_PIXELS

# What the Bot API lets a bot download and upload (a local Bot API server lifts both; we keep the safe values).
MAX_DOWNLOAD_BYTES = int(FileSizeLimit.FILESIZE_DOWNLOAD)
MAX_UPLOAD_BYTES = int(FileSizeLimit.FILESIZE_UPLOAD)


class Settings(BaseSettings):
    """Everything the bot can be configured with; values come from ``BOT_*`` variables or a ``.env`` file."""

    model_config = SettingsConfigDict(env_prefix="BOT_", env_file=".env", env_file_encoding="utf-8", extra="ignore")

    token: SecretStr  # BOT_TOKEN, from @BotFather; required
    # BOT_ADMIN_IDS="1001,1002": who may see /stats. NoDecode: pydantic-settings would otherwise try to
    # JSON-decode the value and fail before our validator runs.
    admin_ids: Annotated[frozenset[int], NoDecode] = frozenset()
    default_model: str = "deeplab"  # for chats that never chose one
    data_dir: Path = Path("data")  # the SQLite store: chat settings and request statistics
    queue_size: int = Field(default=32, ge=1)  # photos waiting for a worker; more get "busy, try again"
    workers: int = Field(default=1, ge=1)  # inference threads (the cores are split between them)
    user_pending_limit: int = Field(default=3, ge=1)  # photos one user may have in progress at once
    max_pixels: int = Field(default=DEFAULT_MAX_PIXELS, ge=1)  # larger images are refused before decoding
    request_timeout: float = Field(default=120.0, gt=0)  # seconds one photo may take, queue included
    shutdown_timeout: float = Field(default=20.0, ge=0)  # seconds accepted work gets to finish on SIGTERM
    # python-telegram-bot's base_url / base_file_url (the token is appended), e.g. for a local Bot API server:
    # http://127.0.0.1:8081/bot and http://127.0.0.1:8081/file/bot
    api_base_url: str | None = None
    api_base_file_url: str | None = None
    log_level: str = "INFO"
    # What the Bot API lets a bot download; raise it only behind a local Bot API server, which has no such limit.
    max_download_bytes: int = Field(default=MAX_DOWNLOAD_BYTES, ge=1)
    # The largest result document the bot sends; a larger one gets its own answer instead of a failed upload.
    max_upload_bytes: int = Field(default=MAX_UPLOAD_BYTES, ge=1)
    # Per-request statistics are kept this many days (daily counts are kept for good); pruned every few hours.
    stats_retention_days: float = Field(default=30.0, gt=0)
    # Recent photos and their mattes, kept so the buttons under a result re-render it without a network.
    cache_entries: int = Field(default=64, ge=1)
    cache_bytes: int = Field(default=256_000_000, ge=1)
    cache_seconds: float = Field(default=3600.0, gt=0)
    # How often a "you are number N in line" message may be edited as the line moves (Telegram rate-limits edits).
    queue_update_interval: float = Field(default=3.0, gt=0)
    # Webhook mode (instead of long polling) when BOT_WEBHOOK_URL is set: the public HTTPS URL Telegram posts
    # updates to (a reverse proxy forwards them to LISTEN:PORT); its path is the local path served.
    webhook_url: str | None = None
    webhook_listen: str = "0.0.0.0"
    webhook_port: int = Field(default=8443, ge=1, le=65535)
    # Telegram sends it in X-Telegram-Bot-Api-Secret-Token with every update; other posts are refused.
    # Telegram allows 1-256 of A-Z a-z 0-9 _ -; at least 16 here so it cannot be guessed (and is redacted).
    webhook_secret: SecretStr | None = None
    # Where the networks run: "local" (in this process, the default) or "ray" (a Ray Serve application).
    engine: Literal["local", "ray"] = "local"
    # The Ray cluster: "auto" (this machine is a node of it), "ray://head:10001", or unset for a local try-out.
    ray_address: str | None = None
    ray_app_name: str = "bgremover"
    # Replicas of the Serve deployment: autoscaled between min and max, aiming at this many requests each.
    ray_min_replicas: int = Field(default=1, ge=0)
    ray_max_replicas: int = Field(default=4, ge=1)
    ray_target_ongoing_requests: float = Field(default=2.0, gt=0)
    # Photos one replica works on at once, and photos that may wait for a replica before "busy" is answered.
    ray_max_ongoing_requests: int = Field(default=4, ge=1)
    ray_max_queued_requests: int = Field(default=32, ge=1)  # Serve refuses 0
    # Photos whose network pass is shared (1: no batching), and how long a replica waits to fill a batch.
    ray_batch_size: int = Field(default=4, ge=1)
    ray_batch_wait_s: float = Field(default=0.01, ge=0)

    @field_validator("token")
    @classmethod
    def _token_not_blank(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value().strip():
            raise ValueError("BOT_TOKEN is empty")
        return value

    @field_validator("webhook_url", "webhook_secret", "ray_address", mode="before")
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        # docker compose passes an unset ${VAR:-} as an empty string: that means "not set", not "empty".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("webhook_secret")
    @classmethod
    def _usable_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9_-]{16,256}", value.get_secret_value()):
            raise ValueError("must be 16-256 characters of A-Z, a-z, 0-9, _ and -")
        return value

    @model_validator(mode="after")
    def _webhook_needs_secret(self) -> Settings:
        # Without the secret anyone who finds the URL could post forged updates as any user.
        if self.webhook_url and self.webhook_secret is None:
            raise ValueError("BOT_WEBHOOK_SECRET must be set when BOT_WEBHOOK_URL is")
        if self.ray_min_replicas > self.ray_max_replicas:
            raise ValueError("BOT_RAY_MIN_REPLICAS must not exceed BOT_RAY_MAX_REPLICAS")
        return self

    @field_validator("admin_ids", mode="before")
    @classmethod
    def _parse_admin_ids(cls, value: object) -> object:
        """Accept "1001,1002" (and spaces or semicolons) as well as a list of ints."""
        if isinstance(value, str):
            parts = [part.strip() for part in value.replace(";", ",").split(",")]
            try:
                return frozenset(int(part) for part in parts if part)
            except ValueError:
                raise ValueError(f"BOT_ADMIN_IDS must be comma-separated user ids, got {value!r}") from None
        if isinstance(value, int):
            return frozenset({value})
        return value

    @field_validator("default_model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        if value not in MODEL_NAMES:
            raise ValueError(f"unknown model {value!r}; choose one of: {', '.join(MODEL_NAMES)}")
        return value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.strip().upper()
        if level not in {"CRITICAL", "ERROR", "WARNING", "INFO", "DEBUG"}:
            raise ValueError(f"unknown log level {value!r}; use DEBUG, INFO, WARNING or ERROR")
        return level


def describe_settings_error(error: ValidationError) -> str:
    """One line naming each bad or missing setting by its environment variable, never echoing values."""
    problems = []
    for item in error.errors():
        message = item["msg"].removeprefix("Value error, ")
        if not item["loc"]:  # a whole-model check, which names its variable itself
            problems.append(message)
        elif item["type"] == "missing":
            problems.append(f"BOT_{'_'.join(str(part) for part in item['loc']).upper()} is not set")
        else:
            # The raw input is deliberately left out: it could be the token.
            problems.append(f"BOT_{'_'.join(str(part) for part in item['loc']).upper()}: {message}")
    return "; ".join(problems)
