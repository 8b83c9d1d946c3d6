"""The file name of a result document."""

from __future__ import annotations

from pathlib import PurePosixPath

RESULT_SUFFIX = "_nobg.png"
MAX_STEM_CHARS = 100


def result_filename(original: str | None) -> str:
    """`<stem>_nobg.png` for a named file, `photo_nobg.png` for a photo (photos have no name)."""
    if not original:
        return "photo" + RESULT_SUFFIX
    # PurePosixPath drops any directory part; Windows-style separators are flattened the same way.
    stem = PurePosixPath(original.replace("\\", "/")).stem.strip()[:MAX_STEM_CHARS]
    return f"{stem or 'image'}{RESULT_SUFFIX}"
