"""In-memory image datasets: the MNIST family, CIFAR-10 python batches and image folders.

Every loader returns an :class:`ImageSet`: ``images`` uint8 (N, C, H, W), ``labels`` int64 (N,),
and the class names. Keeping uint8 tensors in memory makes a batch one indexing operation, so the
input pipeline (with the distortions of ``visattn.data.distortions`` applied per batch on the
training device) is never the bottleneck for the small datasets this library trains on.

Dataset names (``list_datasets()``):

- ``fashion-mnist-small``: the bundled subset (12000 / 2000 images, no download);
- ``fashion-mnist``, ``mnist``, ``kmnist``: IDX files found by ``visattn.data.sources``;
- ``cifar10``: the "python version" batches (``data_batch_1..5``, ``test_batch``, ``batches.meta``);
- ``folder:PATH``: one sub-folder per class. If ``PATH/train`` exists it is the training split and
  ``PATH/test`` (or ``PATH/val``) the test split; otherwise every 5th file of each class (sorted by
  name) is the test split. Images are converted to RGB and resized to ``image_size`` (bilinear).

Tests: ``tests/data/test_data_datasets.py``.
"""

from __future__ import annotations

import importlib
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .idx import IDXError, read_idx
from .sources import BUNDLED_DIR, DataNotFoundError, find_dataset_dir

__all__ = ["CLASSES", "IMAGE_EXTENSIONS", "ImageSet", "list_datasets", "load_cifar10",
           "load_dataset", "load_idx_dataset", "load_image_folder"]  # fmt: skip

CLASSES: dict[str, list[str]] = {
    "fashion-mnist": [
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    ],
    "mnist": [str(i) for i in range(10)],
    "kmnist": ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"],
    "cifar10": [
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ],
}  # fmt: skip
CLASSES["fashion-mnist-small"] = CLASSES["fashion-mnist"]
IMAGE_EXTENSIONS = (
    ".png",
    ".jpg",
    ".jpeg",
    ".bmp",
    ".gif",
    ".tif",
    ".tiff",
    ".webp",
    ".ppm",
    ".pgm",
)
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_SPLITS = ("train", "test")


@dataclass
class ImageSet:
    """A labelled image set held in memory.

    Attributes:
        images: uint8 tensor (N, C, H, W).
        labels: int64 tensor (N,), values in [0, len(classes)).
        classes: class names, index = label.
        name: dataset name (as given to :func:`load_dataset`).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str = ""
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.dtype != torch.uint8:
            raise ValueError(
                f"images: expected a uint8 tensor (N, C, H, W), got shape "
                f"{tuple(self.images.shape)} and dtype {self.images.dtype}"
            )
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(
                f"labels: expected shape ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    def subset(self, n: int | None, *, start: int = 0) -> ImageSet:
        """Images ``start .. start + n`` (all from ``start`` if ``n`` is None or 0)."""
        stop = len(self) if not n else min(len(self), start + n)
        return ImageSet(self.images[start:stop], self.labels[start:stop], self.classes, self.name)


def list_datasets() -> list[str]:
    """Names accepted by :func:`load_dataset` (plus ``folder:PATH``)."""
    return ["fashion-mnist-small", "fashion-mnist", "mnist", "kmnist", "cifar10", "folder:PATH"]


def load_idx_dataset(folder: str | os.PathLike, split: str, *, name: str = "") -> ImageSet:
    """Load ``split`` ('train' or 't10k'/'test') of an MNIST-family folder (gz or raw files)."""
    folder = Path(folder)
    split = "test" if split in ("test", "t10k") else split
    if split not in _IDX_FILES:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    paths = []
    for fname in _IDX_FILES[split]:
        gz = folder / fname
        raw = folder / fname[:-3]
        paths.append(gz if gz.is_file() else raw)
    images = read_idx(paths[0], expect_ndim=3)
    labels = read_idx(paths[1], expect_ndim=1)
    if images.shape[0] != labels.shape[0]:
        raise IDXError(
            f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels in the {split} split"
        )
    classes = CLASSES.get(name) or [str(i) for i in range(int(labels.max(initial=0)) + 1)]
    if labels.size and (labels.min() < 0 or labels.max() >= len(classes)):
        raise IDXError(f"{paths[1]}: labels outside [0, {len(classes)})")
    return ImageSet(
        torch.from_numpy(images).unsqueeze(1).contiguous(),
        torch.from_numpy(labels.astype(np.int64)),
        list(classes),
        name,
    )


class _RefusingUnpickler(pickle.Unpickler):
    """Unpickler for CIFAR batches: containers, numbers, strings, bytes and numpy arrays only."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) in self._ALLOWED:
            if module in ("numpy", "_codecs"):
                return getattr(importlib.import_module(module), name)
            try:
                multiarray = importlib.import_module("numpy._core.multiarray")
            except ImportError:  # numpy < 2
                multiarray = importlib.import_module("numpy.core.multiarray")
            return multiarray._reconstruct
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: a CIFAR-10 batch holds only lists, bytes and "
            "numbers, and loading other objects can execute code"
        )


def _load_cifar_batch(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            batch = _RefusingUnpickler(f, encoding="latin1").load()
    except (pickle.UnpicklingError, EOFError, OSError, ValueError, TypeError) as exc:
        raise ValueError(f"{path}: not a valid CIFAR-10 python batch ({exc})") from None
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    return batch


def load_cifar10(folder: str | os.PathLike, split: str) -> ImageSet:
    """Load CIFAR-10 from the python batches in ``folder``: images (N, 3, 32, 32) uint8."""
    folder = Path(folder)
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    images, labels = [], []
    for fname in names:
        batch = _load_cifar_batch(folder / fname)
        data = np.asarray(batch.get("data"), dtype=np.uint8)
        if data.ndim != 2 or data.shape[1] != 3072:
            raise ValueError(
                f"{folder / fname}: expected 'data' of shape (N, 3072), got {data.shape}"
            )
        lab = np.asarray(batch.get("labels"), dtype=np.int64)
        if lab.shape != (data.shape[0],):
            raise ValueError(f"{folder / fname}: {data.shape[0]} images but {lab.size} labels")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    classes = list(CLASSES["cifar10"])
    meta = folder / "batches.meta"
    if meta.is_file():
        names_meta = _load_cifar_batch(meta).get("label_names")
        if names_meta:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names_meta]
    return ImageSet(
        torch.from_numpy(np.concatenate(images)),
        torch.from_numpy(np.concatenate(labels)),
        classes,
        "cifar10",
    )


def _read_image(path: Path, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
            if img.size != (size[1], size[0]):
                img = img.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError) as exc:
        raise ValueError(f"{path}: cannot read image ({exc})") from None


def _class_files(folder: Path) -> dict[str, list[Path]]:
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return {
        c: sorted(
            p
            for p in (folder / c).rglob("*")
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        for c in classes
    }


def load_image_folder(
    root: str | os.PathLike, split: str, *, image_size: int | tuple[int, int] = 32
) -> ImageSet:
    """Load an image folder (one sub-folder per class) as RGB uint8 (N, 3, H, W).

    See the module docstring for how the train / test split is chosen. Class names are the
    sorted sub-folder names of the training split; the test split must use the same names.
    """
    root = Path(root).expanduser()
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if not root.is_dir():
        raise DataNotFoundError(f"image folder {str(root)!r} does not exist or is not a folder")
    if (root / "train").is_dir():
        train_files = _class_files(root / "train")
        test_dir = root / "test" if (root / "test").is_dir() else root / "val"
        if not test_dir.is_dir():
            raise DataNotFoundError(f"{root}: has train/ but neither test/ nor val/")
        files = train_files if split == "train" else _class_files(test_dir)
        unknown = sorted(set(files) - set(train_files))
        if unknown:
            raise ValueError(f"{test_dir}: classes {unknown} are not in {root / 'train'}")
        classes = sorted(train_files)
    else:
        all_files = _class_files(root)
        classes = sorted(all_files)
        keep = (lambda i: i % 5 != 4) if split == "train" else (lambda i: i % 5 == 4)
        files = {c: [p for i, p in enumerate(fs) if keep(i)] for c, fs in all_files.items()}
    if len(classes) < 2:
        raise ValueError(
            f"{root}: expected at least 2 class sub-folders with images, found {len(classes)}"
        )
    items = [(p, classes.index(c)) for c in sorted(files) for p in files[c]]
    if not items:
        raise ValueError(f"{root}: no images ({', '.join(IMAGE_EXTENSIONS)}) in the {split} split")
    images = np.stack([_read_image(p, size) for p, _ in items])
    labels = np.array([label for _, label in items], dtype=np.int64)
    return ImageSet(torch.from_numpy(images), torch.from_numpy(labels), classes, f"folder:{root}")


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_root: str | os.PathLike | None = None,
    image_size: int = 32,
) -> ImageSet:
    """Load split ``'train'`` or ``'test'`` of dataset ``name`` (see :func:`list_datasets`).

    Raises:
        ValueError: unknown name or split, or invalid files.
        DataNotFoundError: the files are not installed (the message says how to get them).
    """
    if split not in _SPLITS:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")
    if not isinstance(name, str):
        raise TypeError(f"dataset: expected a str, got {name!r}")
    if name.startswith("folder:"):
        return load_image_folder(name[len("folder:") :], split, image_size=image_size)
    if name == "fashion-mnist-small":
        return load_idx_dataset(BUNDLED_DIR, split, name=name)
    if name in ("fashion-mnist", "mnist", "kmnist"):
        folder = find_dataset_dir(name, _IDX_FILES[split], data_root)
        return load_idx_dataset(folder, split, name=name)
    if name == "cifar10":
        required = ["test_batch"] if split == "test" else [f"data_batch_{i}" for i in range(1, 6)]
        return load_cifar10(find_dataset_dir(name, required, data_root), split)
    raise ValueError(f"dataset: expected one of {', '.join(list_datasets())}, got {name!r}")
