"""Tests of visattn.data.idx: round trips, and clear errors for truncated or foreign files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from visattn.data.idx import IDXError, read_idx, write_idx


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("compress", [True, False])
def test_round_trip(tmp_path, dtype, compress):
    rng = np.random.default_rng()
    shape = tuple(int(s) for s in rng.integers(1, 6, size=rng.integers(1, 4)))
    array = (rng.standard_normal(shape) * 50).astype(dtype)
    path = write_idx(tmp_path / ("a.idx.gz" if compress else "a.idx"), array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_gzip_detected_by_content_not_name(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "images-idx3-ubyte", array, compress=True)
    np.testing.assert_array_equal(read_idx(path, expect_ndim=3), array)


def test_official_header_layout(tmp_path):
    array = np.zeros((2, 28, 28), np.uint8)
    raw = write_idx(tmp_path / "x", array).read_bytes()
    assert raw[:4] == bytes([0, 0, 8, 3])
    assert raw[4:16] == (2).to_bytes(4, "big") + (28).to_bytes(4, "big") + (28).to_bytes(4, "big")
    assert len(raw) == 16 + 2 * 28 * 28


def _raw(tmp_path, array):
    return write_idx(tmp_path / "f.idx", array).read_bytes()


def test_truncated_file(tmp_path):
    raw = _raw(tmp_path, np.ones((5, 4, 4), np.uint8))
    path = tmp_path / "short.idx"
    path.write_bytes(raw[:-3])
    with pytest.raises(IDXError, match=r"truncated.*header says shape \(5, 4, 4\)"):
        read_idx(path)


def test_truncated_gzip(tmp_path):
    raw = gzip.compress(_raw(tmp_path, np.ones((50, 28, 28), np.uint8)))
    path = tmp_path / "short.gz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(IDXError, match="gzip"):
        read_idx(path)


def test_trailing_data(tmp_path):
    path = tmp_path / "long.idx"
    path.write_bytes(_raw(tmp_path, np.ones((3,), np.uint8)) + b"\x00")
    with pytest.raises(IDXError, match="trailing data"):
        read_idx(path)


@pytest.mark.parametrize(
    "content", [b"", b"\x00\x00", b"PK\x03\x04rest", b"\x00\x00\x07\x01abcd", b"\x01\x00\x08\x01"]
)
def test_foreign_files(tmp_path, content):
    path = tmp_path / "foreign"
    path.write_bytes(content)
    with pytest.raises(IDXError, match=r"foreign|not an IDX file"):
        read_idx(path)


def test_wrong_ndim_and_missing(tmp_path):
    path = write_idx(tmp_path / "labels.idx", np.arange(4, dtype=np.uint8))
    with pytest.raises(IDXError, match="expected an IDX file with 3 dimensions, got 1"):
        read_idx(path, expect_ndim=3)
    with pytest.raises(IDXError, match="cannot read"):
        read_idx(tmp_path / "missing.idx")


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(TypeError, match="array: expected dtype"):
        write_idx(tmp_path / "x", np.zeros(3, np.complex64))
