"""segmentation.effects: looks from a photo and a uint8 matte (Pillow and numpy only)."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from segmentation import effects
from segmentation.effects import BLUR, TRANSPARENT, WHITE, Look


def scene(width: int = 160, height: int = 120) -> tuple[Image.Image, np.ndarray]:
    """A noisy photo (so a blur visibly changes it) with a 'person': an opaque rectangle and a soft rim."""
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    matte = np.zeros((height, width), np.uint8)
    matte[40:100, 60:100] = 255
    matte[39, 60:100] = 128  # a soft edge row
    return Image.fromarray(pixels), matte


def test_crop_box_is_the_people_with_a_small_margin() -> None:
    _, matte = scene()
    left, top, right, bottom = effects.crop_box(matte)
    # The person spans x 60..99, y 39..99 (the rim at 128 counts); a margin of 4 px (4% of 61, at least 4).
    assert (left, top, right, bottom) == (56, 35, 104, 104)
    assert effects.crop_box(np.zeros((10, 10), np.uint8)) is None
    matte[:, :] = 0
    matte[0:5, 0:5] = 255  # at the corner: the margin stops at the image's edge
    assert effects.crop_box(matte) == (0, 0, 9, 9)


def test_crop_keeps_photo_and_matte_together() -> None:
    image, matte = scene()
    cropped, cropped_matte = effects.crop(image, matte)
    assert cropped.size == (48, 69) and cropped_matte.shape == (69, 48)
    assert np.array_equal(np.asarray(cropped), np.asarray(image)[35:104, 56:104])
    nobody = np.zeros_like(matte)
    assert effects.crop(image, nobody)[0] is image  # nobody: the whole frame


def test_blur_leaves_the_persons_pixels_untouched_and_blurs_the_rest() -> None:
    image, matte = scene()
    result = np.asarray(effects.blurred_background(image, matte)).astype(int)
    original = np.asarray(image).astype(int)
    person = matte == 255
    assert np.array_equal(result[person], original[person])
    background = matte == 0
    # Noise blurred away: the background is far smoother than the photo was.
    assert np.abs(np.diff(result, axis=1))[background[:, 1:]].mean() < 0.3 * np.abs(np.diff(original, axis=1)).mean()


def test_colour_and_white_backgrounds_follow_the_matte() -> None:
    image, matte = scene()
    green = np.asarray(effects.colour_background(image, matte, (0, 255, 0)))
    assert (green[matte == 0] == (0, 255, 0)).all()
    assert np.array_equal(green[matte == 255], np.asarray(image)[matte == 255])
    rim = green[39, 70].astype(int)  # half opacity: half photo, half colour
    expected = (np.asarray(image)[39, 70].astype(int) + np.array([0, 255, 0])) / 2
    assert np.abs(rim - expected).max() <= 2


def test_transparent_cutout_clears_the_background() -> None:
    image, matte = scene()
    cutout = np.asarray(effects.transparent_cutout(image, matte))
    assert cutout.shape == (120, 160, 4)
    assert np.array_equal(cutout[..., 3], matte)
    assert (cutout[matte == 0][:, :3] == 0).all()


@pytest.mark.parametrize(
    ("look", "mode", "size"),
    [
        (Look(), "RGBA", (160, 120)),
        (Look(WHITE), "RGB", (160, 120)),
        (Look(BLUR, crop=True), "RGB", (48, 69)),
        (Look("#00ff00", crop=True), "RGB", (48, 69)),
        (Look(TRANSPARENT, crop=True), "RGBA", (48, 69)),
    ],
)
def test_render_png_in_every_look(look: Look, mode: str, size: tuple[int, int]) -> None:
    image, matte = scene()
    png = Image.open(io.BytesIO(effects.render_png(image, matte, look)))
    assert png.format == "PNG" and png.mode == mode and png.size == size
    # The file holds exactly the rendered look, pixel for pixel (PNG is lossless).
    np.testing.assert_array_equal(np.asarray(png), np.asarray(effects.render(image, matte, look)))
    corner = {TRANSPARENT: (0, 0, 0, 0), WHITE: (255, 255, 255), "#00ff00": (0, 255, 0)}.get(look.background)
    if corner is not None:  # the corner is background: the look's own fill, not the photo
        assert png.getpixel((0, 0)) == corner


def test_look_refuses_unknown_backgrounds() -> None:
    with pytest.raises(ValueError):
        Look("#00ff0")
    with pytest.raises(ValueError):
        Look("plaid")


def test_the_matte_must_match_the_photo() -> None:
    image, matte = scene()
    with pytest.raises(ValueError):
        effects.render(image, matte[:10], Look())
    with pytest.raises(ValueError):
        effects.render(image, matte.astype(np.float32), Look())


@pytest.mark.parametrize("size", [(160, 120), (90, 300), (2000, 1500)])
def test_sticker_is_a_512_webp_with_a_white_outline(size: tuple[int, int]) -> None:
    width, height = size
    image = Image.new("RGB", size, (200, 30, 30))  # a red "photo": the outline must be white, not red
    matte = np.zeros((height, width), np.uint8)
    matte[height // 4 : height * 3 // 4, width // 3 : width * 2 // 3] = 255
    data = effects.sticker_webp(image, matte)
    sticker = Image.open(io.BytesIO(data))
    assert sticker.format == "WEBP"
    assert max(sticker.size) == 512 and min(sticker.size) <= 512
    assert len(data) < 512 * 1024  # Telegram's limit for a static sticker
    rgba = np.asarray(sticker.convert("RGBA")).astype(int)
    alpha = rgba[..., 3]
    assert alpha[0, 0] == 0 and alpha[-1, -1] == 0  # transparent around the outline
    # Walk in from the left edge along the middle row: transparent, then a white rim, then the red person.
    row = rgba[rgba.shape[0] // 2]
    first = int(np.argmax(row[:, 3] > 200))
    assert (row[first, :3] > 230).all(), row[first]  # white outline
    red = int(np.argmax((row[:, 0] > 150) & (row[:, 1] < 100) & (row[:, 3] > 200)))
    assert 3 <= red - first <= 12, (first, red)  # a thin outline: a few pixels


def test_sticker_of_nobody_is_none() -> None:
    image, matte = scene()
    assert effects.sticker_webp(image, np.zeros_like(matte)) is None


def test_effects_do_not_import_torch() -> None:
    code = "import sys, segmentation.effects; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == (
        "False"
    )


@pytest.mark.parametrize("look", [Look(), Look(WHITE), Look("#102030"), Look(BLUR)])
def test_in_place_gives_the_same_picture(look: Look) -> None:
    image, matte = scene()
    expected = np.asarray(effects.render(image, matte, look))
    assert np.array_equal(np.asarray(image), np.asarray(scene()[0]))  # not in place: the photo is untouched
    assert np.array_equal(np.asarray(effects.render(image.copy(), matte, look, in_place=True)), expected)
