"""``visattn train``: train a model (STN arXiv:1506.02025, SE arXiv:1709.01507, CBAM arXiv:1807.06521).

Options come from ``visattn.engine.TrainOptions``: defaults < ``--config FILE`` < command line.
The run folder (``--out``) receives ``options.json``, ``checkpoints/``, ``metrics.jsonl``,
``metrics.csv``, ``model.safetensors`` and ``metrics.json``; see ``docs/training.md``.

Tests: ``tests/cli/test_cli_train.py``.
"""

from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "run"]

EPILOG = """examples:
  visattn train --model stcnn --distortion rts --epochs 2
  visattn train --model resnet20_cifar --attention cbam --dataset folder:./my_images --augment
  visattn train --resume --out runs/stcnn-fashion-mnist-small-rts
  torchrun --nproc-per-node 2 -m visattn train --model cnn --batch-size 256
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    from ..cli import add_command, add_dataclass_options
    from ..data.distortions import DISTORTIONS
    from ..engine.options import OPTIMIZERS, SCHEDULES, TrainOptions, option_help

    description = (__doc__ or "").split("\n\n")[0].replace("``", "")
    parser = add_command(subparsers, "train", "train a model", description, epilog=EPILOG)
    parser.add_argument("--config", metavar="FILE", help="TOML or YAML file with these options")
    add_dataclass_options(
        parser,
        TrainOptions,
        option_help,
        choices={"optimizer": OPTIMIZERS, "schedule": SCHEDULES, "distortion": DISTORTIONS},
    )
    return parser


def run(args: argparse.Namespace) -> int:
    from ..cli import load_config, resolve_options
    from ..engine import TrainOptions, train

    config = load_config(args.config) if args.config else None
    opts, explicit = resolve_options(TrainOptions, args, config)
    result = train(opts, explicit=explicit)
    if "interrupted" in result:
        return 128 + int(result["interrupted"])
    if not opts.quiet:
        summary = {k: result[k] for k in ("test_accuracy", "params", "out") if k in result}
        print(json.dumps(summary), file=sys.stdout)
    return 0
