"""Datasets in the people_segmentation and Carvana layouts, held in memory for fast CPU training."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from segmentation.decoding import upright_transpose


class DatasetError(ValueError):
    """A dataset on disk is incomplete or inconsistent; the message names the file."""


# Sets whose masks mark only the photo's subject: people behind a fashion shot or a portrait (pedestrians,
# a crowd) are labelled background there, so what lies outside those masks is not person-free.
SUBJECT_ONLY_SETS = frozenset({"people-ccp", "people-picsart", "people-portraits"})


def labels_everyone(source: str) -> bool:
    """Whether a set's masks mark every person in its photos, so that a region outside them holds nobody."""
    return source not in SUBJECT_ONLY_SETS


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
    """List the pairs under root, recognising the layout; Carvana has no val list: a tenth of its cars validate."""
    root = Path(root)
    if (root / "segmentation").is_dir():
        return people_segmentation_pairs(root, split)
    if (root / "train_masks").is_dir():
        pairs = carvana_pairs(root)
        # Split by car, not by photo: each car has 16 views, and a car on both sides would inflate val.
        cars = sorted({pair.image.stem.split("_")[0] for pair in pairs})
        val_cars = set(cars[len(cars) - max(1, len(cars) // 10) :])
        return [pair for pair in pairs if (pair.image.stem.split("_")[0] in val_cars) == (split == "val")]
    raise DatasetError(f"{root} is neither a people_segmentation nor a Carvana dataset folder")


def mask_image(path: Path) -> Image.Image:
    """A mask file as an L image of 0 and 255, whatever its mode.

    Person: a palette index other than 0 (palette colours such as VOC's dark red are not grey levels), any
    colour channel at half scale or more, or 1 in a mask of 0s and 1s (8- or 16-bit).
    """
    with Image.open(path) as mask:
        if mask.mode == "P":
            person = np.asarray(mask) != 0
        else:
            rgb = mask.mode in ("RGB", "RGBA", "RGBX", "CMYK", "YCbCr")
            values = np.asarray(mask.convert("RGB")).max(axis=2) if rgb else np.asarray(mask.convert("L"))
            person = values == 1 if values.max() == 1 else values >= 128
    return Image.fromarray(person.astype(np.uint8) * 255)


def _upright_mask(
    mask: Image.Image, stored_size: tuple[int, int], turn: Image.Transpose | None, pair: PairPath
) -> Image.Image:
    """Turn a mask drawn on the photo's stored pixels as the photo's EXIF orientation turns the photo.

    A mask already drawn on the upright photo (its size is the turned size, not the stored one) is kept.
    """
    upright_size = stored_size[::-1] if turn in _QUARTER_TURNS else stored_size
    if mask.size == stored_size and turn is not None:
        return mask.transpose(turn)
    if mask.size == upright_size:
        return mask
    raise DatasetError(
        f"size mismatch: {pair.image} is {stored_size[0]}x{stored_size[1]}, {pair.mask} is {mask.width}x{mask.height}"
    )


_QUARTER_TURNS = (
    Image.Transpose.TRANSPOSE,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSVERSE,
    Image.Transpose.ROTATE_90,
)


def read_mask(pair: PairPath) -> np.ndarray:
    """The true mask of a pair as HxW bool, upright as decode_image makes its photo."""
    with Image.open(pair.image) as photo:  # the header only: size and EXIF orientation
        stored_size, turn = photo.size, upright_transpose(photo)
    return np.asarray(_upright_mask(mask_image(pair.mask), stored_size, turn, pair)) >= 128


def load_pair(pair: PairPath, max_side: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decode a photo (RGB uint8, upright) and its mask (uint8, 0 or 1), optionally shrunk to max_side."""
    with Image.open(pair.image) as image_file:
        stored_size, turn = image_file.size, upright_transpose(image_file)
        image = image_file.convert("RGB")
    if turn is not None:  # as the service's decode_image does, so training sees photos the way users do
        image = image.transpose(turn)
    mask = _upright_mask(mask_image(pair.mask), stored_size, turn, pair)
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
