"""``visattn data``: list, inspect, download datasets and time the distortion pipeline.

- ``visattn data list``: every dataset name and where it was found (or how to get it);
- ``visattn data info NAME``: sizes, image shape, classes and folder of a dataset;
- ``visattn data download NAME [--root DIR] [--mirror URL]``: fetch the official files into the
  user cache (or DIR) and verify their digests (see ``visattn.data.sources``);
- ``visattn data speed [--distortion NAME]``: images/s of the input pipeline (load, distort,
  normalise) for the STN-paper distortions (arXiv:1506.02025).

Tests: ``tests/cli/test_cli_data.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..cli import add_command
    from ..data.distortions import DISTORTIONS
    from ..data.sources import REMOTE

    description = (__doc__ or "").split("\n\n")[0].replace("``", "")
    parser = add_command(subparsers, "data", "list, inspect and download datasets", description)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = add_command(actions, "list", "datasets and where they are")
    p.add_argument("--data-root", metavar="DIR", help="dataset root folder")
    p = add_command(actions, "info", "describe one dataset")
    p.add_argument("name", help="dataset name")
    p.add_argument("--data-root", metavar="DIR", help="dataset root folder")
    p = add_command(actions, "download", "download and verify a dataset")
    p.add_argument("name", choices=sorted(REMOTE), help="dataset name")
    p.add_argument("--root", metavar="DIR", help="destination root (default: the user cache)")
    p.add_argument("--mirror", metavar="URL", help="base URL to use instead of the official one")
    p.add_argument("--timeout", type=float, default=60.0, help="network timeout in seconds")
    p = add_command(actions, "speed", "images/s of the input pipeline")
    p.add_argument("--dataset", default="fashion-mnist-small", help="dataset name")
    p.add_argument("--data-root", metavar="DIR", help="dataset root folder")
    p.add_argument("--distortion", choices=DISTORTIONS, default=None, help="one (default: all)")
    p.add_argument("--batch-size", type=int, default=256, help="images per batch")
    p.add_argument("--batches", type=int, default=20, help="batches timed per distortion")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    return parser


def _list(args) -> int:
    from ..data.datasets import list_datasets
    from ..data.sources import BUNDLED_DIR, DataNotFoundError, find_dataset_dir

    rows = []
    for name in list_datasets():
        if name == "folder:PATH":
            where = "your own images: one sub-folder per class"
        elif name == "fashion-mnist-small":
            where = f"bundled ({BUNDLED_DIR})"
        else:
            required = ["test_batch"] if name == "cifar10" else ["t10k-labels-idx1-ubyte.gz"]
            try:
                where = str(find_dataset_dir(name, required, args.data_root))
            except DataNotFoundError:
                where = "not installed (visattn data download " + name + ")"
        rows.append((name, where))
    width = max(len(n) for n, _ in rows)
    for name, where in rows:
        print(f"{name:<{width}}  {where}")
    return 0


def _info(args) -> int:
    from ..data import load_dataset

    result = {"name": args.name}
    for split in ("train", "test"):
        data = load_dataset(args.name, split, data_root=args.data_root)
        result[f"{split}_images"] = len(data)
        result["image_shape"] = list(data.shape)
        result["classes"] = data.classes
        counts = data.labels.bincount(minlength=data.num_classes).tolist()
        result[f"{split}_per_class"] = counts
    print(json.dumps(result))
    return 0


def _download(args) -> int:
    from ..data.sources import download

    folder = download(args.name, args.root, base_url=args.mirror, timeout=args.timeout)
    print(f"{args.name}: verified files in {folder}")
    return 0


def _speed(args) -> int:
    import torch

    from ..data import DISTORTIONS, load_dataset
    from ..engine.pipeline import Pipeline, channel_stats

    if args.batch_size < 1 or args.batches < 1:
        raise ValueError("--batch-size / --batches: expected integers >= 1")
    data = load_dataset(args.dataset, "train", data_root=args.data_root)
    mean, std = channel_stats(data.images)
    device = torch.device(args.device)
    names = [args.distortion] if args.distortion else list(DISTORTIONS)
    for name in names:
        pipe = Pipeline(data, mean=mean, std=std, distortion=name, distortion_seed=0, device=device)
        order = torch.randperm(len(data))
        pipe.batch(order[: args.batch_size])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        images = 0
        for b in range(args.batches):
            begin = (b * args.batch_size) % max(1, len(data) - args.batch_size)
            x, _ = pipe.batch(order[begin : begin + args.batch_size])
            images += x.shape[0]
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        rate = images / (time.perf_counter() - start)
        print(
            json.dumps(
                {"distortion": name, "output_size": pipe.input_size, "images_per_s": round(rate)}
            )
        )
        sys.stdout.flush()
    return 0


def run(args: argparse.Namespace) -> int:
    return {"list": _list, "info": _info, "download": _download, "speed": _speed}[args.action](args)
