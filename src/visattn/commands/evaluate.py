"""``visattn eval``: accuracy and loss of a trained model on a (distorted) dataset.

Loads ``model.safetensors`` or a checkpoint (never a pickle), rebuilds the model from the options
stored in the file, and evaluates on the training dataset's test split by default, with the
training normalisation. Prints one JSON object on stdout. Tests: ``tests/cli/test_cli_eval.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..cli import add_command
    from ..data.distortions import DISTORTIONS
    from ..engine import TEST_DISTORTION_SEED

    description = (__doc__ or "").split("\n\n")[0].replace("``", "")
    parser = add_command(subparsers, "eval", "evaluate a trained model", description)
    parser.add_argument(
        "--checkpoint",
        required=True,
        metavar="PATH",
        help="run folder, model.safetensors or checkpoints/step-*.safetensors",
    )
    parser.add_argument("--dataset", help="dataset (default: the one trained on)")
    parser.add_argument(
        "--distortion", choices=DISTORTIONS, help="distortion (default: the one trained with)"
    )
    parser.add_argument("--data-root", metavar="DIR", help="dataset root folder")
    parser.add_argument("--split", choices=("test", "train"), default="test", help="split")
    parser.add_argument("--subset", type=int, default=0, help="first N images only (0: all)")
    parser.add_argument("--batch-size", type=int, default=256, help="images per batch")
    parser.add_argument(
        "--distortion-seed", type=int, default=TEST_DISTORTION_SEED, help="seed of the distortions"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--output", metavar="FILE", help="also write the JSON result to FILE")
    return parser


def run(args: argparse.Namespace) -> int:
    import torch

    from ..data import load_dataset
    from ..engine import Pipeline, evaluate, load_model, resolve_device
    from ..engine.checkpoint import atomic_write_text

    if args.batch_size < 1:
        raise ValueError(f"--batch-size: expected an integer >= 1, got {args.batch_size}")
    if args.subset < 0:
        raise ValueError(f"--subset: expected an integer >= 0, got {args.subset}")
    device = resolve_device(args.device)
    model, info = load_model(args.checkpoint, device=device)
    opts = info["options"]
    dataset = args.dataset or opts["dataset"]
    distortion = args.distortion or opts["distortion"]
    data = load_dataset(
        dataset,
        args.split,
        data_root=args.data_root or opts.get("data_root"),
        image_size=opts.get("image_size", 32),
    ).subset(args.subset)
    if data.num_classes != len(info["classes"]):
        raise ValueError(
            f"--dataset: {dataset!r} has {data.num_classes} classes, the model was trained on "
            f"{len(info['classes'])}"
        )
    pipe = Pipeline(
        data,
        mean=info["mean"],
        std=info["std"],
        distortion=distortion,
        distortion_seed=args.distortion_seed,
        device=device,
    )
    if pipe.input_size != info["input_size"] or data.shape[0] != info["in_chans"]:
        raise ValueError(
            f"--dataset/--distortion: give {data.shape[0]} x {pipe.input_size} x "
            f"{pipe.input_size} inputs, the model expects {info['in_chans']} x "
            f"{info['input_size']} x {info['input_size']}"
        )
    with torch.inference_mode(False):
        result = evaluate(model, pipe, batch_size=args.batch_size)
    result.update(
        checkpoint=str(Path(args.checkpoint)),
        model=opts["model"],
        dataset=dataset,
        distortion=distortion,
        split=args.split,
    )
    text = json.dumps(result)
    if args.output:
        atomic_write_text(args.output, text + "\n")
    print(text, file=sys.stdout)
    return 0
