"""Train a segmentation network from a TOML config: python -m training.train CONFIG [--resume].

Reads top to bottom: config, data, model, optimiser, then the loop with validation and checkpoints.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import sys
import time
import uuid
from collections.abc import Collection
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from PIL import Image
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, Sampler

from segmentation.cpu import prefers_channels_last, use_bf16
from segmentation.models import create_model
from segmentation.predictor import Predictor
from segmentation.weights_io import IMAGENET_MEAN, IMAGENET_STD, ModelCard, load_state
from training.augment import TrainAugment, as_tensors, build_augment
from training.checkpoints import load_checkpoint, save_atomically, served_weights
from training.composite import Compositor, cut_out, people_count, person_free_crop
from training.config import TrainConfig
from training.data import InMemoryPairs, labels_everyone, pairs_for
from training.losses import LOSSES
from training.metrics import mean_scores, score_masks


class ResumableSampler(Sampler):
    """An endless stream of (index, seed): a fresh draw per epoch, each sample with its own seed.

    Without weights an epoch is a permutation; with per-item weights it is `size` draws with
    replacement in proportion to them. Both depend only on the run's seed and the sample's position
    in the stream, so a resumed run sees exactly the samples and augmentations the uninterrupted run
    would have seen.
    """

    def __init__(
        self,
        size: int,
        seed: int,
        start: int = 0,
        weights: list[float] | None = None,
        *,
        rank: int = 0,
        world: int = 1,
    ) -> None:
        self.size, self.seed, self.start = size, seed, start
        self.weights = None if weights is None else torch.tensor(weights, dtype=torch.float64)
        self.rank, self.world = rank, world

    def __iter__(self):
        position = self.start
        while True:
            epoch, offset = divmod(position, self.size)
            generator = torch.Generator().manual_seed(self.seed * 7919 + epoch)
            if self.weights is None:
                order = torch.randperm(self.size, generator=generator)
            else:
                order = torch.multinomial(self.weights, self.size, replacement=True, generator=generator)
            for index in order[offset:].tolist():
                # Under torchrun each rank takes every world-th sample of the one stream: no sample twice.
                if position % self.world == self.rank:
                    yield index, self.seed * 1_000_003 + position
                position += 1


def sampling_weights(pairs: list, set_weights: dict[str, float]) -> list[float] | None:
    """Per-pair weights so that each set is drawn with its given share (None: every pair alike)."""
    if not set_weights:
        return None
    counts: dict[str, int] = {}
    for pair in pairs:
        counts[pair.source] = counts.get(pair.source, 0) + 1
    if set(counts) != set(set_weights):
        raise ValueError(
            f"data_weights must name every training set exactly: sets {sorted(counts)}, "
            f"weights for {sorted(set_weights)}"
        )
    if any(weight < 0 for weight in set_weights.values()) or not any(set_weights.values()):
        raise ValueError("data_weights must be non-negative and not all zero")
    return [set_weights[pair.source] / counts[pair.source] for pair in pairs]


class SeededSamples(Dataset):
    """Wraps the augmented pairs so that each sample's randomness comes from its own seed.

    With composite_probability, that share of samples is a composite instead: people cut from the
    labelled photos pasted onto a real scene (a person-free photo, a person-free crop, or a people photo).
    """

    def __init__(
        self,
        data: InMemoryPairs,
        augment,
        composite_probability: float = 0.0,
        closeup_sets: Collection[str] = (),
    ) -> None:
        self.data, self.augment = data, augment
        self.composite_probability = composite_probability
        self.closeup_sets = frozenset(closeup_sets)
        self.compositor = Compositor()
        # Donors: photos whose people cover at least 1% of the frame (smaller ones cut out as specks).
        self.donors = [i for i, mask in enumerate(data.masks) if mask.mean() >= 0.01]
        self.empty = [i for i, mask in enumerate(data.masks) if not mask.any()]
        # Backgrounds for composites: photos whose masks mark everyone (labels_everyone), so that a pasted
        # person never stands beside an unlabelled one and a crop outside the mask is truly person-free.
        self.backgrounds = [i for i, pair in enumerate(data.pairs) if labels_everyone(pair.source)]
        if composite_probability and not self.donors:
            raise ValueError("composites need photos with people in the training data")

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        index, seed = item
        state = random.getstate()
        random.seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            if self.composite_probability and random.random() < self.composite_probability:
                sample = self.composite()
            else:
                partner = random.randrange(len(self.data))
                sample = self.augment(
                    self.data.images[index],
                    self.data.masks[index],
                    self.data.images[partner],
                    self.data.masks[partner],
                    labels_everyone=labels_everyone(self.data.pairs[index].source),
                    closeups=not self.closeup_sets or self.data.pairs[index].source in self.closeup_sets,
                )
        random.setstate(state)
        return sample

    def composite(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One to six people on a real background, then the usual geometry and photometric noise."""
        images, masks = self.data.images, self.data.masks
        choice = random.random()
        if self.empty and choice < 0.5:  # a scene with nobody in it
            index = random.choice(self.empty)
            background, background_mask = as_tensors(images[index], masks[index])
        else:
            index = random.choice(self.backgrounds) if self.backgrounds else random.randrange(len(self.data))
            background, background_mask = as_tensors(images[index], masks[index])
            free = labels_everyone(self.data.pairs[index].source)
            crop = person_free_crop(background, background_mask) if choice < 0.75 and free else None
            if crop is not None:
                background, background_mask = (
                    crop,
                    torch.zeros_like(background_mask[:, : crop.shape[1], : crop.shape[2]]),
                )
        background, background_mask = self.augment.rescale(background, background_mask)
        donors = [cut_out(images[i], masks[i]) for i in random.choices(self.donors, k=people_count())]
        image, mask = self.compositor(background, background_mask, [d for d in donors if d is not None])
        return self.augment.finish(image, mask)


def augment_for(config: TrainConfig) -> TrainAugment:
    """The sample augmentation a config asks for."""
    return build_augment(
        config.augment,
        config.crop_size,
        config.inference_size,
        config.scale_range,
        closeup_probability=config.closeup_probability,
        quarter_turn_probability=config.quarter_turn_probability,
    )


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW batch to normalised float, as the predictor feeds the network."""
    mean = torch.tensor(IMAGENET_MEAN, device=images.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(IMAGENET_STD, device=images.device).view(1, 3, 1, 1) * 255
    return (images.float() - mean) / std


def lr_factor(config: TrainConfig, step: int) -> float:
    """Learning-rate multiplier: linear warm-up then cosine decay to min_lr_ratio (or constant)."""
    if config.schedule == "constant":
        return 1.0
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = min(1.0, (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps))
    return config.min_lr_ratio + (1 - config.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def uses_fast_path(device: torch.device) -> bool:
    """Whether bf16 autocast pays here: on CUDA, and on CPUs whose native bf16 units time faster (use_bf16).

    On a CPU without them (AVX2 only) bf16 is emulated and a DeepLab step took over 45 s instead of 9 s in
    float32 (measured at batch 8, one thread).
    """
    return device.type == "cuda" or (device.type == "cpu" and use_bf16())


def autocast_for(device: torch.device):
    """bf16 autocast where it pays (see uses_fast_path); nothing elsewhere."""
    if uses_fast_path(device):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def memory_format_for(device: torch.device) -> torch.memory_format:
    """channels_last on CUDA and on AVX-512 BF16 CPUs (even in float32), the default layout elsewhere.

    On an AVX2-only CPU channels_last was 0-25% slower; on an Intel Xeon with AVX-512 BF16 training in float32
    it was faster (a DeepLab step 7.1 s against 8.4 s, benchmarks/training_step.py).
    """
    if device.type == "cuda" or prefers_channels_last():
        return torch.channels_last
    return torch.contiguous_format


def limit_per_set(pairs: list, limit: int) -> list:
    """The first `limit` pairs of each set, in order (all of them when limit is 0)."""
    if not limit:
        return pairs
    taken: dict[str, int] = {}
    kept = []
    for pair in pairs:
        if taken.get(pair.source, 0) < limit:
            kept.append(pair)
            taken[pair.source] = taken.get(pair.source, 0) + 1
    return kept


def validation_predictor(model: torch.nn.Module, config: TrainConfig) -> Predictor:
    """The production predictor around the model being trained, so validation measures what would ship."""
    card = ModelCard(architecture=config.model, inference_size=config.inference_size)
    fast = uses_fast_path(model_device(model))
    return Predictor(model, card, fast=fast)


def model_device(model: torch.nn.Module) -> torch.device:
    """The device the model's weights are on."""
    return next(model.parameters()).device


def validate(model: torch.nn.Module, data: InMemoryPairs, config: TrainConfig) -> dict:
    """Dice, IoU, pixel accuracy and share kept per set and over all, through the production predictor.

    The predictor's own resize, padding, normalisation and edge refinement at the photo's resolution, at
    threshold 0.5; the test-time flip and second pass a card may add are left out (they cost minutes here).
    """
    predictor = validation_predictor(model, config)
    by_source: dict[str, list] = {}
    with_people: set[str] = set()
    for pair, image, mask in zip(data.pairs, data.images, data.masks, strict=True):
        predicted = predictor.predict_alpha(Image.fromarray(image)) >= predictor.threshold
        by_source.setdefault(pair.source, []).append(score_masks(predicted, mask))
        if mask.any():
            with_people.add(pair.source)
    model.train()
    report = {source: mean_scores(scores) for source, scores in by_source.items()}
    report["all"] = mean_scores([s for scores in by_source.values() for s in scores])
    # What picks the best checkpoint: each set weighs the same, so the small varied sets count as much as
    # the large simple ones; on a set with nobody in it the score is the share of the photo left out.
    per_set = [report[s]["dice"] if s in with_people else 1 - report[s]["kept"] for s in by_source]
    report["all"]["selection"] = float(np.mean(per_set))
    return report


def save_preview(model, data: InMemoryPairs, config: TrainConfig, device, path: Path, count: int = 6) -> None:
    """A picture of a few validation photos: photo, predicted mask, true mask, side by side."""
    from PIL import Image

    model.eval()
    rows = []
    picks = np.linspace(0, len(data) - 1, count).astype(int)
    with torch.inference_mode():
        for index in picks:
            image, mask = data.images[index], data.masks[index]
            tile = Image.fromarray(image).resize((192, 256))
            tensor = torch.from_numpy(np.array(tile)).permute(2, 0, 1)[None].to(device)
            with autocast_for(device):
                logits = model(normalise(tensor).contiguous(memory_format=memory_format_for(device)))
            predicted = (torch.sigmoid(logits.float())[0, 0].cpu().numpy() * 255).astype(np.uint8)
            truth = np.asarray(Image.fromarray(mask * 255).resize((192, 256)))
            grey = [np.repeat(m[..., None], 3, axis=2) for m in (predicted, truth)]
            rows.append(np.concatenate([np.asarray(tile), *grey], axis=1))
    model.train()
    Image.fromarray(np.concatenate(rows, axis=0)).save(path)


def plot_curves(log_path: Path, out_path: Path) -> None:
    """Plot training loss and validation Dice from the metrics log (skipped without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    records = [json.loads(line) for line in log_path.read_text().splitlines()]
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    left.plot([r["step"] for r in train], [r["loss"] for r in train])
    left.set(title="training loss", xlabel="step")
    for source in val[0]["metrics"] if val else {}:
        right.plot([r["step"] for r in val], [r["metrics"][source]["dice"] for r in val], label=source)
    right.set(title="validation Dice", xlabel="step")
    right.legend()
    figure.tight_layout()
    figure.savefig(out_path)
    plt.close(figure)


def rng_state() -> dict[str, Any]:
    """This process's random generators: Python, NumPy, torch CPU and (where present) CUDA."""
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        # Dropout on a GPU draws from the CUDA generator, which the CPU state does not cover.
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what rng_state() saved."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    path: Path,
    model,
    optimizer,
    scheduler,
    step: int,
    config: TrainConfig,
    best: float,
    rng: list[dict],
    *,
    run_id: str = "",
    averaged: AveragedModel | None = None,
) -> None:
    """Write everything needed to continue exactly: weights, optimiser, schedule, step, config, every rank's RNG."""
    checkpoint = {
        "run_id": run_id,
        "config": config.to_dict(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "best_selection": best,
        "rng": rng[0],
        "rng_per_rank": rng,
    }
    if averaged is not None:
        checkpoint["averaged"] = averaged.state_dict()
    save_atomically(checkpoint, path)


# Settings a resume may change without changing the run: its length, where it lives, how many threads.
RESUMABLE_CHANGES = frozenset({"steps", "epochs", "out_dir", "threads", "init_from"})


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """What a resumed run's config changes from its checkpoint's, beyond its length and place ("key: old -> new").

    A key the checkpoint lacks (added to TrainConfig since) ran at its default, so a setting other than that counts.
    """
    defaults = TrainConfig().to_dict()
    changes = [
        f"{key}: {before!r} -> {value!r}"
        for key, value in current.items()
        if key not in RESUMABLE_CHANGES and (before := saved.get(key, defaults.get(key, value))) != value
    ]
    if any(change.startswith("lr:") for change in changes):
        changes.append("(the restored schedule keeps the checkpoint's peak lr; start a new run to change it)")
    return changes


class RunDirectoryTaken(ValueError):
    """A new run was pointed at a folder that already holds another run's checkpoint or metrics."""


def check_out_dir(config: TrainConfig, resume: bool) -> None:
    """Refuse to start a new run over an earlier one: its log, curves and hours would mix with the new run's."""
    out_dir = Path(config.out_dir)
    earlier = [
        name
        for name in ("checkpoint.pt", "metrics.jsonl")
        if (out_dir / name).is_file() and (out_dir / name).stat().st_size
    ]
    if earlier and not resume:
        raise RunDirectoryTaken(
            f"{out_dir} already holds a run ({', '.join(earlier)}): continue it with --resume, "
            "or give the new run a folder of its own with --out-dir"
        )


def warm_start(model: torch.nn.Module, config: TrainConfig) -> None:
    """Initialise from shipped weights or another run's checkpoint, so training compounds over sessions."""
    path = Path(config.init_from)
    if path.suffix == ".safetensors":
        load_state(config.model, model, path)
    else:
        model.load_state_dict(served_weights(load_checkpoint(path)))  # a run with ema_decay: its average


def forget_after(log_path: Path, step: int) -> None:
    """Drop metrics logged after a step: on resume they came from steps the crashed run will now redo."""
    if not log_path.is_file():
        return
    lines = [line for line in log_path.read_text().splitlines() if line.strip()]
    kept = [line for line in lines if json.loads(line)["step"] <= step]
    if len(kept) < len(lines):
        log_path.write_text("".join(line + "\n" for line in kept))


def build_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Adam as in the research, or AdamW with decoupled weight decay."""
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=config.lr)
    if config.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; choose 'adam' or 'adamw'")


@dataclass(frozen=True)
class Distributed:
    """Where this process stands in a torchrun job (rank 0 of 1 when run as a single process)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def leader(self) -> bool:
        """Rank 0 logs, validates and writes checkpoints; the others only train."""
        return self.rank == 0

    @classmethod
    def from_environment(cls) -> Distributed:
        """Read torchrun's RANK, WORLD_SIZE and LOCAL_RANK (absent: a single process)."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        return cls(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))

    def broadcast(self, value: Any) -> Any:
        """Rank 0's value on every rank."""
        if self.world == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list[Any]:
        """Every rank's value, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def barrier(self) -> None:
        """Wait for every rank (rank 0 validating and writing checkpoints, say)."""
        if self.world > 1:
            dist.barrier()


def train(
    config: TrainConfig,
    resume: bool = False,
    device: str | None = None,
    log=print,
    *,
    stop_at: float | None = None,
) -> dict:
    """Run (or resume) one training run; returns the last validation report.

    `stop_at` (a time.monotonic() value): from then on, write a checkpoint at the end of the step and stop, to
    be resumed later with resume=True; the run's plan (steps, schedule) is unchanged.
    Under torchrun (WORLD_SIZE > 1) it runs DistributedDataParallel: gloo on CPU, NCCL on GPUs, each rank
    drawing its own share of one sample stream; batch_size is per process, a step consumes it on every rank.
    """
    ranks = Distributed.from_environment()
    if device is None:
        device = f"cuda:{ranks.local_rank}" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if ranks.world > 1:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        if device.type == "cuda":
            torch.cuda.set_device(device)
    if not ranks.leader:
        log = lambda message: None  # noqa: E731 - one voice in the log
    try:
        return _train(config, resume, device, ranks, log, stop_at)
    finally:
        if ranks.world > 1:
            dist.destroy_process_group()


def _train(
    config: TrainConfig, resume: bool, device: torch.device, ranks: Distributed, log, stop_at: float | None
) -> dict:
    if config.threads:
        torch.set_num_threads(config.threads)
    check_out_dir(config, resume)
    out_dir = Path(config.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path, log_path = out_dir / "checkpoint.pt", out_dir / "metrics.jsonl"

    # The same seed everywhere: every rank builds the same model. Augmentation draws from each sample's
    # own seed, so ranks differ only in which samples of the stream they take.
    random.seed(config.seed)
    np.random.seed(config.seed)
    torch.manual_seed(config.seed)

    # Data: decoded once into memory, shrunk to the largest size the augmentation will ask for.
    max_side = math.ceil(config.inference_size * config.scale_range[1])
    train_data = InMemoryPairs(pairs_for(config.data, "train"), max_side)
    val_pairs = limit_per_set(pairs_for(config.data, "val"), config.val_limit)
    val_data = InMemoryPairs(val_pairs, None) if ranks.leader else None  # only rank 0 validates
    log(f"{len(train_data)} training pairs, {len(val_pairs)} validation pairs from {', '.join(config.data)}")
    samples_per_step = config.batch_size * ranks.world
    steps_per_epoch = math.ceil(len(train_data) / samples_per_step)
    if config.epochs:
        config.steps = math.ceil(config.epochs * steps_per_epoch)
    eval_every = config.eval_every or steps_per_epoch

    model = create_model(config.model, backbone_weights=config.backbone_weights or None)
    resuming = resume and checkpoint_path.is_file()
    if resume and not resuming:
        log(f"--resume: no checkpoint at {checkpoint_path}, starting a new run")
        if ranks.leader:
            forget_after(log_path, 0)  # what a run that died before its first checkpoint logged
    if config.init_from and not resuming:
        warm_start(model, config)
    model = model.to(device).to(memory_format=memory_format_for(device)).train()
    optimizer = build_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(config, step))
    loss_fn = LOSSES[config.loss]
    # The average over steps generalises better than any one step's weights (Polyak averaging); it is what
    # gets validated, kept as best.pt and exported. Buffers too: BatchNorm's statistics follow the weights.
    averaged = (
        AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(config.ema_decay), use_buffers=True)
        if config.ema_decay
        else None
    )

    # Tells a re-export of this run from a later run in the same folder (cards add up the training behind them).
    step, best, run_id = 0, -1.0, uuid.uuid4().hex[:12]
    if resuming:
        # load_state_dict moves weights and optimiser state onto the model's device itself.
        checkpoint = load_checkpoint(checkpoint_path)
        if checkpoint.get("rng_per_rank") and len(checkpoint["rng_per_rank"]) != ranks.world:
            raise ValueError(
                f"{checkpoint_path} was written by {len(checkpoint['rng_per_rank'])} processes; "
                f"resume it with as many (--nproc-per-node), not {ranks.world}"
            )
        # What the run started from stays part of its config across resumes (cards add up the training behind it).
        config.init_from = config.init_from or checkpoint["config"].get("init_from", "")
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if averaged is not None and "averaged" in checkpoint:
            averaged.load_state_dict(checkpoint["averaged"])
        elif averaged is not None:
            log(f"note: {checkpoint_path} holds no averaged weights; the average starts from step {checkpoint['step']}")
        step, best = checkpoint["step"], checkpoint.get("best_selection", -1.0)
        run_id = checkpoint.get("run_id") or run_id
        for change in config_changes(checkpoint["config"], config.to_dict()):
            log(f"note: the config changed since the checkpoint: {change}")
        set_rng_state(checkpoint.get("rng_per_rank", [checkpoint["rng"]])[ranks.rank])
        if ranks.leader:
            forget_after(log_path, step)
        log(f"resumed from {checkpoint_path} at step {step}")
    elif ranks.world > 1:
        torch.manual_seed(config.seed * 1009 + ranks.rank)  # dropout masks of their own on each rank
    trained = DistributedDataParallel(model) if ranks.world > 1 else model

    augment = augment_for(config)
    weights = sampling_weights(train_data.pairs, config.data_weights)
    sampler = ResumableSampler(
        len(train_data), config.seed, start=step * samples_per_step, weights=weights, rank=ranks.rank, world=ranks.world
    )
    loader = DataLoader(
        SeededSamples(train_data, augment, config.composite_probability, config.closeup_sets),
        sampler=sampler,
        batch_size=config.batch_size,
        num_workers=config.workers,
        persistent_workers=config.workers > 0,
        worker_init_fn=lambda _: torch.set_num_threads(1),
        # Its own generator: by default a DataLoader draws its base seed from the global torch RNG when
        # iterated, which shifted the dropout masks of a resumed run by one draw.
        generator=torch.Generator().manual_seed(config.seed),
    )

    def checkpoint_now() -> None:
        states = ranks.gather(rng_state())  # every rank takes part; rank 0 writes
        if ranks.leader:
            save_checkpoint(
                checkpoint_path,
                model,
                optimizer,
                scheduler,
                step,
                config,
                best,
                states,
                run_id=run_id,
                averaged=averaged,
            )

    report: dict = {}
    checkpoint_seconds = config.checkpoint_minutes * 60
    last_checkpoint = started = time.monotonic()
    window_loss, window_images, window_start = 0.0, 0, time.monotonic()
    batches = iter(loader)
    with open(log_path, "a") if ranks.leader else nullcontext() as metrics_log:
        while step < config.steps:
            images, masks = next(batches)
            images = normalise(images.to(device)).contiguous(memory_format=memory_format_for(device))
            masks = masks.to(device).float()
            with autocast_for(device):
                logits = trained(images)
            loss = loss_fn(logits.float(), masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if averaged is not None:
                averaged.update_parameters(model)
            step += 1
            window_loss += loss.item() * len(images)
            window_images += len(images)

            if (step % 10 == 0 or step == config.steps) and ranks.leader:
                elapsed = time.monotonic() - window_start
                record = {
                    "kind": "train",
                    "step": step,
                    "loss": window_loss / window_images,
                    "lr": scheduler.get_last_lr()[0],
                    "images_per_s": window_images * ranks.world / elapsed,
                    "minutes": (time.monotonic() - started) / 60,
                }
                metrics_log.write(json.dumps(record) + "\n")
                metrics_log.flush()
                done = round(24 * step / config.steps)
                log(
                    f"[{'#' * done}{'.' * (24 - done)}] step {step}/{config.steps}  "
                    f"loss {record['loss']:.4f}  lr {record['lr']:.2e}  "
                    f"{record['images_per_s']:.1f} img/s  {record['minutes']:.1f} min"
                )
                window_loss, window_images, window_start = 0.0, 0, time.monotonic()

            # Rank 0's clock decides, so that every rank stops at the same step.
            stopping = stop_at is not None and step < config.steps and ranks.broadcast(time.monotonic() >= stop_at)
            if step % eval_every == 0 or step == config.steps:
                if ranks.leader:
                    evaluated = averaged.module if averaged is not None else model
                    report = validate(evaluated, val_data, config)
                    metrics_log.write(json.dumps({"kind": "val", "step": step, "metrics": report}) + "\n")
                    metrics_log.flush()
                    log(
                        "val "
                        + "  ".join(
                            f"{k} dice {v['dice']:.4f} iou {v['iou']:.4f} kept {v['kept']:.3f}"
                            for k, v in report.items()
                        )
                        + f"  selection {report['all']['selection']:.4f}"
                    )
                    save_preview(evaluated, val_data, config, device, out_dir / f"preview-{step:06d}.png")
                    plot_curves(log_path, out_dir / "curves.png")
                    if report["all"]["selection"] > best:
                        best = report["all"]["selection"]
                        best_state = {
                            "run_id": run_id,
                            "config": config.to_dict(),
                            "model": evaluated.state_dict(),
                            "averaged": averaged is not None,
                            "step": step,
                            "processes": ranks.world,  # a step took a batch on each: export counts the samples
                        }
                        save_atomically({**best_state, "metrics": report}, out_dir / "best.pt")
                checkpoint_now()
                ranks.barrier()
                last_checkpoint = time.monotonic()
            # Rank 0's clock decides, so that every rank joins the same checkpoint.
            elif stopping or ranks.broadcast(time.monotonic() - last_checkpoint > checkpoint_seconds):
                checkpoint_now()
                last_checkpoint = time.monotonic()
            if stopping:
                log(f"stopped at step {step}/{config.steps} by --stop-after, checkpoint written: resume with --resume")
                break
    return report


def main(argv: list[str] | None = None) -> None:
    """Command line: a config file, optional overrides, --resume."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", help="a TOML file in training/configs/")
    parser.add_argument("--resume", action="store_true", help="continue from out_dir/checkpoint.pt")
    parser.add_argument("--device", help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--steps", type=int, help="train this many steps (overrides the config's steps and epochs)")
    parser.add_argument("--out-dir")
    parser.add_argument("--init-from", help="warm start from shipped weights or a checkpoint")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--data", nargs="+")
    parser.add_argument(
        "--seed",
        type=int,
        help="the sample stream's seed (overrides the config's): give each warm-started continuation its own, "
        "or it replays the samples and augmentations of the run before it",
    )
    parser.add_argument(
        "--stop-after",
        type=float,
        metavar="MINUTES",
        help="stop after this many minutes of wall time at the end of a step, with a checkpoint and without the "
        "final validation; --resume continues the same plan. For runs longer than a working session",
    )
    args = parser.parse_args(argv)
    # Counted from the start of the process: loading the data can take minutes on a slow machine.
    stop_at = None if args.stop_after is None else time.monotonic() + args.stop_after * 60
    config = TrainConfig.from_toml(
        args.config,
        steps=args.steps,
        epochs=0.0 if args.steps is not None else None,  # --steps wins over a config's epochs
        out_dir=args.out_dir,
        init_from=args.init_from,
        threads=args.threads,
        data=args.data,
        seed=args.seed,
    )
    try:
        check_out_dir(config, args.resume)
    except RunDirectoryTaken as error:
        parser.error(str(error))
    Path(config.out_dir).mkdir(parents=True, exist_ok=True)
    # Appended, not overwritten: a resume (perhaps with new --steps) adds a line below the command that started
    # the run, and export puts the whole history in the weights card.
    command = shlex.join([sys.executable, "-m", "training.train", *(sys.argv[1:] if argv is None else argv)])
    with open(Path(config.out_dir) / "command.txt", "a") as command_file:
        command_file.write(command + "\n")
    train(
        config,
        resume=args.resume,
        device=args.device,
        log=lambda message: print(message, flush=True),
        stop_at=stop_at,
    )


if __name__ == "__main__":
    main()
