"""Tests of visattn.data.sources: search order, bundled subset, verified downloads.

Downloads come only from a ``http.server`` on 127.0.0.1 serving files made by the test (and,
when the Debian package is installed, copies of the real Fashion-MNIST files).
"""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest

from visattn.data import (
    REMOTE,
    DataNotFoundError,
    DownloadError,
    RemoteFile,
    cache_dir,
    download,
    download_files,
    find_dataset_dir,
    load_dataset,
    search_roots,
    write_idx,
)
from visattn.data.sources import BUNDLED_DIR, DEBIAN_DIR

REQUIRED = ["train-images-idx3-ubyte.gz"]


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("VISATTN_DATA", raising=False)
    return tmp_path


def _make(folder: Path, name: str = "train-images-idx3-ubyte.gz") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_idx(folder / name, np.zeros((1, 2, 2), np.uint8))


def test_cache_dir_and_order(isolated, monkeypatch):
    assert cache_dir() == isolated / "xdg" / "visattn"
    assert search_roots() == [cache_dir(), DEBIAN_DIR]
    monkeypatch.setenv("VISATTN_DATA", str(isolated / "env"))
    assert search_roots()[0] == isolated / "env"
    assert search_roots(isolated / "cli")[0] == isolated / "cli"  # --data-root beats the env


def test_first_root_with_files_wins(isolated, monkeypatch):
    _make(cache_dir() / "mnist")
    assert find_dataset_dir("mnist", REQUIRED) == cache_dir() / "mnist"
    monkeypatch.setenv("VISATTN_DATA", str(isolated / "env"))
    _make(isolated / "env" / "mnist", "train-images-idx3-ubyte")  # raw (not gzip) also counts
    assert find_dataset_dir("mnist", REQUIRED) == isolated / "env" / "mnist"
    (isolated / "empty" / "mnist").mkdir(parents=True)  # a folder without the files is skipped
    assert find_dataset_dir("mnist", REQUIRED, isolated / "empty") == cache_dir() / "mnist"


def test_not_found_says_how_to_get_it(isolated):
    with pytest.raises(DataNotFoundError) as info:
        find_dataset_dir("kmnist", REQUIRED, isolated / "nowhere")
    message = str(info.value)
    assert "visattn data download kmnist" in message and "--data-root" in message
    assert "\n" not in message


def test_bundled_subset_is_balanced_and_licensed():
    train = load_dataset("fashion-mnist-small", "train")
    test = load_dataset("fashion-mnist-small", "test")
    assert train.images.shape == (12000, 1, 28, 28) and test.images.shape == (2000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [1200] * 10
    assert test.labels.bincount().tolist() == [200] * 10
    assert train.classes[0] == "T-shirt/top" and train.classes[9] == "Ankle boot"
    assert "MIT" in (BUNDLED_DIR / "LICENSE").read_text()
    size = sum(p.stat().st_size for p in BUNDLED_DIR.iterdir())
    assert size < 8 * 2**20


def _spec(path: Path, base: str, algorithm="sha256", decompressed=False) -> RemoteFile:
    data = gzip.decompress(path.read_bytes()) if decompressed else path.read_bytes()
    digest = hashlib.new(algorithm, data).hexdigest()
    return RemoteFile(path.name, base + path.name, digest, algorithm, decompressed)


@pytest.mark.parametrize(("algorithm", "decompressed"), [("sha256", True), ("md5", False)])
def test_download_verifies(tmp_path, server, algorithm, decompressed):
    served, base = server
    source = _make(served)
    spec = _spec(source, base, algorithm, decompressed)
    (path,) = download_files([spec], tmp_path / "dest")
    assert path.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == [source.name]
    (path,) = download_files([spec], tmp_path / "dest")  # present and valid: kept


def test_download_rejects_wrong_digest_and_leaves_nothing(tmp_path, server):
    served, base = server
    source = _make(served)
    bad = RemoteFile(source.name, base + source.name, "0" * 64)
    with pytest.raises(DownloadError, match=r"sha256 .* expected 0000"):
        download_files([bad], tmp_path / "dest")
    assert list((tmp_path / "dest").iterdir()) == []


def test_download_reports_http_errors(tmp_path, server):
    _, base = server
    with pytest.raises(DownloadError, match="download failed"):
        download_files([RemoteFile("missing.gz", base + "missing.gz", "0" * 64)], tmp_path / "d")
    assert list((tmp_path / "d").iterdir()) == []


def test_download_unknown_name(tmp_path):
    with pytest.raises(ValueError, match="name: expected one of"):
        download("imagenet", tmp_path)


@pytest.mark.skipif(
    not (DEBIAN_DIR / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="needs apt-get install dataset-fashion-mnist",
)
def test_download_fashion_mnist_official_digests(tmp_path, server, monkeypatch):
    """The SHA-256 values in REMOTE match the real files, served from 127.0.0.1."""
    served, base = server
    for name, *_ in REMOTE["fashion-mnist"].files:
        (served / name).symlink_to(DEBIAN_DIR / "fashion-mnist" / name)
    folder = download("fashion-mnist", tmp_path, base_url=base)
    assert folder == tmp_path / "fashion-mnist"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    test = load_dataset("fashion-mnist", "test", data_root=tmp_path)
    assert test.images.shape == (10000, 1, 28, 28)


def test_archive_extraction_refuses_escaping_members(tmp_path):
    import io
    import tarfile

    from visattn.data.sources import _safe_extract

    def make(name, members):
        path = tmp_path / name
        with tarfile.open(path, "w:gz") as tar:
            for member in members:
                info = tarfile.TarInfo(member)
                info.size = 3
                tar.addfile(info, io.BytesIO(b"abc"))
        return path

    good = make("good.tar.gz", ["cifar-10-batches-py/test_batch"])
    _safe_extract(good, tmp_path / "out")
    assert (tmp_path / "out" / "cifar-10-batches-py" / "test_batch").read_bytes() == b"abc"
    evil = make("evil.tar.gz", ["../escaped"])
    with pytest.raises(DownloadError, match="refusing archive member"):
        _safe_extract(evil, tmp_path / "out2")
    assert not (tmp_path / "escaped").exists()
