"""Reader and writer for the IDX format of the MNIST family (LeCun et al., 1998).

IDX layout (all integers big-endian)::

    byte 0-1   0x00 0x00                     magic, part 1
    byte 2     type code                     0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                                             0x0D float32, 0x0E float64
    byte 3     ndim                          number of dimensions (>= 1)
    4 * ndim   d_1 ... d_ndim                size of each dimension, uint32
    rest       prod(d_i) * itemsize bytes    the data, C order

MNIST, Fashion-MNIST (Xiao et al., 2017, arXiv:1708.07747) and KMNIST (Clanuwat et al., 2018,
arXiv:1812.01718) ship their images as ``*-idx3-ubyte`` (N, 28, 28) and their labels as
``*-idx1-ubyte`` (N,), usually gzip-compressed. The reader accepts both forms (it looks at the
gzip magic bytes, not the file name) and checks the magic, the dimensions and the exact file
length, so a truncated or foreign file is an :class:`IDXError`, never a silently short dataset.

Tests: ``tests/data/test_data_idx.py``.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np

__all__ = ["IDXError", "read_idx", "write_idx"]

_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


class IDXError(ValueError):
    """A file is not a valid IDX file (wrong magic, impossible header, wrong length)."""


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise IDXError(f"{path}: cannot read IDX file ({exc.strerror or exc})") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise IDXError(f"{path}: corrupt or truncated gzip data ({exc})") from None
    return raw


def read_idx(path: str | os.PathLike, *, expect_ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (raw or gzip-compressed) into a native-endian numpy array.

    Args:
        path: the file.
        expect_ndim: if given, the number of dimensions the file must have (3 for images,
            1 for labels).

    Returns:
        array of shape (d_1, ..., d_ndim) in the file's type (uint8 for the MNIST family).

    Raises:
        IDXError: the file cannot be read, is not IDX, has the wrong number of dimensions, or
            its length differs from what the header announces.
    """
    path = Path(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise IDXError(f"{path}: not an IDX file (only {len(data)} bytes, the header needs 4)")
    zero0, zero1, code, ndim = data[0], data[1], data[2], data[3]
    if zero0 != 0 or zero1 != 0 or code not in _TYPES:
        raise IDXError(
            f"{path}: not an IDX file (magic bytes {data[:4].hex()}, expected 0000 followed by a "
            f"type code in {', '.join(f'{c:02x}' for c in _TYPES)} and the number of dimensions)"
        )
    if ndim < 1:
        raise IDXError(f"{path}: IDX header declares {ndim} dimensions, expected at least 1")
    if expect_ndim is not None and ndim != expect_ndim:
        raise IDXError(f"{path}: expected an IDX file with {expect_ndim} dimensions, got {ndim}")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise IDXError(f"{path}: truncated IDX header ({len(data)} bytes, expected {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = _TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        kind = "truncated" if actual < expected else "has trailing data"
        raise IDXError(
            f"{path}: IDX file {kind}: header says shape {tuple(dims)} = {expected} bytes of "
            f"data, the file holds {actual}"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header, count=expected // dtype.itemsize)
    return array.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool | None = None) -> Path:
    """Write ``array`` as an IDX file; gzip-compressed if ``compress`` (default: name ends .gz).

    The gzip header carries no time stamp, so the same array always gives the same bytes.
    """
    path = Path(path)
    array = np.asarray(array)
    code = next((c for c, t in _TYPES.items() if t.newbyteorder("=") == array.dtype), None)
    if code is None:
        raise TypeError(
            f"array: expected dtype uint8, int8, int16, int32, float32 or float64, got {array.dtype}"
        )
    if array.ndim < 1:
        raise ValueError("array: expected at least 1 dimension, got a scalar")
    buffer = io.BytesIO()
    buffer.write(bytes((0, 0, code, array.ndim)))
    buffer.write(struct.pack(f">{array.ndim}I", *array.shape))
    buffer.write(np.ascontiguousarray(array, dtype=_TYPES[code]).tobytes())
    payload = buffer.getvalue()
    if compress is None:
        compress = path.suffix == ".gz"
    if compress:
        payload = gzip.compress(payload, compresslevel=9, mtime=0)
    path.write_bytes(payload)
    return path
