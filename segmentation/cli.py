"""The `bgremover` command line: remove backgrounds from photos, list the networks."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path

from segmentation.decoding import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, InputImageError
from segmentation.effects import colour_rgb
from segmentation.models import MODEL_NAMES
from segmentation.pipeline import remove_background
from segmentation.predictor import Predictor
from segmentation.rendering import RenderOptions
from segmentation.weights_io import WEIGHTS_DIR, WeightsError, read_card


def _colour(text: str) -> tuple[int, int, int]:
    rgb = colour_rgb(text)
    if rgb is None:
        raise argparse.ArgumentTypeError(f"not a colour: {text!r} (try white, #00ff00 or 'rgb(0,0,255)')")
    return rgb


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _inputs(paths: list[str]) -> list[Path]:
    """Expand folders into the images they hold; keep files as given (decoding will judge them)."""
    found = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        else:
            found.append(path)
    return found


def _output_for(source: Path, out: Path, many: bool) -> Path:
    if many or out.is_dir() or str(out).endswith(("/", "\\")):
        return out / f"{source.stem}.png"
    return out


def remove_command(args: argparse.Namespace) -> int:
    """Remove the background of each input; a bad file gets one line on stderr and a non-zero status."""
    inputs = _inputs(args.inputs)
    if not inputs:
        print("bgremover: no images found in the given folder(s)", file=sys.stderr)
        return 1
    out = Path(args.output)
    many = len(inputs) > 1 or any(Path(p).is_dir() for p in args.inputs)
    if many:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            print(f"bgremover: cannot create the output folder {out}: {error.strerror}", file=sys.stderr)
            return 1
    try:
        predictor = Predictor.from_weights(args.model, args.weights_dir)
    except WeightsError as error:
        print(f"bgremover: {error}", file=sys.stderr)
        return 1
    options = RenderOptions(background=args.bg, mask_only=args.mask_only, hard=args.hard)
    failures = 0
    written: set[Path] = set()
    for source in inputs:
        try:
            result = remove_background(source, predictor, options, max_pixels=args.max_pixels)
        except InputImageError as error:
            print(f"bgremover: {source}: {error}", file=sys.stderr)
            failures += 1
            continue
        target = _output_for(source, out, many)
        if target in written:  # a.jpg and a.png in one folder: keep both results
            target = target.with_name(f"{source.stem}_{source.suffix.lstrip('.')}.png")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(result.png)
        except OSError as error:
            print(f"bgremover: cannot write {target}: {error.strerror}", file=sys.stderr)
            failures += 1
            continue
        written.add(target)
        note = "" if result.person_found else "  (no person found)"
        print(f"{source} -> {target}  {result.width}x{result.height}  {result.timings['total']:.2f} s{note}")
    return 1 if failures else 0


def models_command(args: argparse.Namespace) -> int:
    """List the networks with what their weights' cards say."""
    for name in MODEL_NAMES:
        try:
            card = read_card(name, args.weights_dir or WEIGHTS_DIR)
        except WeightsError as error:
            print(f"{name}: no weights ({error})")
            continue
        dice = card.metrics.get("all", {}).get("dice")
        score = f"val Dice {dice:.3f}" if dice is not None else "no validation metrics"
        sizes = ", ".join(map(str, [card.inference_size, *card.extra_sizes]))
        side = f"input long side{'s' if card.extra_sizes else ''} {sizes}"
        print(f"{name}: {card.parameters / 1e6:.1f} M parameters, {side}, {score}")
        for source, metrics in card.metrics.items():
            if source == "all":
                continue
            if metrics.get("people", True):
                print(f"    {source}: Dice {metrics['dice']:.3f}  IoU {metrics['iou']:.3f}")
            else:  # photos with nobody in them: how much of each photo is wrongly kept
                print(f"    {source} (nobody in them): {metrics['kept']:.1%} of each photo kept")
    return 0


def serve_command(args: argparse.Namespace) -> int:
    """Start the Ray Serve application on a running Ray cluster (--address) or on a local one."""
    try:
        import ray
        from ray import serve

        from segmentation.serving import ServingConfig, deploy
    except ImportError:
        print("bgremover: Ray Serve is not installed: pip install 'bgremover[ray]'", file=sys.stderr)
        return 1
    config = ServingConfig(
        app_name=args.name,
        min_replicas=args.min_replicas,
        max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing_requests,
        max_ongoing_requests=args.max_ongoing_requests,
        max_queued_requests=args.max_queued_requests,
        batch_size=args.batch_size,
        batch_wait_s=args.batch_wait_s,
        replica_cpus=args.replica_cpus,
        weights_dir=str(args.weights_dir) if args.weights_dir else None,
    )
    ray.init(address=args.address)
    deploy(config)
    replicas = f"{config.min_replicas}-{config.max_replicas} replicas"
    print(f"bgremover: Serve application {config.app_name!r} is running ({replicas})")
    if args.address is None or args.wait:
        # A local cluster ends with this process (and `--wait` keeps a container's main process alive).
        print("bgremover: serving until interrupted (Ctrl-C)")
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            serve.shutdown()
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of `bgremover`."""
    parser = argparse.ArgumentParser(prog="bgremover", description="Remove the background from photos of people.")
    parser.add_argument("--weights-dir", type=Path, help="a folder of weights (default: the shipped ones)")
    commands = parser.add_subparsers(dest="command", required=True)
    remove = commands.add_parser("remove", help="remove the background of photos")
    remove.add_argument("inputs", nargs="+", help="image files or folders")
    remove.add_argument("-o", "--output", required=True, help="output file (one input) or folder")
    remove.add_argument("--model", choices=MODEL_NAMES, default="deeplab")
    remove.add_argument("--mask-only", action="store_true", help="write the mask instead of the cutout")
    remove.add_argument("--bg", type=_colour, help="fill the background with a colour instead of transparency")
    remove.add_argument("--hard", action="store_true", help="a hard binary edge instead of a soft one")
    remove.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help=argparse.SUPPRESS)
    remove.set_defaults(handler=remove_command)
    models = commands.add_parser("models", help="list the networks and their weights")
    models.set_defaults(handler=models_command)
    serving = commands.add_parser("serve", help="start the Ray Serve application (needs the ray extra)")
    serving.add_argument("--address", help="a running Ray cluster: 'auto' or ray://head:10001 (default: a local one)")
    serving.add_argument("--name", default="bgremover", help="the Serve application's name (BOT_RAY_APP_NAME)")
    serving.add_argument("--min-replicas", type=int, default=1)
    serving.add_argument("--max-replicas", type=int, default=4)
    serving.add_argument("--target-ongoing-requests", type=float, default=2.0, help="autoscaling's aim per replica")
    serving.add_argument("--max-ongoing-requests", type=_count, default=4, help="photos one replica works on at once")
    serving.add_argument("--max-queued-requests", type=_count, default=32, help="photos waiting per caller before busy")
    serving.add_argument("--batch-size", type=_count, default=4, help="photos sharing a forward pass (1: no batching)")
    serving.add_argument("--batch-wait-s", type=float, default=0.01)
    serving.add_argument("--replica-cpus", type=float, default=1.0, help="Ray CPUs reserved per replica")
    serving.add_argument("--wait", action="store_true", help="stay in the foreground on a running cluster too")
    serving.set_defaults(handler=serve_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `bgremover` console script."""
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
