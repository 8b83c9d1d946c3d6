"""Seconds the second pass on small people adds to a matte: real photos that take it, with the pass and without.

    python benchmarks/second_pass.py [--model unet] [--photos 8] [--runs 5] [--data ../shared/data/people-coco]
                                     [--weights-dir DIR]

Takes the first val photos of the set on which the shipped predictor runs its second pass, resizes each to
1280x960 (a phone photo's scale, so that the numbers compare with benchmarks/inference.py), and times the
matte alone (no decoding or encoding) with the pass and without. Prints the median over the photos of each
photo's p50. Pause any training run while it runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from PIL import Image

from segmentation.cpu import use_bf16
from segmentation.models import MODEL_NAMES
from segmentation.predictor import Predictor
from training.data import pairs_for

SIZE = (1280, 960)


def photos_taking_the_pass(predictor: Predictor, data: Path, count: int) -> list[Image.Image]:
    """The first `count` val photos (resized to SIZE) on which the predictor runs its second pass."""
    chosen = []
    for pair in pairs_for([data], "val"):
        photo = Image.open(pair.image).convert("RGB").resize(SIZE, Image.Resampling.BILINEAR)
        # The predictor's own decision, from the first pass alone: no full matte needed to know.
        if predictor.small_subject_box(predictor.predict_low_res(photo)[0], photo.size) is not None:
            chosen.append(photo)
        if len(chosen) == count:
            break
    return chosen


def p50_seconds(predictor: Predictor, photo: Image.Image, *, second_pass: bool, runs: int) -> float:
    """Median seconds of the matte of one photo over `runs` runs."""
    predictor.second_pass = second_pass
    seconds = []
    for _ in range(runs):
        started = time.perf_counter()
        predictor.predict_alpha8_timed(photo)
        seconds.append(time.perf_counter() - started)
    return statistics.median(seconds)


def main() -> None:
    """Print the matte time with and without the second pass on photos that take it."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODEL_NAMES, default="unet")
    parser.add_argument("--photos", type=int, default=8)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--data", type=Path, default=Path("../shared/data/people-coco"))
    parser.add_argument("--weights-dir", type=Path, help="default: the shipped weights")
    args = parser.parse_args()
    predictor = Predictor.from_weights(args.model, args.weights_dir)
    photos = photos_taking_the_pass(predictor, args.data, args.photos)
    if not photos:
        raise SystemExit(f"no val photo of {args.data} takes the second pass with {args.model}")
    without = statistics.median(p50_seconds(predictor, p, second_pass=False, runs=args.runs) for p in photos)
    with_pass = statistics.median(p50_seconds(predictor, p, second_pass=True, runs=args.runs) for p in photos)
    print(
        f"{args.model} (bf16 autocast: {use_bf16()}), {len(photos)} photos at {SIZE[0]}x{SIZE[1]}: matte "
        f"{without:.3f} s without the second pass, {with_pass:.3f} s with it (median of per-photo p50s)"
    )


if __name__ == "__main__":
    main()
