"""Tests of ``visattn data``: list, info, speed and download (from 127.0.0.1 only)."""

from __future__ import annotations

import json

import pytest

from visattn.cli import main
from visattn.data.sources import DEBIAN_DIR, REMOTE


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("VISATTN_DATA", raising=False)


def test_list_and_info(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    assert "fashion-mnist-small  bundled" in out and "visattn data download kmnist" in out
    assert main(["data", "info", "fashion-mnist-small"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["train_images"] == 12000 and info["image_shape"] == [1, 28, 28]
    assert main(["data", "info", "mnist"]) == 1
    assert "visattn data download mnist" in capsys.readouterr().err


def test_speed(capsys):
    argv = ["data", "speed", "--distortion", "cluttered", "--batches", "2", "--batch-size", "8"]
    assert main(argv) == 0
    row = json.loads(capsys.readouterr().out)
    assert row["distortion"] == "cluttered" and row["output_size"] == 60 and row["images_per_s"] > 0


def test_download_rejects_foreign_files(tmp_path, server, capsys):
    served, base = server
    for name, *_ in REMOTE["mnist"].files:
        (served / name).write_bytes(b"not the official file")
    code = main(["data", "download", "mnist", "--root", str(tmp_path / "d"), "--mirror", base])
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "md5" in err
    assert list((tmp_path / "d" / "mnist").iterdir()) == []


@pytest.mark.skipif(
    not (DEBIAN_DIR / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz").is_file(),
    reason="needs apt-get install dataset-fashion-mnist",
)
def test_download_then_train_finds_it_in_the_cache(tmp_path, server, capsys):
    served, base = server
    for name, *_ in REMOTE["fashion-mnist"].files:
        (served / name).symlink_to(DEBIAN_DIR / "fashion-mnist" / name)
    assert main(["data", "download", "fashion-mnist", "--mirror", base]) == 0
    assert (tmp_path / "xdg" / "visattn" / "fashion-mnist" / "t10k-images-idx3-ubyte.gz").is_file()
    assert "verified" in capsys.readouterr().out
