"""Where datasets come from: search roots, the bundled subset, and verified downloads.

Search order for a dataset ``NAME`` (first hit wins):

1. ``data_root`` (the ``--data-root`` option) or else the ``VISATTN_DATA`` environment variable:
   ``ROOT/NAME/`` with the official file names, e.g. ``ROOT/fashion-mnist/train-images-idx3-ubyte.gz``;
2. the user cache, ``$XDG_CACHE_HOME/visattn/NAME`` (default ``~/.cache/visattn/NAME``), where
   :func:`download` puts files;
3. the Debian / Ubuntu package location ``/usr/share/datasets/NAME/``
   (``apt-get install dataset-fashion-mnist``).

``fashion-mnist-small`` is a class-balanced subset of Fashion-MNIST (12000 train / 2000 test
images) shipped inside the package (``visattn/data/bundled``, MIT licence, see its LICENSE), so
demos and tests need no download.

Downloads are checked before they are kept: each file is fetched to a temporary name, its
digest compared with the published one, and only then renamed into place. Fashion-MNIST is
checked with the SHA-256 of the *decompressed* IDX bytes (robust to re-compression; the values
were computed from the Debian copies of the official files, whose content matches the official
sizes); MNIST and KMNIST with the MD5 of the ``.gz`` files that their publishers list; CIFAR-10
with the MD5 of the official archive.

Tests: ``tests/data/test_data_sources.py`` (downloads only from a local ``http.server`` on
127.0.0.1).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "BUNDLED_DIR",
    "DEBIAN_DIR",
    "REMOTE",
    "DataNotFoundError",
    "DownloadError",
    "RemoteFile",
    "cache_dir",
    "download",
    "download_files",
    "find_dataset_dir",
    "search_roots",
]

BUNDLED_DIR = Path(__file__).resolve().parent / "bundled"
DEBIAN_DIR = Path("/usr/share/datasets")


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are in none of the search locations (the message says how to get them)."""


class DownloadError(RuntimeError):
    """A download failed or its content did not match the published digest."""


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: ``url`` saved as ``name``, checked with ``algorithm`` = ``digest``.

    ``decompressed=True`` means the digest is of the gzip-decompressed content.
    """

    name: str
    url: str
    digest: str
    algorithm: str = "sha256"
    decompressed: bool = False


@dataclass(frozen=True)
class _Remote:
    base_url: str
    files: tuple[tuple[str, str, str, bool], ...]  # (name, algorithm, digest, decompressed)
    extract: bool = False
    extras: dict = field(default_factory=dict)

    def resolve(self, base_url: str | None) -> list[RemoteFile]:
        base = (base_url or self.base_url).rstrip("/") + "/"
        return [RemoteFile(n, base + n, d, a, z) for n, a, d, z in self.files]


_FASHION = (
    ("train-images-idx3-ubyte.gz", "sha256", "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888", True),
    ("train-labels-idx1-ubyte.gz", "sha256", "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9", True),
    ("t10k-images-idx3-ubyte.gz", "sha256", "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b", True),
    ("t10k-labels-idx1-ubyte.gz", "sha256", "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34", True),
)  # fmt: skip
_MNIST = (
    ("train-images-idx3-ubyte.gz", "md5", "f68b3c2dcbeaaa9fbdd348bbdeb94873", False),
    ("train-labels-idx1-ubyte.gz", "md5", "d53e105ee54ea40749a09fcbcd1e9432", False),
    ("t10k-images-idx3-ubyte.gz", "md5", "9fb629c4189551a2d022fa330f9573f3", False),
    ("t10k-labels-idx1-ubyte.gz", "md5", "ec29112dd5afa0611ce80d1b7f02629c", False),
)
_KMNIST = (
    ("train-images-idx3-ubyte.gz", "md5", "bdb82020997e1d708af4cf47b453dcf7", False),
    ("train-labels-idx1-ubyte.gz", "md5", "e144d726b3acfaa3e44228e80efcd344", False),
    ("t10k-images-idx3-ubyte.gz", "md5", "5c965bf0a639b31b8f53240b1b52f4d7", False),
    ("t10k-labels-idx1-ubyte.gz", "md5", "7320c461ea6c1c855c0b718fb2a4b134", False),
)

#: Official download locations and digests of the datasets :func:`download` knows.
REMOTE: dict[str, _Remote] = {
    "fashion-mnist": _Remote(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", _FASHION
    ),
    "mnist": _Remote("https://ossci-datasets.s3.amazonaws.com/mnist/", _MNIST),
    "kmnist": _Remote("http://codh.rois.ac.jp/kmnist/dataset/kmnist/", _KMNIST),
    "cifar10": _Remote(
        "https://www.cs.toronto.edu/~kriz/",
        (("cifar-10-python.tar.gz", "md5", "c58f30108f718f92721af3b95e74349a", False),),
        extract=True,
    ),
}


def cache_dir() -> Path:
    """The user cache: ``$XDG_CACHE_HOME/visattn`` or ``~/.cache/visattn``."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "visattn"


def search_roots(data_root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for ``NAME/`` sub-folders, in order (see the module docstring)."""
    roots: list[Path] = []
    explicit = data_root if data_root is not None else os.environ.get("VISATTN_DATA")
    if explicit:
        roots.append(Path(explicit).expanduser())
    roots.append(cache_dir())
    roots.append(DEBIAN_DIR)
    return roots


def _has_files(folder: Path, required: Sequence[str]) -> bool:
    for name in required:
        stem = name[:-3] if name.endswith(".gz") else name
        if not ((folder / stem).is_file() or (folder / (stem + ".gz")).is_file()):
            return False
    return True


def find_dataset_dir(
    name: str, required: Sequence[str], data_root: str | os.PathLike | None = None
) -> Path:
    """First ``ROOT/name`` (or a sub-folder listed for CIFAR-10) that holds all ``required`` files.

    Raises:
        DataNotFoundError: with the places searched and the ways to get the files.
    """
    candidates: list[Path] = []
    for root in search_roots(data_root):
        folder = root / name
        candidates.append(folder)
        if name == "cifar10":
            candidates.append(folder / "cifar-10-batches-py")
            candidates.append(root / "cifar-10-batches-py")
    for folder in candidates:
        if folder.is_dir() and _has_files(folder, required):
            return folder
    how = [f"`visattn data download {name}`"] if name in REMOTE else []
    if name == "fashion-mnist":
        how.insert(0, "`apt-get install dataset-fashion-mnist`")
    how.append("--data-root DIR (or VISATTN_DATA) with DIR/" + name + "/ holding the files")
    hint = " or use the bundled subset --dataset fashion-mnist-small" if "mnist" in name else ""
    raise DataNotFoundError(
        f"dataset {name!r} not found (looked in {', '.join(str(c) for c in candidates)}); "
        f"get it with {' or '.join(how)}{hint}"
    )


def _digest(path: Path, algorithm: str, decompressed: bool) -> str:
    h = hashlib.new(algorithm)
    opener = gzip.open if decompressed else open
    try:
        with opener(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except (OSError, EOFError) as exc:
        raise DownloadError(
            f"{path.name}: downloaded file is not valid gzip data ({exc})"
        ) from None
    return h.hexdigest()


def _safe_extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            target = (dest / member.name).resolve()
            if not str(target).startswith(str(dest.resolve())) or not (
                member.isfile() or member.isdir()
            ):
                raise DownloadError(f"{archive.name}: refusing archive member {member.name!r}")
        if hasattr(tarfile, "data_filter"):
            tar.extractall(dest, filter="data")
        else:  # Python < 3.10.12 / 3.11.4: members were checked above
            tar.extractall(dest)


def download_files(
    files: Sequence[RemoteFile], dest: str | os.PathLike, *, timeout: float = 60.0
) -> list[Path]:
    """Fetch ``files`` into ``dest``, verifying each digest before it gets its final name.

    A file already present with the right digest is not fetched again. On any failure nothing
    is left under the final name (the temporary file is removed).

    Raises:
        DownloadError: network error or digest mismatch (the message names the file and both
            digests).
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    out: list[Path] = []
    for spec in files:
        final = dest / spec.name
        if final.is_file():
            try:
                if _digest(final, spec.algorithm, spec.decompressed) == spec.digest:
                    out.append(final)
                    continue
            except DownloadError:
                pass
        fd, tmp_name = tempfile.mkstemp(prefix=f".{spec.name}.", suffix=".part", dir=dest)
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as f:
                try:
                    with urllib.request.urlopen(spec.url, timeout=timeout) as response:
                        shutil.copyfileobj(response, f, 1 << 20)
                except (urllib.error.URLError, OSError) as exc:
                    reason = getattr(exc, "reason", exc)
                    raise DownloadError(f"{spec.url}: download failed ({reason})") from None
                f.flush()
                os.fsync(f.fileno())
            got = _digest(tmp, spec.algorithm, spec.decompressed)
            if got != spec.digest:
                what = "decompressed content" if spec.decompressed else "file"
                raise DownloadError(
                    f"{spec.url}: {spec.algorithm} of the {what} is {got}, expected "
                    f"{spec.digest}; the download is corrupt or not the official file"
                )
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        out.append(final)
    return out


def download(
    name: str,
    root: str | os.PathLike | None = None,
    *,
    base_url: str | None = None,
    timeout: float = 60.0,
) -> Path:
    """Download dataset ``name`` into ``root/name`` (default root: :func:`cache_dir`).

    Args:
        name: one of ``REMOTE`` (fashion-mnist, mnist, kmnist, cifar10).
        root: destination root; the files go to ``root/name``.
        base_url: a mirror to use instead of the official location (same file names).

    Returns:
        the dataset folder.
    """
    if name not in REMOTE:
        raise ValueError(f"name: expected one of {', '.join(map(repr, REMOTE))}, got {name!r}")
    remote = REMOTE[name]
    folder = Path(root if root is not None else cache_dir()).expanduser() / name
    paths = download_files(remote.resolve(base_url), folder, timeout=timeout)
    if remote.extract:
        for path in paths:
            _safe_extract(path, folder)
    return folder
