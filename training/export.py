"""Turn a training checkpoint into shipped weights: python -m training.export runs/<run>/best.pt [--evaluate].

Writes <model>.safetensors (float16) and <model>.json (the card) into segmentation/weights (or --out-dir).
The card records the architecture, input size and normalisation, the training data with its source and
terms, the training command and config, and with --evaluate the validation scores of the exported weights
measured by training.evaluate, i.e. through the production predictor, so the card's numbers can be
reproduced with the command it names.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segmentation.models import create_model
from segmentation.predictor import Predictor
from segmentation.weights_io import IMAGENET_MEAN, IMAGENET_STD, WEIGHTS_DIR, ModelCard, WeightsError, save_weights
from training.checkpoints import load_checkpoint, served_weights
from training.config import TrainConfig
from training.data import DatasetError, pairs_for
from training.evaluate import (
    evaluate,
    evaluation_command,
    format_share_table,
    format_table,
    positive_int,
    unit_interval,
)

# What we know of the data sets this project trains on, for when a folder's README is not at hand and
# because terms of use are too important to scrape from free text.
KNOWN_DATA: dict[str, dict[str, str]] = {
    "people-ccp": {
        "source": "The Clothing Co-Parsing dataset (Yang, Luo, Lin, CVPR 2014), pixel-level annotations",
        "terms": "Apache-2.0 (the licence of the dataset repository); photos collected from the web by its authors",
    },
    "people-picsart": {
        "source": "The training set of the PicsArt AI Hackathon 2019 person-segmentation task, as published in "
        "the public repository manaleks/picsart-contest",
        "terms": "no licence accompanies it: research data",
    },
    "people-portraits": {
        "source": 'The portrait dataset of Shen et al., "Automatic Portrait Segmentation for Image Stylization" '
        "(Eurographics 2016), as published in the public repository bio-punk/AutoPortraitMatting",
        "terms": "released by its authors for academic use only",
    },
    "carvana": {
        "source": "The training set of the Kaggle Carvana Image Masking Challenge (2017)",
        "terms": "Kaggle competition data, under the rules of the Carvana Image Masking Challenge",
    },
}
CHECKPOINT_KEYS = ("config", "model", "step")


class ExportError(ValueError):
    """A checkpoint cannot be exported; the message names the file."""


def read_checkpoint(path: Path) -> dict[str, Any]:
    """Load a training checkpoint (best.pt or checkpoint.pt) onto the CPU and check its keys."""
    if not path.is_file():
        raise ExportError(f"no checkpoint at {path}")
    try:
        checkpoint = load_checkpoint(path)
    except Exception as error:  # torch.load raises many types for a corrupt or foreign file
        raise ExportError(f"cannot read checkpoint {path}: {error}") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(checkpoint, dict) or key not in checkpoint]
    if missing:
        raise ExportError(f"{path} is not a training checkpoint: it lacks {', '.join(missing)}")
    return checkpoint


def _first_sentence(text: str) -> str:
    sentence = re.split(r"(?<=[.!?])\s+(?=[A-Z\"“])", text, maxsplit=1)[0].rstrip(".")
    return sentence[:1].upper() + sentence[1:]


def readme_source(readme: Path) -> str:
    """The first sentence of a data README's "Source:" paragraph, else its first paragraph ("" without one)."""
    if not readme.is_file():
        return ""
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", readme.read_text(encoding="utf-8"))]
    paragraphs = [p for p in paragraphs if p]
    for paragraph in paragraphs:
        if paragraph.startswith("Source:"):
            return _first_sentence(paragraph.removeprefix("Source:").strip())
    return paragraphs[0].lstrip("# ").strip() if paragraphs else ""


def dataset_entry(folder: str | Path) -> dict[str, str]:
    """Name, source and terms of one training data folder, for the card."""
    folder = Path(folder)
    known = KNOWN_DATA.get(folder.name, {})
    source = readme_source(folder / "README.md") or known.get("source", "not stated")
    terms = known.get("terms", f"not stated: read {folder / 'README.md'} before shipping weights trained on it")
    return {"name": folder.name, "source": source, "terms": terms}


def training_commands(run_dir: Path) -> list[str]:
    """The commands that ran a run (the first started it, later ones resumed it), from its command.txt."""
    path = run_dir / "command.txt"
    if not path.is_file():
        return []
    commands = []
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        words = shlex.split(line)
        # The interpreter's absolute path says nothing on another machine.
        if Path(words[0]).name.startswith("python"):
            words[0] = "python"
        commands.append(shlex.join(words))
    return commands


def run_hours(run_dir: Path) -> float | None:
    """Wall-clock hours of training in a run, summed over its resumes, from its metrics log."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return None
    minutes, segment = 0.0, 0.0
    for line in path.read_text().splitlines():
        record = json.loads(line) if line.strip() else {}
        if record.get("kind") != "train":
            continue
        if record["minutes"] < segment:  # a resume restarts the clock
            minutes += segment
        segment = record["minutes"]
    return round((minutes + segment) / 60, 2)


def cumulative_training(config: TrainConfig, samples: int, hours: float | None, run_id: str = "") -> dict[str, Any]:
    """Samples, hours and data over every run behind these weights: this one plus the card it started from.

    A re-export of the same run reads what came before it from the card it is replacing, not that card's total.
    The same run is told by its run id; cards older than run ids fall back to the run's folder.
    """
    earlier: dict[str, Any] = {"samples_seen": 0, "hours": 0.0, "data": []}
    init_card = Path(config.init_from).with_suffix(".json") if config.init_from.endswith(".safetensors") else None
    if init_card is not None and init_card.is_file():
        previous = json.loads(init_card.read_text()).get("training", {})
        total = previous.get("cumulative", {})
        if previous.get("run_id") and run_id:
            same_run = previous["run_id"] == run_id
        else:
            same_run = previous.get("config", {}).get("out_dir") == config.out_dir
        earlier = total.get("earlier", earlier) if same_run else total or earlier
    data = sorted({*earlier.get("data", []), *(Path(folder).name for folder in config.data)})
    known_hours = hours is not None and earlier.get("hours") is not None
    return {
        "samples_seen": earlier.get("samples_seen", 0) + samples,
        "hours": round(earlier["hours"] + hours, 2) if known_hours else None,
        "data": data,
        "earlier": {key: earlier.get(key) for key in ("samples_seen", "hours", "data")},
    }


def build_card(checkpoint: dict[str, Any], checkpoint_path: Path) -> ModelCard:
    """The card of a checkpoint: architecture, input, normalisation, data, command and training facts."""
    config = TrainConfig.from_dict(checkpoint["config"])
    # Under torchrun a step takes a batch on each process (best.pt says how many; a checkpoint has their RNGs).
    processes = checkpoint.get("processes") or len(checkpoint.get("rng_per_rank") or [None])
    samples = checkpoint["step"] * config.batch_size * processes
    run_id = checkpoint.get("run_id", "")
    training: dict[str, Any] = {
        **({"run_id": run_id} if run_id else {}),
        "checkpoint": str(checkpoint_path),
        "steps": checkpoint["step"],
        "samples_seen": samples,
    }
    try:
        train_pairs = len(pairs_for(config.data, "train"))
        training.update(train_pairs=train_pairs, epochs=round(samples / train_pairs, 2))
    except DatasetError:
        pass  # the data is not on this machine; steps and samples still say how long it trained
    commands = training_commands(checkpoint_path.parent)
    if len(commands) > 1:
        training["commands"] = commands
    if "soup" in checkpoint:  # training.soup: the mean of these weights, each with the steps its own run trained
        training["soup"] = checkpoint["soup"]
    if "metrics" in checkpoint:
        # training.train's quick check (val_limit photos a set, no flip or second pass), apart from card.metrics.
        training["validation_during_training"] = checkpoint["metrics"]
    # A soup records the hours of its runs itself: its own folder has no metrics log.
    hours = checkpoint["hours"] if "hours" in checkpoint else run_hours(checkpoint_path.parent)
    training["cumulative"] = cumulative_training(config, samples, hours, run_id)
    training["config"] = config.to_dict()
    return ModelCard(
        architecture=config.model,
        inference_size=config.inference_size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        training_data=[dataset_entry(folder) for folder in config.data],
        training_command=commands[0] if commands else "",
        training=training,
    )


def export(
    checkpoint_path: str | Path,
    out_dir: str | Path = WEIGHTS_DIR,
    *,
    score: bool = False,
    data: list[str | Path] | None = None,
    split: str = "val",
    limit: int | None = None,
    inference_size: int | None = None,
    threshold: float | None = None,
    flip_average: bool = False,
    second_pass: bool = False,
    extra_sizes: list[int] | None = None,
    log: Callable[[str], None] = print,
) -> ModelCard:
    """Write a checkpoint's weights and card into out_dir; with score, evaluate them and record it in the card.

    data defaults to the run's own folders. Both files are written (and scored) in a temporary folder first,
    so a failure leaves out_dir as it was.
    """
    checkpoint_path, out_dir = Path(checkpoint_path), Path(out_dir)
    checkpoint = read_checkpoint(checkpoint_path)
    card = build_card(checkpoint, checkpoint_path)
    if inference_size:  # chosen on the val split after training: the run's size need not be the best to serve
        card.inference_size = inference_size
    if threshold is not None:  # likewise chosen on val: where the matte counts as person
        card.threshold = threshold
    card.flip_average = flip_average
    card.second_pass = second_pass
    card.extra_sizes = list(extra_sizes or [])
    if not card.training_command:
        log(f"warning: no {checkpoint_path.parent / 'command.txt'}; the card's training_command stays empty")
    model = create_model(card.architecture)
    try:
        model.load_state_dict(served_weights(checkpoint))
    except RuntimeError as error:
        raise ExportError(f"{checkpoint_path} does not fit the {card.architecture!r} architecture: {error}") from None
    model.eval()
    card.output_stride = getattr(model, "output_stride", None)

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as staging:
        staging_dir = Path(staging)
        tensors_path, card_path = save_weights(model, card, staging_dir)
        # Loading back through the production path checks the files before they replace anything.
        predictor = Predictor.from_weights(card.architecture, staging_dir)
        if score:
            folders = list(data) if data else list(card.training["config"]["data"])
            log(f"scoring the exported weights on the {split} split of {', '.join(map(str, folders))}")
            card.metrics = evaluate(predictor, folders, split, limit)
            shipped = out_dir.resolve() == WEIGHTS_DIR.resolve()
            card.training["evaluation"] = {
                "split": split,
                "data": [str(folder) for folder in folders],
                "limit": limit,
                "command": evaluation_command(card.architecture, folders, split, None if shipped else out_dir, limit),
            }
            card_path.write_text(card.to_json())
            log(format_table(card.metrics))
            if shares := format_share_table(card.metrics):
                log(shares)
        for path in (tensors_path, card_path):
            os.replace(path, out_dir / path.name)
            # safetensors writes its files owner-only (0600); shipped weights must be readable by the service.
            (out_dir / path.name).chmod(0o644)
    log(f"wrote {out_dir / tensors_path.name} and {out_dir / card_path.name} (step {checkpoint['step']})")
    return card


def main(argv: list[str] | None = None) -> int:
    """Command line: a checkpoint, where to write, and whether to score the result."""
    parser = argparse.ArgumentParser(prog="python -m training.export", description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path, help="runs/<run>/best.pt or runs/<run>/checkpoint.pt")
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR, help="default: the shipped segmentation/weights")
    parser.add_argument("--evaluate", action="store_true", help="score the exported weights and record it in the card")
    parser.add_argument("--data", nargs="+", help="folders to score on (default: the run's own data)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--limit", type=positive_int, help="score only the first N pairs of each set (a quick check)")
    parser.add_argument(
        "--inference-size", type=positive_int, help="long side the predictor resizes to (default: the run's)"
    )
    parser.add_argument(
        "--threshold", type=unit_interval, help="matte value from which a pixel counts as person (default 0.5)"
    )
    parser.add_argument("--flip-average", action="store_true", help="serve with test-time horizontal flip")
    parser.add_argument("--second-pass", action="store_true", help="serve with a second pass around small people")
    parser.add_argument(
        "--extra-sizes",
        type=positive_int,
        nargs="+",
        help="serve with test-time multi-scale: more long sides whose probabilities are averaged in",
    )
    args = parser.parse_args(argv)
    if (args.data or args.limit) and not args.evaluate:
        parser.error("--data and --limit choose what --evaluate scores; add --evaluate")
    try:
        export(
            args.checkpoint,
            args.out_dir,
            score=args.evaluate,
            data=args.data,
            split=args.split,
            limit=args.limit,
            inference_size=args.inference_size,
            threshold=args.threshold,
            flip_average=args.flip_average,
            second_pass=args.second_pass,
            extra_sizes=args.extra_sizes,
            log=lambda message: print(message, flush=True),
        )
    except (ExportError, WeightsError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
