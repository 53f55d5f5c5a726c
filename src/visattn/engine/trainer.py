"""Training and evaluation loop with exact resume, signal-safe stops and DDP.

Minimises the cross-entropy L = -(1/B) sum_b log softmax(f(x_b))_{y_b} with SGD (momentum) or
AdamW under the schedule of ``options.lr_at``. What makes a resumed run equal, bit for bit on
CPU, to one never interrupted:

- the data of optimiser step (epoch e, step s) is a function of (seed, e, s): the epoch order is
  ``epoch_permutation(n, seed, e)``, distortions are fixed per (seed, image index), augmentation
  and the global torch RNG (dropout, ...) are re-seeded from (seed, e, s, rank) before each step;
- the learning rate is a function of the global step;
- a checkpoint holds the model (parameters and buffers), the optimiser state, the counters and
  the running sums, and is written atomically (see ``checkpoint.py``), every
  ``checkpoint_every`` steps and at each epoch end.

SIGINT / SIGTERM set a flag; the loop finishes the current step, writes a checkpoint and returns
``{"interrupted": signal number}`` (the CLI exits with 128 + signal). A second signal stops at once.

With ``WORLD_SIZE > 1`` (torchrun) the model is wrapped in DistributedDataParallel; process r
takes rows [r B/W, (r + 1) B/W) of each global batch of B, and DDP averages the gradients, so
W processes follow the same trajectory as one process with batch B (exactly so for models
without batch statistics; BatchNorm sees B/W images per process). Only rank 0 writes files.

Tests: ``tests/engine/test_engine_trainer.py``, ``tests/engine/test_engine_resume.py``,
``tests/engine/test_engine_distributed.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..data.datasets import ImageSet, load_dataset
from . import distributed as vdist
from .checkpoint import (
    CHECKPOINT_FORMAT,
    MODEL_FORMAT,
    CheckpointError,
    atomic_write_text,
    read_safetensors,
    write_safetensors,
)
from .options import TrainOptions, lr_at, validate_options
from .pipeline import Pipeline, channel_stats, derive_seed, epoch_permutation
from .syncbn import convert_sync_batchnorm

__all__ = [
    "RESUMABLE_OVERRIDES",
    "TEST_DISTORTION_SEED",
    "build_model",
    "count_flops",
    "count_params",
    "default_out",
    "evaluate",
    "latest_checkpoint",
    "load_model",
    "train",
]

#: Seed of the test-split distortions: fixed, so every model meets the same distorted test set.
TEST_DISTORTION_SEED = 0
#: Options that ``--resume`` may change; any other option must match the run's.
RESUMABLE_OVERRIDES = ("epochs", "quiet", "checkpoint_every", "keep_checkpoints", "device")


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


def default_out(opts: TrainOptions) -> Path:
    name = opts.dataset.split(":", 1)[0]
    parts = [opts.model, name] + ([opts.distortion] if opts.distortion != "none" else [])
    return Path("runs") / "-".join(parts)


def _resolve_device(spec: str, info: vdist.DistInfo | None = None) -> torch.device:
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    if spec.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device: {spec!r} requested but CUDA is not available")
        if spec == "cuda" and info is not None and info.enabled:
            spec = f"cuda:{info.local_rank}"
    return torch.device(spec)


# ----------------------------------------------------------------------------- models


def build_model(
    name: str,
    *,
    num_classes: int,
    in_chans: int,
    input_size: int,
    attention: str | None = None,
    model_args: dict[str, Any] | None = None,
) -> nn.Module:
    """``visattn.models.create_model`` with the data's classes, channels and input size.

    ``input_size`` is passed to models that take it (the STN-paper nets) and dropped for the
    others (the ResNets are size-agnostic).
    """
    try:
        from ..models import create_model, list_models
    except ImportError as exc:
        raise ValueError(f"--model: the model zoo visattn.models is unavailable ({exc})") from None
    if name not in list_models():
        raise ValueError(f"--model: expected one of {', '.join(list_models())}, got {name!r}")
    kw = dict(model_args or {})
    common = {"num_classes": num_classes, "in_chans": in_chans, "attention": attention}
    if "input_size" not in kw:
        try:
            return create_model(name, input_size=input_size, **common, **kw)
        except TypeError as exc:
            if "input_size" not in str(exc):
                raise
    return create_model(name, **common, **kw)


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, shape: tuple[int, ...], device: torch.device) -> int | None:
    """FLOPs of one forward pass of one image (``torch.utils.flop_counter``; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *shape, device=device))
        return int(counter.get_total_flops())
    except Exception:  # a model the counter cannot trace: report None, do not fail the run
        return None
    finally:
        model.train(was_training)


# ----------------------------------------------------------------------------- data


def _load_data(opts: TrainOptions) -> tuple[ImageSet, ImageSet | None, ImageSet]:
    full = load_dataset(opts.dataset, "train", data_root=opts.data_root, image_size=opts.image_size)
    val = None
    if opts.val_subset:
        if opts.val_subset >= len(full):
            raise ValueError(
                f"--val-subset: expected fewer than the {len(full)} training images, "
                f"got {opts.val_subset}"
            )
        val = full.subset(opts.val_subset, start=len(full) - opts.val_subset)
        full = full.subset(len(full) - opts.val_subset)
    train_set = full.subset(opts.train_subset)
    test = load_dataset(opts.dataset, "test", data_root=opts.data_root, image_size=opts.image_size)
    return train_set, val, test.subset(opts.test_subset)


# ----------------------------------------------------------------------------- checkpoints


def latest_checkpoint(folder: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``folder`` (temporary files are ignored)."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = sorted(folder.glob("step-*.safetensors"))
    return found[-1] if found else None


def _optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = optimizer.state_dict()
    tensors, scalars = {}, {}
    for pid, state in sd["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optimizer.{pid}.{key}"] = value
            else:
                scalars[f"{pid}.{key}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def _optimizer_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], saved: dict
) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("optimizer."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = value
    for name, value in saved["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})


class _StopFlag:
    """SIGINT / SIGTERM handler: the first signal asks for a clean stop, a second one aborts."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, frame) -> None:
        if self.signum:
            signal.signal(signum, signal.SIG_DFL)
            raise KeyboardInterrupt
        self.signum = signum

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    model: nn.Module,
    pipe: Pipeline,
    *,
    batch_size: int = 256,
    info: vdist.DistInfo | None = None,
    amp_dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Mean cross-entropy, accuracy and images/s of ``model`` on all images of ``pipe``.

    In a distributed run each process evaluates every W-th image and the sums are all-reduced.
    """
    info = info or vdist.DistInfo()
    was_training = model.training
    model.eval()
    indices = torch.arange(len(pipe))[info.rank :: info.world_size]
    loss_sum = correct = count = 0.0
    start = time.perf_counter()
    autocast = (
        torch.autocast(pipe.device.type, dtype=amp_dtype)
        if amp_dtype is not None
        else contextlib.nullcontext()
    )
    with torch.no_grad(), autocast:
        for begin in range(0, len(indices), batch_size):
            x, y = pipe.batch(indices[begin : begin + batch_size])
            logits = model(x).float()
            loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(1) == y).sum())
            count += len(y)
    elapsed = time.perf_counter() - start
    loss_sum, correct, count = vdist.all_reduce_sum(info, [loss_sum, correct, count], pipe.device)
    model.train(was_training)
    return {
        "loss": loss_sum / max(count, 1),
        "accuracy": correct / max(count, 1),
        "images": int(count),
        "images_per_s": count / elapsed if elapsed > 0 else float("nan"),
    }


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    lines = "".join(json.dumps(_json_safe(r)) + "\n" for r in history)
    atomic_write_text(out / "metrics.jsonl", lines)
    keys: list[str] = []
    for record in history:
        keys += [k for k in record if k not in keys]
    rows = [",".join(keys)]
    for record in history:
        rows.append(",".join("" if record.get(k) is None else str(record.get(k)) for k in keys))
    atomic_write_text(out / "metrics.csv", "\n".join(rows) + "\n")


# ----------------------------------------------------------------------------- loading


def load_model(
    path: str | os.PathLike, *, device: torch.device | str = "cpu"
) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a trained model from a run folder, ``model.safetensors`` or a checkpoint file.

    Returns:
        (model in eval mode on ``device``, info) where info holds ``options`` (the training
        options), ``classes``, ``mean`` / ``std`` (input normalisation), ``in_chans``,
        ``input_size`` and ``distortion``.

    Raises:
        CheckpointError: unreadable, corrupt, truncated, foreign or pickled file.
    """
    path = Path(path)
    if path.is_dir():
        candidate = path / "model.safetensors"
        if not candidate.is_file():
            candidate = latest_checkpoint(path / "checkpoints") or candidate
        path = candidate
    tensors, state, fmt = read_safetensors(path, expect=(MODEL_FORMAT, CHECKPOINT_FORMAT))
    try:
        opts = TrainOptions.from_dict(state["options"])
        data = state["data"]
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: incomplete visattn metadata ({exc})") from None
    if fmt == CHECKPOINT_FORMAT:
        tensors = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    model = build_model(
        opts.model,
        num_classes=len(data["classes"]),
        in_chans=data["in_chans"],
        input_size=data["input_size"],
        attention=opts.attention,
        model_args=opts.model_args,
    )
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit model {opts.model!r}: {first}") from None
    info = dict(data)
    info["options"] = opts.to_dict()
    return model.to(device).eval(), info


# ----------------------------------------------------------------------------- training


def _prepare_run(opts: TrainOptions, explicit: set[str]) -> tuple[TrainOptions, Path, Path | None]:
    """Resolve the run folder and, for ``--resume``, the saved options and latest checkpoint."""
    out = Path(opts.out) if opts.out else default_out(opts)
    if not opts.resume:
        if out.exists() and (not out.is_dir() or any(out.iterdir())):
            raise ValueError(
                f"--out: {out} already exists and is not empty; pass --resume to continue that "
                "run or choose another --out"
            )
        return opts, out, None
    options_file = out / "options.json"
    if not options_file.is_file():
        raise ValueError(f"--resume: {out} holds no run (no options.json); nothing to resume")
    try:
        saved = json.loads(options_file.read_text())
        saved_opts = TrainOptions.from_dict(saved)
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"--resume: cannot read {options_file} ({exc})") from None
    merged = saved_opts.to_dict()
    for name in explicit:
        if name in ("resume", "out", "config"):
            continue
        value = getattr(opts, name)
        if name in RESUMABLE_OVERRIDES:
            merged[name] = value
        elif value != merged.get(name):
            raise ValueError(
                f"--{name.replace('_', '-')}: the run in {out} was started with "
                f"{merged.get(name)!r}, got {value!r} (a resumed run keeps its options; only "
                f"{', '.join('--' + n.replace('_', '-') for n in RESUMABLE_OVERRIDES)} may change)"
            )
    merged.update(resume=True, out=str(out))
    # killed before its first checkpoint: the run starts again from step 0 with its options,
    # which gives the same result as a run never interrupted
    ckpt = latest_checkpoint(out / "checkpoints")
    return validate_options(TrainOptions.from_dict(merged)), out, ckpt


def train(opts: TrainOptions, *, explicit: set[str] | None = None) -> dict[str, Any]:
    """Run (or resume) a training run; returns the final metrics (see docs/training.md).

    ``explicit`` names the options the user set (used by ``--resume`` to detect conflicts).
    """
    validate_options(opts)
    # absolute data paths, so that `visattn eval` finds the data from any working directory
    if opts.dataset.startswith("folder:"):
        folder = Path(opts.dataset[len("folder:") :]).expanduser().resolve()
        opts = dataclasses.replace(opts, dataset=f"folder:{folder}")
    if opts.data_root:
        opts = dataclasses.replace(opts, data_root=str(Path(opts.data_root).expanduser().resolve()))
    opts, out, ckpt_path = _prepare_run(opts, explicit or set())
    resume_state: dict[str, Any] | None = None
    resume_tensors: dict[str, torch.Tensor] = {}
    if ckpt_path is not None:
        resume_tensors, resume_state, _ = read_safetensors(ckpt_path, expect=CHECKPOINT_FORMAT)

    device_kind = "cuda" if _resolve_device(opts.device).type == "cuda" else "cpu"
    info = vdist.setup(device_kind)
    created_out = False
    try:
        device = _resolve_device(opts.device, info)
        train_set, val_set, test_set = _load_data(opts)
        if opts.batch_size % info.world_size:
            raise ValueError(
                f"--batch-size: expected a multiple of the {info.world_size} processes, "
                f"got {opts.batch_size}"
            )
        steps_per_epoch = len(train_set) // opts.batch_size
        if steps_per_epoch == 0:
            raise ValueError(
                f"--batch-size: expected at most the {len(train_set)} training images, "
                f"got {opts.batch_size}"
            )
        mean, std = channel_stats(train_set.images)
        common = {"mean": mean, "std": std, "device": device, "channels_last": opts.channels_last}
        train_pipe = Pipeline(
            train_set,
            distortion=opts.distortion,
            distortion_seed=derive_seed(opts.seed, "distort", "train"),
            augment=opts.augment,
            **common,
        )
        val_pipe = (
            Pipeline(
                val_set,
                distortion=opts.distortion,
                distortion_seed=derive_seed(opts.seed, "distort", "val"),
                **common,
            )
            if val_set is not None
            else None
        )
        test_pipe = Pipeline(
            test_set, distortion=opts.distortion, distortion_seed=TEST_DISTORTION_SEED, **common
        )
        input_size = train_pipe.input_size
        in_chans = train_set.shape[0]
        data_info = {
            "classes": train_set.classes,
            "in_chans": in_chans,
            "input_size": input_size,
            "mean": mean,
            "std": std,
            "dataset": opts.dataset,
            "distortion": opts.distortion,
        }
        torch.manual_seed(derive_seed(opts.seed, "init"))
        model = build_model(
            opts.model,
            num_classes=train_set.num_classes,
            in_chans=in_chans,
            input_size=input_size,
            attention=opts.attention,
            model_args=opts.model_args,
        ).to(device)
        if opts.channels_last:
            model = model.to(memory_format=torch.channels_last)
        params = count_params(model)
        flops = count_flops(model, (in_chans, input_size, input_size), device)

        if opts.optimizer == "sgd":
            optimizer: torch.optim.Optimizer = torch.optim.SGD(
                model.parameters(),
                lr=opts.lr,
                momentum=opts.momentum,
                weight_decay=opts.weight_decay,
            )
        else:
            optimizer = torch.optim.AdamW(
                model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay
            )
        amp_dtype = None
        if opts.amp:
            bf16 = device.type == "cpu" or torch.cuda.is_bf16_supported()
            amp_dtype = torch.bfloat16 if bf16 else torch.float16
        scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

        counters = {"epoch": 0, "step": 0, "global_step": 0}
        sums = {"loss": 0.0, "correct": 0.0, "count": 0.0}
        history: list[dict[str, Any]] = []
        elapsed_before = 0.0
        if resume_state is not None:
            try:
                model.load_state_dict(
                    {k[6:]: v for k, v in resume_tensors.items() if k.startswith("model.")},
                    strict=True,
                )
                _optimizer_from_tensors(optimizer, resume_tensors, resume_state["optimizer"])
                counters = dict(resume_state["counters"])
                history = list(resume_state["history"])
                elapsed_before = float(resume_state.get("elapsed_s", 0.0))
                if info.is_main:
                    sums = dict(resume_state["sums"])
                if resume_state.get("scaler"):
                    scaler.load_state_dict(resume_state["scaler"])
                if "rng.torch" in resume_tensors:
                    torch.set_rng_state(resume_tensors["rng.torch"])
            except (KeyError, RuntimeError, ValueError, TypeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise CheckpointError(f"{ckpt_path}: does not fit this run ({first})") from None
        total_steps = steps_per_epoch * opts.epochs
        if counters["global_step"] > total_steps:
            raise ValueError(
                f"--epochs: the run in {out} already made {counters['global_step']} steps, more "
                f"than {opts.epochs} epochs of {steps_per_epoch} steps"
            )

        run_model: nn.Module = model
        if info.enabled and opts.sync_bn:
            model = convert_sync_batchnorm(model, device.type)  # same parameters and buffers
            run_model = model
        if info.enabled:
            run_model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if opts.compile:
            run_model = torch.compile(run_model)

        # Everything is valid: create the run folder.
        if info.is_main:
            if not out.exists():
                created_out = True
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "options.json", json.dumps(opts.to_dict(), indent=2) + "\n")
            if history:
                _write_metrics(out, history)
        quiet = opts.quiet or not info.is_main
        show_bar = not quiet and sys.stderr.isatty()
        run_start = time.perf_counter()

        def save(epoch: int, step: int) -> None:
            global_sums = vdist.all_reduce_sum(
                info, [sums["loss"], sums["correct"], sums["count"]], device
            )
            if not info.is_main:
                return
            opt_tensors, opt_state = _optimizer_to_tensors(optimizer)
            tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
            tensors.update(opt_tensors)
            tensors["rng.torch"] = torch.get_rng_state()
            if torch.cuda.is_available() and device.type == "cuda":
                tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
            state = {
                "counters": {"epoch": epoch, "step": step, "global_step": counters["global_step"]},
                "sums": dict(zip(("loss", "correct", "count"), global_sums, strict=True)),
                "history": history,
                "optimizer": opt_state,
                "scaler": scaler.state_dict() if scaler.is_enabled() else None,
                "schedule": {"name": opts.schedule, "lr": opts.lr, "total_steps": total_steps},
                "elapsed_s": elapsed_before + time.perf_counter() - run_start,
                "options": opts.to_dict(),
                "data": data_info,
            }
            folder = out / "checkpoints"
            write_safetensors(
                folder / f"step-{counters['global_step']:08d}.safetensors",
                tensors,
                CHECKPOINT_FORMAT,
                state,
            )
            for old in sorted(folder.glob("step-*.safetensors"))[: -opts.keep_checkpoints]:
                old.unlink(missing_ok=True)

        from tqdm.auto import tqdm

        local_batch = opts.batch_size // info.world_size
        with _StopFlag() as stop:
            for epoch in range(counters["epoch"], opts.epochs):
                start_step = counters["step"] if epoch == counters["epoch"] else 0
                if start_step == 0:
                    sums = {"loss": 0.0, "correct": 0.0, "count": 0.0}
                order = epoch_permutation(len(train_set), opts.seed, epoch)
                run_model.train()
                bar = tqdm(
                    total=steps_per_epoch,
                    initial=start_step,
                    desc=f"epoch {epoch + 1}/{opts.epochs}",
                    disable=not show_bar,
                    leave=False,
                    file=sys.stderr,
                    dynamic_ncols=True,
                )
                epoch_start, data_time, seen = time.perf_counter(), 0.0, 0
                for step in range(start_step, steps_per_epoch):
                    first = step * opts.batch_size + info.rank * local_batch
                    idx = order[first : first + local_batch]
                    t_data = time.perf_counter()
                    x, y = train_pipe.batch(
                        idx, augment_seed=derive_seed(opts.seed, "augment", epoch, step)
                    )
                    data_time += time.perf_counter() - t_data
                    torch.manual_seed(derive_seed(opts.seed, "step", epoch, step, info.rank))
                    lr = lr_at(opts.schedule, opts.lr, counters["global_step"], total_steps)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    autocast = (
                        torch.autocast(device.type, dtype=amp_dtype)
                        if amp_dtype is not None
                        else contextlib.nullcontext()
                    )
                    with autocast:
                        logits = run_model(x)
                    loss = F.cross_entropy(logits.float(), y)
                    optimizer.zero_grad(set_to_none=True)
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                    counters["global_step"] += 1
                    loss_value = float(loss.detach())
                    if not math.isfinite(loss_value):
                        raise FloatingPointError(
                            f"training diverged: loss is {loss_value} at epoch {epoch + 1}, "
                            f"step {step + 1} (lower --lr?)"
                        )
                    sums["loss"] += loss_value * len(y)
                    sums["correct"] += float((logits.detach().argmax(1) == y).sum())
                    sums["count"] += len(y)
                    seen += len(y)
                    if show_bar:
                        rate = seen * info.world_size / (time.perf_counter() - epoch_start)
                        bar.set_postfix(
                            loss=f"{sums['loss'] / sums['count']:.4f}",
                            acc=f"{sums['correct'] / sums['count']:.4f}",
                            img_s=f"{rate:.0f}",
                            refresh=False,
                        )
                        bar.update(1)
                    signum = stop.signum
                    if info.enabled:
                        signum = int(vdist.all_reduce_sum(info, [float(signum)], device)[0] > 0) * (
                            signum or signal.SIGTERM
                        )
                    periodic = (
                        opts.checkpoint_every
                        and counters["global_step"] % opts.checkpoint_every == 0
                        and step + 1 < steps_per_epoch
                    )
                    if signum or periodic:
                        save(epoch, step + 1)
                    if signum:
                        bar.close()
                        name = signal.Signals(signum).name
                        _log(
                            quiet,
                            f"{name}: checkpoint saved at step {counters['global_step']} in "
                            f"{out / 'checkpoints'}; continue with --resume --out {out}",
                        )
                        return {"interrupted": signum, "out": str(out)}
                if show_bar:
                    bar.refresh()  # the final postfix, also for epochs shorter than mininterval
                bar.close()
                epoch_time = time.perf_counter() - epoch_start
                g_loss, g_correct, g_count = vdist.all_reduce_sum(
                    info, [sums["loss"], sums["correct"], sums["count"]], device
                )
                record: dict[str, Any] = {
                    "epoch": epoch + 1,
                    "step": counters["global_step"],
                    "lr": lr_at(opts.schedule, opts.lr, counters["global_step"] - 1, total_steps),
                    "train_loss": g_loss / max(g_count, 1),
                    "train_accuracy": g_correct / max(g_count, 1),
                    "train_images_per_s": seen * info.world_size / epoch_time if seen else None,
                    "data_images_per_s": seen / data_time if data_time > 0 else None,
                }
                if val_pipe is not None:
                    v = evaluate(
                        model, val_pipe, batch_size=local_batch, info=info, amp_dtype=amp_dtype
                    )
                    record.update(val_loss=v["loss"], val_accuracy=v["accuracy"])
                record["time_s"] = epoch_time
                history.append(record)
                counters.update(epoch=epoch + 1, step=0)
                sums = {"loss": 0.0, "correct": 0.0, "count": 0.0}
                save(epoch + 1, 0)
                if info.is_main:
                    _write_metrics(out, history)
                _log(
                    quiet,
                    f"epoch {epoch + 1}/{opts.epochs}: loss {record['train_loss']:.4f} "
                    f"acc {record['train_accuracy']:.4f}"
                    + (f" val_acc {record['val_accuracy']:.4f}" if val_pipe is not None else "")
                    + (
                        f" {record['train_images_per_s']:.0f} img/s"
                        if record["train_images_per_s"]
                        else ""
                    ),
                )

        # the unwrapped model: DDP's forward would broadcast buffers, a collective that hangs when
        # the processes' shards have different numbers of batches
        test = evaluate(
            model, test_pipe, batch_size=max(local_batch, 256), info=info, amp_dtype=amp_dtype
        )
        rates = [r["train_images_per_s"] for r in history if r.get("train_images_per_s")]
        data_rates = [r["data_images_per_s"] for r in history if r.get("data_images_per_s")]
        final = {
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "test_images": test["images"],
            "params": params,
            "flops_per_image": flops,
            "train_images_per_s": rates[-1] if rates else None,
            "data_images_per_s": data_rates[-1] if data_rates else None,
            "eval_images_per_s": test["images_per_s"],
            "epochs": opts.epochs,
            "steps": counters["global_step"],
            "model": opts.model,
            "attention": opts.attention,
            "dataset": opts.dataset,
            "distortion": opts.distortion,
            "world_size": info.world_size,
            "device": str(device),
            "elapsed_s": elapsed_before + time.perf_counter() - run_start,
        }
        if info.is_main:
            write_safetensors(
                out / "model.safetensors",
                model.state_dict(),
                MODEL_FORMAT,
                {"options": opts.to_dict(), "data": data_info},
            )
            atomic_write_text(out / "metrics.json", json.dumps(_json_safe(final), indent=2) + "\n")
        _log(
            quiet,
            f"test accuracy {test['accuracy']:.4f} on {test['images']} images; results in {out}",
        )
        final["out"] = str(out)
        return final
    except BaseException:
        if created_out and info.is_main and latest_checkpoint(out / "checkpoints") is None:
            shutil.rmtree(out, ignore_errors=True)
        raise
    finally:
        vdist.cleanup(info)
