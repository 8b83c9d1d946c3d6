"""Everything the bot says, in one place so the wording stays consistent (and easy to translate later)."""

from __future__ import annotations

import math

from bot.outcomes import parse_outcome
from bot.store import StoreStats

MODEL_DESCRIPTIONS = {
    "deeplab": "DeepLabV3 on ResNet18, the recommended one",
    "unet": "the classic UNet encoder-decoder",
}

TEXT_HINT = "Send me a photo of a person and I'll send it back with the background removed. See /help for how it works."
UNKNOWN_COMMAND = "I don't know that command. /help lists what I can do."
OTHER_MEDIA = "I can only work with still images. Send a photo, or a JPEG, PNG or WEBP file."
BUSY = "I'm very busy right now and my queue is full. Please try again in a minute."
RESTARTING = "Sorry, the bot is restarting and your photo was not finished. Please send it again in a moment."
TIMEOUT = "Sorry, that photo took too long to process. Please try again, perhaps with a smaller image."
DOWNLOAD_FAILED = "I couldn't download that file from Telegram. Please send it again."
GENERIC_ERROR = "Sorry, something went wrong on my side. Please try again later."
NO_PERSON_NOTE = "I couldn't find a person in this photo, so the result may be mostly transparent."
STATS_REFUSED = "Sorry, that command isn't available to you."
STATS_PRIVATE_ONLY = "/stats works in a private chat with me only. Send it to me there."


def megabytes(size: int) -> str:
    """A byte count as "20 MB" (decimal megabytes, as Telegram states its limits)."""
    return f"{size / 1e6:.0f} MB" if size >= 1_000_000 else f"{size / 1000:.0f} KB"


def welcome(current: str, models: tuple[str, ...], max_download: int) -> str:
    """The /start and /help text."""
    lines = [
        "Hi! I remove the background from photos of people.",
        "",
        "Send me a photo and I'll send it back as a PNG file with a transparent background.",
        "For full quality, send it as a file (📎 → File): Telegram compresses photos, but not files. "
        f"JPEG, PNG and WEBP files up to {megabytes(max_download)} work.",
        "",
        "Models:",
    ]
    for name in models:
        mark = " (current)" if name == current else ""
        lines.append(f"• {name}{mark} — {MODEL_DESCRIPTIONS.get(name, name)}")
    lines.append("Switch with /model, for example /model " + next((m for m in models if m != current), current) + ".")
    return "\n".join(lines)


def model_current(current: str) -> str:
    """What /model alone says."""
    return f"The current model is {current}. Tap a button to switch."


def model_switched(name: str) -> str:
    """The answer to a successful switch."""
    return f"Switched to {name}. Your next photos will use it."


def model_unknown(name: str, models: tuple[str, ...]) -> str:
    """The answer to /model with a name we don't have."""
    return f"I don't know a model called “{name}”. Available models: {', '.join(models)}."


def not_an_image(kind: str) -> str:
    """The answer to a document that is not an image, naming what it looks like."""
    return f"That looks like {kind}, not an image. Send me a photo, or a JPEG, PNG or WEBP file."


def unreadable_image(reason: str) -> str:
    """The answer to a file the decoder refused; reason comes from the segmentation package and is user-safe."""
    return f"I couldn't read that image: {reason}. Please send a different photo."


def too_many_pixels(pixels: int | None, limit: int) -> str:
    """The answer to an image above the pixel limit."""
    size = f"{pixels / 1e6:.1f} megapixels" if pixels else "too many pixels"
    return (
        f"That image is too large ({size}); I can handle up to {limit / 1e6:g} megapixels. Please send a smaller one."
    )


def file_too_big(size: int | None, limit: int) -> str:
    """The answer to a file over the download limit."""
    shown = f" ({megabytes(size)})" if size else ""
    return (
        f"That file is too big{shown}: bots can only download files up to {megabytes(limit)}. "
        "Please send a smaller file, or send it as a photo."
    )


def user_limit(pending: int) -> str:
    """The answer when one user already has the maximum number of photos in progress."""
    noun = "photo" if pending == 1 else "photos"
    return f"You already have {pending} {noun} in progress. Please wait for them to finish, then send more."


def queued(ahead: int) -> str:
    """The place-in-line message."""
    noun = "photo is" if ahead == 1 else "photos are"
    return f"You're number {ahead + 1} in line: {ahead} {noun} ahead of yours. I'll send the result when it's ready."


def result_too_big(size: int, limit: int) -> str:
    """The finished PNG is larger than a bot may upload."""
    return (
        f"The result is {megabytes(size)}, more than the {megabytes(limit)} Telegram lets me send. "
        "Please send a smaller photo."
    )


def model_unavailable(model: str, models: tuple[str, ...]) -> str:
    """The chosen model cannot be loaded on this server."""
    others = [f"/model {name}" for name in models if name != model]
    suggestion = f" Try {' or '.join(others)}." if others else ""
    return f"Sorry, the {model} model is not available right now.{suggestion}"


def result_caption(model: str, seconds: float, person_found: bool) -> str:
    """The caption of a result document."""
    caption = f"Background removed with {model} in {seconds:.1f} s."
    return caption if person_found else f"{caption}\n{NO_PERSON_NOTE}"


def _seconds(value: float | None) -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.2f} s"


def _duration(seconds: float) -> str:
    minutes, _ = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h {minutes}m"
    return f"{hours}h {minutes}m" if hours else f"{minutes}m {int(seconds) % 60}s"


def stats_report(stats: StoreStats, uptime_s: float, queue_depth: int, in_flight: int) -> str:
    """The /stats text for admins."""

    def kinds(success: bool) -> str:
        parts = []
        for kind, count in stats.outcomes.items():
            outcome = parse_outcome(kind)  # None: an outcome a newer version stored, shown as stored
            if (outcome is not None and outcome.succeeded) == success:
                parts.append(f"{outcome.label if outcome else kind} {count}")
        return f" ({', '.join(parts)})" if parts else ""

    lines = [
        "Bot statistics",
        f"Uptime: {_duration(uptime_s)}",
        f"Requests: {stats.total} total, {stats.last_24h} in the last 24 hours",
        f"Succeeded: {stats.successes}{kinds(True)}",
        f"Failed: {stats.failures}{kinds(False)}",
        "Models:",
    ]
    if stats.models:
        for name, model in stats.models.items():
            lines.append(f"• {name}: {model.count} done, p50 {_seconds(model.p50)}, p95 {_seconds(model.p95)}")
    else:
        lines.append("• no results yet")
    lines.append(f"Now: {queue_depth} waiting, {in_flight} in progress")
    lines.append(f"Distinct chats: {stats.distinct_chats}")
    return "\n".join(lines)
