"""Build the bundled Fashion-MNIST subset in ``src/visattn/data/bundled/``.

Fashion-MNIST (Xiao, Rasul and Vollgraf, 2017, arXiv:1708.07747), © Zalando SE, MIT licence.
The subset is class-balanced: ``--train-per-class`` images of each of the 10 classes drawn
without replacement from the official training split, ``--test-per-class`` from the official
test split, with a fixed NumPy seed, then shuffled; written as gzip IDX files with the official
names. Run with the full files installed (``apt-get install dataset-fashion-mnist``)::

    PYTHONPATH=src python tools/make_bundled_fashion_mnist.py

Tests of the result: ``tests/data/test_data_sources.py``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from visattn.data.idx import read_idx, write_idx

SRC = Path("/usr/share/datasets/fashion-mnist")
DST = Path(__file__).resolve().parents[1] / "src" / "visattn" / "data" / "bundled"


def subset(images, labels, per_class, rng):
    picks = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in range(10)]
    index = rng.permutation(np.concatenate(picks))
    return images[index], labels[index]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=SRC)
    parser.add_argument("--dest", type=Path, default=DST)
    parser.add_argument("--train-per-class", type=int, default=1200)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=20171)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    args.dest.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", args.train_per_class), ("t10k", args.test_per_class)):
        images = read_idx(args.source / f"{split}-images-idx3-ubyte.gz", expect_ndim=3)
        labels = read_idx(args.source / f"{split}-labels-idx1-ubyte.gz", expect_ndim=1)
        images, labels = subset(images, labels, per_class, rng)
        write_idx(args.dest / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(args.dest / f"{split}-labels-idx1-ubyte.gz", labels)
        print(split, images.shape, np.bincount(labels).tolist())


if __name__ == "__main__":
    main()
