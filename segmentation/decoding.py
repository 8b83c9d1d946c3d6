"""Decoding what users send into an RGB photo, with clear errors for anything that is not one."""

from __future__ import annotations

import io
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

# 40 megapixels covers every phone camera; a 100-megapixel upload is refused before it is decoded.
DEFAULT_MAX_PIXELS = 40_000_000

try:  # HEIC/HEIF (iPhone photos) when the optional pillow-heif plugin is installed
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - depends on the environment
    pass


class InputImageError(ValueError):
    """The input cannot be used as a photo; the message is safe to show to a user."""


class UnsupportedImageError(InputImageError):
    """The input is empty, not an image, corrupt or truncated."""


class ImageTooLargeError(InputImageError):
    """The image has more pixels than the configured limit."""

    def __init__(self, pixels: int | None, limit: int) -> None:
        self.pixels, self.limit = pixels, limit
        size = f"{pixels / 1e6:.1f} megapixels" if pixels else "more megapixels than Pillow will safely decode"
        super().__init__(f"the image has {size}; the limit is {limit / 1e6:g} megapixels")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode to 8-bit RGB; transparent areas become white, 16-bit greys are rescaled."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        grey = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "F":
        grey = np.clip(np.asarray(image, dtype=np.float32), 0, 1 if np.asarray(image).max() <= 1 else 255)
        scale = 255.0 if grey.max() <= 1 else 1.0
        return Image.fromarray((grey * scale).astype(np.uint8)).convert("RGB")
    # "transparency" in info: a palette or colour-key tRNS (P, L, RGB, 1); convert("RGBA") applies it.
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


# EXIF orientation -> the transpose that makes the photo upright (the same table as ImageOps.exif_transpose).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation. A damaged EXIF block leaves the photo as stored rather than refusing it.

    ImageOps.exif_transpose re-serialises the whole EXIF block, which raises struct.error or TypeError on
    damaged tags; only the orientation matters here, so it is read and applied directly.
    """
    try:
        orientation = image.getexif().get(0x0112)
    except Exception:  # metadata only: any parsing failure means "no usable orientation"
        return image
    method = _UPRIGHT.get(orientation) if isinstance(orientation, int) else None
    return image.transpose(method) if method is not None else image


def decode_image(source: bytes | BinaryIO | str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode bytes, a file or a path into an upright RGB image, checking the pixel count before decoding."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise UnsupportedImageError("the file is empty")
        source = io.BytesIO(source)
    try:
        # open() reads only the header; the pixel count is checked before any pixel is decoded.
        # (No warnings filter here: it is process-global and not thread-safe with several workers.)
        with Image.open(source) as image:  # closes the file on every path; the result below is a new image
            width, height = image.size
            if width * height > max_pixels:
                raise ImageTooLargeError(width * height, max_pixels)
            image.load()
            return _to_rgb(_upright(image))
    except Image.DecompressionBombError:
        # Pillow's own bomb check (past ~179 MP) fires inside open(), before the size is known to us.
        raise ImageTooLargeError(None, max_pixels) from None
    except UnidentifiedImageError:
        raise UnsupportedImageError("this file is not an image format I can read (JPEG, PNG, WEBP, ...)") from None
    except FileNotFoundError:
        raise UnsupportedImageError(f"no such file: {source}") from None
    except IsADirectoryError:
        raise UnsupportedImageError(f"{source} is a folder, not an image") from None
    except PermissionError:
        raise UnsupportedImageError(f"cannot read {source}: permission denied") from None
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as error:  # RuntimeError: corrupt AVIF
        if isinstance(error, InputImageError):
            raise
        raise UnsupportedImageError("the image is corrupt or truncated and cannot be decoded") from None
