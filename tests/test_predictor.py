"""Predictor, refinement and rendering: the matte at full resolution, the PNG variants, the guided filter."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segmentation import predictor as predictor_module
from segmentation import refine
from segmentation.decoding import decode_image
from segmentation.pipeline import remove_background
from segmentation.predictor import Predictor
from segmentation.refine import fast_guided_upsample
from segmentation.rendering import RenderOptions, compose_png
from segmentation.weights_io import ModelCard, load_model

BOX = (0.3, 0.2, 0.75, 0.85)  # the bright "person" in the synthetic scene, as fractions (left, top, right, bottom)


class BrightnessNet(nn.Module):
    """A stand-in network with a known answer: bright pixels are the person, dark ones the background."""

    def __init__(self) -> None:
        super().__init__()
        self.input_shapes: list[tuple[int, ...]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.input_shapes.append(tuple(x.shape))
        return 8.0 * x.mean(dim=1, keepdim=True)


def scene(width: int, height: int, seed: int = 0) -> tuple[Image.Image, np.ndarray]:
    """A dark, noisy background with a bright, noisy box; returns the photo and the box's true mask."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, size=(height, width, 3), dtype=np.uint8)
    left, top, right, bottom = (round(f * s) for f, s in zip(BOX, (width, height, width, height), strict=True))
    pixels[top:bottom, left:right] = rng.integers(190, 256, size=(bottom - top, right - left, 3), dtype=np.uint8)
    truth = np.zeros((height, width), bool)
    truth[top:bottom, left:right] = True
    return Image.fromarray(pixels), truth


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def open_png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG"
    return image


@pytest.fixture
def bright_predictor() -> Predictor:
    return Predictor(BrightnessNet(), ModelCard(architecture="deeplab", inference_size=64), fast=False)


@pytest.fixture(scope="module")
def random_deeplab(random_weights_dir: Path) -> Predictor:
    return Predictor.from_weights("deeplab", random_weights_dir, fast=False)


@pytest.mark.parametrize("size", [(37, 53), (53, 37), (301, 157), (200, 7), (1, 1)])
@pytest.mark.parametrize("refine", [True, False])
def test_alpha_of_a_real_network_has_the_original_size_and_range(
    random_deeplab: Predictor, size: tuple[int, int], refine: bool
) -> None:
    image = Image.new("RGB", size, (120, 80, 40))
    image.paste((250, 250, 250), (0, 0, size[0] // 2 + 1, size[1] // 2 + 1))
    alpha = random_deeplab.predict_alpha(image, refine=refine)
    assert alpha.shape == (size[1], size[0])
    assert alpha.dtype == np.float32
    assert np.isfinite(alpha).all()
    assert alpha.min() >= 0 and alpha.max() <= 1


@pytest.mark.parametrize("size", [(301, 157), (157, 301), (45, 33), (640, 480)])
@pytest.mark.parametrize("refine", [True, False])
def test_alpha_lands_on_the_person_at_the_original_resolution(
    bright_predictor: Predictor, size: tuple[int, int], refine: bool
) -> None:
    """Resizing, padding, cropping and upsampling keep the matte aligned with the photo."""
    image, truth = scene(*size)
    alpha = bright_predictor.predict_alpha(image, refine=refine)
    assert alpha.shape == truth.shape
    predicted = alpha >= 0.5
    iou = (predicted & truth).sum() / (predicted | truth).sum()
    assert iou > 0.9, iou


def test_network_input_is_resized_to_the_card_size_and_padded_to_a_multiple_of_32(bright_predictor: Predictor) -> None:
    image, _ = scene(301, 157)
    assert bright_predictor.network_size(301, 157) == (64, 33)
    bright_predictor.predict_low_res(image)
    assert bright_predictor.model.input_shapes == [(1, 3, 64, 64)]


def test_hard_mask_is_binary_while_the_soft_matte_is_not(bright_predictor: Predictor) -> None:
    data = png_bytes(scene(157, 123)[0])
    soft = np.asarray(open_png(remove_background(data, bright_predictor, RenderOptions(mask_only=True)).png))
    hard = np.asarray(open_png(remove_background(data, bright_predictor, RenderOptions(mask_only=True, hard=True)).png))
    assert set(np.unique(hard)) == {0, 255}
    assert len(np.unique(soft)) > 2  # the control: refinement does give soft edges


def test_hard_mask_of_a_real_network_is_binary(random_deeplab: Predictor, sample_photo_bytes: bytes) -> None:
    result = remove_background(sample_photo_bytes, random_deeplab, RenderOptions(hard=True))
    alpha = np.asarray(open_png(result.png))[..., 3]
    assert set(np.unique(alpha)) <= {0, 255}


def test_mask_only_gives_a_greyscale_png_of_the_matte(bright_predictor: Predictor) -> None:
    image, truth = scene(99, 61)
    result = remove_background(png_bytes(image), bright_predictor, RenderOptions(mask_only=True))
    mask = open_png(result.png)
    assert mask.mode == "L"
    assert mask.size == (99, 61)
    expected = np.clip(bright_predictor.predict_alpha(image) * 255 + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(np.asarray(mask), expected)
    assert (np.asarray(mask)[truth] > 128).mean() > 0.95


def test_rgba_cutout_keeps_visible_pixels_and_clears_the_removed_background(bright_predictor: Predictor) -> None:
    image, truth = scene(120, 90)
    result = remove_background(png_bytes(image), bright_predictor)
    cutout = open_png(result.png)
    assert cutout.mode == "RGBA"
    assert cutout.size == image.size
    pixels = np.asarray(cutout)
    expected = np.clip(bright_predictor.predict_alpha(image) * 255 + 0.5, 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(pixels[..., 3], expected)
    visible, gone = expected > 0, expected == 0
    assert visible.any() and gone.any()
    # Wherever any alpha remains the colour is the photo's, untouched; under full transparency it is zeroed,
    # so the removed background cannot be recovered from the PNG.
    np.testing.assert_array_equal(pixels[..., :3][visible], np.asarray(image)[visible])
    assert not pixels[..., :3][gone].any()
    assert ((pixels[..., 3] >= 128) == truth).mean() > 0.95


@pytest.mark.parametrize("colour", [(0, 255, 0), (255, 255, 255), (12, 34, 56)])
def test_background_colour_fills_the_transparent_pixels(
    bright_predictor: Predictor, colour: tuple[int, int, int]
) -> None:
    image, _ = scene(120, 90)
    data = png_bytes(image)
    alpha = np.asarray(open_png(remove_background(data, bright_predictor).png))[..., 3]
    result = open_png(remove_background(data, bright_predictor, RenderOptions(background=colour)).png)
    assert result.mode == "RGB"
    assert result.size == image.size
    pixels, original = np.asarray(result), np.asarray(image)
    clear, opaque = alpha == 0, alpha == 255
    assert clear.sum() > 1000 and opaque.sum() > 1000
    assert (pixels[clear] == colour).all()
    np.testing.assert_array_equal(pixels[opaque], original[opaque])
    # In between: a blend of the two, never outside their range.
    blend = ~(clear | opaque)
    low = np.minimum(original, colour)[blend].astype(int)
    high = np.maximum(original, colour)[blend].astype(int)
    assert ((pixels[blend] >= low - 1) & (pixels[blend] <= high + 1)).all()


def test_result_reports_size_model_timings_and_person_found(bright_predictor: Predictor) -> None:
    image, truth = scene(160, 100)
    result = remove_background(png_bytes(image), bright_predictor)
    assert (result.width, result.height, result.model) == (160, 100, "deeplab")
    assert {"decode", "predict", "refine", "encode", "total"} <= set(result.timings)
    assert all(seconds >= 0 for seconds in result.timings.values())
    assert result.foreground_fraction == pytest.approx(truth.mean(), abs=0.03)
    assert result.person_found

    dark = remove_background(png_bytes(Image.new("RGB", (160, 100), (5, 5, 5))), bright_predictor)
    assert dark.foreground_fraction == 0
    assert not dark.person_found


def test_predict_mask_uses_the_card_threshold() -> None:
    """A horizontal grey ramp: a higher threshold keeps fewer pixels."""
    ramp = Image.fromarray(np.tile(np.linspace(0, 255, 96).astype(np.uint8)[None, :, None], (40, 1, 3)))
    fractions = []
    for threshold in (0.2, 0.5, 0.8):
        card = ModelCard(architecture="deeplab", inference_size=64, threshold=threshold)
        fractions.append(Predictor(BrightnessNet(), card, fast=False).predict_mask(ramp).mean())
    assert fractions[0] > fractions[1] > fractions[2]


def test_compose_png_renders_an_explicit_matte() -> None:
    image = Image.new("RGB", (4, 2), (10, 20, 30))
    alpha = np.array([[0, 0.5, 1, 1], [0, 0, 0, 1]], np.float32)
    cutout = np.asarray(open_png(compose_png(image, alpha)))
    np.testing.assert_array_equal(cutout[..., 3], [[0, 128, 255, 255], [0, 0, 0, 255]])
    filled = np.asarray(open_png(compose_png(image, alpha, RenderOptions(background=(250, 0, 0)))))
    np.testing.assert_array_equal(filled[1, 0], (250, 0, 0))
    np.testing.assert_array_equal(filled[0, 3], (10, 20, 30))


def _step_edge_case(edge: int = 53, size: int = 96, blur: float = 0.8, offset: float = 1.0):
    """A full-res step edge guide, its 4x-downsampled copy, and a blurry low-res matte whose edge is off by `offset`."""
    guide = torch.zeros(1, 1, size, size)
    guide[..., edge:] = 1.0
    guide_low = F.interpolate(guide, size=(size // 4, size // 4), mode="area")
    columns = torch.arange(size // 4, dtype=torch.float32)
    centre = edge / 4 - 0.5 + offset
    source_low = torch.sigmoid((columns - centre) / blur).expand(1, 1, size // 4, size // 4).contiguous()
    return guide, guide_low, source_low


@pytest.mark.parametrize("blur", [0.5, 0.8, 1.2])
def test_guided_filter_sharpens_the_edge_and_snaps_it_to_the_guide(blur: float) -> None:
    edge = 53
    guide, guide_low, source_low = _step_edge_case(edge, blur=blur)
    refined = fast_guided_upsample(guide, guide_low, source_low)[0, 0]
    plain = F.interpolate(source_low, size=guide.shape[-2:], mode="bilinear", align_corners=False)[0, 0]

    steepest_refined = refined.diff(dim=1).abs().max(dim=1)
    steepest_plain = plain.diff(dim=1).abs().max(dim=1)
    # Sharper: the refined matte jumps by far more between two neighbouring pixels than plain upsampling does.
    assert (steepest_refined.values > 0.4).all()
    assert (steepest_refined.values > 4 * steepest_plain.values).all()
    # Aligned: the jump is exactly at the guide's edge (between columns edge-1 and edge), on every row ...
    assert (steepest_refined.indices == edge - 1).all()
    # ... and the 0.5 crossing moved onto the guide's edge, while plain upsampling leaves it where the source had it.
    crossing_refined = (refined < 0.5).sum(dim=1)
    crossing_plain = (plain < 0.5).sum(dim=1)
    assert (crossing_refined == edge).all()
    assert ((crossing_plain - edge).abs() >= 3).all()


def test_guided_filter_keeps_a_flat_matte_flat() -> None:
    guide = torch.rand(1, 1, 40, 60)
    guide_low = F.interpolate(guide, size=(10, 15), mode="area")
    refined = fast_guided_upsample(guide, guide_low, torch.full((1, 1, 10, 15), 0.7))
    assert refined.shape == guide.shape
    torch.testing.assert_close(refined, torch.full_like(refined, 0.7), rtol=0, atol=1e-3)


@pytest.mark.parametrize("name", ["deeplab", "unet"])
def test_fast_bf16_and_float32_give_close_probabilities(
    random_weights_dir: Path, sample_photo_bytes: bytes, name: str
) -> None:
    image = decode_image(sample_photo_bytes)
    exact = Predictor(*load_model(name, random_weights_dir), fast=False)
    fast = Predictor(*load_model(name, random_weights_dir), fast=True)
    first_conv = next(p for p in fast.model.parameters() if p.dim() == 4)
    assert first_conv.is_contiguous(memory_format=torch.channels_last)
    reference, _ = exact.predict_low_res(image)
    approximate, _ = fast.predict_low_res(image)
    assert reference.std() > 0.02  # the random network's output is not flat, so closeness means something
    assert np.abs(approximate - reference).max() < 0.05
    assert np.abs(approximate - reference).mean() < 0.01
    assert not np.array_equal(approximate, reference)  # and it really ran in reduced precision


@pytest.mark.parametrize("name", ["deeplab", "unet"])
def test_float32_in_channels_last_gives_the_same_probabilities(
    monkeypatch: pytest.MonkeyPatch, random_weights_dir: Path, sample_photo_bytes: bytes, name: str
) -> None:
    """Where channels_last is faster in float32 the predictor uses it, and only the layout changes."""
    image = decode_image(sample_photo_bytes)
    monkeypatch.setattr(predictor_module, "prefers_channels_last", lambda: False)
    plain = Predictor(*load_model(name, random_weights_dir), fast=False)
    monkeypatch.setattr(predictor_module, "prefers_channels_last", lambda: True)
    channels_last = Predictor(*load_model(name, random_weights_dir), fast=False)
    for predictor, expected in ((plain, False), (channels_last, True)):
        first_conv = next(p for p in predictor.model.parameters() if p.dim() == 4)
        assert first_conv.is_contiguous(memory_format=torch.channels_last) is expected
    reference, _ = plain.predict_low_res(image)
    assert reference.std() > 0.02
    np.testing.assert_allclose(channels_last.predict_low_res(image)[0], reference, atol=1e-5)


def test_flip_average_is_the_mean_of_the_photo_and_its_mirror(random_weights_dir: Path) -> None:
    """With the card's flip_average, the probability is the mean over the photo and its mirror image."""
    plain = Predictor.from_weights("deeplab", random_weights_dir, fast=False)
    flipped_card = ModelCard(**{**plain.card.__dict__, "flip_average": True})
    averaged = Predictor(plain.model, flipped_card, fast=False)
    image = Image.new("RGB", (70, 45), (120, 80, 40))
    image.paste((250, 250, 250), (0, 0, 30, 45))  # asymmetric, so the mirror's prediction differs
    direct, _ = plain.predict_low_res(image)
    mirrored, _ = plain.predict_low_res(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    expected = (direct + mirrored[:, ::-1]) / 2
    assert not np.allclose(direct, expected, atol=1e-4)
    np.testing.assert_allclose(averaged.predict_low_res(image)[0], expected, atol=1e-5)


def test_extra_sizes_average_the_probability_over_input_sizes(random_weights_dir: Path) -> None:
    """With the card's extra_sizes, the probability is the mean over sizes, each resized to the card's grid."""
    plain = Predictor.from_weights("unet", random_weights_dir, fast=False)
    multi_card = ModelCard(**{**plain.card.__dict__, "inference_size": 64, "extra_sizes": [96, 40]})
    multi = Predictor(plain.model, multi_card, fast=False)
    image = Image.new("RGB", (150, 100), (120, 80, 40))
    image.paste((250, 250, 250), (20, 10, 70, 90))
    base, pixels = plain.probability_at(image, 64)
    assert base.shape == (43, 64)
    expected = torch.from_numpy(base.copy())
    for long_side in (96, 40):
        other, _ = plain.probability_at(image, long_side)
        assert max(other.shape) == long_side
        other_tensor = torch.from_numpy(other)[None, None]
        expected += F.interpolate(other_tensor, size=base.shape, mode="bilinear", align_corners=False)[0, 0]
    expected /= 3
    averaged, averaged_pixels = multi.predict_low_res(image)
    assert averaged.shape == base.shape and averaged_pixels.shape == pixels.shape  # refined at the card's size
    assert not np.allclose(averaged, base, atol=1e-3)
    np.testing.assert_allclose(averaged, expected.numpy(), atol=1e-5)
    assert multi.predict_alpha(image).shape == (100, 150)


@pytest.mark.parametrize("band_pixels", [1, 700, 1 << 20])  # one row a band, several rows, the whole photo
@pytest.mark.parametrize("size", [(97, 61), (61, 97)])
def test_banded_refinement_equals_the_whole_image_guided_filter(
    monkeypatch: pytest.MonkeyPatch, band_pixels: int, size: tuple[int, int]
) -> None:
    """apply_in_bands (uint8 guide read band by band) matches fast_guided_upsample on the whole grey image."""
    monkeypatch.setattr(refine, "BAND_PIXELS", band_pixels)
    image, _ = scene(*size, seed=3)
    grey = torch.from_numpy(np.array(image.convert("L"), dtype=np.float32) / 255)[None, None]
    low = (size[1] // 4, size[0] // 4)
    guide_low = F.interpolate(grey, size=low, mode="area")
    source_low = torch.rand(1, 1, *low, generator=torch.Generator().manual_seed(0))
    expected = fast_guided_upsample(grey, guide_low, source_low)[0, 0].numpy()
    coefficients = refine.guided_filter_coefficients(guide_low, source_low, radius=2, eps=1e-3)
    banded = np.empty(expected.shape, np.float32)
    refine.apply_in_bands(image, coefficients, source_low[0, 0], banded)
    np.testing.assert_allclose(banded, expected, atol=1e-5)
    assert expected.std() > 0.05  # not a flat matte, so the comparison means something


@pytest.mark.parametrize("band_pixels", [50, 1 << 20])
def test_banded_bilinear_upsampling_equals_interpolate(monkeypatch: pytest.MonkeyPatch, band_pixels: int) -> None:
    monkeypatch.setattr(refine, "BAND_PIXELS", band_pixels)
    low = torch.rand(1, 1, 7, 5, generator=torch.Generator().manual_seed(1))
    expected = F.interpolate(low, size=(45, 31), mode="bilinear", align_corners=False)[0, 0].numpy()
    upsampled = np.empty((45, 31), np.float32)
    refine.apply_in_bands(Image.new("RGB", (31, 45)), None, low[0, 0], upsampled)
    np.testing.assert_allclose(upsampled, expected, atol=1e-6)


@pytest.mark.parametrize("hard", [False, True])
def test_uint8_matte_is_the_rounded_float_matte(bright_predictor: Predictor, hard: bool) -> None:
    image, _ = scene(131, 87)
    alpha8, timings = bright_predictor.predict_alpha8_timed(image, hard=hard)
    assert alpha8.dtype == np.uint8 and alpha8.shape == (87, 131)
    assert {"predict", "refine"} <= set(timings)
    alpha = bright_predictor.predict_alpha(image, refine=not hard)
    if hard:
        np.testing.assert_array_equal(alpha8, np.where(alpha >= bright_predictor.threshold, 255, 0))
    else:
        np.testing.assert_array_equal(alpha8, np.clip(alpha * 255 + 0.5, 0, 255).astype(np.uint8))
        # The uint8 threshold keeps exactly the pixels the float threshold keeps.
        np.testing.assert_array_equal(alpha8 >= bright_predictor.threshold8, alpha >= bright_predictor.threshold)


@pytest.mark.parametrize(
    "options", [RenderOptions(), RenderOptions(background=(12, 34, 56)), RenderOptions(mask_only=True)]
)
def test_rendering_in_place_gives_the_same_png_and_spares_a_copy(options: RenderOptions) -> None:
    image, truth = scene(64, 48)
    alpha = np.where(truth, 255, 0).astype(np.uint8)
    alpha[10:20] = 100  # some semi-transparency
    original = np.asarray(image).copy()
    expected = compose_png(image, alpha, options)
    np.testing.assert_array_equal(np.asarray(image), original)  # without in_place the photo is untouched
    assert compose_png(image, alpha, options, in_place=True) == expected
    # In place, the photo's own pixels became the result (no full-size copy was made); a mask needs no photo.
    rendered = np.asarray(image)[..., :3]
    if options.mask_only:
        np.testing.assert_array_equal(rendered, original)
    else:
        assert not np.array_equal(rendered, original)
        background = ~truth & (alpha == 0)
        fill = options.background or (0, 0, 0)
        assert (rendered[background] == fill).all()


def _unsure_scene() -> tuple[Image.Image, np.ndarray, np.ndarray]:
    """A noisy photo, a confident person box on the left and an unsure grey patch (p = 0.4) far to the right.

    Returns the photo (4x the probability's size), the probability at network resolution and the resized photo.
    """
    rng = np.random.default_rng(7)
    probability = np.full((48, 64), 0.02, np.float32)
    probability[8:40, 6:24] = 0.97  # the person
    probability[10:38, 40:60] = 0.4  # unsure, 16 px (a quarter of the width) from the person
    photo = Image.fromarray(rng.integers(0, 256, size=(192, 256, 3), dtype=np.uint8))
    small = np.asarray(photo.resize((64, 48), Image.Resampling.BILINEAR))
    return photo, probability, small


def test_unsure_region_far_from_the_person_is_hard_while_the_outline_stays_soft() -> None:
    photo, probability, small = _unsure_scene()
    card = ModelCard(architecture="deeplab", inference_size=64)
    banded = Predictor(BrightnessNet(), card, fast=False).matte_from_probability(photo, probability, small)
    unbanded = Predictor(BrightnessNet(), card, fast=False, soft_band=0).matte_from_probability(
        photo, probability, small
    )
    patch = (slice(48, 144), slice(168, 232))  # the unsure patch at full resolution, well inside it
    soft = (unbanded > 0.1) & (unbanded < 0.9)
    assert soft[patch].mean() > 0.5  # the control: without the band the patch is a grey veil
    assert set(np.unique(banded[patch])) == {0.0}
    assert set(np.unique(banded[:, 128:])) <= {0.0}  # nothing soft anywhere far from the person
    outline_columns = banded[40:150, 16:32]  # across the person's left edge (x = 24 at full resolution)
    assert ((outline_columns > 0.1) & (outline_columns < 0.9)).any()  # the outline keeps its soft alpha
    np.testing.assert_array_equal(banded[60:130, 50:70], 1.0)  # deep inside the person: fully opaque


def test_a_coarse_network_is_refined_at_the_refine_size_for_a_narrower_soft_edge() -> None:
    # The UNet runs at 192 px; refined there, its soft edge where the photo has no edge to snap to (a smooth
    # ramp here, a wrong outline in a real photo) was wider than the veil's margin.
    ramp = np.tile(np.linspace(0, 255, 768, dtype=np.float32), (576, 1)).astype(np.uint8)
    photo = Image.fromarray(np.repeat(ramp[..., None], 3, axis=2))
    card = ModelCard(architecture="unet", inference_size=48)
    fine = Predictor(BrightnessNet(), card, fast=False, refine_size=384).predict_alpha(photo)
    coarse = Predictor(BrightnessNet(), card, fast=False, refine_size=0).predict_alpha(photo)
    soft_fine, soft_coarse = ((alpha > 0.1) & (alpha < 0.9) for alpha in (fine, coarse))
    assert 0 < soft_fine.any(axis=0).sum() < 0.3 * soft_coarse.any(axis=0).sum()  # soft columns: fewer, not none
    assert (fine >= 0.5).mean() == pytest.approx((coarse >= 0.5).mean(), abs=0.01)  # the same decision


def test_refine_size_never_coarsens_nor_goes_finer_than_the_photo() -> None:
    predictor = Predictor(BrightnessNet(), ModelCard(architecture="unet", inference_size=64), fast=False)
    probability = np.random.default_rng(0).random((48, 64), dtype=np.float32)
    small = np.zeros((48, 64, 3), np.uint8)
    photo = Image.new("RGB", (200, 150))
    upsampled, resized = predictor.at_refine_size(photo, probability, small)
    assert upsampled.shape == (150, 200) and resized.shape == (150, 200, 3)  # the photo's own size, not 384
    assert upsampled.min() >= 0 and upsampled.max() <= 1
    large = Image.new("RGB", (1280, 960))
    assert predictor.at_refine_size(large, probability, small)[0].shape == (288, 384)
    at_384 = np.zeros((288, 384), np.float32)
    unchanged, _ = predictor.at_refine_size(large, at_384, np.zeros((288, 384, 3), np.uint8))
    assert unchanged is at_384  # a network served at 384 (DeepLab) is refined as before


def test_soft_band_follows_the_outline_of_the_hard_mask() -> None:
    probability = torch.zeros(1, 1, 20, 30)
    probability[..., 5:15, 10:20] = 0.9
    band = refine.soft_band(probability, 0.5, radius=2)[0, 0]
    assert band[10, 10] == 1 and band[10, 9] == 1 and band[10, 7] == 1  # on and near the outline
    assert band[10, 6] == 0  # farther than the radius plus the mixed neighbourhood
    assert band[10, 15] == 0  # deep inside
    assert band[0, 0] == 0 and band[19, 29] == 0  # the photo's border is no outline
    assert refine.soft_band(torch.full((1, 1, 8, 8), 0.9), 0.5, radius=3).sum() == 0  # all person: no outline


def test_contrast_curve_keeps_the_decision_and_pushes_values_apart() -> None:
    probability = torch.tensor([0.05, 0.3, 0.49, 0.5, 0.51, 0.8, 0.97])
    sharpened = refine.sharpen(probability, 0.5, 2.0)
    torch.testing.assert_close(sharpened >= 0.5, probability >= 0.5)
    assert ((sharpened - 0.5).abs() >= (probability - 0.5).abs() - 1e-6).all()
    assert refine.sharpen(probability, 0.5, 1.0) is probability


def small_figure(width: int = 400, height: int = 300) -> Image.Image:
    """A dark scene with one small bright figure (2.5% of the frame) near the lower right."""
    pixels = np.full((height, width, 3), 20, dtype=np.uint8)
    pixels[200:260, 300:350] = 230
    return Image.fromarray(pixels)


def test_second_pass_looks_again_at_a_small_figure_on_a_crop_around_it() -> None:
    net = BrightnessNet()
    card = ModelCard(architecture="deeplab", inference_size=64, second_pass=True)
    predictor = Predictor(net, card, fast=False)
    alpha, timings = predictor.predict_alpha_timed(small_figure())
    assert "second_pass" in timings and len(net.input_shapes) == 2  # the frame, then the crop
    left, top, right, bottom = predictor.small_subject_box(predictor.predict_low_res(small_figure())[0], (400, 300))
    assert left <= 300 and top <= 200 and right >= 350 and bottom >= 260  # the crop holds the figure
    assert (right - left) * (bottom - top) <= 0.5 * 400 * 300
    mask = alpha >= 0.5
    assert mask[205:255, 305:345].all() and mask.mean() == pytest.approx(50 * 60 / (400 * 300), abs=0.01)


def test_second_pass_is_skipped_for_large_people_nobody_and_when_off() -> None:
    large, _ = scene(96, 96)
    nobody = Image.new("RGB", (96, 96), (20, 20, 20))
    for photo in (large, nobody):
        net = BrightnessNet()
        Predictor(
            net, ModelCard(architecture="deeplab", inference_size=64, second_pass=True), fast=False
        ).predict_alpha(photo)
        assert len(net.input_shapes) == 1
    net = BrightnessNet()
    Predictor(net, ModelCard(architecture="deeplab", inference_size=64), fast=False).predict_alpha(small_figure())
    assert len(net.input_shapes) == 1  # off unless the card turns it on
