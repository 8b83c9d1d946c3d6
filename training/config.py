"""Training run configuration, read from a TOML file in training/configs/."""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class TrainConfig:
    """Everything that defines a training run; a checkpoint carries it so the run can be rebuilt."""

    model: str = "deeplab"
    data: list[str] = field(default_factory=lambda: ["../shared/data/people-ccp"])
    out_dir: str = "runs/deeplab"
    steps: int = 1000
    epochs: float = 0.0  # when set, steps = epochs x training pairs / batch size
    batch_size: int = 8
    crop_size: int = 256
    inference_size: int = 384  # long side the predictor resizes to; training scales around it
    scale_range: tuple[float, float] = (0.55, 1.3)
    # Share of samples drawn from each set (by folder name); empty: in proportion to their files.
    data_weights: dict[str, float] = field(default_factory=dict)
    composite_probability: float = 0.0  # share of samples that are composites (training/composite.py)
    augment: str = "strong"  # "strong" (ours) or "research" (crop, flips, rotation, channel shuffle, dropout)
    closeup_probability: float = 0.0  # share of plain samples zoomed in on part of a person ("strong" only)
    # Sets (by folder name) whose photos get close-ups; empty: all. A portrait zoomed in is only more face.
    closeup_sets: list[str] = field(default_factory=list)
    quarter_turn_probability: float = 0.0  # share of samples turned by 90 degrees: people lying down
    loss: str = "bce_dice"
    optimizer: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    schedule: str = "cosine"  # "cosine" with linear warm-up, or "constant"
    warmup_steps: int = 200
    min_lr_ratio: float = 0.01
    # When set, validate, keep and export an exponential moving average of the weights (decay per step)
    # instead of the last step's: 0.998 averages about the last 500 steps. 0: the weights as trained.
    ema_decay: float = 0.0
    val_limit: int = 0  # validate on the first N photos of each set's val split (0: all); evaluate scores all
    eval_every: int = 400  # steps between validations; 0 validates (and checkpoints) once per epoch
    checkpoint_minutes: float = 5.0
    seed: int = 0
    threads: int = 0  # torch intra-op threads on CPU; 0 keeps torch's default
    workers: int = 1
    init_from: str = ""  # warm start: shipped weights (.safetensors) or a checkpoint (.pt)
    backbone_weights: str = ""  # optional local ImageNet ResNet18 state dict for DeepLab

    def __post_init__(self) -> None:
        unknown = sorted(set(self.closeup_sets) - {Path(folder).name for folder in self.data})
        if unknown:
            raise ValueError(f"closeup_sets names sets not in data: {', '.join(unknown)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), not {self.ema_decay}")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a config from a dict, refusing unknown keys so typos fail loudly."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config keys: {', '.join(unknown)}")
        values = dict(values)
        if "scale_range" in values:
            values["scale_range"] = tuple(values["scale_range"])
        return cls(**values)

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        """Read a config file, then apply overrides (from the command line)."""
        with open(path, "rb") as handle:
            values = tomllib.load(handle)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """The config as plain values (for checkpoints and cards)."""
        values = asdict(self)
        values["scale_range"] = list(self.scale_range)
        return values
