"""Decoding what users send into an RGB photo, with clear errors for anything that is not one."""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

# 40 megapixels covers every phone camera; a 100-megapixel upload is refused before it is decoded.
DEFAULT_MAX_PIXELS = 40_000_000

try:  # HEIC/HEIF (iPhone photos) when the optional pillow-heif plugin is installed
    from pillow_heif import register_heif_opener

    register_heif_opener()
except ImportError:  # pragma: no cover - depends on the environment
    pass


def _openable_extensions() -> frozenset[str]:
    """File suffixes (lower case, with the dot) of the formats this Pillow can open and decode.

    Pillow's registry, filtered to formats with an opener; stub formats (BUFR, GRIB, HDF5, WMF) open only
    with an external handler, so they are left out.
    """
    Image.init()  # import every plugin, so that OPEN and the extension registry are complete
    openers = {
        name
        for name, (factory, _accept) in Image.OPEN.items()
        if not (isinstance(factory, type) and issubclass(factory, ImageFile.StubImageFile))
    }
    return frozenset(suffix.lower() for suffix, name in Image.registered_extensions().items() if name in openers)


# Every suffix a folder of photos may hold (HEIC/HEIF included where pillow-heif registered itself above).
IMAGE_EXTENSIONS: frozenset[str] = _openable_extensions()


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
    return _without_foreign_profile(_convert_to_rgb(image))


def _without_foreign_profile(image: Image.Image) -> Image.Image:
    """Drop a colour profile that does not describe RGB (a CMYK or grey one survives convert()).

    The PNG encoder writes info["icc_profile"] into the result, and an RGB image tagged with a CMYK
    profile shows wrong colours or none; an RGB profile (sRGB, Display P3) stays and keeps colours true.
    """
    profile = image.info.get("icc_profile")
    if profile and profile[16:20] != b"RGB ":  # bytes 16-19 of an ICC header: the data colour space
        del image.info["icc_profile"]
    return image


def _convert_to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float32)
        peak = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        grey = np.clip(values / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    if image.mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all():  # NaN or infinity: no brightness to show, and numpy would warn
            raise UnsupportedImageError("the image holds invalid values (NaN or infinity) and cannot be shown")
        peak = 1.0 if values.max() <= 1 else 255.0  # a 0-1 float image, or one on the 8-bit scale
        grey = np.clip(values, 0, peak) * (255.0 / peak) + 0.5  # rounded to the nearest level
        return Image.fromarray(grey.astype(np.uint8)).convert("RGB")
    # "transparency" in info: a palette or colour-key tRNS (P, L, RGB, 1); convert("RGBA") applies it.
    if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image if image.mode == "RGB" else image.convert("RGB")  # no copy of an RGB photo (160 MB at 40 MP)


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


def _orientation(image: Image.Image) -> int | None:
    """The EXIF orientation tag, or None when absent or unreadable (damaged metadata never refuses a photo)."""
    try:
        orientation = image.getexif().get(0x0112)
    except Exception:  # metadata only: any parsing failure means "no usable orientation"
        return None
    return orientation if isinstance(orientation, int) else None


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF orientation. A damaged EXIF block leaves the photo as stored rather than refusing it.

    ImageOps.exif_transpose re-serialises the whole EXIF block, which raises struct.error or TypeError on
    damaged tags; only the orientation matters here, so it is read and applied directly.
    """
    method = upright_transpose(image)
    return image.transpose(method) if method is not None else image


def upright_transpose(image: Image.Image) -> Image.Transpose | None:
    """The transpose that makes a photo upright by its EXIF orientation (None: already upright or unknown)."""
    return _UPRIGHT.get(_orientation(image))


@dataclass(frozen=True)
class ImageHeader:
    """What the header of an image says: its format and its upright size (EXIF orientation applied)."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        """The number of pixels decoding would produce."""
        return self.width * self.height


def _as_source(source: bytes | BinaryIO | str | Path) -> BinaryIO | str | Path:
    """Bytes become a file object; empty bytes are refused here, before Pillow sees them."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise UnsupportedImageError("the file is empty")
        return io.BytesIO(source)
    return source


@contextmanager
def _input_errors(source: object, max_pixels: int) -> Iterator[None]:
    """Translate whatever Pillow raises on bad input into this module's specific, user-safe errors."""
    try:
        yield
    except InputImageError:
        raise
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
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError):  # RuntimeError: corrupt AVIF
        raise UnsupportedImageError("the image is corrupt or truncated and cannot be decoded") from None


def _check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise ImageTooLargeError(width * height, max_pixels)


def read_header(data: bytes | BinaryIO | str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Read the format and upright size from the header alone (no pixel is decoded), with decode_image's errors.

    Cheap enough to run before an upload is queued: an undecodable or oversized file is refused at once.
    A file whose header is fine but whose pixels are damaged passes here and fails later in decode_image.
    """
    source = _as_source(data)
    with _input_errors(data, max_pixels), Image.open(source) as image:  # lazy: reads the header only
        width, height = image.size
        _check_pixels(width, height, max_pixels)
        # A PNG's eXIf chunk may follow the pixel data: Pillow would decode the pixels to reach it.
        lazy_exif = image.format != "PNG" or "exif" in image.info
        if lazy_exif and _orientation(image) in (5, 6, 7, 8):  # a quarter turn swaps the sides
            width, height = height, width
        return ImageHeader(format=image.format or "unknown", width=width, height=height)


def decode_image(source: bytes | BinaryIO | str | Path, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode bytes, a file or a path into an upright RGB image, checking the pixel count before decoding."""
    opened = _as_source(source)
    # open() reads only the header; the pixel count is checked before any pixel is decoded.
    # (No warnings filter here: it is process-global and not thread-safe with several workers.)
    # Image.open closes the file on every path; the result below is a new image.
    with _input_errors(source, max_pixels), Image.open(opened) as image:
        _check_pixels(*image.size, max_pixels)
        image.load()
        return _to_rgb(_upright(image))
