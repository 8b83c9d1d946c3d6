"""Triage of what users send, before anything is downloaded: is a document an image, and what does it look like."""

from __future__ import annotations

from pathlib import PurePosixPath

# Pillow's registry of openable formats (Pillow and numpy only: importing it keeps the bot free of torch).
from segmentation.decoding import IMAGE_EXTENSIONS


def _suffixes(names: str) -> frozenset[str]:
    return frozenset(f".{name}" for name in names.split())


VECTOR_EXTENSIONS = _suffixes("svg svgz")
VIDEO_EXTENSIONS = _suffixes("mp4 mov avi mkv webm m4v 3gp wmv flv mpeg mpg")
AUDIO_EXTENSIONS = _suffixes("mp3 ogg oga opus wav flac m4a aac")
ARCHIVE_EXTENSIONS = _suffixes("zip rar 7z tar gz tgz bz2 xz")
ARCHIVE_MIME_TYPES = frozenset({"application/zip", "application/x-rar-compressed", "application/gzip"})
TEXT_EXTENSIONS = _suffixes("txt doc docx odt rtf md csv xls xlsx ppt pptx json xml html")
GENERIC_MIME_TYPES = frozenset({"", "application/octet-stream", "binary/octet-stream"})


def classify_document(file_name: str | None, mime_type: str | None) -> str | None:
    """None when a document may be an image; otherwise what it looks like (for the refusal), without downloading.

    The decoder has the last word: a file let through here that it cannot read gets its own answer.
    """
    mime = (mime_type or "").lower().strip()
    suffix = PurePosixPath(file_name or "").suffix.lower()
    if mime == "image/svg+xml" or suffix in VECTOR_EXTENSIONS:
        return "a vector drawing (SVG)"
    if mime.startswith("image/"):
        return None
    if mime == "application/pdf" or suffix == ".pdf":
        return "a PDF document"
    # Before the image suffixes: Pillow's registry lists .mpg/.mpeg (it can only identify MPEG, not decode it).
    if mime.startswith("video/") or suffix in VIDEO_EXTENSIONS:
        return "a video"
    if mime.startswith("audio/") or suffix in AUDIO_EXTENSIONS:
        return "an audio file"
    if suffix in IMAGE_EXTENSIONS:
        return None
    if suffix in ARCHIVE_EXTENSIONS or mime in ARCHIVE_MIME_TYPES:
        return "an archive"
    if mime.startswith("text/") or suffix in TEXT_EXTENSIONS:
        return "a text document"
    if mime in GENERIC_MIME_TYPES and not suffix:
        return None  # nothing to go on: let the decoder decide after the download
    return f"a {suffix.lstrip('.').upper()} file" if suffix else f"a file of type {mime}"


def declared_pixels(width: int | None, height: int | None) -> int | None:
    """The pixel count Telegram states for a photo before any download, when it states one."""
    return width * height if width and height else None
