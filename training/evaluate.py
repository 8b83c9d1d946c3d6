"""Score the production predictor on a split: python -m training.evaluate --model deeplab --data DIR [DIR ...].

Unlike the quick validation inside the training loop, this runs exactly what the service runs: the shipped
(or given) weights through `segmentation.predictor.Predictor` at its default settings, on photos decoded by
`segmentation.decoding.decode_image`, scored at each photo's full resolution. Its numbers are the ones that
`training.export --evaluate` writes into a weights card.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from PIL import Image
from scipy import ndimage

from segmentation.decoding import decode_image
from segmentation.models import MODEL_NAMES
from segmentation.pipeline import MIN_PERSON_FRACTION
from segmentation.predictor import Predictor
from training.data import DatasetError, PairPath, pairs_for, read_mask
from training.metrics import MaskScores, mean_scores, score_masks

ALL = "all"  # the key of the scores over every photo of every set with people
VEIL_BAND = 0.02  # semi-transparency farther than this share of the diagonal from an outline is a veil
# Edges of the bins of the people's share of the frame (true mask) for the by-size breakdown: issue 7's
# "people at any size", from a figure in the distance to a close-up. The last bin includes its edge.
PEOPLE_SHARE_BINS = (0.0, 0.01, 0.03, 0.10, 0.30, 1.0)


class MattePredictor(Protocol):
    """What evaluation needs of a predictor: a full-size alpha matte for an RGB photo, and its threshold."""

    threshold: float

    def predict_alpha(self, image: Image.Image) -> np.ndarray:
        """The alpha matte, HxW float in [0, 1], at the photo's size."""
        ...


@dataclass(frozen=True)
class PhotoScores:
    """Everything measured on one photo: the mask scores, the veil, and whether a person was reported."""

    masks: MaskScores
    veil: float
    person_found: bool  # what the service would report: a person covers at least MIN_PERSON_FRACTION
    has_person: bool  # what the true mask says
    people_share: float  # the share of the frame the true mask covers


def outline(mask: np.ndarray) -> np.ndarray:
    """The person outline: mask pixels with at least one background pixel among their four neighbours."""
    padded = np.pad(mask, 1, mode="edge")
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    return mask & ~inner


def veil(alpha: np.ndarray, truth: np.ndarray, band: float = VEIL_BAND) -> float:
    """Share of the photo that is semi-transparent (alpha strictly between 10% and 90%) away from any outline.

    "Away" is farther than `band` times the image diagonal from the true person outline; on a photo with
    nobody in it every pixel is away. Soft alpha belongs on hair and edges, not over the background.
    """
    soft = (alpha > 0.1) & (alpha < 0.9)
    if not soft.any():
        return 0.0
    edges = outline(truth)
    if not edges.any():
        return float(soft.mean())
    distance = ndimage.distance_transform_edt(~edges)
    radius = band * float(np.hypot(*truth.shape))
    return float((soft & (distance > radius)).mean())


def score_photo(predictor: MattePredictor, pair: PairPath) -> PhotoScores:
    """Decode one photo as the service does, predict its matte, and score it against the true mask."""
    image = decode_image(pair.image)
    truth = read_mask(pair)  # turned upright with the photo, as decode_image turns it
    alpha = np.asarray(predictor.predict_alpha(image), dtype=np.float32)
    predicted = alpha >= predictor.threshold
    return PhotoScores(
        masks=score_masks(predicted, truth),
        veil=veil(alpha, truth),
        person_found=bool(predicted.mean() >= MIN_PERSON_FRACTION),
        has_person=bool(truth.any()),
        people_share=float(truth.mean()),
    )


def summarise(scores: list[PhotoScores]) -> dict[str, Any]:
    """Means over photos: Dice, IoU, pixel accuracy, share kept, veil, and the share reported as nobody."""
    return {
        **mean_scores([score.masks for score in scores]),
        "veil": float(np.mean([score.veil for score in scores])),
        "no_person_reported": float(np.mean([not score.person_found for score in scores])),
    }


def share_label(low: float, high: float) -> str:
    """A bin's name in reports: "3-10%"."""
    return f"{low * 100:g}-{high * 100:g}%"


def by_people_share(scores: list[PhotoScores]) -> dict[str, dict[str, Any]]:
    """summarise's figures per bin of the people's share of the frame (photos with people; empty bins left out).

    Where a set's mean hides its misses: an everyday scene whose only person fills 1% of the frame counts as
    much in the mean as a close-up, and a network that sees only close-ups can look fair on average.
    """
    breakdown: dict[str, dict[str, Any]] = {}
    edges = PEOPLE_SHARE_BINS
    for low, high in pairwise(edges):
        last = high == edges[-1]
        chosen = [
            score
            for score in scores
            if score.has_person and low <= score.people_share and (score.people_share < high or last)
        ]
        if chosen:
            breakdown[share_label(low, high)] = summarise(chosen)
    return breakdown


def evaluate(
    predictor: MattePredictor,
    roots: list[str | Path],
    split: str = "val",
    limit: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Scores per set (folder name) and over the photos of every set with people in it ("all").

    A set whose masks are all empty (photos with nobody) is reported on its own and left out of "all":
    there the figures that matter are the share of each photo kept and how often "no person" is reported.
    limit keeps the first N pairs of each set's split list, for a quick check.
    """
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be at least 1, not {limit}")
    chosen: dict[str, list[PairPath]] = {}
    for pair in pairs_for(list(roots), split):
        group = chosen.setdefault(pair.source, [])
        if limit is None or len(group) < limit:
            group.append(pair)
    if ALL in chosen:
        raise DatasetError(f"a data folder is named {ALL!r}, which the report uses for the total; rename it")
    total = sum(len(group) for group in chosen.values())
    done = 0
    by_source: dict[str, list[PhotoScores]] = {}
    with_people: set[str] = set()
    for source, group in chosen.items():
        for pair in group:
            scores = score_photo(predictor, pair)
            by_source.setdefault(source, []).append(scores)
            if scores.has_person:
                with_people.add(source)
            done += 1
            if progress is not None:
                progress(done, total)
    report: dict[str, dict[str, Any]] = {}
    for source, scores in by_source.items():
        report[source] = {**summarise(scores), "people": source in with_people}
        if source in with_people:
            report[source]["by_people_share"] = by_people_share(scores)
    people = [score for source in by_source if source in with_people for score in by_source[source]]
    if people:
        # Over photos, not the mean of the set means: a set weighs as much as it has photos.
        report[ALL] = {**summarise(people), "people": True, "by_people_share": by_people_share(people)}
    return report


def format_table(report: dict[str, dict[str, Any]]) -> str:
    """The report as an aligned text table, one row per set and the people sets' total last."""
    width = max(len("set"), *(len(name) for name in report))
    header = (
        f"{'set':<{width}}  {'images':>6}  {'Dice':>6}  {'IoU':>6}  {'pixel acc':>9}  {'kept':>6}  {'veil':>6}"
        f"  {'no person':>9}"
    )
    lines = [header, "-" * len(header)]
    names = [name for name in report if name != ALL] + ([ALL] if ALL in report else [])
    for name in names:
        if name == ALL and len(names) > 1:
            lines.append("-" * len(header))
        row = report[name]
        scores = (
            f"{row['dice']:>6.4f}  {row['iou']:>6.4f}  {row['pixel_accuracy']:>9.4f}  {row['kept']:>6.4f}"
            f"  {row['veil']:>6.4f}  {row['no_person_reported']:>9.3f}"
        )
        lines.append(f"{name:<{width}}  {row['images']:>6}  {scores}")
    return "\n".join(lines)


def format_share_table(report: dict[str, dict[str, Any]]) -> str:
    """IoU per bin of the people's share of the frame, one row per set with people ("" if there is none)."""
    names = [name for name, row in report.items() if row.get("by_people_share")]
    if not names:
        return ""
    edges = PEOPLE_SHARE_BINS
    labels = [share_label(low, high) for low, high in pairwise(edges)]
    title = "IoU by people's share"
    width = max(len(title), *(len(name) for name in names))
    lines = [f"{title:<{width}}" + "".join(f"  {label:>12}" for label in labels)]
    for name in names:
        bins = report[name]["by_people_share"]
        cells = [f"{bins[label]['iou']:.3f} ({bins[label]['images']})" if label in bins else "-" for label in labels]
        lines.append(f"{name:<{width}}" + "".join(f"  {cell:>12}" for cell in cells))
    return "\n".join(lines)


def evaluation_command(
    model: str,
    roots: list[str | Path],
    split: str,
    weights_dir: Path | None,
    limit: int | None,
    *,
    threshold: float | None = None,
    second_pass: bool | None = None,
    inference_size: int | None = None,
    extra_sizes: list[int] | None = None,
) -> str:
    """The command line that reproduces an evaluation (written into weights cards)."""
    parts = ["python -m training.evaluate", f"--model {model}", "--data", *map(str, roots), f"--split {split}"]
    if weights_dir is not None:
        parts.append(f"--weights-dir {weights_dir}")
    if limit is not None:
        parts.append(f"--limit {limit}")
    if threshold is not None:
        parts.append(f"--threshold {threshold}")
    if second_pass is not None:
        parts.append("--second-pass" if second_pass else "--no-second-pass")
    if inference_size is not None:
        parts.append(f"--inference-size {inference_size}")
    if extra_sizes is not None:
        parts.append(f"--extra-sizes {' '.join(map(str, extra_sizes))}".rstrip())
    return " ".join(parts)


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def unit_interval(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1."""
    value = float(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, not {value}")
    return value


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Command line: load the predictor, score it, print the table, optionally write JSON."""
    parser = argparse.ArgumentParser(prog="python -m training.evaluate", description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, choices=MODEL_NAMES)
    parser.add_argument("--data", nargs="+", required=True, help="dataset folders (people_segmentation or Carvana)")
    parser.add_argument("--split", default="val")
    parser.add_argument(
        "--weights-dir",
        type=Path,
        help="folder with <model>.safetensors and <model>.json (default: the weights shipped in segmentation/weights)",
    )
    parser.add_argument("--json", type=Path, help="also write the report to this JSON file")
    parser.add_argument("--limit", type=positive_int, help="score only the first N pairs of each set")
    # Overrides of the card, so that a threshold, the second pass or a size can be tried without a copy of the weights.
    parser.add_argument("--threshold", type=unit_interval, help="score at this threshold instead of the card's")
    parser.add_argument(
        "--second-pass",
        action=argparse.BooleanOptionalAction,
        help="run (or skip) the second pass on small people, whatever the card says",
    )
    parser.add_argument(
        "--inference-size", type=positive_int, help="resize photos to this long side instead of the card's"
    )
    parser.add_argument(
        "--extra-sizes",
        type=positive_int,
        nargs="*",
        help="more long sides whose probabilities are averaged in, instead of the card's (none: --extra-sizes alone)",
    )
    args = parser.parse_args(argv)

    predictor = Predictor.from_weights(args.model, args.weights_dir)
    card = predictor.card
    if args.threshold is not None:
        card.threshold = args.threshold
    if args.second_pass is not None:
        predictor.second_pass = args.second_pass
    if args.inference_size is not None:
        card.inference_size = args.inference_size
    if args.extra_sizes is not None:
        card.extra_sizes = args.extra_sizes
    extra = f" averaged with {', '.join(map(str, card.extra_sizes))}" if card.extra_sizes else ""
    print(
        f"{args.model}: inference size {card.inference_size}{extra}, threshold {card.threshold}, "
        f"second pass {'on' if predictor.second_pass else 'off'}, "
        f"{args.split} split of {', '.join(Path(root).name for root in args.data)}",
        file=sys.stderr,
    )
    started = time.perf_counter()

    def progress(done: int, total: int) -> None:
        if done % 50 == 0 or done == total:
            print(f"  {done}/{total} images", file=sys.stderr, flush=True)

    report = evaluate(predictor, args.data, args.split, args.limit, progress=progress)
    seconds = time.perf_counter() - started
    print(format_table(report))
    if shares := format_share_table(report):
        print(shares)
    images = sum(row["images"] for name, row in report.items() if name != ALL)  # "all" holds only people sets
    print(f"{images} images in {seconds:.1f} s ({seconds / images:.3f} s per image)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "model": args.model,
                    "weights_dir": str(args.weights_dir) if args.weights_dir else None,
                    "split": args.split,
                    "data": [str(root) for root in args.data],
                    "limit": args.limit,
                    "threshold": card.threshold,
                    "second_pass": predictor.second_pass,
                    "inference_size": card.inference_size,
                    "extra_sizes": card.extra_sizes,
                    "metrics": report,
                    "command": evaluation_command(
                        args.model,
                        args.data,
                        args.split,
                        args.weights_dir,
                        args.limit,
                        threshold=args.threshold,
                        second_pass=args.second_pass,
                        inference_size=args.inference_size,
                        extra_sizes=args.extra_sizes,
                    ),
                },
                indent=2,
            )
            + "\n"
        )
    return report


if __name__ == "__main__":
    main()
