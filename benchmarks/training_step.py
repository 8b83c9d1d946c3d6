"""Seconds per training step in bf16 and float32, with and without channels_last: which path pays on this CPU.

    python benchmarks/training_step.py [--model deeplab] [--steps 4] [--threads 1]

Forward, loss and backward plus an AdamW step on random batches of 8 at the training crop (DeepLab 320 px,
the UNet 160 px), no data loading. Prints the median of the steps after the first. Pause any training run
while it runs: its figures are only comparable with each other on an otherwise idle machine. Where float32
beats bf16, run training and the bot with SEGMENTATION_BF16=0.
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext

import torch
import torch.nn.functional as F

from segmentation.cpu import cpu_supports_bf16, use_bf16
from segmentation.models import MODEL_NAMES, create_model

CROP = {"deeplab": 320, "unet": 160}
BATCH = 8


def seconds_per_step(model_name: str, *, bf16: bool, channels_last: bool, steps: int) -> float:
    """Median seconds of one optimiser step over `steps` steps, after one warm-up step."""
    layout = torch.channels_last if channels_last else torch.contiguous_format
    model = create_model(model_name).train().to(memory_format=layout)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    size = CROP[model_name]
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(BATCH, 3, size, size, generator=generator).contiguous(memory_format=layout)
    masks = (torch.rand(BATCH, 1, size, size, generator=generator) > 0.5).float()
    times = []
    for _ in range(steps + 1):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else nullcontext():
            logits = model(images)
        loss = F.binary_cross_entropy_with_logits(logits.float(), masks)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def main() -> None:
    """Time each precision and layout and print a line each."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODEL_NAMES, default="deeplab")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(
        f"{args.model}, batch {BATCH} at {CROP[args.model]} px, {args.threads} thread(s); "
        f"bf16 units: {cpu_supports_bf16()}, bf16 autocast by default here: {use_bf16()}"
    )
    for bf16, channels_last in ((True, True), (False, True), (False, False)):
        seconds = seconds_per_step(args.model, bf16=bf16, channels_last=channels_last, steps=args.steps)
        precision = "bf16   " if bf16 else "float32"
        layout = "channels_last" if channels_last else "contiguous   "
        print(f"{precision} {layout} {seconds:6.2f} s a step")


if __name__ == "__main__":
    main()
