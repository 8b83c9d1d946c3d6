"""Peak memory per photo: how much resident memory one photo adds over the loaded, warmed-up model.

    python benchmarks/memory.py [--model deeplab] [--weights-dir DIR]

Each case runs in a fresh interpreter: load the model, warm it up on a small photo, reset the peak
(/proc/self/clear_refs), then run the whole pipeline (decode, predict, refine, compose, encode) once and
print the peak resident memory over the loaded model. The 35-byte GIF is the worst case per byte: its
header claims 7300x5475 and Pillow decodes it to 40 megapixels.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = ("gif-35-bytes 7300x5475", "jpeg 7300x5475", "jpeg 1280x960")


def tiny_gif_claiming(width: int, height: int) -> bytes:
    """A GIF whose logical screen is width x height but whose only frame is one pixel; Pillow fills the rest."""
    header = b"GIF89a" + struct.pack("<HHBBB", width, height, 0x80, 0, 0) + b"\0\0\0\xff\xff\xff"
    descriptor = b"," + struct.pack("<HHHHB", 0, 0, 1, 1, 0)
    return header + descriptor + b"\x02\x02\x44\x01\x00;"


def case_bytes(case: str) -> bytes:
    """The encoded photo of a case."""
    kind, size = case.split()
    width, height = map(int, size.split("x"))
    if kind == "gif-35-bytes":
        return tiny_gif_claiming(width, height)
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from inference import photo_bytes

    return photo_bytes(width, height)


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def measure(case: str, model: str, weights_dir: str | None) -> dict[str, float]:
    """Run one case in this process (a fresh one) and return MiB figures and seconds."""
    from segmentation.pipeline import remove_background
    from segmentation.predictor import Predictor

    data = case_bytes(case)
    predictor = Predictor.from_weights(model, Path(weights_dir) if weights_dir else None)
    remove_background(tiny_gif_claiming(64, 48), predictor)  # warm-up: allocator pools, torch kernels
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident size
    loaded = _status_kib("VmRSS")
    started = time.perf_counter()
    result = remove_background(data, predictor)
    seconds = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    return {
        "loaded_mib": loaded / 1024,
        "peak_mib": peak / 1024,
        "over_model_mib": (peak - loaded) / 1024,
        "seconds": seconds,
        "size": f"{result.width}x{result.height}",
        "bytes": len(data),
    }


def main() -> None:
    """Run each case in a fresh interpreter and print a table."""
    parser = argparse.ArgumentParser(description="peak memory per photo")
    parser.add_argument("--model", default="deeplab")
    parser.add_argument("--weights-dir")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case here and print JSON
    args = parser.parse_args()
    if args.case:
        print(json.dumps(measure(args.case, args.model, args.weights_dir)))
        return
    print(f"{'case':24} {'file':>10} {'decoded':>11} {'model MiB':>10} {'peak MiB':>9} {'+photo MiB':>10} {'s':>6}")
    for case in CASES:
        command = [sys.executable, __file__, "--case", case, "--model", args.model]
        if args.weights_dir:
            command += ["--weights-dir", args.weights_dir]
        output = subprocess.run(command, check=True, capture_output=True, text=True, cwd=ROOT).stdout
        row = json.loads(output.strip().splitlines()[-1])
        print(
            f"{case:24} {row['bytes']:>10} {row['size']:>11} {row['loaded_mib']:>10.0f} {row['peak_mib']:>9.0f}"
            f" {row['over_model_mib']:>10.0f} {row['seconds']:>6.2f}"
        )


if __name__ == "__main__":
    main()
