"""Datasets in the people_segmentation and Carvana layouts, held in memory for fast CPU training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image


class DatasetError(ValueError):
    """A dataset on disk is incomplete or inconsistent; the message names the file."""


@dataclass(frozen=True)
class PairPath:
    """Where one photo and its mask live, and which set they belong to."""

    image: Path
    mask: Path
    source: str


def people_segmentation_pairs(root: str | Path, split: str) -> list[PairPath]:
    """List the pairs of one split in the people_segmentation layout (images/, masks/, segmentation/)."""
    root = Path(root)
    split_file = root / "segmentation" / f"{split}.txt"
    if not split_file.is_file():
        raise DatasetError(f"split list not found: {split_file}")
    names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
    if not names:
        raise DatasetError(f"split list is empty: {split_file}")
    pairs = []
    for name in names:
        image, mask = root / "images" / f"{name}.jpg", root / "masks" / f"{name}.png"
        for path in (image, mask):
            if not path.is_file():
                raise DatasetError(f"missing file for {name!r} listed in {split_file}: {path}")
        pairs.append(PairPath(image, mask, root.name))
    return pairs


def carvana_pairs(root: str | Path) -> list[PairPath]:
    """List the pairs in the Carvana layout (train/<id>.jpg with train_masks/<id>_mask.gif)."""
    root = Path(root)
    images = sorted((root / "train").glob("*.jpg"))
    if not images:
        raise DatasetError(f"no images found in {root / 'train'}")
    pairs = []
    for image in images:
        mask = root / "train_masks" / f"{image.stem}_mask.gif"
        if not mask.is_file():
            raise DatasetError(f"missing mask for {image}: {mask}")
        pairs.append(PairPath(image, mask, root.name))
    return pairs


def find_pairs(root: str | Path, split: str) -> list[PairPath]:
    """List the pairs under root, recognising the layout; Carvana has no val list, so it splits 1 in 10."""
    root = Path(root)
    if (root / "segmentation").is_dir():
        return people_segmentation_pairs(root, split)
    if (root / "train_masks").is_dir():
        pairs = carvana_pairs(root)
        return [p for i, p in enumerate(pairs) if (i % 10 == 9) == (split == "val")]
    raise DatasetError(f"{root} is neither a people_segmentation nor a Carvana dataset folder")


def load_pair(pair: PairPath, max_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode a photo (RGB uint8) and its mask (uint8, 0 or 1), optionally shrunk to max_side."""
    with Image.open(pair.image) as image_file:
        image = image_file.convert("RGB")
    with Image.open(pair.mask) as mask_file:
        mask = mask_file.convert("L")
    if image.size != mask.size:
        raise DatasetError(f"size mismatch: {pair.image} is {image.size}, {pair.mask} is {mask.size}")
    if max_side is not None and max(image.size) > max_side:
        scale = max_side / max(image.size)
        size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
        image = image.resize(size, Image.Resampling.BILINEAR)
        mask = mask.resize(size, Image.Resampling.BILINEAR)
    return np.array(image), (np.asarray(mask) >= 128).astype(np.uint8)


def pairs_for(roots: list[str | Path], split: str) -> list[PairPath]:
    """Concatenate the pairs of one split over several dataset folders."""
    pairs = [pair for root in roots for pair in find_pairs(root, split)]
    if not pairs:
        raise DatasetError(f"no {split} pairs under {', '.join(map(str, roots))}")
    return pairs


class InMemoryPairs:
    """Every pair of a split decoded once into memory, shrunk so that its long side is at most max_side."""

    def __init__(self, pairs: list[PairPath], max_side: int | None) -> None:
        self.pairs = pairs
        loaded = [load_pair(pair, max_side) for pair in pairs]
        self.images = [image for image, _ in loaded]
        self.masks = [mask for _, mask in loaded]

    def __len__(self) -> int:
        return len(self.pairs)
