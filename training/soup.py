"""Average the weights of several runs of one network: a uniform "model soup" (Wortsman et al., ICML 2022).

Runs warm-started from the same weights stay in one basin of the loss, and the mean of their weights is
often better on photos none of them trained on than any one of them, at no cost when serving:

    python -m training.soup runs/unet_soup segmentation/weights/unet.safetensors runs/a/best.pt runs/b/best.pt
    python -m training.export runs/unet_soup/best.pt --evaluate ...

Ingredients are run checkpoints (.pt) or shipped weights (.safetensors beside their .json card). A run's
checkpoint.pt stands for its moving average where it kept one, as its best.pt does; --raw-weights takes the
weights the optimiser left instead (of a short run, whose average is still mostly its starting point). The soup is
written as OUT_DIR/best.pt, which training.export reads like any run's: its config is the first ingredient's,
its steps are those trained in the .pt ingredients, and its card names every ingredient.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

from training.checkpoints import load_checkpoint, save_atomically, served_weights
from training.config import TrainConfig
from training.export import run_hours


@dataclass
class Ingredient:
    """One set of weights going into a soup, with what it says about itself."""

    path: Path
    state: dict[str, torch.Tensor]
    config: dict[str, Any]
    steps: int  # trained in this run; 0 for shipped weights, whose training the card already counts
    hours: float | None  # wall-clock hours of that training, from the run's metrics log; None when unknown


def read_ingredient(path: str | Path, *, raw: bool = False) -> Ingredient:
    """Weights and config of a run checkpoint (raw: its trained weights, not their average), or of shipped weights."""
    path = Path(path)
    if path.suffix == ".safetensors":
        card_path = path.with_suffix(".json")
        if not card_path.is_file():
            raise ValueError(f"{path} has no card beside it ({card_path.name}): its architecture is unknown")
        config = json.loads(card_path.read_text()).get("training", {}).get("config")
        if not config:
            raise ValueError(f"{card_path} records no training config")
        return Ingredient(path, load_file(str(path)), config, 0, 0.0)
    checkpoint = load_checkpoint(path)
    weights = served_weights(checkpoint, raw=raw)
    return Ingredient(path, weights, checkpoint["config"], checkpoint["step"], run_hours(path.parent))


def average_states(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of each floating-point tensor (in float32); counters are taken from the first state."""
    names = set(states[0])
    for state in states[1:]:
        if set(state) != names:
            raise ValueError(f"the ingredients' tensors differ: {sorted(names ^ set(state))[:5]}")
    averaged = {}
    for name, first in states[0].items():
        if any(state[name].shape != first.shape for state in states):
            raise ValueError(f"{name} has different shapes in the ingredients")
        if first.is_floating_point():
            averaged[name] = (sum(state[name].float() for state in states) / len(states)).to(torch.float32)
        else:
            averaged[name] = first.clone()
    return averaged


def make_soup(paths: list[str | Path], out_dir: str | Path, command: str = "", *, raw: bool = False) -> Path:
    """Average the ingredients into OUT_DIR/best.pt, a checkpoint training.export can read."""
    if len(paths) < 2:
        raise ValueError("a soup needs at least two ingredients")
    ingredients = [read_ingredient(path, raw=raw) for path in paths]
    models = {ingredient.config["model"] for ingredient in ingredients}
    if len(models) > 1:
        raise ValueError(f"the ingredients are different networks: {', '.join(sorted(models))}")
    batch_sizes = {ingredient.config["batch_size"] for ingredient in ingredients if ingredient.steps}
    if len(batch_sizes) > 1:
        raise ValueError("the runs in a soup must share a batch size: its card counts their samples as steps")
    out_dir = Path(out_dir)
    config = TrainConfig.from_dict({**ingredients[0].config, "out_dir": str(out_dir)})
    # The training behind shipped weights is in their card: a shipped ingredient is what the soup grew from.
    shipped = [str(ingredient.path) for ingredient in ingredients if not ingredient.steps]
    config.init_from = shipped[0] if shipped else ""
    out_dir.mkdir(parents=True, exist_ok=True)
    if command:
        (out_dir / "command.txt").write_text(command + "\n")
    hours = [ingredient.hours for ingredient in ingredients]
    soup = {
        "run_id": uuid.uuid4().hex[:12],
        "config": config.to_dict(),
        "model": average_states([ingredient.state for ingredient in ingredients]),
        "step": sum(ingredient.steps for ingredient in ingredients),
        "processes": 1,
        # The soup's own folder has no metrics log: its card's hours are those of the runs that went into it.
        "hours": None if None in hours else round(sum(hours), 2),
        "soup": [
            {"weights": str(ingredient.path), "steps": ingredient.steps, "hours": ingredient.hours}
            for ingredient in ingredients
        ],
    }
    save_atomically(soup, out_dir / "best.pt")
    return out_dir / "best.pt"


def main(argv: list[str] | None = None) -> int:
    """Command line: the output folder, then two or more ingredients."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", help="where best.pt goes (a new folder)")
    parser.add_argument("ingredients", nargs="+", help="run checkpoints (.pt) or shipped weights (.safetensors)")
    parser.add_argument(
        "--raw-weights",
        action="store_true",
        help="from a run's checkpoint.pt take the trained weights, not their moving average",
    )
    args = parser.parse_args(argv)
    if (Path(args.out_dir) / "best.pt").exists():
        parser.error(f"{args.out_dir} already holds a best.pt: give the soup a folder of its own")
    command = shlex.join(["python", "-m", "training.soup", *(sys.argv[1:] if argv is None else argv)])
    try:
        path = make_soup(args.ingredients, args.out_dir, command, raw=args.raw_weights)
    except (ValueError, OSError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {path}: the mean of {len(args.ingredients)} ingredients")
    return 0


if __name__ == "__main__":
    sys.exit(main())
