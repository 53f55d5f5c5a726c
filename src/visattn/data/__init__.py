"""Datasets, data sources and the Spatial Transformer paper's distortions (arXiv:1506.02025).

- ``idx``: IDX reader / writer (MNIST family);
- ``sources``: search roots, bundled subset, verified downloads;
- ``datasets``: in-memory ``ImageSet`` loaders (MNIST family, CIFAR-10, image folders);
- ``distortions``: R / RTS / P / E / cluttered, batched, deterministic per (seed, index).

Tests: ``tests/data/``.
"""

from .datasets import (
    CLASSES,
    ImageSet,
    list_datasets,
    load_cifar10,
    load_dataset,
    load_idx_dataset,
    load_image_folder,
)
from .distortions import (
    DISTORTIONS,
    Distorter,
    apply_distortion,
    distort,
    distorted_size,
    sample_params,
)
from .idx import IDXError, read_idx, write_idx
from .sources import (
    REMOTE,
    DataNotFoundError,
    DownloadError,
    RemoteFile,
    cache_dir,
    download,
    download_files,
    find_dataset_dir,
    search_roots,
)

__all__ = [
    "CLASSES",
    "DISTORTIONS",
    "REMOTE",
    "DataNotFoundError",
    "Distorter",
    "DownloadError",
    "IDXError",
    "ImageSet",
    "RemoteFile",
    "apply_distortion",
    "cache_dir",
    "distort",
    "distorted_size",
    "download",
    "download_files",
    "find_dataset_dir",
    "list_datasets",
    "load_cifar10",
    "load_dataset",
    "load_idx_dataset",
    "load_image_folder",
    "read_idx",
    "sample_params",
    "search_roots",
    "write_idx",
]
