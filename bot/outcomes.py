"""How a request ended: one name per outcome, stored in the statistics and shown by /stats."""

from __future__ import annotations

from enum import StrEnum


class Outcome(StrEnum):
    """The outcome of one request; the value is what the store keeps."""

    OK = "ok"
    NO_PERSON = "no_person"
    NOT_IMAGE = "not_image"
    UNSUPPORTED_IMAGE = "unsupported_image"
    TOO_MANY_PIXELS = "too_many_pixels"
    FILE_TOO_BIG = "file_too_big"
    BUSY = "busy"
    USER_LIMIT = "user_limit"
    TIMEOUT = "timeout"
    SHUTDOWN = "shutdown"
    DOWNLOAD_FAILED = "download_failed"
    MODEL_UNAVAILABLE = "model_unavailable"
    RESULT_TOO_BIG = "result_too_big"
    ERROR = "error"

    @property
    def succeeded(self) -> bool:
        """Whether the user got a result."""
        return self in SUCCESSES

    @property
    def label(self) -> str:
        """The outcome in /stats' words."""
        return _LABELS[self]


SUCCESSES = frozenset({Outcome.OK, Outcome.NO_PERSON})


def parse_outcome(value: str) -> Outcome | None:
    """The Outcome of a stored value, or None for a value this version does not know."""
    try:
        return Outcome(value)
    except ValueError:
        return None


_LABELS = {
    Outcome.OK: "person found",
    Outcome.NO_PERSON: "no person found",
    Outcome.NOT_IMAGE: "not an image",
    Outcome.UNSUPPORTED_IMAGE: "unreadable image",
    Outcome.TOO_MANY_PIXELS: "too many pixels",
    Outcome.FILE_TOO_BIG: "file over the download limit",
    Outcome.BUSY: "queue full",
    Outcome.USER_LIMIT: "per-user limit",
    Outcome.TIMEOUT: "timed out",
    Outcome.SHUTDOWN: "interrupted by a restart",
    Outcome.DOWNLOAD_FAILED: "download failed",
    Outcome.MODEL_UNAVAILABLE: "model unavailable",
    Outcome.RESULT_TOO_BIG: "result over the upload limit",
    Outcome.ERROR: "internal error",
}
