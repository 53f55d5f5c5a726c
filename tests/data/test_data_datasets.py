"""Tests of visattn.data.datasets: MNIST-family folders, CIFAR-10 batches, image folders."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.data import DataNotFoundError, IDXError, ImageSet, load_dataset, write_idx
from visattn.data.datasets import load_cifar10, load_idx_dataset, load_image_folder


def _idx_folder(folder, n_train=7, n_test=3, labels_n=None):
    rng = np.random.default_rng()
    folder.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        write_idx(
            folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), np.uint8)
        )
        write_idx(
            folder / f"{split}-labels-idx1-ubyte", rng.integers(0, 10, labels_n or n, np.uint8)
        )
    return folder


def test_idx_dataset_from_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    _idx_folder(tmp_path / "root" / "kmnist")
    train = load_dataset("kmnist", "train", data_root=tmp_path / "root")
    assert train.images.shape == (7, 1, 28, 28) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.classes[0] == "o"
    assert len(load_dataset("kmnist", "test", data_root=tmp_path / "root")) == 3


def test_idx_count_mismatch_is_an_error(tmp_path):
    folder = _idx_folder(tmp_path / "mnist", labels_n=5)
    with pytest.raises(IDXError, match="7 images but 5 labels"):
        load_idx_dataset(folder, "train", name="mnist")


def test_unknown_dataset_lists_names():
    with pytest.raises(ValueError, match=r"fashion-mnist-small.*folder:PATH.*got 'imagenet'"):
        load_dataset("imagenet")
    with pytest.raises(ValueError, match="split"):
        load_dataset("fashion-mnist-small", "validation")


def test_subset_and_checks():
    data = load_dataset("fashion-mnist-small", "test")
    part = data.subset(5, start=10)
    assert torch.equal(part.images, data.images[10:15]) and len(data.subset(0)) == len(data)
    with pytest.raises(ValueError, match="uint8"):
        ImageSet(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long), ["a"])


def _cifar_folder(folder, n=4):
    rng = np.random.default_rng()
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            b"labels": rng.integers(0, 10, n).tolist(),
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {b"label_names": [f"c{i}".encode() for i in range(10)]}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


def test_cifar10_batches(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = _cifar_folder(tmp_path / "root" / "cifar10" / "cifar-10-batches-py")
    train = load_dataset("cifar10", "train", data_root=tmp_path / "root")
    assert train.images.shape == (20, 3, 32, 32) and train.classes[3] == "c3"
    raw = pickle.loads((folder / "test_batch").read_bytes())
    test = load_cifar10(folder, "test")
    np.testing.assert_array_equal(test.images.numpy().reshape(4, -1), raw[b"data"])


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_cifar_batch_never_runs_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = _cifar_folder(tmp_path / "c")
    (folder / "test_batch").write_bytes(pickle.dumps({b"data": _Evil()}, protocol=2))
    with pytest.raises(
        ValueError, match=r"refusing to load posix.system|refusing to load os.system"
    ):
        load_cifar10(folder, "test")
    assert not (tmp_path / "pwned").exists()


def _png(path, colour, size=(10, 7)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def test_image_folder_with_splits(tmp_path):
    for split in ("train", "test"):
        for i, cls in enumerate(("cat", "dog", "eel")):
            for j in range(2 if split == "test" else 3):
                _png(tmp_path / split / cls / f"{j}.png", (80 * i, 10 * j, 0))
    train = load_dataset(f"folder:{tmp_path}", "train", image_size=12)
    assert train.images.shape == (9, 3, 12, 12) and train.classes == ["cat", "dog", "eel"]
    assert train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert int(train.images[3, 0, 5, 5]) == 80
    assert len(load_image_folder(tmp_path, "test", image_size=12)) == 6


def test_image_folder_without_splits_holds_out_every_fifth(tmp_path):
    for cls in ("a", "b"):
        for j in range(10):
            _png(tmp_path / cls / f"{j:02d}.jpg", (j, j, j))
    train = load_image_folder(tmp_path, "train", image_size=8)
    test = load_image_folder(tmp_path, "test", image_size=8)
    assert len(train) == 16 and len(test) == 4


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        load_image_folder(tmp_path / "missing", "train")
    _png(tmp_path / "only" / "a" / "x.png", (1, 2, 3))
    with pytest.raises(ValueError, match="at least 2 class"):
        load_image_folder(tmp_path / "only", "train")
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "b").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "x.png").write_bytes(b"not a png")
    _png(tmp_path / "bad" / "b" / "y.png", (1, 2, 3))
    with pytest.raises(ValueError, match="cannot read image"):
        load_image_folder(tmp_path / "bad", "train")
