"""Tests of training/: datasets, augmentation, losses, metrics, the loop and its resume, export and evaluation.

Everything runs on tiny synthetic data (people drawn with PIL) at 32-64 px, on one thread, so the file
stays well under a minute on two busy cores.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from safetensors.torch import load_file

import training.train as train_module
from segmentation import cpu as cpu_module
from segmentation.cpu import BF16_VARIABLE
from segmentation.models import create_model
from segmentation.predictor import Predictor
from segmentation.weights_io import IMAGENET_MEAN, IMAGENET_STD, ModelCard, load_model, read_card
from training.augment import MEAN_RGB, build_augment
from training.checkpoints import load_checkpoint
from training.composite import Compositor, cut_out
from training.config import TrainConfig
from training.data import DatasetError, InMemoryPairs, PairPath, find_pairs, load_pair, pairs_for, read_mask
from training.evaluate import evaluate, format_share_table, format_table
from training.evaluate import main as evaluate_main
from training.export import ExportError, build_card, dataset_entry, export, run_hours
from training.export import main as export_main
from training.losses import LOSSES, bce_dice_loss, bce_loss, bce_lovasz_loss, lovasz_hinge_loss, soft_dice_loss
from training.metrics import MaskScores, mean_scores, score_masks
from training.soup import average_states, make_soup
from training.soup import main as soup_main
from training.train import (
    ResumableSampler,
    SeededSamples,
    augment_for,
    config_changes,
    limit_per_set,
    sampling_weights,
    train,
    warm_start,
)

CONFIGS = Path(__file__).resolve().parents[1] / "training" / "configs"
PEOPLE_TRAIN_PAIRS = 902 + 1341 + 1289  # people-ccp, people-picsart, people-portraits train splits
SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Two training runs share this machine: tests use one thread and restore the setting after."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


# ---------------------------------------------------------------- synthetic data


def draw_person(width: int, height: int, rng: random.Random) -> tuple[Image.Image, Image.Image]:
    """A photo of a 'person' (head and body in one colour) on a gradient background, and its 0/255 mask."""
    start = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    end = np.array([rng.randint(0, 255) for _ in range(3)], dtype=np.float32)
    ramp = np.linspace(0, 1, width, dtype=np.float32)[None, :, None]
    background = np.broadcast_to(start + (end - start) * ramp, (height, width, 3))
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 6, (height, width, 3))
    image = Image.fromarray(np.clip(background + noise, 0, 255).astype(np.uint8))
    mask = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(mask)
    centre = rng.randint(width * 3 // 10, width * 7 // 10)
    radius = rng.randint(max(3, width // 10), max(4, width // 6))
    top = rng.randint(1, height // 5)
    draw.ellipse((centre - radius, top, centre + radius, top + 2 * radius), fill=255)
    body = rng.randint(radius + 1, 2 * radius + 2)
    draw.rectangle((centre - body, top + 2 * radius - 1, centre + body, height - 1), fill=255)
    colour = (rng.randint(150, 255), rng.randint(0, 90), rng.randint(60, 160))
    image.paste(Image.new("RGB", image.size, colour), mask=mask)
    return image, mask


def make_people_dataset(
    root: Path, train: int = 6, val: int = 2, size: tuple[int, int] = (48, 64), seed: int = 0
) -> Path:
    """A dataset folder in the people_segmentation layout: images/, masks/, segmentation/{train,val}.txt."""
    rng = random.Random(seed)
    for folder in ("images", "masks", "segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    names = [f"{index:04d}" for index in range(train + val)]
    for name in names:
        image, mask = draw_person(*size, rng)
        image.save(root / "images" / f"{name}.jpg", quality=95)
        mask.save(root / "masks" / f"{name}.png")
    (root / "segmentation" / "train.txt").write_text("\n".join(names[:train]) + "\n")
    (root / "segmentation" / "val.txt").write_text("\n".join(names[train:]) + "\n")
    return root


def make_carvana_dataset(root: Path, count: int = 10, size: tuple[int, int] = (64, 48), seed: int = 1) -> Path:
    """A dataset folder in the Carvana layout: train/<id>.jpg and train_masks/<id>_mask.gif (palette 0/1)."""
    rng = random.Random(seed)
    (root / "train").mkdir(parents=True, exist_ok=True)
    (root / "train_masks").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        image, mask = draw_person(*size, rng)
        name = f"car{index // 4:03d}_{index % 4 + 1:02d}"
        image.save(root / "train" / f"{name}.jpg", quality=95)
        # Carvana's masks are palette GIFs whose indices are 0 and 1, with index 1 drawn white.
        indices = Image.fromarray((np.asarray(mask) >= 128).astype(np.uint8), mode="P")
        indices.putpalette([0, 0, 0, 255, 255, 255])
        indices.save(root / "train_masks" / f"{name}_mask.gif")
    return root


@pytest.fixture(scope="module")
def people(tmp_path_factory) -> Path:
    """A tiny people_segmentation-layout set, shared read-only by the tests of this module."""
    return make_people_dataset(tmp_path_factory.mktemp("data") / "people-tiny", train=6, val=2)


def tiny_config(data: Path, out_dir: Path, **overrides) -> TrainConfig:
    """A DeepLab run small enough for a test: 64 px crops, one thread, no worker processes."""
    values = dict(
        model="deeplab",
        data=[str(data)],
        out_dir=str(out_dir),
        steps=12,
        batch_size=2,
        crop_size=64,
        inference_size=64,
        scale_range=(0.8, 1.2),
        augment="strong",
        loss="bce_dice",
        optimizer="adamw",
        lr=1e-3,
        schedule="cosine",
        warmup_steps=4,
        eval_every=1000,
        checkpoint_minutes=60.0,
        seed=3,
        threads=1,
        workers=0,
    )
    values.update(overrides)
    return TrainConfig(**values)


# ---------------------------------------------------------------- the training loop


class Interrupt(Exception):
    """Stands for a crash or a Ctrl-C in the middle of a run."""


@pytest.mark.parametrize("ema_decay", [0.0, 0.9])
def test_resume_continues_exactly_where_the_run_stopped(
    people: Path, tmp_path: Path, monkeypatch, ema_decay: float
) -> None:
    # Pictures cost time and change no state; leave them out of this test.
    monkeypatch.setattr(train_module, "save_preview", lambda *args, **kwargs: None)
    monkeypatch.setattr(train_module, "plot_curves", lambda *args, **kwargs: None)
    # One run goes straight through 6 steps (cosine schedule with warm-up, dropout, augmentation) ...
    whole = tiny_config(people, tmp_path / "whole", steps=6, ema_decay=ema_decay)
    train(whole, log=lambda _: None)

    # ... another crashes just after its checkpoint at step 4, then resumes to step 6.
    save_checkpoint = train_module.save_checkpoint

    def crash_after_step_4(path, model, optimizer, scheduler, step, *rest, **keywords) -> None:
        save_checkpoint(path, model, optimizer, scheduler, step, *rest, **keywords)
        if step == 4:
            raise Interrupt

    # A checkpoint every step.
    broken = tiny_config(people, tmp_path / "broken", steps=6, checkpoint_minutes=0.0, ema_decay=ema_decay)
    monkeypatch.setattr(train_module, "save_checkpoint", crash_after_step_4)
    with pytest.raises(Interrupt):
        train(broken, log=lambda _: None)
    monkeypatch.setattr(train_module, "save_checkpoint", save_checkpoint)
    run_id = load_checkpoint(tmp_path / "broken" / "checkpoint.pt")["run_id"]
    messages: list[str] = []
    train(broken, resume=True, log=messages.append)
    assert any(message.startswith("resumed") and "step 4" in message for message in messages)

    expected = load_checkpoint(tmp_path / "whole" / "checkpoint.pt")
    resumed = load_checkpoint(tmp_path / "broken" / "checkpoint.pt")
    assert resumed["step"] == expected["step"] == 6
    assert resumed["run_id"] == run_id != expected["run_id"]  # a resume is the same run; another run is not
    for key, value in expected["model"].items():
        torch.testing.assert_close(resumed["model"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    assert ("averaged" in resumed) == ("averaged" in expected) == bool(ema_decay)
    for key, value in expected.get("averaged", {}).items():  # the average carries on, not restarts
        torch.testing.assert_close(resumed["averaged"][key], value, rtol=1e-5, atol=1e-6, msg=key)
    learning_rates = [checkpoint["optimizer"]["param_groups"][0]["lr"] for checkpoint in (resumed, expected)]
    assert learning_rates[0] == pytest.approx(learning_rates[1])


def test_the_moving_average_is_what_gets_validated_and_kept(people: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(train_module, "save_preview", lambda *args, **kwargs: None)
    monkeypatch.setattr(train_module, "plot_curves", lambda *args, **kwargs: None)
    trained_weights: list[dict[str, torch.Tensor]] = []
    save_checkpoint = train_module.save_checkpoint

    def record_each_step(path, model, *rest, **keywords) -> None:
        trained_weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        save_checkpoint(path, model, *rest, **keywords)

    monkeypatch.setattr(train_module, "save_checkpoint", record_each_step)
    config = tiny_config(people, tmp_path / "ema", steps=3, eval_every=3, checkpoint_minutes=0.0, ema_decay=0.75)
    train(config, log=lambda _: None)
    assert len(trained_weights) == 3  # one checkpoint a step

    kept = load_checkpoint(tmp_path / "ema" / "best.pt")
    assert kept["averaged"] is True and kept["step"] == 3
    # The first step's weights start the average; each later step moves it a quarter of the way.
    for key, last in trained_weights[-1].items():
        if not last.is_floating_point():
            continue
        average = trained_weights[0][key]
        for weights in trained_weights[1:]:
            average = 0.75 * average + 0.25 * weights[key]
        torch.testing.assert_close(kept["model"][key], average, rtol=1e-5, atol=1e-6, msg=key)
    # BatchNorm statistics follow the averaged weights, and the average is not the last step's weights.
    assert any("running_mean" in key for key in kept["model"])
    moved = [key for key, last in trained_weights[-1].items() if last.is_floating_point()]
    assert any(not torch.allclose(kept["model"][key], trained_weights[-1][key]) for key in moved)


def test_the_checkpoint_of_a_run_with_a_moving_average_exports_and_soups_its_average(
    people: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(train_module, "save_preview", lambda *args, **kwargs: None)
    monkeypatch.setattr(train_module, "plot_curves", lambda *args, **kwargs: None)
    run = tmp_path / "ema"
    train(tiny_config(people, run, steps=3, eval_every=3, ema_decay=0.75), log=lambda _: None)
    average = load_checkpoint(run / "best.pt")["model"]  # validated at the last step, as checkpoint.pt was written
    trained = load_checkpoint(run / "checkpoint.pt")["model"]
    moved = [name for name, tensor in trained.items() if tensor.is_floating_point()]
    assert any(not torch.allclose(trained[name], average[name]) for name in moved)

    # A run stopped before its last validation has only checkpoint.pt: exported, it serves the average too.
    export(run / "checkpoint.pt", tmp_path / "served", log=lambda _: None)
    served = load_file(tmp_path / "served" / "deeplab.safetensors")
    assert set(served) <= set(average)
    for name in served:
        torch.testing.assert_close(served[name].to(average[name].dtype), average[name], atol=2e-3, rtol=1e-3)

    # A warm start from it begins at the average as well.
    warmed = create_model("deeplab")
    warm_start(warmed, tiny_config(people, tmp_path / "next", init_from=str(run / "checkpoint.pt")))
    for name in moved:
        torch.testing.assert_close(warmed.state_dict()[name], average[name], msg=name)

    # In a soup likewise, unless --raw-weights asks for what the optimiser left.
    for flags, expected in (([], average), (["--raw-weights"], trained)):
        out_dir = tmp_path / f"soup{len(flags)}"
        assert soup_main([str(out_dir), str(run / "checkpoint.pt"), str(run / "best.pt"), *flags]) == 0
        soup = load_checkpoint(out_dir / "best.pt")["model"]
        for name in moved:
            torch.testing.assert_close(soup[name], (expected[name] + average[name]) / 2, msg=name)
        assert (out_dir / "command.txt").read_text().split()[-1] == (flags or [str(run / "best.pt")])[-1]


def test_ema_decay_outside_zero_to_one_is_refused() -> None:
    with pytest.raises(ValueError, match="ema_decay"):
        TrainConfig(ema_decay=1.0)


def test_a_resumed_run_keeps_what_it_was_warm_started_from(people: Path, tmp_path: Path) -> None:
    first = tiny_config(people, tmp_path / "origin", steps=1)
    train(first, log=lambda _: None)
    origin = str(tmp_path / "origin" / "checkpoint.pt")
    train(tiny_config(people, tmp_path / "warm", steps=1, init_from=origin), log=lambda _: None)
    # The command line of a resume names no origin; an edited config is named in the log, a new length is not.
    resumed = tiny_config(people, tmp_path / "warm", steps=2, lr=0.0123)
    messages: list[str] = []
    train(resumed, resume=True, log=messages.append)
    notes = [message for message in messages if message.startswith("note: the config changed")]
    assert len(notes) == 2 and notes[0].endswith("lr: 0.001 -> 0.0123") and "peak lr" in notes[1]
    assert resumed.init_from == origin
    assert load_checkpoint(tmp_path / "warm" / "checkpoint.pt")["config"]["init_from"] == origin


def test_a_setting_newer_than_the_checkpoint_counts_as_a_change_from_its_default() -> None:
    saved = TrainConfig().to_dict()
    del saved["closeup_probability"]  # a checkpoint written before the setting existed ran without close-ups
    current = TrainConfig(closeup_probability=0.2, steps=5).to_dict()
    assert config_changes(saved, current) == ["closeup_probability: 0.0 -> 0.2"]
    assert config_changes(saved, TrainConfig(steps=5).to_dict()) == []


def test_epochs_set_the_step_count_and_validation_runs_once_per_epoch(people: Path, tmp_path: Path) -> None:
    # The tiny set has 6 training pairs: at batch 2 an epoch is 3 steps, so 2 epochs are 6 steps.
    config = tiny_config(people, tmp_path / "epochs", steps=1000, epochs=2, eval_every=0, batch_size=2)
    train(config, log=lambda _: None)
    records = [json.loads(line) for line in (tmp_path / "epochs" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if record["kind"] == "val"] == [3, 6]
    assert load_checkpoint(tmp_path / "epochs" / "checkpoint.pt")["step"] == 6


@pytest.fixture(scope="module")
def trained_run(people: Path, tmp_path_factory) -> Path:
    """A 20-step DeepLab run on the tiny set (validated at steps 10 and 20); its folder, for several tests."""
    out_dir = tmp_path_factory.mktemp("runs") / "tiny"
    config = tiny_config(people, out_dir, steps=20, batch_size=4, schedule="constant", eval_every=10)
    out_dir.mkdir()
    (out_dir / "command.txt").write_text(
        "/usr/local/bin/python3.11 -m training.train tiny.toml --steps 10\n"
        "/usr/local/bin/python3.11 -m training.train tiny.toml --steps 20 --resume\n"
    )
    train(config, log=lambda _: None)
    return out_dir


def test_loss_falls_and_the_run_leaves_its_records(trained_run: Path) -> None:
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    losses = [record["loss"] for record in records if record["kind"] == "train"]
    assert len(losses) == 2  # the mean loss over steps 1-10 and over steps 11-20
    assert losses[1] < 0.8 * losses[0]
    validations = [record for record in records if record["kind"] == "val"]
    assert [record["step"] for record in validations] == [10, 20]
    assert set(validations[-1]["metrics"]) == {"people-tiny", "all"}
    for name in ("checkpoint.pt", "best.pt", "preview-000010.png", "preview-000020.png"):
        assert (trained_run / name).is_file(), name


def pretend_native_bf16(monkeypatch: pytest.MonkeyPatch, native_bf16: bool) -> None:
    """Make the CPU look as if it has (or lacks) bf16 units that time faster than float32, to training and serving."""
    monkeypatch.setattr(cpu_module, "cpu_supports_bf16", lambda: native_bf16)
    monkeypatch.setattr(cpu_module, "bf16_measured_faster", lambda: native_bf16)


@pytest.mark.parametrize("native_bf16", [False, True])
def test_bf16_and_channels_last_only_where_the_cpu_has_bf16(monkeypatch, native_bf16: bool) -> None:
    # Emulated bf16 on an AVX2-only CPU made a training step several times slower than float32.
    monkeypatch.delenv(BF16_VARIABLE, raising=False)
    pretend_native_bf16(monkeypatch, native_bf16)
    cpu = torch.device("cpu")
    with train_module.autocast_for(cpu):
        product = torch.ones(4, 4) @ torch.ones(4, 4)
    assert product.dtype == (torch.bfloat16 if native_bf16 else torch.float32)
    expected = torch.channels_last if native_bf16 else torch.contiguous_format
    assert train_module.memory_format_for(cpu) == expected


def test_bf16_switched_off_trains_in_float32_and_keeps_channels_last(monkeypatch) -> None:
    # On an Intel Xeon whose AMX a hypervisor hides, float32 with channels_last trained fastest.
    monkeypatch.setenv(BF16_VARIABLE, "0")
    pretend_native_bf16(monkeypatch, True)
    cpu = torch.device("cpu")
    with train_module.autocast_for(cpu):
        product = torch.ones(4, 4) @ torch.ones(4, 4)
    assert product.dtype == torch.float32
    assert train_module.memory_format_for(cpu) == torch.channels_last
    assert not train_module.validation_predictor(create_model("unet"), TrainConfig(model="unet")).fast


def test_one_image_can_be_overfit() -> None:
    image, mask = draw_person(64, 64, random.Random(5))
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None]
    batch = train_module.normalise(pixels)
    target = torch.from_numpy((np.asarray(mask) >= 128).astype(np.float32))[None, None]
    torch.manual_seed(0)
    model = create_model("deeplab").train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def dice() -> float:
        # Scored as the predictor scores: eval mode (BatchNorm running statistics), logits above zero.
        model.eval()
        with torch.inference_mode(), train_module.autocast_for(torch.device("cpu")):
            predicted = (model(batch)[0, 0] > 0).numpy()
        model.train()
        return score_masks(predicted, target[0, 0].numpy()).dice

    assert dice() < 0.9
    scores = []
    for step in range(1, 81):
        with train_module.autocast_for(torch.device("cpu")):
            logits = model(batch)
        loss = bce_dice_loss(logits.float(), target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 5 == 0:
            scores.append(dice())
            if scores[-1] > 0.9:
                break
    assert scores[-1] > 0.9, f"Dice after {step} steps: {scores}"


def test_sampler_stream_restarts_at_any_position() -> None:
    full = ResumableSampler(size=5, seed=2)
    stream = [item for item, _ in zip(full, range(23), strict=False)]
    resumed = [item for item, _ in zip(ResumableSampler(size=5, seed=2, start=12), range(11), strict=False)]
    assert resumed == stream[12:]
    for epoch in range(4):  # every epoch is a permutation of all the samples
        assert sorted(index for index, _ in stream[epoch * 5 : (epoch + 1) * 5]) == list(range(5))
    assert len({seed for _, seed in stream}) == len(stream)  # each sample its own augmentation seed


def test_seeded_samples_repeat_for_the_same_seed(people: Path) -> None:
    data = InMemoryPairs(pairs_for([people], "train"), max_side=64)
    samples = SeededSamples(data, build_augment("strong", 48, 48, (0.8, 1.2)))
    first, again, other = samples[(1, 77)], samples[(1, 77)], samples[(1, 78)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert not torch.equal(first[0], other[0])


def test_validation_can_be_limited_per_set_keeping_the_order() -> None:
    pairs = [PairPath(Path(f"{i}.jpg"), Path(f"{i}.png"), source) for i, source in enumerate("aaabbbbc")]
    assert [p.image.stem for p in limit_per_set(pairs, 2)] == ["0", "1", "3", "4", "7"]
    assert limit_per_set(pairs, 0) == pairs


def test_ranks_share_one_stream_without_overlap() -> None:
    """Under torchrun each rank takes every other sample of the one stream; resuming keeps the split."""
    whole = [item for item, _ in zip(ResumableSampler(size=7, seed=4), range(40), strict=False)]
    ranks = [ResumableSampler(size=7, seed=4, rank=rank, world=2) for rank in (0, 1)]
    shares = [[item for item, _ in zip(sampler, range(20), strict=False)] for sampler in ranks]
    assert shares[0] == whole[0::2] and shares[1] == whole[1::2]
    assert not {seed for _, seed in shares[0]} & {seed for _, seed in shares[1]}  # no sample seen twice
    resumed = ResumableSampler(size=7, seed=4, start=10, rank=1, world=2)
    assert [item for item, _ in zip(resumed, range(5), strict=False)] == whole[11:20:2]


def toml_config(config: TrainConfig, path: Path) -> Path:
    """Write a config as a TOML file (the plain values a TrainConfig holds)."""
    lines = [f"{key} = {json.dumps(value)}" for key, value in config.to_dict().items() if value != {}]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_torchrun_trains_on_two_processes_and_resumes(people: Path, tmp_path: Path) -> None:
    """Two CPU processes (gloo): one log, one checkpoint with both ranks' RNG, and a resume that continues."""
    out_dir = tmp_path / "ddp"
    config = tiny_config(people, out_dir, steps=20, batch_size=2, eval_every=20, schedule="constant", lr=2e-3)
    path = toml_config(config, tmp_path / "ddp.toml")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "training.train", str(path)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[1]
    first = subprocess.run(command, cwd=root, env=environment, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    checkpoint = load_checkpoint(out_dir / "checkpoint.pt")
    assert checkpoint["step"] == 20 and len(checkpoint["rng_per_rank"]) == 2
    assert not torch.equal(checkpoint["rng_per_rank"][0]["torch"], checkpoint["rng_per_rank"][1]["torch"])
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    train_steps = [record["step"] for record in records if record["kind"] == "train"]
    assert train_steps == [10, 20]  # rank 0 alone writes the log
    losses = [record["loss"] for record in records if record["kind"] == "train"]
    assert losses[-1] < losses[0]
    assert first.stdout.count("training pairs") == 1  # one voice

    second = subprocess.run(
        [*command, "--resume", "--steps", "30"], cwd=root, env=environment, capture_output=True, text=True, timeout=300
    )
    assert second.returncode == 0, second.stderr[-3000:]
    assert "resumed from" in second.stdout and "at step 20" in second.stdout
    assert load_checkpoint(out_dir / "checkpoint.pt")["step"] == 30
    best = load_checkpoint(out_dir / "best.pt")
    assert best["processes"] == 2  # each step took a batch of 2 on each process: the card counts 4 a step
    assert build_card(best, out_dir / "best.pt").training["samples_seen"] == best["step"] * 2 * 2


def test_weighted_sampler_draws_each_set_in_its_share_and_restarts_exactly() -> None:
    pairs = [PairPath(Path(f"{i}.jpg"), Path(f"{i}.png"), "big") for i in range(90)]
    pairs += [PairPath(Path(f"s{i}.jpg"), Path(f"s{i}.png"), "small") for i in range(10)]
    weights = sampling_weights(pairs, {"big": 0.25, "small": 0.75})
    sampler = ResumableSampler(size=len(pairs), seed=3, weights=weights)
    stream = [index for (index, _), _ in zip(sampler, range(4000), strict=False)]
    small_share = np.mean([index >= 90 for index in stream])
    assert 0.72 < small_share < 0.78  # 10% of the files, 75% of the samples
    resumed = ResumableSampler(size=len(pairs), seed=3, start=1234, weights=weights)
    assert [index for (index, _), _ in zip(resumed, range(100), strict=False)] == stream[1234:1334]
    with pytest.raises(ValueError, match="every training set"):
        sampling_weights(pairs, {"big": 1.0})
    assert sampling_weights(pairs, {}) is None


def test_composite_mask_is_exactly_the_union_of_the_pasted_people() -> None:
    """Drawn shapes in flat colours: inside the label only person colours, outside it only the background."""
    random.seed(5)
    background = torch.zeros(3, 120, 160, dtype=torch.uint8)
    background[2] = 200  # blue scene with nobody
    donors = []
    for colour in ((255, 0, 0), (0, 255, 0), (255, 255, 0)):
        image = np.zeros((60, 40, 3), dtype=np.uint8)
        mask = np.zeros((60, 40), dtype=np.uint8)
        mask[10:50, 8:32] = 1
        image[mask == 1] = colour
        donors.append(cut_out(image, mask, margin=0))
    compositor = Compositor(min_height_fraction=0.2, max_height_fraction=0.5, match_probability=0.0)
    image, mask = compositor(background, torch.zeros(1, 120, 160, dtype=torch.uint8), donors)
    assert mask.sum() > 0
    inside, outside = image[:, mask[0] == 1], image[:, mask[0] == 0]
    assert (inside[2] == 0).all()  # every labelled pixel is a person's colour (no blue)
    far = F.max_pool2d(mask[None].float(), 3, stride=1, padding=1)[0, 0] == 0  # off the one-pixel feather
    assert (image[:, far] == torch.tensor([0, 0, 200], dtype=torch.uint8)[:, None]).all()
    assert outside.shape[1] == int((mask[0] == 0).sum())


def test_composites_start_from_real_backgrounds_and_keep_the_crop_size(people: Path, tmp_path: Path) -> None:
    nobody = make_empty_dataset(tmp_path / "no-people", val=2, size=(64, 48))
    data = InMemoryPairs(pairs_for([people, nobody], "train"), max_side=64)
    samples = SeededSamples(data, build_augment("strong", 48, 48, (0.8, 1.2)), composite_probability=1.0)
    assert samples.empty and samples.donors
    for seed in range(8):
        image, mask = samples[(0, seed)]
        assert image.shape == (3, 48, 48) and mask.shape == (1, 48, 48) and set(mask.unique().tolist()) <= {0, 1}
    assert torch.equal(samples[(0, 3)][0], samples[(0, 3)][0])  # reproducible from the sample's seed


def test_composite_backgrounds_come_only_from_sets_that_label_everyone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """people-ccp marks only its subject (bystanders are background): no composite is built on its photos."""
    subject_only = make_people_dataset(tmp_path / "people-ccp", train=4, val=1, seed=5)
    everyone = make_people_dataset(tmp_path / "people-coco", train=3, val=1, seed=6)
    data = InMemoryPairs(pairs_for([subject_only, everyone], "train"), max_side=64)
    samples = SeededSamples(data, build_augment("strong", 48, 48, (0.8, 1.2)), composite_probability=1.0)
    assert samples.backgrounds == [4, 5, 6]
    first_arrays: list[int] = []
    real_as_tensors = train_module.as_tensors

    def recording_as_tensors(image: np.ndarray, mask: np.ndarray):
        first_arrays.append(id(image))  # composite() turns its background into tensors first, donors after
        return real_as_tensors(image, mask)

    monkeypatch.setattr(train_module, "as_tensors", recording_as_tensors)
    backgrounds = set()
    for seed in range(40):
        first_arrays.clear()
        samples[(0, seed)]
        backgrounds.add(next(i for i, image in enumerate(data.images) if id(image) == first_arrays[0]))
    assert backgrounds == {4, 5, 6}

    # With only subject-only sets there is no person-free crop to take: whole photos, their masks kept.
    only = InMemoryPairs(pairs_for([subject_only], "train"), max_side=64)
    crops = []
    monkeypatch.setattr(train_module, "person_free_crop", lambda *args: crops.append(args))
    fallback = SeededSamples(only, build_augment("strong", 48, 48, (0.8, 1.2)), composite_probability=1.0)
    for seed in range(20):
        assert fallback[(0, seed)][0].shape == (3, 48, 48)
    assert crops == []


def test_closeups_come_only_from_the_sets_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """closeup_sets = ["people-ccp"]: its photos are zoomed in on, those of people-portraits never are."""
    zoomed = make_people_dataset(tmp_path / "people-ccp", train=3, val=1, seed=5)
    whole = make_people_dataset(tmp_path / "people-portraits", train=3, val=1, seed=6)
    data = InMemoryPairs(pairs_for([zoomed, whole], "train"), max_side=64)
    augment = build_augment("strong", 48, 48, (1.0, 1.0), closeup_probability=1.0)
    calls: list[int] = []
    real_closeup = augment._closeup

    def counted_closeup(image: torch.Tensor, mask: torch.Tensor):
        calls.append(1)
        return real_closeup(image, mask)

    monkeypatch.setattr(augment, "_closeup", counted_closeup)
    samples = SeededSamples(data, augment, closeup_sets=["people-ccp"])
    for index, pair in enumerate(data.pairs):
        calls.clear()
        assert samples[(index, 11)][0].shape == (3, 48, 48)
        assert len(calls) == (pair.source == "people-ccp"), f"{pair.source}: {len(calls)} close-ups"
    everywhere = SeededSamples(data, augment)
    calls.clear()
    for index in range(len(data)):
        everywhere[(index, 11)]
    assert len(calls) == len(data)  # no closeup_sets: every set's photos
    # A misspelt set fails as the config is read, not minutes later once the photos are decoded.
    with pytest.raises(ValueError, match="closeup_sets names sets not in data: people-cocoa"):
        TrainConfig(data=[str(zoomed), str(whole)], closeup_sets=["people-ccp", "people-cocoa"])


def test_a_new_run_refuses_a_folder_that_holds_another_run(people: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "run"
    out_dir.mkdir()
    (out_dir / "command.txt").write_text("python -m training.train earlier.toml\n")
    (out_dir / "metrics.jsonl").write_text(json.dumps({"kind": "train", "step": 10, "minutes": 5.0}) + "\n")
    with pytest.raises(train_module.RunDirectoryTaken, match="--resume"):
        train(tiny_config(people, out_dir, steps=1), log=lambda _: None)

    config_path = tmp_path / "tiny.toml"
    config_path.write_text('model = "deeplab"\nthreads = 1\nworkers = 0\n')
    with pytest.raises(SystemExit):
        train_module.main([str(config_path), "--steps", "1", "--out-dir", str(out_dir), "--data", str(people)])
    assert "already holds a run (metrics.jsonl)" in capsys.readouterr().err
    assert (out_dir / "command.txt").read_text() == "python -m training.train earlier.toml\n"  # nothing appended

    # --resume with a log but no checkpoint (the run died before its first one): a new run, its log restarted.
    train(tiny_config(people, out_dir, steps=1, eval_every=1), resume=True, log=lambda _: None)
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records] == [1] * len(records) and records


def test_main_appends_each_command_line(people: Path, tmp_path: Path) -> None:
    config_path = tmp_path / "tiny.toml"
    config_path.write_text('model = "deeplab"\nthreads = 1\nworkers = 0\n')
    out_dir = tmp_path / "run"
    for extra in ([], ["--resume"]):
        train_module.main([str(config_path), "--steps", "0", "--out-dir", str(out_dir), "--data", str(people), *extra])
    lines = (out_dir / "command.txt").read_text().splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(f"-m training.train {config_path} --steps 0 --out-dir {out_dir} --data {people}")
    assert lines[1].endswith("--resume")


def test_seed_on_the_command_line_gives_a_continuation_its_own_sample_stream(
    people: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each warm-started continuation of a config needs its own seed, or it replays the last run's samples."""
    drawn: list[tuple[int, int]] = []  # (photo, augmentation seed) of every sample the runs draw
    original = SeededSamples.__getitem__

    def recording(self: SeededSamples, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        drawn.append(tuple(item))
        return original(self, item)

    monkeypatch.setattr(SeededSamples, "__getitem__", recording)
    streams = {}
    for name, arguments in [("config", []), ("again", []), ("continuation", ["--seed", "18"])]:
        out_dir = tmp_path / name
        path = toml_config(tiny_config(people, out_dir, steps=2, eval_every=100), tmp_path / f"{name}.toml")
        drawn.clear()
        train_module.main([str(path), *arguments])
        streams[name] = list(drawn)
    assert load_checkpoint(tmp_path / "continuation" / "checkpoint.pt")["config"]["seed"] == 18
    assert len(streams["config"]) == 4 and streams["again"] == streams["config"]  # a seed replays its samples
    assert streams["continuation"] != streams["config"]


def test_stop_after_ends_a_run_with_a_checkpoint_that_resumes_to_its_planned_end(
    people: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A run longer than a working session stops on time, skips the final validation, and resumes to its plan."""
    monkeypatch.setattr(train_module, "save_preview", lambda *args, **kwargs: None)
    monkeypatch.setattr(train_module, "plot_curves", lambda *args, **kwargs: None)
    out_dir = tmp_path / "long"
    path = toml_config(tiny_config(people, out_dir, steps=4, eval_every=4), tmp_path / "long.toml")
    train_module.main([str(path), "--stop-after", "0"])  # the time is up as soon as the first step ends
    assert "stopped at step 1/4" in capsys.readouterr().out
    assert load_checkpoint(out_dir / "checkpoint.pt")["step"] == 1
    assert not (out_dir / "best.pt").exists()  # nothing validated on the way out

    train_module.main([str(path), "--resume"])
    assert load_checkpoint(out_dir / "checkpoint.pt")["step"] == 4
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in records if record["kind"] == "val"] == [4]
    assert (out_dir / "best.pt").exists()


def test_steps_on_the_command_line_win_over_epochs_in_the_config(people: Path, tmp_path: Path) -> None:
    """A short trial of an epochs-based config (the research ones) runs the steps asked for, not every epoch."""
    out_dir = tmp_path / "trial"
    path = toml_config(tiny_config(people, out_dir, epochs=5.0, eval_every=100), tmp_path / "epochs.toml")
    train_module.main([str(path), "--steps", "2"])  # 5 epochs of 6 pairs in batches of 2 would be 15 steps
    assert load_checkpoint(out_dir / "checkpoint.pt")["step"] == 2


# ---------------------------------------------------------------- configs


def test_every_shipped_config_is_accepted() -> None:
    paths = sorted(CONFIGS.glob("*.toml"))
    assert {"unet_research.toml", "deeplab_research.toml", "unet_carvana.toml"} <= {path.name for path in paths}
    for path in paths:
        config = TrainConfig.from_toml(path)
        assert config.model in ("deeplab", "unet"), path
        augment_for(config)
        assert config.loss in LOSSES and config.optimizer in ("adam", "adamw"), path


@pytest.mark.parametrize(
    ("name", "model", "size", "batch", "epochs", "pairs"),
    [
        ("unet_research", "unet", 256, 1, 20, PEOPLE_TRAIN_PAIRS),
        ("deeplab_research", "deeplab", 512, 2, 5, PEOPLE_TRAIN_PAIRS),
        ("unet_carvana", "unet", 256, 1, None, None),
    ],
)
def test_research_configs_match_the_documented_runs(name, model, size, batch, epochs, pairs) -> None:
    config = TrainConfig.from_toml(CONFIGS / f"{name}.toml")
    assert (config.model, config.crop_size, config.inference_size, config.batch_size) == (model, size, size, batch)
    assert (config.optimizer, config.lr, config.loss, config.schedule) == ("adam", 1e-4, "bce", "constant")
    assert config.augment == "research"
    if epochs is not None:
        assert config.epochs == epochs
        assert config.eval_every == 0  # validation and a checkpoint once per epoch
    if name == "unet_carvana":
        assert config.data == ["data/carvana"]


def test_config_refuses_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "typo.toml"
    path.write_text('model = "unet"\nlearning_rate = 0.1\n')
    with pytest.raises(ValueError, match="learning_rate"):
        TrainConfig.from_toml(path)


# ---------------------------------------------------------------- datasets


def test_people_layout_lists_pairs_per_split(people: Path) -> None:
    train_pairs, val_pairs = find_pairs(people, "train"), find_pairs(people, "val")
    assert [pair.image.name for pair in val_pairs] == ["0006.jpg", "0007.jpg"]
    assert len(train_pairs) == 6 and all(pair.source == "people-tiny" for pair in train_pairs)
    image, mask = load_pair(val_pairs[0])
    assert image.shape == (64, 48, 3) and image.dtype == np.uint8
    assert mask.shape == (64, 48) and set(np.unique(mask)) == {0, 1}


def test_carvana_layout_splits_a_tenth_of_the_cars(tmp_path: Path) -> None:
    root = make_carvana_dataset(tmp_path / "carvana", count=20)  # 5 cars, 4 views each
    train_pairs, val_pairs = find_pairs(root, "train"), find_pairs(root, "val")
    assert len(train_pairs) == 16 and len(val_pairs) == 4  # at least one car validates
    car = lambda pair: pair.image.stem.split("_")[0]  # noqa: E731
    assert not {car(pair) for pair in train_pairs} & {car(pair) for pair in val_pairs}  # no car on both sides
    assert val_pairs[0].mask.name == val_pairs[0].image.stem + "_mask.gif"
    image, mask = load_pair(val_pairs[0])
    # The palette indices 0/1 must come out as person pixels, not as a near-black (empty) mask.
    assert image.shape[:2] == mask.shape and mask.max() == 1 and 0 < mask.mean() < 1


def _copy_dataset(people: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(people, tmp_path / "people-copy"))


def test_missing_mask_is_named(people: Path, tmp_path: Path) -> None:
    root = _copy_dataset(people, tmp_path)
    (root / "masks" / "0003.png").unlink()
    with pytest.raises(DatasetError, match=r"masks/0003\.png"):
        find_pairs(root, "train")


def test_size_mismatch_is_named(people: Path, tmp_path: Path) -> None:
    root = _copy_dataset(people, tmp_path)
    Image.new("L", (40, 40)).save(root / "masks" / "0006.png")
    with pytest.raises(DatasetError, match=r"size mismatch.*images/0006\.jpg.*masks/0006\.png"):
        load_pair(find_pairs(root, "val")[0])


def _mask_files(person: np.ndarray) -> dict[str, Image.Image]:
    """One person mask written the ways data sets write masks."""
    palette = Image.fromarray(person.astype(np.uint8), mode="L").convert("P")
    palette.putpalette([0, 0, 0, 128, 0, 0] + [0, 0, 0] * 254)  # VOC-style dark red: grey level 38
    return {
        "grey-0-255": Image.fromarray(person.astype(np.uint8) * 255),
        "grey-0-1": Image.fromarray(person.astype(np.uint8)),
        "16-bit-0-1": Image.fromarray(person.astype(np.uint16)),
        "16-bit-0-65535": Image.fromarray(person.astype(np.uint16) * 65535),
        "one-bit": Image.fromarray(person),
        "palette-dark-red": palette,
        "rgb-red": Image.fromarray(np.stack([person * 200, person * 0, person * 0], axis=2).astype(np.uint8)),
    }


@pytest.mark.parametrize("kind", list(_mask_files(np.zeros((1, 1), bool))))
def test_masks_read_the_same_whatever_their_mode(people: Path, tmp_path: Path, kind: str) -> None:
    """0/1 masks, 16-bit masks and palette colours are people, not an empty mask below a grey threshold of 128."""
    root = _copy_dataset(people, tmp_path)
    pair = find_pairs(root, "val")[0]
    truth = np.asarray(Image.open(pair.mask)) >= 128
    assert 0 < truth.mean() < 1
    _mask_files(truth)[kind].save(pair.mask)
    np.testing.assert_array_equal(load_pair(pair)[1], truth)
    np.testing.assert_array_equal(read_mask(pair), truth)


@pytest.mark.parametrize("drawn_upright", [False, True], ids=["mask-on-stored-pixels", "mask-on-upright-photo"])
def test_a_turned_photo_and_its_mask_come_out_upright_and_aligned(tmp_path: Path, drawn_upright: bool) -> None:
    """Training and evaluation see a photo as decode_image (the service) does: upright, with its mask turned too."""
    from segmentation.decoding import decode_image

    stored = np.zeros((24, 40), dtype=bool)
    stored[:8, :8] = True  # a person in the stored top-left corner
    photo = Image.fromarray(np.where(stored[..., None], 230, 20).repeat(3, axis=2).astype(np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to view: the corner moves to the top right
    root = tmp_path / "turned"
    for folder in ("images", "masks", "segmentation"):
        (root / folder).mkdir(parents=True)
    photo.save(root / "images" / "a.jpg", quality=95, exif=exif.tobytes())
    mask = Image.fromarray(stored.astype(np.uint8) * 255)
    (mask.transpose(Image.Transpose.ROTATE_270) if drawn_upright else mask).save(root / "masks" / "a.png")
    (root / "segmentation" / "val.txt").write_text("a\n")
    pair = find_pairs(root, "val")[0]

    image, truth = load_pair(pair)
    upright = np.asarray(decode_image(pair.image))
    assert image.shape == upright.shape == (40, 24, 3)
    assert truth[:8, -8:].all() and truth.sum() == 64
    np.testing.assert_array_equal(truth.astype(bool), upright.mean(axis=2) > 128)
    np.testing.assert_array_equal(read_mask(pair), truth.astype(bool))


def test_empty_split_list_is_named(people: Path, tmp_path: Path) -> None:
    root = _copy_dataset(people, tmp_path)
    (root / "segmentation" / "val.txt").write_text("\n \n")
    with pytest.raises(DatasetError, match=r"empty: .*segmentation/val\.txt"):
        pairs_for([root], "val")


def test_missing_split_list_is_named(people: Path, tmp_path: Path) -> None:
    root = _copy_dataset(people, tmp_path)
    with pytest.raises(DatasetError, match=r"not found: .*segmentation/test\.txt"):
        find_pairs(root, "test")


def test_carvana_missing_mask_and_unknown_layout_are_named(tmp_path: Path) -> None:
    root = make_carvana_dataset(tmp_path / "carvana", count=3)
    (root / "train_masks" / "car000_02_mask.gif").unlink()
    with pytest.raises(DatasetError, match=r"train_masks/car000_02_mask\.gif"):
        find_pairs(root, "train")
    (tmp_path / "other").mkdir()
    with pytest.raises(DatasetError, match="other is neither"):
        find_pairs(tmp_path / "other", "train")


# ---------------------------------------------------------------- metrics and losses


def test_metrics_match_hand_counts() -> None:
    predicted = np.zeros((4, 5), dtype=bool)
    target = np.zeros((4, 5), dtype=bool)
    predicted[0, :4] = True  # 4 predicted pixels
    target[0, 2:] = True  # 3 true pixels, 2 of them predicted
    target[1, 0] = True  # a 4th true pixel, missed
    # intersection 2, union 4 + 4 - 2 = 6, wrong pixels: 2 false positives + 2 misses = 4 of 20.
    scores = score_masks(predicted, target)
    assert scores.dice == pytest.approx(2 * 2 / (4 + 4))
    assert scores.iou == pytest.approx(2 / 6)
    assert scores.pixel_accuracy == pytest.approx(16 / 20)


def test_metrics_of_empty_masks() -> None:
    empty, full = np.zeros((3, 3), dtype=bool), np.ones((3, 3), dtype=bool)
    assert score_masks(empty, empty) == MaskScores(1.0, 1.0, 1.0)  # nothing to find, nothing found
    assert score_masks(full, empty) == MaskScores(0.0, 0.0, 0.0, kept=1.0)  # everything kept where nobody is
    one = empty.copy()
    one[1, 1] = True
    assert score_masks(empty, one) == MaskScores(0.0, 0.0, pytest.approx(8 / 9), kept=0.0)
    assert score_masks(one, empty).kept == pytest.approx(1 / 9)
    with pytest.raises(ValueError, match="shape mismatch"):
        score_masks(empty, np.zeros((3, 4), dtype=bool))


def test_mean_scores_average_over_images() -> None:
    means = mean_scores([MaskScores(1.0, 1.0, 1.0, 0.5), MaskScores(0.5, 0.25, 0.75, 0.0)])
    assert means == {"dice": 0.75, "iou": 0.625, "pixel_accuracy": 0.875, "kept": 0.25, "images": 2}
    with pytest.raises(ValueError):
        mean_scores([])


def test_losses_reward_the_right_answer() -> None:
    target = torch.zeros(2, 1, 16, 16)
    target[:, :, 4:12, 4:12] = 1
    perfect, inverted = (target * 2 - 1) * 20, (1 - target * 2) * 20
    assert soft_dice_loss(perfect, target) < 1e-3
    assert bce_loss(perfect, target) < 1e-3
    assert soft_dice_loss(inverted, target) > 0.99
    assert bce_loss(inverted, target) > 10
    unsure = torch.zeros_like(target)
    assert bce_loss(unsure, target) == pytest.approx(np.log(2), rel=1e-5)
    combined = bce_loss(unsure, target) + soft_dice_loss(unsure, target)
    assert bce_dice_loss(unsure, target) == pytest.approx(float(combined))
    assert lovasz_hinge_loss(perfect, target) == 0
    assert lovasz_hinge_loss(inverted, target) > 10
    assert bce_lovasz_loss(unsure, target) == pytest.approx(float(bce_loss(unsure, target) + 1.0))
    assert set(LOSSES) == {"bce", "dice", "bce_dice", "bce_lovasz"}


def test_lovasz_loss_matches_the_iou_it_stands_for() -> None:
    target = torch.zeros(1, 1, 8, 8)
    target[..., 2:6, 2:6] = 1  # 16 pixels
    logits = target * 2 - 1  # every pixel right by a margin of exactly 1: hinge errors of 0
    one_false_positive = logits.clone()
    one_false_positive[..., 0, 0] = 1.0  # hinge error 2 on a pixel that turns IoU from 1 into 16/17
    assert lovasz_hinge_loss(one_false_positive, target) == pytest.approx(2 * (1 - 16 / 17))
    one_miss = logits.clone()
    one_miss[..., 3, 3] = -1.0  # a missed person pixel: IoU 15/16
    assert lovasz_hinge_loss(one_miss, target) == pytest.approx(2 * (1 - 15 / 16))
    nobody = torch.zeros_like(target)
    assert lovasz_hinge_loss(-torch.ones_like(target), nobody) == 0  # nothing kept where nobody is
    assert lovasz_hinge_loss(torch.zeros_like(target), nobody) == pytest.approx(1.0)


def test_lovasz_loss_is_per_image() -> None:
    target = torch.zeros(2, 1, 8, 8)
    target[0, :, :2, :2], target[1, :, 2:, 2:] = 1, 1
    logits = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    separately = [lovasz_hinge_loss(logits[i : i + 1], target[i : i + 1]) for i in range(2)]
    assert lovasz_hinge_loss(logits, target) == pytest.approx(float(sum(separately) / 2))


def test_dice_loss_is_per_image() -> None:
    # A missed small person costs as much as a missed large one: Dice is averaged over images, not pixels.
    small, large = torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 16)
    small[..., :4, :4], large[..., :12, :12] = 1, 1  # 16 and 144 pixels
    target = torch.cat([small, large])
    miss_small = torch.where(torch.cat([torch.zeros_like(small), large]).bool(), 20.0, -20.0)
    miss_large = torch.where(torch.cat([small, torch.zeros_like(large)]).bool(), 20.0, -20.0)
    assert soft_dice_loss(miss_small, target) == pytest.approx(float(soft_dice_loss(miss_large, target)), abs=0.05)
    assert bce_loss(miss_large, target) > 5 * bce_loss(miss_small, target)  # per pixel, size is all that counts


def test_dice_loss_has_gradients_towards_the_target() -> None:
    target = torch.zeros(1, 1, 8, 8)
    target[..., :4] = 1
    logits = torch.zeros_like(target, requires_grad=True)
    bce_dice_loss(logits, target).backward()
    assert (logits.grad[target.bool()] < 0).all() and (logits.grad[~target.bool()] > 0).all()
    logits.grad = None
    bce_lovasz_loss(logits, target).backward()
    assert (logits.grad[target.bool()] < 0).all() and (logits.grad[~target.bool()] > 0).all()


# ---------------------------------------------------------------- augmentation

PERSON_GREY = 200  # grey survives channel shuffles; the backgrounds below stay far from it


def _grey_person(width: int, height: int, rng: random.Random) -> tuple[np.ndarray, np.ndarray]:
    """A drawn person in pure grey on a darker background, and its 0/1 mask."""
    image, mask = draw_person(width, height, rng)
    pixels = np.array(image)
    person = np.asarray(mask) >= 128
    pixels[person] = PERSON_GREY
    pixels[~person] = np.minimum(pixels[~person], 150)
    return pixels, person.astype(np.uint8)


def _interior(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixels at least radius away from the other label and from the crop's border."""
    padded = F.pad(mask[None].float(), [radius] * 4, value=0.0)
    return (-F.max_pool2d(-padded, 2 * radius + 1, stride=1))[0].bool()


def test_negative_samples_hold_no_person_and_keep_the_crop_size() -> None:
    augment = build_augment("strong", crop_size=48, base_side=96, scale_range=(1.0, 1.0))
    augment.negative_probability, augment.paste_probability = 1.0, 0.0
    rng = random.Random(3)
    for trial in range(8):
        random.seed(trial)
        torch.manual_seed(trial)
        image, mask = augment(*_grey_person(72, 96, rng), *_grey_person(40, 56, rng))
        assert image.shape == (3, 48, 48) and mask.shape == (1, 48, 48)
        assert not mask.any(), f"trial {trial}: a person-free sample has a person in its mask"
        assert not ((image.int() - PERSON_GREY).abs() <= 2).all(0).any(), f"trial {trial}: the person leaked in"
    panorama, panorama_mask = np.full((10, 300, 3), 90, np.uint8), np.zeros((10, 300), np.uint8)
    panorama_mask[:, 140:150] = 1  # someone in a strip thinner than the 16 px a background crop takes at least
    strip = augment(panorama, panorama_mask, *_grey_person(40, 56, rng))
    assert strip[0].shape == (3, 48, 48) and not strip[1].any()


def test_negatives_of_photos_whose_masks_mark_only_the_subject_are_synthetic() -> None:
    augment = build_augment("strong", crop_size=48, base_side=96, scale_range=(1.0, 1.0))
    augment.negative_probability, augment.paste_probability, augment.background_probability = 1.0, 0.0, 0.0
    augment.photometric = lambda image: image
    augment.colour, augment.dropout_probability, augment.rotate_probability = False, 0.0, 0.0
    photo, mask = np.full((72, 96, 3), 90, np.uint8), np.zeros((72, 96), np.uint8)
    mask[20:50, 40:56] = 1
    for trial in range(6):
        random.seed(trial)
        torch.manual_seed(trial)
        from_photo, _ = augment(photo, mask, photo, mask)
        random.seed(trial)
        torch.manual_seed(trial)
        synthetic, synthetic_mask = augment(photo, mask, photo, mask, labels_everyone=False)
        assert (from_photo == 90).all()  # a crop of the photo's own background
        assert not (synthetic == 90).all() and not synthetic_mask.any()


def test_rescaling_keeps_the_mask_on_its_photo() -> None:
    """The rescaled mask is the rescaled photo's person, thresholded: not shifted by a fraction of a pixel."""
    from training.augment import _resize_long_side

    for before, after in [(627, 269), (448, 300), (269, 627), (336, 448)]:
        image = torch.zeros(3, before, before, dtype=torch.uint8)
        mask = torch.zeros(1, before, before, dtype=torch.uint8)
        third = before // 3
        image[:, third : 2 * third + 1, third + 7 : 2 * third] = 255
        mask[:, third : 2 * third + 1, third + 7 : 2 * third] = 1
        image, mask = _resize_long_side(image, mask, after)
        disagree = int((mask[0].bool() != (image[0] >= 128)).sum())
        assert disagree <= 2, (before, after, disagree)  # a rounding tie at most, not a row or column


def _plain_geometry(augment) -> None:
    """Switch off what moves or recolours pixels at random, so one feature's geometry is all that is left."""
    augment.photometric = lambda image: image
    augment.colour = False
    augment.dropout_probability = augment.negative_probability = augment.paste_probability = 0.0
    augment.background_probability = augment.rotate_probability = augment.vflip_probability = 0.0


def test_closeups_zoom_in_on_part_of_the_person() -> None:
    augment = build_augment("strong", crop_size=48, base_side=96, scale_range=(1.0, 1.0), closeup_probability=1.0)
    _plain_geometry(augment)
    augment.closeup_part = (0.6, 0.6)  # 24 px of the photo in the 48 px crop: twice as large
    # A person 40 px tall and 4 px wide in a 96 px photo: whole and 4 px wide in a crop at the usual scale.
    photo, mask = np.full((96, 72, 3), 60, np.uint8), np.zeros((96, 72), np.uint8)
    photo[28:68, 30:34], mask[28:68, 30:34] = PERSON_GREY, 1
    for trial in range(12):
        random.seed(trial)
        torch.manual_seed(trial)
        image, crop_mask = augment(photo, mask, photo, mask)
        assert image.shape == (3, 48, 48) and crop_mask.shape == (1, 48, 48)
        rows = torch.nonzero(crop_mask[0].any(1)).flatten()
        cols = torch.nonzero(crop_mask[0].any(0)).flatten()
        assert rows.numel(), f"trial {trial}: the close-up missed the person"
        # 24 px of the 40 px person: the crop's top or bottom edge always cuts the figure, twice as wide.
        assert rows[0] == 0 or rows[-1] == 47, f"trial {trial}: the whole person fits the close-up"
        assert int(cols[-1] - cols[0] + 1) in (7, 8, 9), f"trial {trial}: not zoomed in"
        is_grey = ((image.int() - PERSON_GREY).abs() <= 2).all(0)
        inside, outside = _interior(crop_mask[0], 2), _interior(1 - crop_mask[0], 3)
        assert is_grey[inside].all() and not is_grey[outside].any(), f"trial {trial}: photo and mask apart"


def test_closeups_of_a_small_figure_stop_at_the_largest_zoom() -> None:
    augment = build_augment("strong", crop_size=48, base_side=96, scale_range=(1.0, 1.0), closeup_probability=1.0)
    _plain_geometry(augment)
    photo, mask = np.full((96, 96, 3), 60, np.uint8), np.zeros((96, 96), np.uint8)
    photo[40:44, 50:54], mask[40:44, 50:54] = PERSON_GREY, 1  # 4 px: a figure in the distance
    for trial in range(6):
        random.seed(trial)
        torch.manual_seed(trial)
        _, crop_mask = augment(photo, mask, photo, mask)
        # At most 3x the usual scale (closeup_max_zoom): 12 px, not the 48 px a crop of its own box would give.
        assert 10 <= int(crop_mask.sum() ** 0.5) <= 13, f"trial {trial}: {int(crop_mask.sum())} person pixels"


def test_a_photo_too_thin_for_a_closeup_takes_the_usual_path() -> None:
    augment = build_augment("strong", crop_size=48, base_side=96, scale_range=(1.0, 1.0), closeup_probability=1.0)
    _plain_geometry(augment)
    # 10 x 90: a 48 px crop of its short side would be 4.8x the usual scale, past the 3x cap.
    photo, mask = np.full((10, 90, 3), 60, np.uint8), np.zeros((10, 90), np.uint8)
    photo[2:8, 40:46], mask[2:8, 40:46] = PERSON_GREY, 1
    random.seed(0)
    image, _ = augment(photo, mask, photo, mask)
    padded = (image == torch.tensor(MEAN_RGB, dtype=torch.uint8)[:, None, None]).all(0)
    assert padded.float().mean() > 0.5  # the whole strip, rescaled and padded: not a zoomed-in window of it


def test_closeups_zoom_in_on_photos_with_nobody_at_the_same_zoom() -> None:
    """A scene with nobody is zoomed in on too, so that zoom alone never says "person"; subject-only sets are not."""
    augment = build_augment("strong", crop_size=48, base_side=96, scale_range=(1.0, 1.0), closeup_probability=1.0)
    _plain_geometry(augment)
    augment.closeup_part = (0.25, 0.25)  # 24 px of the 96 px photo's short side in the 48 px crop: twice as large
    ramp = np.repeat(np.repeat((np.arange(96) * 2).astype(np.uint8)[None, :, None], 96, 0), 3, 2)  # 2 a pixel
    empty = np.zeros((96, 96), np.uint8)
    for trial in range(6):
        random.seed(trial)
        torch.manual_seed(trial)
        image, mask = augment(ramp, empty, ramp, empty)
        assert image.shape == (3, 48, 48) and not mask.any()
        step = image[0].int().diff(dim=1).float().mean().abs()  # a flip may turn the ramp round
        assert step == pytest.approx(1.0, abs=0.1), f"trial {trial}: not zoomed in twice"
        random.seed(trial)
        torch.manual_seed(trial)
        image, _ = augment(ramp, empty, ramp, empty, labels_everyone=False)  # its bystanders are unlabelled
        step = image[0].int().diff(dim=1).float().mean().abs()
        assert step == pytest.approx(2.0, abs=0.1), f"trial {trial}: zoomed in on a subject-only set's scene"


def test_quarter_turns_lay_people_down() -> None:
    augment = build_augment("strong", crop_size=64, base_side=64, scale_range=(1.0, 1.0), quarter_turn_probability=1.0)
    _plain_geometry(augment)
    augment.hflip_probability = 0.0  # a mirror image is a fair sample too, but not what is checked here
    # Standing, 48 tall and 8 wide, off-centre: turned one way or the other, photo and mask must agree.
    photo, mask = np.full((64, 32, 3), 60, np.uint8), np.zeros((64, 32), np.uint8)
    photo[4:52, 4:12], mask[4:52, 4:12] = PERSON_GREY, 1
    photo[60:, 28:] = 10  # a dark mark in one corner, not a person
    for trial in range(6):
        random.seed(trial)
        torch.manual_seed(trial)
        image, turned = augment(photo, mask, photo, mask)
        rows, cols = torch.nonzero(turned[0].any(1)).flatten(), torch.nonzero(turned[0].any(0)).flatten()
        assert (int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)) == (8, 48), f"trial {trial}"
        assert torch.equal((image == PERSON_GREY).all(0), turned[0].bool()), f"trial {trial}: photo and mask apart"
        # The mark and the person keep their places relative to each other (the photo turned, not mirrored).
        mark = torch.nonzero((image == 10).all(0)).float().mean(0)
        person = torch.nonzero(turned[0]).float().mean(0)
        turned_photo = torch.from_numpy(photo).permute(2, 0, 1)
        for turns in (1, 3):
            expected = turned_photo.rot90(turns, (-2, -1))
            e_mark = torch.nonzero((expected == 10).all(0)).float().mean(0)
            e_person = torch.nonzero((expected == PERSON_GREY).all(0)).float().mean(0)
            if torch.allclose(mark - person, e_mark - e_person):
                break
        else:
            raise AssertionError(f"trial {trial}: not a quarter turn of the photo")


def test_the_research_recipe_refuses_closeups_and_quarter_turns() -> None:
    with pytest.raises(ValueError, match="research recipe"):
        build_augment("research", 48, 64, (1.0, 1.0), closeup_probability=0.2)
    with pytest.raises(ValueError, match="research recipe"):
        build_augment("research", 48, 64, (1.0, 1.0), quarter_turn_probability=0.1)


@pytest.mark.parametrize("recipe", ["strong", "research"])
def test_augmentation_keeps_photo_and_mask_aligned(recipe: str) -> None:
    augment = build_augment(recipe, crop_size=48, base_side=64, scale_range=(0.6, 1.3))
    # Photometric changes move no pixel, and dropout hides the person on purpose; both off, so every
    # pixel of the person keeps its colour and alignment is all that is checked.
    augment.photometric = lambda image: image
    augment.colour = False
    augment.dropout_probability = 0.0
    augment.negative_probability = 0.0  # person-free samples have their own test
    rng = random.Random(7)
    for trial in range(12):
        random.seed(trial)
        torch.manual_seed(trial)
        partner, partner_mask = _grey_person(40, 56, rng)
        # An all-grey partner photo: the one-pixel feather around a pasted person then blends grey into
        # grey, and only where the two people overlap does it touch the first person.
        partner[:] = PERSON_GREY
        image, mask = augment(*_grey_person(48, 64, rng), partner, partner_mask)
        assert image.shape == (3, 48, 48) and mask.shape == (1, 48, 48)
        assert image.dtype == mask.dtype == torch.uint8 and set(mask.unique().tolist()) <= {0, 1}
        is_grey = ((image.int() - PERSON_GREY).abs() <= 2).all(0)
        # Upscaling and rotation blend two or three pixels at every edge (the mask's edge sits mid-ramp since
        # it is resampled as the photo is; test_rescaling_keeps_the_mask_on_its_photo checks that): compare
        # away from them.
        inside, outside = _interior(mask[0], 3), _interior(1 - mask[0], 3)
        assert inside.sum() > 20 and outside.sum() > 20, f"trial {trial}: degenerate crop"
        assert is_grey[inside].all(), f"trial {trial}: person pixels lost their colour"
        assert not is_grey[outside].any(), f"trial {trial}: background pixels look like the person"


@pytest.mark.parametrize("recipe", ["strong", "research"])
def test_full_augmentation_returns_crops_of_the_requested_size(recipe: str) -> None:
    augment = build_augment(recipe, crop_size=40, base_side=56, scale_range=(0.5, 1.4))
    rng = random.Random(3)
    random.seed(3)
    torch.manual_seed(3)
    for _ in range(8):
        image, mask = augment(*_grey_person(48, 64, rng), *_grey_person(64, 48, rng))
        assert image.shape == (3, 40, 40) and mask.shape == (1, 40, 40)
        assert image.dtype == mask.dtype == torch.uint8 and set(mask.unique().tolist()) <= {0, 1}


def test_padding_uses_the_mean_colour_and_background_label() -> None:
    augment = build_augment("research", crop_size=64, base_side=32, scale_range=(1.0, 1.0))
    augment.photometric = lambda image: image
    augment.dropout_probability = augment.rotate_probability = 0.0
    random.seed(0)
    image, mask = augment(*_grey_person(24, 32, random.Random(1)), *_grey_person(24, 32, random.Random(2)))
    padded = (image == torch.tensor(MEAN_RGB, dtype=torch.uint8)[:, None, None]).all(0)
    assert padded.float().mean() > 0.6  # a 24x32 photo inside a 64x64 crop
    assert not mask[0][padded].any()


# ---------------------------------------------------------------- export and evaluation


def test_export_round_trips_through_the_shipped_format(trained_run: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(trained_run / "best.pt", weights_only=True)
    card = export(trained_run / "best.pt", tmp_path / "weights", log=lambda _: None)
    assert sorted(path.name for path in (tmp_path / "weights").iterdir()) == ["deeplab.json", "deeplab.safetensors"]
    tensors = load_file(tmp_path / "weights" / "deeplab.safetensors")
    assert {tensor.dtype for tensor in tensors.values() if tensor.is_floating_point()} == {torch.float16}

    loaded, loaded_card = load_model("deeplab", tmp_path / "weights")
    assert loaded_card == card == read_card("deeplab", tmp_path / "weights")
    original = create_model("deeplab")
    original.load_state_dict(checkpoint["model"])
    original.eval()
    batch = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected, actual = torch.sigmoid(original(batch)), torch.sigmoid(loaded(batch))
    torch.testing.assert_close(actual, expected, atol=5e-3, rtol=0)  # float16 weights, float32 maths

    assert (card.architecture, card.inference_size, card.threshold) == ("deeplab", 64, 0.5)
    assert (card.mean, card.std) == (IMAGENET_MEAN, IMAGENET_STD)
    assert card.parameters == sum(p.numel() for p in original.parameters())
    [entry] = card.training_data
    assert entry["name"] == "people-tiny" and entry["source"] == "not stated"
    assert entry["terms"].startswith("not stated: read ")
    assert entry["terms"].endswith("people-tiny/README.md before shipping weights trained on it")
    assert card.training_command == "python -m training.train tiny.toml --steps 10"
    assert card.training["commands"][1] == "python -m training.train tiny.toml --steps 20 --resume"
    step = checkpoint["step"]
    assert card.training["steps"] == step and card.training["samples_seen"] == 4 * step
    assert card.training["epochs"] == pytest.approx(4 * step / 6, abs=0.01)
    assert card.training["config"] == checkpoint["config"]
    assert card.training["run_id"] == checkpoint["run_id"] != ""
    assert card.training["validation_during_training"] == checkpoint["metrics"]
    assert card.metrics == {}  # only --evaluate writes scores, and only production-path ones


def test_export_can_choose_the_served_inference_size(trained_run: Path, tmp_path: Path) -> None:
    card = export(trained_run / "best.pt", tmp_path / "weights", inference_size=96, log=lambda _: None)
    assert card.inference_size == read_card("deeplab", tmp_path / "weights").inference_size == 96
    assert card.training["config"]["inference_size"] == 64  # the run itself is recorded as it was


def test_export_records_the_served_extra_sizes(trained_run: Path, tmp_path: Path) -> None:
    card = export(trained_run / "best.pt", tmp_path / "weights", extra_sizes=[96, 48], log=lambda _: None)
    assert card.extra_sizes == read_card("deeplab", tmp_path / "weights").extra_sizes == [96, 48]
    assert Predictor.from_weights("deeplab", tmp_path / "weights").card.extra_sizes == [96, 48]


def test_export_sets_the_served_threshold_from_the_command_line(trained_run: Path, tmp_path: Path, capsys) -> None:
    weights = tmp_path / "weights"
    assert export_main([str(trained_run / "best.pt"), "--out-dir", str(weights), "--threshold", "0.6"]) == 0
    assert read_card("deeplab", weights).threshold == 0.6
    with pytest.raises(SystemExit):
        export_main([str(trained_run / "best.pt"), "--out-dir", str(weights), "--threshold", "1.5"])
    assert "must be between 0 and 1" in capsys.readouterr().err


def test_export_evaluate_writes_what_training_evaluate_reproduces(
    trained_run: Path, people: Path, tmp_path: Path, capsys
) -> None:
    weights = tmp_path / "weights"
    assert export_main([str(trained_run / "checkpoint.pt"), "--out-dir", str(weights), "--evaluate"]) == 0
    card = read_card("deeplab", weights)
    assert set(card.metrics) == {"people-tiny", "all"} and card.metrics["all"]["images"] == 2
    assert card.training["evaluation"]["split"] == "val"
    assert f"--weights-dir {weights}" in card.training["evaluation"]["command"]
    capsys.readouterr()

    report = evaluate_main(
        ["--model", "deeplab", "--data", str(people), "--weights-dir", str(weights), "--json", str(tmp_path / "r.json")]
    )
    assert report == card.metrics
    assert json.loads((tmp_path / "r.json").read_text())["metrics"] == card.metrics
    table = capsys.readouterr().out
    assert "people-tiny" in table and "all" in table and f"{card.metrics['all']['dice']:.4f}" in table


class ListedMattes:
    """A stand-in predictor that answers with given mattes in turn, and records what it was shown."""

    threshold = 0.5

    def __init__(self, mattes: list[np.ndarray]) -> None:
        self.mattes, self.seen = [m.astype(np.float32) for m in mattes], []

    def predict_alpha(self, image: Image.Image) -> np.ndarray:
        self.seen.append((image.mode, image.size))
        return self.mattes.pop(0)


def make_empty_dataset(root: Path, val: int = 2, size: tuple[int, int] = (40, 32)) -> Path:
    """A people_segmentation folder of photos with nobody in them (all masks empty), like no-people."""
    for folder in ("images", "masks", "segmentation"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    names = [f"scene{index}" for index in range(val)]
    for index, name in enumerate(names):
        Image.new("RGB", size, (40 * index, 90, 160)).save(root / "images" / f"{name}.jpg")
        Image.new("L", size, 0).save(root / "masks" / f"{name}.png")
    (root / "segmentation" / "val.txt").write_text("\n".join(names) + "\n")
    (root / "segmentation" / "train.txt").write_text("\n".join(names) + "\n")
    return root


def test_evaluate_reports_each_set_and_the_mean_over_all_images(people: Path, tmp_path: Path) -> None:
    other = make_people_dataset(tmp_path / "people-other", train=1, val=3, size=(40, 32), seed=9)
    truths = [np.asarray(Image.open(pair.mask)) >= 128 for pair in pairs_for([people], "val")]
    blanks = [np.zeros((32, 40), dtype=bool)] * 3  # the people of the second set are all missed
    predictor = ListedMattes(truths + blanks)
    report = evaluate(predictor, [people, other])
    assert predictor.seen == [("RGB", (48, 64))] * 2 + [("RGB", (40, 32))] * 3
    tiny = report["people-tiny"]
    assert (tiny["dice"], tiny["iou"], tiny["pixel_accuracy"], tiny["veil"], tiny["images"]) == (1.0, 1.0, 1.0, 0.0, 2)
    assert tiny["no_person_reported"] == 0.0 and report["people-other"]["no_person_reported"] == 1.0
    assert report["people-other"]["dice"] == 0.0 and report["people-other"]["images"] == 3
    assert report["all"]["dice"] == pytest.approx(2 / 5)  # over images: (1 + 1 + 0 + 0 + 0) / 5
    assert list(report) == ["people-tiny", "people-other", "all"]

    limited = evaluate(ListedMattes(truths[:1] + blanks[:1]), [people, other], limit=1)
    assert [limited[name]["images"] for name in limited] == [1, 1, 2]
    lines = format_table(limited).splitlines()
    assert lines[0].split()[:6] == ["set", "images", "Dice", "IoU", "pixel", "acc"] and lines[-1].startswith("all ")


def test_evaluate_reports_a_set_with_nobody_apart(people: Path, tmp_path: Path) -> None:
    """On photos with nobody: the share kept and how often "no person" is reported, outside the people total."""
    nobody = make_empty_dataset(tmp_path / "no-people", val=2)
    truths = [np.asarray(Image.open(pair.mask)) >= 128 for pair in pairs_for([people], "val")]
    kept_quarter = np.zeros((32, 40), dtype=np.float32)
    kept_quarter[:16, :20] = 1.0  # a quarter of the photo kept as a (wrong) person
    report = evaluate(ListedMattes([*truths, kept_quarter, np.zeros((32, 40))]), [people, nobody])
    assert report["no-people"]["kept"] == pytest.approx(0.125)  # (0.25 + 0) / 2
    assert report["no-people"]["no_person_reported"] == 0.5
    assert report["no-people"]["people"] is False and report["all"]["images"] == 2  # only the people set
    assert "no-people" in format_table(report)


def test_evaluate_command_on_a_set_with_nobody_alone(tmp_path: Path, capsys) -> None:
    """Scoring only photos with nobody (no people total to print) still prints the table and writes the JSON."""
    nobody = make_empty_dataset(tmp_path / "no-people", val=2)
    report = evaluate_main(["--model", "unet", "--data", str(nobody), "--json", str(tmp_path / "report.json")])
    assert list(report) == ["no-people"] and 0.0 <= report["no-people"]["kept"] <= 1.0
    assert json.loads((tmp_path / "report.json").read_text())["metrics"]["no-people"]["images"] == 2
    assert "2 images in" in capsys.readouterr().out


class CountingBrightnessNet(torch.nn.Module):
    """A stand-in network: bright pixels are the person (p ~0.9), dark ones not (p ~0.16); counts its calls."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.input_sizes: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.input_sizes.append((x.shape[-1], x.shape[-2]))
        return x.mean(dim=1, keepdim=True)


def test_evaluate_overrides_the_cards_threshold_second_pass_and_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    """--threshold, --second-pass and --inference-size score the same weights another way; the JSON says which."""
    root = make_empty_dataset(tmp_path / "no-people", val=2, size=(200, 150))
    for path in (root / "images").iterdir():  # a small bright figure in each: a "person" to this network
        pixels = np.full((150, 200, 3), 20, dtype=np.uint8)
        pixels[60:90, 100:115] = 235
        Image.fromarray(pixels).save(path)
    net = CountingBrightnessNet()
    card = ModelCard(architecture="unet", inference_size=64, threshold=0.5)
    monkeypatch.setattr(
        "training.evaluate.Predictor.from_weights", lambda *args, **kwargs: Predictor(net, card, fast=False)
    )
    report = evaluate_main(["--model", "unet", "--data", str(root)])
    assert net.calls == 2  # one pass a photo: the card has no second pass
    kept_at_half = report["no-people"]["kept"]
    assert kept_at_half == pytest.approx(30 * 15 / (200 * 150), rel=0.25)

    net.calls = 0
    out = tmp_path / "report.json"
    report = evaluate_main(["--model", "unet", "--data", str(root), "--second-pass", "--json", str(out)])
    assert net.calls == 4  # the frame, then a crop around the figure
    written = json.loads(out.read_text())
    assert written["second_pass"] is True and written["command"].endswith("--second-pass")

    report = evaluate_main(["--model", "unet", "--data", str(root), "--threshold", "0.1", "--json", str(out)])
    assert report["no-people"]["kept"] == 1.0  # even the dark background is above 0.1
    written = json.loads(out.read_text())
    assert written["threshold"] == 0.1 and "--threshold 0.1" in written["command"]
    assert "threshold 0.1, second pass off" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_main(["--model", "unet", "--data", str(root), "--threshold", "1"])
    assert "must be between 0 and 1" in capsys.readouterr().err

    net.input_sizes.clear()
    report = evaluate_main(["--model", "unet", "--data", str(root), "--inference-size", "128", "--json", str(out)])
    assert net.input_sizes == [(128, 96), (128, 96)]  # 200x150 at 128 on the long side (card: 64)
    written = json.loads(out.read_text())
    assert written["inference_size"] == 128 and "--inference-size 128" in written["command"]
    assert "unet: inference size 128" in capsys.readouterr().err

    net.input_sizes.clear()
    evaluate_main(
        ["--model", "unet", "--data", str(root), "--inference-size", "64", "--extra-sizes", "128", "--json", str(out)]
    )
    assert net.input_sizes == [(64, 64), (128, 96)] * 2  # each photo at 64 (padded to /32), then at 128
    written = json.loads(out.read_text())
    assert written["extra_sizes"] == [128] and written["command"].endswith("--extra-sizes 128")
    assert "unet: inference size 64 averaged with 128" in capsys.readouterr().err


def test_veil_counts_only_soft_alpha_away_from_the_outline() -> None:
    from training.evaluate import outline, veil

    truth = np.zeros((100, 100), dtype=bool)
    truth[30:70, 30:70] = True
    assert outline(truth).sum() == 4 * 40 - 4  # the square's border
    crisp = truth.astype(np.float32)
    assert veil(crisp, truth) == 0.0  # hard edges: no veil
    soft_edge = crisp.copy()
    soft_edge[29, 30:70] = 0.5  # half-transparent right at the outline: hair, edges
    assert veil(soft_edge, truth) == 0.0
    murky = crisp.copy()
    murky[:10, :] = 0.5  # a grey band over the background far from the person (2% of the diagonal is 2.8 px)
    assert veil(murky, truth) == pytest.approx(0.10)
    murky[:10, :] = 0.95  # nearly opaque is not a veil, it is a wrong person
    assert veil(murky, truth) == 0.0
    nobody = np.zeros((100, 100), dtype=bool)
    assert veil(np.full((100, 100), 0.3, dtype=np.float32), nobody) == 1.0


def test_evaluate_breaks_iou_down_by_the_people_share_of_the_frame(tmp_path: Path) -> None:
    """Small and large people land in their own bins, so a mean cannot hide that the small ones are missed."""
    root = make_empty_dataset(tmp_path / "people-sizes", val=3, size=(100, 100))
    sizes = {"scene0": 5, "scene1": 40, "scene2": 80}  # squares: 0.25%, 16% and 64% of the frame
    truths = []
    for name, side in sizes.items():
        truth = np.zeros((100, 100), dtype=bool)
        truth[:side, :side] = True
        Image.fromarray(truth.astype(np.uint8) * 255).save(root / "masks" / f"{name}.png")
        truths.append(truth)
    found_large = [np.zeros((100, 100)), truths[1].astype(np.float32), truths[2].astype(np.float32)]
    report = evaluate(ListedMattes(found_large), [root])
    bins = report["people-sizes"]["by_people_share"]
    assert list(bins) == ["0-1%", "10-30%", "30-100%"]  # empty bins are left out
    small = bins["0-1%"]
    assert (small["images"], small["dice"], small["iou"], small["no_person_reported"]) == (1, 0.0, 0.0, 1.0)
    assert bins["10-30%"]["iou"] == bins["30-100%"]["iou"] == 1.0
    assert report["all"]["by_people_share"] == bins
    assert report["people-sizes"]["iou"] == pytest.approx(2 / 3)  # the mean the breakdown explains
    lines = format_share_table(report).splitlines()
    assert lines[0].split()[-5:] == ["0-1%", "1-3%", "3-10%", "10-30%", "30-100%"]
    assert lines[1].split() == ["people-sizes", "0.000", "(1)", "-", "-", "1.000", "(1)", "1.000", "(1)"]


def test_evaluate_names_a_photo_whose_mask_does_not_fit(people: Path, tmp_path: Path) -> None:
    root = _copy_dataset(people, tmp_path)
    Image.new("L", (64, 48)).save(root / "masks" / "0007.png")
    with pytest.raises(DatasetError, match=r"images/0007\.jpg is 48x64.*masks/0007\.png is 64x48"):
        evaluate(ListedMattes([np.zeros((64, 48), dtype=bool)] * 2), [root])


def test_card_names_each_data_set_with_its_terms(tmp_path: Path) -> None:
    ccp = tmp_path / "people-ccp"
    ccp.mkdir()
    (ccp / "README.md").write_text(
        "# people-ccp: photos\n\nLayout: images/ and masks/.\n\nSource: the Clothing Co-Parsing dataset (Yang,\n"
        "Luo, Lin, CVPR 2014), pixel-level annotations. The repository carries the Apache-2.0 licence.\n"
    )
    entry = dataset_entry(ccp)
    assert entry["source"] == "The Clothing Co-Parsing dataset (Yang, Luo, Lin, CVPR 2014), pixel-level annotations"
    assert "Apache-2.0" in entry["terms"]
    assert dataset_entry(tmp_path / "people-portraits")["terms"] == "released by its authors for academic use only"
    assert "picsart-contest" in dataset_entry(tmp_path / "people-picsart")["source"]  # no folder: what we know
    mystery = tmp_path / "mystery"
    mystery.mkdir()
    (mystery / "README.md").write_text("# Mystery photos\n\nNo word on where they came from.\n")
    assert dataset_entry(mystery) == {
        "name": "mystery",
        "source": "Mystery photos",
        "terms": f"not stated: read {mystery / 'README.md'} before shipping weights trained on it",
    }


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the shared data sets are not on this machine")
def test_card_reads_the_real_data_readmes() -> None:
    entries = {entry["name"]: entry for entry in map(dataset_entry, sorted(SHARED_DATA.glob("people-*")))}
    assert entries["people-ccp"]["source"].startswith("The Clothing Co-Parsing dataset")
    assert "manaleks/picsart-contest" in entries["people-picsart"]["source"]
    assert "bio-punk/AutoPortraitMatting" in entries["people-portraits"]["source"]
    assert "academic use only" in entries["people-portraits"]["terms"]


def test_a_soup_is_the_mean_of_its_ingredients_and_counters_come_from_the_first() -> None:
    first = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    second = {"w": torch.tensor([3.0, 6.0], dtype=torch.float16), "n": torch.tensor(9)}
    soup = average_states([first, second])
    torch.testing.assert_close(soup["w"], torch.tensor([2.0, 4.0]))
    assert soup["w"].dtype == torch.float32 and soup["n"].item() == 3
    with pytest.raises(ValueError, match="tensors differ"):
        average_states([first, {"w": first["w"]}])
    with pytest.raises(ValueError, match="different shapes"):
        average_states([first, {"w": torch.zeros(3), "n": torch.tensor(1)}])


def test_a_soup_of_shipped_weights_and_a_run_exports_with_its_ingredients_named(
    trained_run: Path, tmp_path: Path
) -> None:
    shipped = tmp_path / "weights" / "deeplab.safetensors"
    export(trained_run / "checkpoint.pt", shipped.parent, log=lambda _: None)
    command = f"python -m training.soup {tmp_path / 'soup'} {shipped} {trained_run / 'best.pt'}"
    soup_path = make_soup([shipped, trained_run / "best.pt"], tmp_path / "soup", command)
    card = export(soup_path, tmp_path / "served", log=lambda _: None)

    run = load_checkpoint(trained_run / "best.pt")
    expected = average_states([load_file(shipped), run["model"]])
    served = load_file(tmp_path / "served" / "deeplab.safetensors")
    for name, tensor in expected.items():
        torch.testing.assert_close(served[name].to(tensor.dtype), tensor, atol=2e-3, rtol=1e-3, msg=name)
    # The card names both, counts only the run's steps anew, and adds them to what the shipped weights had seen.
    run_hours_logged = run_hours(trained_run)
    assert run_hours_logged is not None
    assert card.training["soup"] == [
        {"weights": str(shipped), "steps": 0, "hours": 0.0},
        {"weights": str(trained_run / "best.pt"), "steps": run["step"], "hours": run_hours_logged},
    ]
    assert card.training["steps"] == run["step"] and card.training["config"]["init_from"] == str(shipped)
    shipped_total = read_card("deeplab", shipped.parent).training["cumulative"]
    assert card.training["cumulative"]["samples_seen"] == shipped_total["samples_seen"] + 4 * run["step"]
    assert card.training["cumulative"]["hours"] == round(shipped_total["hours"] + run_hours_logged, 2)
    assert card.training_command == command


def test_soup_refuses_mixed_networks_and_a_taken_folder(trained_run: Path, tmp_path: Path, capsys) -> None:
    checkpoint = load_checkpoint(trained_run / "best.pt")
    unet = create_model("unet")
    torch.save(
        {**checkpoint, "config": {**checkpoint["config"], "model": "unet"}, "model": unet.state_dict()},
        tmp_path / "unet.pt",
    )
    assert soup_main([str(tmp_path / "mixed"), str(trained_run / "best.pt"), str(tmp_path / "unet.pt")]) == 2
    assert "different networks: deeplab, unet" in capsys.readouterr().err
    assert not (tmp_path / "mixed" / "best.pt").exists()
    assert soup_main([str(tmp_path / "one"), str(trained_run / "best.pt")]) == 2
    assert "at least two ingredients" in capsys.readouterr().err
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "best.pt").write_bytes(b"a run's")
    with pytest.raises(SystemExit):
        soup_main([str(taken), str(trained_run / "best.pt"), str(trained_run / "checkpoint.pt")])
    assert "already holds a best.pt" in capsys.readouterr().err
    assert (taken / "best.pt").read_bytes() == b"a run's"


def test_export_refuses_what_is_not_a_matching_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="no checkpoint at"):
        export(tmp_path / "missing.pt", tmp_path / "out")
    torch.save({"model": {}}, tmp_path / "foreign.pt")
    with pytest.raises(ExportError, match=r"foreign\.pt is not a training checkpoint: it lacks config, step"):
        export(tmp_path / "foreign.pt", tmp_path / "out")
    checkpoint = torch.load(trained_run / "best.pt", weights_only=True)
    checkpoint["config"]["model"] = "unet"
    torch.save(checkpoint, tmp_path / "mislabelled.pt")
    with pytest.raises(ExportError, match=r"mislabelled\.pt does not fit the 'unet' architecture"):
        export(tmp_path / "mislabelled.pt", tmp_path / "out")
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_cards_add_up_the_training_behind_them(tmp_path: Path) -> None:
    from training.export import cumulative_training

    run = tmp_path / "run"
    run.mkdir()
    records = [("train", 30.0), ("val", None), ("train", 60.0), ("train", 12.0), ("train", 18.0)]  # resumed once
    lines = [json.dumps({"kind": k, "step": i, **({"minutes": m} if m else {})}) for i, (k, m) in enumerate(records)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert run_hours(run) == pytest.approx(78 / 60, abs=0.01)

    shipped = tmp_path / "weights" / "deeplab.safetensors"
    shipped.parent.mkdir()
    earlier = {"samples_seen": 1000, "hours": 2.0, "data": ["people-ccp"]}
    shipped.with_suffix(".json").write_text(json.dumps({"training": {"cumulative": earlier, "config": {}}}))
    config = TrainConfig(data=["x/people-coco"], out_dir=str(run), init_from=str(shipped))
    total = cumulative_training(config, samples=800, hours=1.5)
    assert (total["samples_seen"], total["hours"], total["data"]) == (1800, 3.5, ["people-ccp", "people-coco"])

    # Exported again from the same run, over the card it wrote: counted once, not twice.
    shipped.with_suffix(".json").write_text(json.dumps({"training": {"cumulative": total, "config": config.to_dict()}}))
    again = cumulative_training(config, samples=800, hours=1.5)
    assert again["samples_seen"] == 1800 and again["hours"] == 3.5

    # With run ids: a re-export of the same run counts it once; a later run in the same folder adds to it.
    card = {"training": {"run_id": "first", "cumulative": total, "config": config.to_dict()}}
    shipped.with_suffix(".json").write_text(json.dumps(card))
    assert cumulative_training(config, samples=800, hours=1.5, run_id="first")["samples_seen"] == 1800
    later = cumulative_training(config, samples=400, hours=0.5, run_id="second")
    assert (later["samples_seen"], later["hours"]) == (2200, 4.0)
