"""A before/after picture of cut-outs on photos unlike any training set, for the README.

python -m training.showcase --model deeplab --before DIR --after DIR --photos a.jpg b.png ... --out docs/x.jpg

Each row: the photo, the cut-out by the weights in --before, the cut-out by the weights in --after, each
on a grey checkerboard so that what is kept, dropped and half-transparent can be seen.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from segmentation.decoding import decode_image
from segmentation.predictor import Predictor

TILE_HEIGHT = 240


def checkerboard(width: int, height: int, square: int = 12) -> Image.Image:
    """Light and dark grey squares: the usual way to show transparency."""
    ys, xs = np.mgrid[0:height, 0:width]
    light = ((ys // square + xs // square) % 2 == 0)[..., None]
    return Image.fromarray(np.where(light, 205, 150).astype(np.uint8).repeat(3, axis=2))


def cutout_tile(image: Image.Image, predictor: Predictor) -> Image.Image:
    """The photo's cut-out by one predictor over a checkerboard, at the tile size."""
    alpha = Image.fromarray((predictor.predict_alpha(image) * 255 + 0.5).astype(np.uint8))
    tile = checkerboard(*image.size)
    tile.paste(image, mask=alpha)
    return tile


def showcase(photos: list[Path], before: Predictor, after: Predictor, labels: tuple[str, str]) -> Image.Image:
    """Rows of photo | before | after, each scaled to TILE_HEIGHT, with a header naming the columns."""
    rows = []
    for path in photos:
        image = decode_image(path)
        scale = TILE_HEIGHT / image.height
        size = (max(1, round(image.width * scale)), TILE_HEIGHT)
        tiles = [image, cutout_tile(image, before), cutout_tile(image, after)]
        rows.append([tile.resize(size, Image.Resampling.LANCZOS) for tile in tiles])
    width = max(sum(tile.width for tile in row) + 4 * 8 for row in rows)
    header = 26
    canvas = Image.new("RGB", (width, header + len(rows) * (TILE_HEIGHT + 8)), "white")
    draw = ImageDraw.Draw(canvas)
    top = header
    for row in rows:
        left = 8
        for tile in row:
            canvas.paste(tile, (left, top))
            left += tile.width + 8
        top += TILE_HEIGHT + 8
    first = rows[0]
    for column, text in enumerate(("photo", *labels)):
        draw.text((8 + sum(tile.width + 8 for tile in first[:column]), 6), text, fill="black")
    return canvas


def main(argv: list[str] | None = None) -> None:
    """Command line: the model, two weights folders, the photos and where to write the picture."""
    parser = argparse.ArgumentParser(prog="python -m training.showcase", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--before", type=Path, required=True, help="weights folder of the earlier network")
    parser.add_argument("--after", type=Path, help="weights folder of the later one (default: the shipped)")
    parser.add_argument("--labels", nargs=2, default=("before", "after"))
    parser.add_argument("--photos", type=Path, nargs="+", required=True)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    before = Predictor.from_weights(args.model, args.before)
    after = Predictor.from_weights(args.model, args.after)
    picture = showcase(args.photos, before, after, tuple(args.labels))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    picture.save(args.out, quality=85)
    print(f"wrote {args.out} ({picture.width}x{picture.height})")


if __name__ == "__main__":
    main()
