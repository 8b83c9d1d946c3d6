"""Looks made from a photo and its uint8 matte: a blurred or coloured background, a crop to the people, a sticker.

Pure functions over a PIL image (RGB) and a uint8 matte of the same size (255 = person), Pillow and numpy only
(no torch), so re-composing a cached photo is cheap and runs anywhere.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageColor, ImageFilter

TRANSPARENT = "transparent"
WHITE = "white"
BLUR = "blur"
_HEX_COLOUR = re.compile(r"#[0-9a-f]{6}")


def colour_rgb(text: str) -> tuple[int, int, int] | None:
    """A colour name or code ("navy", "#0f0", "rgb(1,2,3)") as (r, g, b), or None when it is not one.

    Pillow passes out-of-range components ("rgb(300,0,0)") through unclamped: those are not colours either.
    """
    try:
        rgb = ImageColor.getrgb(text)[:3]
    except ValueError:
        return None
    return rgb if all(0 <= channel <= 255 for channel in rgb) else None


# A matte value from which a pixel counts as person, for crops and stickers (half opacity).
PERSON_THRESHOLD = 128
# Margin around the people in a crop: a share of the box's longer side, and at least a few pixels.
CROP_MARGIN = 0.04
CROP_MARGIN_MIN_PX = 4
# Portrait-mode blur: the background is blurred at a reduced size (fast at any resolution), by a radius that is
# this share of the photo's longer side.
BLUR_RADIUS = 0.012
BLUR_WORKING_SIDE = 800
# Telegram stickers: one side exactly 512 px, the other at most 512; a thin white outline around the people.
STICKER_SIDE = 512
STICKER_OUTLINE_PX = 6
PNG_COMPRESS_LEVEL = 1  # lossless at any level; 1 is several times faster to encode than 6


@dataclass(frozen=True)
class Look:
    """How a result looks: its background (transparent, white, blur or #rrggbb) and whether it is cropped."""

    background: str = TRANSPARENT
    crop: bool = False

    def __post_init__(self) -> None:
        if self.background not in (TRANSPARENT, WHITE, BLUR) and not _HEX_COLOUR.fullmatch(self.background):
            raise ValueError(f"unknown background {self.background!r}")


def _check(image: Image.Image, matte: np.ndarray) -> None:
    if matte.dtype != np.uint8 or matte.shape != (image.height, image.width):
        expected = (image.height, image.width)
        raise ValueError(f"the matte must be uint8 of shape {expected}, got {matte.dtype} {matte.shape}")


def _matte_image(matte: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(matte), mode="L")


def crop_box(matte: np.ndarray, margin: float = CROP_MARGIN) -> tuple[int, int, int, int] | None:
    """The (left, top, right, bottom) box around the people plus a small margin, inside the image; None: nobody."""
    people = _matte_image(matte).point(lambda value: 255 if value >= PERSON_THRESHOLD else 0)
    box = people.getbbox()
    if box is None:
        return None
    left, top, right, bottom = box
    pad = max(CROP_MARGIN_MIN_PX, round(margin * max(right - left, bottom - top)))
    height, width = matte.shape
    return max(0, left - pad), max(0, top - pad), min(width, right + pad), min(height, bottom + pad)


def crop(image: Image.Image, matte: np.ndarray) -> tuple[Image.Image, np.ndarray]:
    """The photo and matte cropped to the people (unchanged when there is nobody)."""
    _check(image, matte)
    box = crop_box(matte)
    if box is None:
        return image, matte
    left, top, right, bottom = box
    return image.crop(box), matte[top:bottom, left:right]


def _rgb(image: Image.Image, in_place: bool) -> Image.Image:
    if image.mode != "RGB":
        return image.convert("RGB")
    return image if in_place else image.copy()


def transparent_cutout(image: Image.Image, matte: np.ndarray, *, in_place: bool = False) -> Image.Image:
    """RGBA: the photo with the matte as alpha, and black under fully transparent pixels (really gone, smaller).

    `in_place`: the photo itself becomes the result (no full-size copy; Pillow keeps RGB as four bytes a pixel).
    """
    _check(image, matte)
    alpha = _matte_image(matte)
    result = _rgb(image, in_place)
    result.paste((0, 0, 0), mask=alpha.point([255] + [0] * 255))
    result.putalpha(alpha)
    return result


def colour_background(
    image: Image.Image, matte: np.ndarray, colour: tuple[int, int, int], *, in_place: bool = False
) -> Image.Image:
    """RGB: the people over a solid colour, blended along the matte's soft edges (`in_place`: no copy)."""
    _check(image, matte)
    result = _rgb(image, in_place)
    # The colour pasted through the inverted matte, straight onto the photo: no full-size canvas of colour.
    result.paste(colour, mask=_matte_image(matte).point([255 - value for value in range(256)]))
    return result


def blurred_background(image: Image.Image, matte: np.ndarray, radius: float = BLUR_RADIUS) -> Image.Image:
    """RGB: the people sharp over their own background blurred, like a phone's portrait mode.

    Where the matte is 255 the photo's pixels are kept exactly; the blur is computed at a reduced size, so its
    cost does not grow with the photo's resolution.
    """
    _check(image, matte)
    rgb = image if image.mode == "RGB" else image.convert("RGB")  # only read: no copy of an RGB photo
    scale = min(1.0, BLUR_WORKING_SIDE / max(rgb.size))
    small_size = (max(1, round(rgb.width * scale)), max(1, round(rgb.height * scale)))
    small = rgb.resize(small_size, Image.Resampling.BILINEAR, reducing_gap=2.0)
    small = small.filter(ImageFilter.GaussianBlur(max(1.0, radius * max(small_size))))
    blurred = small.resize(rgb.size, Image.Resampling.BILINEAR)
    blurred.paste(rgb, mask=_matte_image(matte))  # the person, exactly, over the blur
    return blurred


def parse_hex(colour: str) -> tuple[int, int, int]:
    """(r, g, b) of a "#rrggbb" colour."""
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)


def render(image: Image.Image, matte: np.ndarray, look: Look, *, in_place: bool = False) -> Image.Image:
    """The photo in a look: cropped to the people if asked, over transparency, white, a blur or a colour.

    `in_place`: the photo may be overwritten by the result (saves a full-size copy of a photo nobody reuses).
    """
    _check(image, matte)
    if look.crop:
        image, matte = crop(image, matte)
    if look.background == TRANSPARENT:
        return transparent_cutout(image, matte, in_place=in_place)
    if look.background == BLUR:
        return blurred_background(image, matte)
    colour = (255, 255, 255) if look.background == WHITE else parse_hex(look.background)
    return colour_background(image, matte, colour, in_place=in_place)


def encode_png(image: Image.Image, compress_level: int = PNG_COMPRESS_LEVEL) -> bytes:
    """A lossless PNG of an image."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return buffer.getvalue()


def render_png(image: Image.Image, matte: np.ndarray, look: Look, *, in_place: bool = False) -> bytes:
    """render() as a PNG file."""
    return encode_png(render(image, matte, look, in_place=in_place))


def sticker_webp(
    image: Image.Image, matte: np.ndarray, side: int = STICKER_SIDE, outline: int = STICKER_OUTLINE_PX
) -> bytes | None:
    """A Telegram sticker: the people cut out, cropped, fitted into `side` px with a white outline, as WEBP.

    The longer side is exactly `side` (Telegram's rule); None when there is no person to make a sticker of.
    """
    _check(image, matte)
    box = crop_box(matte, margin=0.0)
    if box is None:
        return None
    cutout = transparent_cutout(image.crop(box), matte[box[1] : box[3], box[0] : box[2]])
    pad = outline + 2  # room for the outline inside the canvas
    inner = side - 2 * pad
    scale = inner / max(cutout.size)
    fitted_size = (max(1, round(cutout.width * scale)), max(1, round(cutout.height * scale)))
    fitted = cutout.resize(fitted_size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    canvas_size = (fitted.width + 2 * pad, fitted.height + 2 * pad)
    canvas = Image.new("RGBA", canvas_size, (0, 0, 0, 0))
    canvas.paste(fitted, (pad, pad))
    # The outline: the people's silhouette grown by `outline` px (a few 3x3 max filters), filled white, underneath.
    grown = canvas.getchannel("A").point(lambda value: 255 if value >= 64 else 0)
    for _ in range(outline):
        grown = grown.filter(ImageFilter.MaxFilter(3))
    grown = grown.filter(ImageFilter.GaussianBlur(0.8))  # a smooth rim instead of a jagged one
    sticker = Image.new("RGBA", canvas_size, (255, 255, 255, 0))
    sticker.putalpha(grown)
    sticker.alpha_composite(canvas)
    buffer = io.BytesIO()
    sticker.save(buffer, format="WEBP", quality=90, method=4)
    return buffer.getvalue()
