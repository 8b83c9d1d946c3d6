"""The `bgremover` command line, end to end on real photos with random-weight networks."""

from __future__ import annotations

import json
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segmentation.cli import main

FIXTURES = Path(__file__).parent / "fixtures"
PHOTOS = ("person_0021.jpg", "person_0031.jpg")


def run(weights: Path, *args: str) -> int:
    return main(["--weights-dir", str(weights), *map(str, args)])


@pytest.fixture
def photo(tmp_path: Path) -> Path:
    path = tmp_path / "in" / "person.jpg"
    path.parent.mkdir()
    shutil.copy(FIXTURES / PHOTOS[0], path)
    return path


@pytest.mark.parametrize("model", ["deeplab", "unet"])
def test_remove_writes_an_rgba_png_of_the_original_size(
    random_weights_dir: Path, photo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str
) -> None:
    out = tmp_path / "out.png"
    assert run(random_weights_dir, "remove", photo, "-o", out, "--model", model) == 0
    with Image.open(out) as result:
        assert (result.format, result.mode, result.size) == ("PNG", "RGBA", (200, 300))
        pixels = np.asarray(result)
    original = np.asarray(Image.open(photo).convert("RGB"))
    visible, gone = pixels[..., 3] > 0, pixels[..., 3] == 0
    assert visible.any() and gone.any()  # the random network keeps some of the photo and removes some
    # The photo's own colours wherever anything shows; nothing left of it where the background was removed.
    np.testing.assert_array_equal(pixels[..., :3][visible], original[visible])
    assert not pixels[..., :3][gone].any()
    captured = capsys.readouterr()
    assert f"{photo} -> {out}  200x300" in captured.out
    assert captured.err == ""


def test_a_folder_in_gives_a_folder_out(random_weights_dir: Path, tmp_path: Path, capsys) -> None:
    inputs = tmp_path / "photos"
    inputs.mkdir()
    for name in PHOTOS:
        shutil.copy(FIXTURES / name, inputs / name)
    (inputs / "notes.txt").write_text("not a photo, and not picked up by its suffix")
    out = tmp_path / "cutouts"
    assert run(random_weights_dir, "remove", inputs, "-o", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["person_0021.png", "person_0031.png"]
    for name in PHOTOS:
        with Image.open(out / name.replace(".jpg", ".png")) as result, Image.open(FIXTURES / name) as original:
            assert (result.mode, result.size) == ("RGBA", original.size)
    assert len(capsys.readouterr().out.splitlines()) == 2


def test_several_files_into_an_existing_folder(random_weights_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert run(random_weights_dir, "remove", *(FIXTURES / name for name in PHOTOS), "-o", out) == 0
    assert sorted(p.name for p in out.iterdir()) == ["person_0021.png", "person_0031.png"]


def test_mask_only_writes_a_greyscale_mask(random_weights_dir: Path, photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.png"
    assert run(random_weights_dir, "remove", photo, "-o", out, "--mask-only") == 0
    cutout = tmp_path / "cutout.png"
    assert run(random_weights_dir, "remove", photo, "-o", cutout) == 0
    with Image.open(out) as mask, Image.open(cutout) as rgba:
        assert (mask.mode, mask.size) == ("L", (200, 300))
        # The mask is the cut-out's own alpha: the same matte, written alone.
        np.testing.assert_array_equal(np.asarray(mask), np.asarray(rgba)[..., 3])
        assert len(np.unique(np.asarray(mask))) > 1


def test_hard_mask_is_binary(random_weights_dir: Path, photo: Path, tmp_path: Path) -> None:
    out = tmp_path / "mask.png"
    assert run(random_weights_dir, "remove", photo, "-o", out, "--mask-only", "--hard") == 0
    assert set(np.unique(np.asarray(Image.open(out)))) <= {0, 255}


def test_bg_white_fills_the_background(random_weights_dir: Path, photo: Path, tmp_path: Path) -> None:
    """--bg white: an RGB PNG, white where the cutout is transparent, the photo where it is opaque."""
    cutout_path, filled_path = tmp_path / "cutout.png", tmp_path / "white.png"
    assert run(random_weights_dir, "remove", photo, "-o", cutout_path, "--hard") == 0
    assert run(random_weights_dir, "remove", photo, "-o", filled_path, "--hard", "--bg", "white") == 0
    with Image.open(filled_path) as filled:
        assert (filled.mode, filled.size) == ("RGB", (200, 300))
        pixels = np.asarray(filled)
    cutout = np.asarray(Image.open(cutout_path))
    clear, opaque = cutout[..., 3] == 0, cutout[..., 3] == 255
    assert clear.any() and opaque.any()  # the random network's hard mask has both
    assert (pixels[clear] == 255).all()
    np.testing.assert_array_equal(pixels[opaque], cutout[..., :3][opaque])


@pytest.mark.parametrize("colour", ["not-a-colour", "rgb(300,0,0)"])
def test_bad_colour_is_a_usage_error(
    random_weights_dir: Path, photo: Path, tmp_path: Path, capsys, colour: str
) -> None:
    with pytest.raises(SystemExit) as caught:
        run(random_weights_dir, "remove", photo, "-o", tmp_path / "x.png", "--bg", colour)
    assert caught.value.code == 2
    assert f"not a colour: {colour!r}" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--max-queued-requests", "0", "must be 1 or more, not 0"),
        ("--max-ongoing-requests", "-2", "must be 1 or more, not -2"),
        ("--batch-size", "four", "not a whole number: 'four'"),
    ],
)
def test_serve_refuses_limits_below_one(capsys, flag: str, value: str, message: str) -> None:
    """Checked before Ray is imported or a cluster is touched: a usage error naming the flag."""
    with pytest.raises(SystemExit) as caught:
        main(["serve", flag, value])
    assert caught.value.code == 2
    error = capsys.readouterr().err
    assert flag in error and message in error


def test_models_lists_both_networks(random_weights_dir: Path, capsys) -> None:
    assert run(random_weights_dir, "models") == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [
        "deeplab: 16.6 M parameters, input long side 64, no validation metrics",
        "unet: 31.0 M parameters, input long side 64, no validation metrics",
    ]


def test_models_shows_validation_metrics_from_the_cards(tmp_path: Path, capsys) -> None:
    card = {
        "architecture": "deeplab",
        "inference_size": 384,
        "extra_sizes": [256],
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
        "parameters": 16614660,
        "metrics": {
            "all": {"dice": 0.9312, "iou": 0.8711},
            "people-ccp": {"dice": 0.95, "iou": 0.905},
            "no-people": {"dice": 0.0, "iou": 0.0, "kept": 0.031, "people": False},
        },
    }
    (tmp_path / "deeplab.json").write_text(json.dumps(card))
    assert run(tmp_path, "models") == 0
    out = capsys.readouterr().out
    assert "deeplab: 16.6 M parameters, input long sides 384, 256, val Dice 0.931" in out
    assert "people-ccp: Dice 0.950  IoU 0.905" in out
    assert "no-people (nobody in them): 3.1% of each photo kept" in out
    assert "unet: no weights (no model card for 'unet'" in out


def test_missing_file_is_one_line_on_stderr_and_the_rest_is_processed(
    random_weights_dir: Path, photo: Path, tmp_path: Path, capsys
) -> None:
    missing = tmp_path / "in" / "missing.jpg"
    not_image = tmp_path / "in" / "notes.jpg"
    not_image.write_text("Dear bot, this is not a photo.\n")
    out = tmp_path / "out"
    assert run(random_weights_dir, "remove", missing, not_image, photo, "-o", out) != 0
    errors = capsys.readouterr().err.splitlines()
    assert len(errors) == 2
    assert errors[0].startswith("bgremover: ") and "no such file" in errors[0] and "missing.jpg" in errors[0]
    assert errors[1].startswith("bgremover: ") and "notes.jpg" in errors[1] and "not an image format" in errors[1]
    assert sorted(p.name for p in out.iterdir()) == ["person.png"]  # the good photo was still processed


def test_non_image_alone_fails(random_weights_dir: Path, tmp_path: Path, capsys) -> None:
    fake = tmp_path / "fake.png"
    fake.write_bytes(b"%PDF-1.7\n%%EOF\n")
    assert run(random_weights_dir, "remove", fake, "-o", tmp_path / "out.png") != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith(f"bgremover: {fake}: ") and "not an image format" in err
    assert not (tmp_path / "out.png").exists()


def test_folder_without_images_fails(random_weights_dir: Path, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no photos here")
    assert run(random_weights_dir, "remove", empty, "-o", tmp_path / "out") != 0
    err = capsys.readouterr().err
    assert err.strip() == "bgremover: no images found in the given folder(s)"


def test_missing_weights_fail_with_one_line(photo: Path, tmp_path: Path, capsys) -> None:
    empty = tmp_path / "no-weights"
    empty.mkdir()
    assert run(empty, "remove", photo, "-o", tmp_path / "out.png") != 0
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert err.startswith("bgremover: no model card for 'deeplab'")


def test_python_dash_m_segmentation_runs_the_cli(
    random_weights_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    monkeypatch.setattr(sys, "argv", ["bgremover", "--weights-dir", str(random_weights_dir), "models"])
    monkeypatch.delitem(sys.modules, "segmentation.__main__", raising=False)
    with pytest.raises(SystemExit) as caught:
        runpy.run_module("segmentation", run_name="__main__")
    assert caught.value.code == 0
    assert capsys.readouterr().out.startswith("deeplab: 16.6 M parameters")
