"""decode_image: every mode and format Pillow opens becomes an upright RGB photo; anything else a clear error."""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, features

from segmentation.decoding import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    ImageHeader,
    ImageTooLargeError,
    InputImageError,
    UnsupportedImageError,
    decode_image,
    read_header,
)

SIZE = (7, 5)  # odd and not square, so a transposed size would show


def encode(image: Image.Image, format: str, **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format, **params)
    return buffer.getvalue()


def _palette_image(transparent: bool) -> Image.Image:
    """A P image: index 0 (red) on the left column, index 1 (blue) elsewhere; index 0 transparent if asked."""
    image = Image.new("P", SIZE, 1)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0, 0, 0] * 254)
    for y in range(SIZE[1]):
        image.putpixel((0, y), 0)
    if transparent:
        image.info["transparency"] = 0
    return image


def _left_column_transparent(mode: str, opaque: tuple[int, ...], clear: tuple[int, ...]) -> Image.Image:
    image = Image.new(mode, SIZE, opaque)
    for y in range(SIZE[1]):
        image.putpixel((0, y), clear)
    return image


# (id, encoded file, expected RGB at (0, 0), expected RGB at (SIZE[0] - 1, 0), tolerance)
MODE_CASES: list[tuple[str, Callable[[], bytes], tuple[int, int, int], tuple[int, int, int], int]] = [
    ("1-png", lambda: encode(Image.new("1", SIZE, 1), "PNG"), (255, 255, 255), (255, 255, 255), 0),
    ("L-png", lambda: encode(Image.new("L", SIZE, 100), "PNG"), (100, 100, 100), (100, 100, 100), 0),
    ("P-png", lambda: encode(_palette_image(False), "PNG"), (255, 0, 0), (0, 0, 255), 0),
    ("P-png-transparency", lambda: encode(_palette_image(True), "PNG"), (255, 255, 255), (0, 0, 255), 0),
    (
        "RGBA-png",
        lambda: encode(_left_column_transparent("RGBA", (10, 20, 30, 255), (200, 0, 0, 0)), "PNG"),
        (255, 255, 255),
        (10, 20, 30),
        0,
    ),
    (
        "LA-png",
        lambda: encode(_left_column_transparent("LA", (40, 255), (0, 0)), "PNG"),
        (255, 255, 255),
        (40, 40, 40),
        0,
    ),
    (
        "CMYK-jpeg",
        lambda: encode(Image.new("CMYK", SIZE, (255, 0, 0, 0)), "JPEG", quality=95),
        (0, 255, 255),
        (0, 255, 255),
        3,
    ),
    # A 16-bit PNG opens as I;16; half of full scale must come out mid grey, not clipped white.
    (
        "I;16-png",
        lambda: encode(Image.fromarray(np.full(SIZE[::-1], 32768, np.uint16)), "PNG"),
        (128, 128, 128),
        (128, 128, 128),
        0,
    ),
    ("I;16B-tiff", lambda: encode(Image.new("I;16B", SIZE, 65535), "TIFF"), (255, 255, 255), (255, 255, 255), 0),
    (
        "I-tiff",
        lambda: encode(Image.fromarray(np.full(SIZE[::-1], 40000, np.int32)), "TIFF"),
        (156, 156, 156),
        (156, 156, 156),
        0,
    ),
    (
        "F-tiff-unit",
        lambda: encode(Image.fromarray(np.full(SIZE[::-1], 0.5, np.float32)), "TIFF"),
        (128, 128, 128),
        (128, 128, 128),
        1,
    ),
    (
        "F-tiff-255",
        lambda: encode(Image.fromarray(np.full(SIZE[::-1], 200.0, np.float32)), "TIFF"),
        (200, 200, 200),
        (200, 200, 200),
        1,
    ),
    ("LAB-tiff", lambda: encode(Image.new("LAB", SIZE, (128, 128, 128)), "TIFF"), (119, 119, 119), (119, 119, 119), 2),
    ("YCbCr-tiff", lambda: encode(Image.new("YCbCr", SIZE, (90, 128, 128)), "TIFF"), (90, 90, 90), (90, 90, 90), 1),
    ("RGB-webp", lambda: encode(Image.new("RGB", SIZE, (1, 2, 3)), "WEBP", lossless=True), (1, 2, 3), (1, 2, 3), 0),
    (
        "RGBA-webp",
        lambda: encode(_left_column_transparent("RGBA", (10, 20, 30, 255), (0, 0, 0, 0)), "WEBP", lossless=True),
        (255, 255, 255),
        (10, 20, 30),
        0,
    ),
    ("P-gif", lambda: encode(_palette_image(False), "GIF"), (255, 0, 0), (0, 0, 255), 0),
    (
        "P-gif-transparency",
        lambda: encode(_palette_image(True), "GIF", transparency=0),
        (255, 255, 255),
        (0, 0, 255),
        0,
    ),
    # Colour-key transparency (a tRNS chunk on an L or RGB PNG) also becomes white.
    (
        "L-png-transparency",
        lambda: encode(_left_column_transparent("L", (90,), (0,)), "PNG", transparency=0),
        (255, 255, 255),
        (90, 90, 90),
        0,
    ),
    (
        "RGB-png-transparency",
        lambda: encode(_left_column_transparent("RGB", (90, 1, 2), (0, 0, 0)), "PNG", transparency=(0, 0, 0)),
        (255, 255, 255),
        (90, 1, 2),
        0,
    ),
    ("RGB-bmp", lambda: encode(Image.new("RGB", SIZE, (200, 20, 30)), "BMP"), (200, 20, 30), (200, 20, 30), 0),
    (
        "RGB-jpeg",
        lambda: encode(Image.new("RGB", SIZE, (200, 20, 30)), "JPEG", quality=95),
        (200, 20, 30),
        (200, 20, 30),
        4,
    ),
    ("I-pgm-16bit", lambda: encode(Image.new("I", SIZE, 65535), "PPM"), (255, 255, 255), (255, 255, 255), 0),
]
if features.check("avif"):
    MODE_CASES.append(
        (
            "RGB-avif",
            lambda: encode(Image.new("RGB", SIZE, (200, 20, 30)), "AVIF", quality=95),
            (200, 20, 30),
            (200, 20, 30),
            6,
        )
    )


@pytest.mark.parametrize(
    ("encoded", "left", "right", "tolerance"), [case[1:] for case in MODE_CASES], ids=[case[0] for case in MODE_CASES]
)
def test_every_mode_decodes_to_rgb_of_the_same_size(
    encoded: Callable[[], bytes], left: tuple[int, int, int], right: tuple[int, int, int], tolerance: int
) -> None:
    """Right mode, right size, right colours; transparent pixels become white."""
    image = decode_image(encoded())
    assert image.mode == "RGB"
    assert image.size == SIZE
    pixels = np.asarray(image).astype(int)
    np.testing.assert_allclose(pixels[0, 0], left, atol=tolerance)
    np.testing.assert_allclose(pixels[0, -1], right, atol=tolerance)


def test_exif_orientation_is_applied() -> None:
    """Orientation 6 (rotate 90 degrees clockwise to view): size transposed, top-left corner moves top-right."""
    stored = Image.new("RGB", (64, 32), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 16, 16))  # a red block in the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6
    image = decode_image(encode(stored, "JPEG", quality=95, exif=exif.tobytes()))
    assert image.size == (32, 64)
    pixels = np.asarray(image).astype(int)
    np.testing.assert_allclose(pixels[8, 32 - 8], (255, 0, 0), atol=12)  # red now at the top right
    np.testing.assert_allclose(pixels[8, 8], (0, 0, 255), atol=12)
    np.testing.assert_allclose(pixels[64 - 8, 32 - 8], (0, 0, 255), atol=12)


def _jpeg_with_damaged_exif(*changes: tuple[int, int]) -> bytes:
    """A JPEG with an EXIF block (orientation 6 and a maker string) whose bytes at the given offsets are replaced."""
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Camera maker name"
    data = bytearray(encode(Image.new("RGB", (16, 12), (10, 200, 30)), "JPEG", exif=exif.tobytes()))
    start = data.index(b"Exif\x00\x00")
    for offset, value in changes:
        data[start + offset] = value
    return bytes(data)


@pytest.mark.parametrize("changes", [[(17, 64)], [(17, 26), (59, 203)]], ids=["bad-tag-type", "bad-type-and-value"])
def test_damaged_exif_does_not_cost_a_decodable_photo(changes: list[tuple[int, int]]) -> None:
    """Pillow's exif_transpose raises struct.error / TypeError on these; the photo itself is fine."""
    image = decode_image(_jpeg_with_damaged_exif(*changes))
    assert image.mode == "RGB"
    assert image.size in {(16, 12), (12, 16)}
    np.testing.assert_allclose(np.asarray(image)[5, 5], (10, 200, 30), atol=12)


def test_corrupt_avif_is_refused_as_corrupt() -> None:
    if not features.check("avif"):
        pytest.skip("this Pillow has no AVIF support")
    data = encode(Image.new("RGB", (16, 12), (200, 20, 30)), "AVIF").replace(b"iloc", b"xxxx", 1)
    with pytest.raises(UnsupportedImageError, match="corrupt or truncated"):
        decode_image(data)


@pytest.mark.filterwarnings("ignore::UserWarning")  # Pillow warns about the damaged metadata it skips
def test_randomly_damaged_files_decode_or_fail_cleanly() -> None:
    """A seeded fuzz: flipped and truncated bytes give an RGB image or an InputImageError, never anything else."""
    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, size=(12, 16, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    exif[0x010F] = "Camera maker name"
    originals = [
        encode(photo, "JPEG", exif=exif.tobytes()),
        encode(photo.convert("P"), "PNG", transparency=3),
        encode(photo, "GIF"),
        encode(photo.convert("RGBA"), "WEBP"),
        encode(photo, "TIFF", compression="tiff_lzw"),
    ]
    if features.check("avif"):
        originals.append(encode(photo, "AVIF"))
    unexpected = []
    for original in originals:
        for _ in range(150):
            data = bytearray(original)
            for index in rng.integers(0, len(data), size=rng.integers(1, 4)):
                data[index] = rng.integers(0, 256)
            if rng.random() < 0.2:
                data = data[: rng.integers(1, len(data))]
            try:
                assert decode_image(bytes(data)).mode == "RGB"
            except InputImageError:
                pass
            except Exception as error:
                unexpected.append(f"{original[:4]!r}: {type(error).__name__}: {error}")
    assert not unexpected, unexpected[:5]


def test_paths_and_file_objects_decode_like_bytes(tmp_path: Path, sample_photo_bytes: bytes) -> None:
    path = tmp_path / "photo.jpg"
    path.write_bytes(sample_photo_bytes)
    from_bytes = np.asarray(decode_image(sample_photo_bytes))
    np.testing.assert_array_equal(np.asarray(decode_image(path)), from_bytes)
    np.testing.assert_array_equal(np.asarray(decode_image(str(path))), from_bytes)
    np.testing.assert_array_equal(np.asarray(decode_image(io.BytesIO(sample_photo_bytes))), from_bytes)
    assert from_bytes.shape == (300, 200, 3)


def _corrupt_png() -> bytes:
    png = encode(Image.new("RGB", (40, 30), (1, 2, 3)), "PNG")
    return png[:8] + bytes(range(256))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        pytest.param(lambda photo: b"", "the file is empty", id="empty"),
        pytest.param(lambda photo: bytes(range(256)) * 4, "not an image format", id="random-bytes"),
        pytest.param(lambda photo: _corrupt_png(), "not an image format", id="png-signature-then-garbage"),
        pytest.param(lambda photo: photo[: len(photo) // 2], "corrupt or truncated", id="truncated-jpeg"),
        pytest.param(lambda photo: photo[:300], "corrupt or truncated", id="jpeg-header-only"),
        pytest.param(
            lambda photo: b"%PDF-1.7\n1 0 obj\n<< /Type /Catalog >>\nendobj\n%%EOF\n", "not an image format", id="pdf"
        ),
        pytest.param(lambda photo: b"Dear bot,\nplease remove my background.\n" * 5, "not an image format", id="text"),
    ],
)
def test_bad_input_is_refused_with_a_specific_message(
    sample_photo_bytes: bytes, make: Callable[[bytes], bytes], message: str
) -> None:
    with pytest.raises(UnsupportedImageError, match=message):
        decode_image(make(sample_photo_bytes))


def test_missing_path_and_folder_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UnsupportedImageError, match="no such file"):
        decode_image(tmp_path / "missing.jpg")
    with pytest.raises(UnsupportedImageError, match="is a folder"):
        decode_image(tmp_path)


def test_pixel_count_over_the_limit_is_refused() -> None:
    data = encode(Image.new("RGB", (100, 50)), "PNG")
    assert decode_image(data, max_pixels=5000).size == (100, 50)  # exactly at the limit is fine
    with pytest.raises(ImageTooLargeError, match=re.escape("the limit is 0.004999 megapixels")) as caught:
        decode_image(data, max_pixels=4999)
    assert (caught.value.pixels, caught.value.limit) == (5000, 4999)


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height but which carries almost no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )


@pytest.fixture
def no_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make any attempt to decode pixel data fail the test loudly."""

    def refuse(self: ImageFile.ImageFile) -> None:
        raise AssertionError("decode_image decoded pixels of an image it should have refused")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)


@pytest.mark.parametrize(
    ("width", "height", "pixels"),
    [(8000, 6000, 48_000_000), (100_000, 100_000, None)],  # over our limit; over Pillow's bomb limit too
)
def test_png_claiming_a_huge_size_is_refused_without_decoding(
    no_decoding: None, width: int, height: int, pixels: int | None
) -> None:
    with pytest.raises(ImageTooLargeError, match="megapixels") as caught:
        decode_image(_png_header_claiming(width, height))
    assert caught.value.pixels == pixels
    assert caught.value.limit == DEFAULT_MAX_PIXELS


def test_small_png_with_the_same_missing_data_is_merely_corrupt() -> None:
    """The control for the test above: a plausible size does get decoded, and the missing data is noticed."""
    with pytest.raises(UnsupportedImageError, match="corrupt or truncated"):
        decode_image(_png_header_claiming(64, 64))


def test_real_large_image_over_the_default_limit_is_refused() -> None:
    """A genuine 45-megapixel bilevel PNG (cheap to make) is refused with its pixel count."""
    data = encode(Image.new("1", (9000, 5000)), "PNG")
    with pytest.raises(ImageTooLargeError, match=re.escape("45.0 megapixels; the limit is 40 megapixels")):
        decode_image(data)


def test_read_header_gives_format_and_size_without_decoding(no_decoding: None) -> None:
    header = read_header(encode(Image.new("RGB", (40, 30), (1, 2, 3)), "PNG"))
    assert header == ImageHeader(format="PNG", width=40, height=30)
    assert header.pixels == 1200
    gif = read_header(encode(_palette_image(False), "GIF"))
    assert (gif.format, gif.width, gif.height) == ("GIF", *SIZE)


def test_read_header_applies_a_quarter_turn_from_exif() -> None:
    exif = Image.Exif()
    exif[0x0112] = 6
    data = encode(Image.new("RGB", (64, 32)), "JPEG", exif=exif.tobytes())
    assert read_header(data) == ImageHeader(format="JPEG", width=32, height=64)
    assert read_header(data).width == decode_image(data).width  # the header agrees with decoding


@pytest.mark.parametrize(
    ("data", "error", "message"),
    [
        pytest.param(b"", UnsupportedImageError, "the file is empty", id="empty"),
        pytest.param(b"Dear bot,\nplease remove my background.\n", UnsupportedImageError, "not an image", id="text"),
        pytest.param(_png_header_claiming(8000, 6000), ImageTooLargeError, "48.0 megapixels", id="over-limit"),
        pytest.param(_png_header_claiming(100_000, 100_000), ImageTooLargeError, "more megapixels", id="bomb"),
        pytest.param(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR", UnsupportedImageError, "corrupt or truncated", id="cut-header"),
    ],
)
def test_read_header_refuses_like_decode_image(
    no_decoding: None, data: bytes, error: type[InputImageError], message: str
) -> None:
    with pytest.raises(error, match=message):
        read_header(data)
    with pytest.raises(error, match=message):
        decode_image(data)


def test_read_header_honours_the_limit_and_reads_paths(tmp_path: Path) -> None:
    path = tmp_path / "photo.png"
    path.write_bytes(encode(Image.new("L", (100, 50)), "PNG"))
    assert read_header(path, max_pixels=5000).pixels == 5000
    with pytest.raises(ImageTooLargeError):
        read_header(path, max_pixels=4999)
    with pytest.raises(UnsupportedImageError, match="no such file"):
        read_header(tmp_path / "missing.png")


def test_image_extensions_come_from_pillows_registry() -> None:
    assert {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"} <= IMAGE_EXTENSIONS
    assert ".pdf" not in IMAGE_EXTENSIONS  # Pillow writes PDF but cannot open it
    assert ".h5" not in IMAGE_EXTENSIONS  # a stub format: it needs an external handler
    if features.check("avif"):
        assert ".avif" in IMAGE_EXTENSIONS
    assert all(suffix.startswith(".") and suffix == suffix.lower() for suffix in IMAGE_EXTENSIONS)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_tiff_with_nan_or_infinity_is_refused_clearly(bad: float) -> None:
    values = np.full(SIZE[::-1], 0.5, np.float32)
    values[2, 3] = bad
    data = encode(Image.fromarray(values), "TIFF")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy RuntimeWarning on the way either
        with pytest.raises(UnsupportedImageError, match="invalid values"):
            decode_image(data)


def _icc_header(colour_space: bytes) -> bytes:
    """The 128-byte header of an ICC profile declaring a data colour space (enough for the check)."""
    header = bytearray(128)
    header[16:20] = colour_space
    header[36:40] = b"acsp"
    return bytes(header)


@pytest.mark.parametrize(
    ("mode", "colour", "profile", "kept"),
    [
        ("CMYK", (0, 255, 0, 0), _icc_header(b"CMYK"), False),
        ("L", (90,), _icc_header(b"GRAY"), False),
        ("RGB", (200, 30, 30), _icc_header(b"RGB "), True),
    ],
    ids=["cmyk-profile-dropped", "grey-profile-dropped", "rgb-profile-kept"],
)
def test_only_an_rgb_colour_profile_reaches_the_cutout(
    mode: str, colour: tuple[int, ...], profile: bytes, kept: bool
) -> None:
    """A CMYK or grey profile on the RGB result would make viewers show wrong colours; an RGB one keeps them true."""
    from segmentation.rendering import compose_png

    image = decode_image(encode(Image.new(mode, SIZE, colour), "JPEG", quality=95, icc_profile=profile))
    assert image.mode == "RGB"
    png = Image.open(io.BytesIO(compose_png(image, np.ones(SIZE[::-1], np.float32))))
    assert (png.info.get("icc_profile") == profile) is kept
    assert ("icc_profile" in png.info) is kept
