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

The loop is :class:`Trainer`, one method per step; evaluation is in ``evaluation.py``.

Tests: ``tests/engine/test_engine_trainer.py``, ``tests/engine/test_engine_resume.py``,
``tests/engine/test_engine_distributed.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import signal
import sys
import threading
import time
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
    optimizer_from_tensors,
    optimizer_to_tensors,
    read_safetensors,
    write_safetensors,
)
from .distributed import resolve_device
from .evaluation import amp_context, evaluate
from .model_io import build_model, count_flops, count_params, load_model
from .options import TrainOptions, lr_at, validate_options
from .pipeline import Pipeline, channel_stats, derive_seed, epoch_permutation
from .runs import (
    RESUMABLE_OVERRIDES,
    absolute_data_paths,
    default_out,
    json_safe,
    latest_checkpoint,
    prepare_run,
    write_metrics,
)
from .syncbn import convert_sync_batchnorm

__all__ = [
    "RESUMABLE_OVERRIDES",
    "TEST_DISTORTION_SEED",
    "Trainer",
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


def _log(quiet: bool, message: str) -> None:
    if not quiet:
        print(message, file=sys.stderr, flush=True)


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


@dataclasses.dataclass
class _EpochClock:
    """Per-epoch timing: start, seconds spent preparing batches, images seen by this process."""

    start: float
    data_time: float = 0.0
    seen: int = 0


def _zero_sums() -> dict[str, float]:
    return {"loss": 0.0, "correct": 0.0, "count": 0.0}


class Trainer:
    """One training run, step by step; :func:`train` is ``Trainer(opts, explicit=...).run()``.

    The steps, in the order :meth:`run` calls them:

    1. ``__init__``: check the options, resolve the run folder and read the checkpoint to resume;
    2. :meth:`set_up` (after :meth:`run` joined the process group): load the data, build the
       pipelines, the model, the optimiser and the AMP scaler;
    3. :meth:`restore`: counters, running sums, history, optimiser and RNG state of the checkpoint;
    4. :meth:`wrap`: SyncBatchNorm, DistributedDataParallel and ``torch.compile``;
    5. :meth:`create_folder`: the run folder and ``options.json`` (only now, when all is valid);
    6. :meth:`train_epoch` per epoch (each :meth:`train_step`; :meth:`save` periodically, on a
       signal and in :meth:`end_epoch`, which also evaluates the validation split);
    7. :meth:`finish`: test evaluation, ``model.safetensors`` and ``metrics.json``.
    """

    def __init__(self, opts: TrainOptions, *, explicit: set[str] | None = None) -> None:
        validate_options(opts)
        self.opts, self.out, self.ckpt_path = prepare_run(
            absolute_data_paths(opts), explicit or set()
        )
        self.resume_tensors: dict[str, torch.Tensor] = {}
        self.resume_state: dict[str, Any] | None = None
        if self.ckpt_path is not None:
            self.resume_tensors, self.resume_state, _ = read_safetensors(
                self.ckpt_path, expect=CHECKPOINT_FORMAT
            )
        self.info = vdist.DistInfo()
        self.created_out = False
        self.counters = {"epoch": 0, "step": 0, "global_step": 0}
        self.sums = _zero_sums()
        self.history: list[dict[str, Any]] = []
        self.elapsed_before = 0.0
        self.run_start = 0.0

    # -- the whole run ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Train (or resume) to the last epoch; returns the final metrics, or
        ``{"interrupted": signal number, "out": folder}`` after a SIGINT / SIGTERM."""
        device_kind = "cuda" if resolve_device(self.opts.device).type == "cuda" else "cpu"
        self.info = vdist.setup(device_kind)
        try:
            self.set_up()
            self.restore()
            self.wrap()
            self.create_folder()
            with _StopFlag() as stop:
                for epoch in range(self.counters["epoch"], self.opts.epochs):
                    signum = self.train_epoch(epoch, stop)
                    if signum:
                        return {"interrupted": signum, "out": str(self.out)}
            return self.finish()
        except BaseException:
            if (
                self.created_out
                and self.info.is_main
                and latest_checkpoint(self.out / "checkpoints") is None
            ):
                shutil.rmtree(self.out, ignore_errors=True)
            raise
        finally:
            vdist.cleanup(self.info)

    # -- set up ----------------------------------------------------------------------------
    def set_up(self) -> None:
        """Device, data and pipelines, then model, optimiser and AMP (see :meth:`_set_up_model`)."""
        opts, info = self.opts, self.info
        self.device = device = resolve_device(opts.device, info)
        train_set, val_set, test_set = _load_data(opts)
        if opts.batch_size % info.world_size:
            raise ValueError(
                f"--batch-size: expected a multiple of the {info.world_size} processes, "
                f"got {opts.batch_size}"
            )
        self.steps_per_epoch = len(train_set) // opts.batch_size
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"--batch-size: expected at most the {len(train_set)} training images, "
                f"got {opts.batch_size}"
            )
        self.local_batch = opts.batch_size // info.world_size
        self.total_steps = self.steps_per_epoch * opts.epochs
        mean, std = channel_stats(train_set.images)
        common = {"mean": mean, "std": std, "device": device, "channels_last": opts.channels_last}
        self.train_set = train_set
        self.train_pipe = Pipeline(
            train_set,
            distortion=opts.distortion,
            distortion_seed=derive_seed(opts.seed, "distort", "train"),
            augment=opts.augment,
            **common,
        )
        self.val_pipe = (
            Pipeline(
                val_set,
                distortion=opts.distortion,
                distortion_seed=derive_seed(opts.seed, "distort", "val"),
                **common,
            )
            if val_set is not None
            else None
        )
        self.test_pipe = Pipeline(
            test_set, distortion=opts.distortion, distortion_seed=TEST_DISTORTION_SEED, **common
        )
        self.data_info = {
            "classes": train_set.classes,
            "in_chans": train_set.shape[0],
            "input_size": self.train_pipe.input_size,
            "mean": mean,
            "std": std,
            "dataset": opts.dataset,
            "distortion": opts.distortion,
        }
        self._set_up_model(train_set.num_classes)

    def _set_up_model(self, num_classes: int) -> None:
        opts, device = self.opts, self.device
        in_chans, input_size = self.data_info["in_chans"], self.data_info["input_size"]
        torch.manual_seed(derive_seed(opts.seed, "init"))
        model = build_model(
            opts.model,
            num_classes=num_classes,
            in_chans=in_chans,
            input_size=input_size,
            attention=opts.attention,
            model_args=opts.model_args,
        ).to(device)
        if opts.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model: nn.Module = model
        self.params = count_params(model)
        self.flops = count_flops(model, (in_chans, input_size, input_size), device)
        if opts.optimizer == "sgd":
            self.optimizer: torch.optim.Optimizer = torch.optim.SGD(
                model.parameters(),
                lr=opts.lr,
                momentum=opts.momentum,
                weight_decay=opts.weight_decay,
            )
        else:
            self.optimizer = torch.optim.AdamW(
                model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay
            )
        self.amp_dtype: torch.dtype | None = None
        if opts.amp:
            bf16 = device.type == "cpu" or torch.cuda.is_bf16_supported()
            self.amp_dtype = torch.bfloat16 if bf16 else torch.float16
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)

    # -- restore ---------------------------------------------------------------------------
    def restore(self) -> None:
        """Load the checkpoint being resumed (model, optimiser, counters, sums, history, scaler,
        RNG); then check that the run has not made more steps than ``--epochs`` allow."""
        state, tensors = self.resume_state, self.resume_tensors
        if state is not None:
            try:
                self.model.load_state_dict(
                    {k[6:]: v for k, v in tensors.items() if k.startswith("model.")},
                    strict=True,
                )
                optimizer_from_tensors(self.optimizer, tensors, state["optimizer"])
                self.counters = dict(state["counters"])
                self.history = list(state["history"])
                self.elapsed_before = float(state.get("elapsed_s", 0.0))
                if self.info.is_main:
                    self.sums = dict(state["sums"])
                if state.get("scaler"):
                    self.scaler.load_state_dict(state["scaler"])
                if "rng.torch" in tensors:
                    torch.set_rng_state(tensors["rng.torch"])
            except (KeyError, RuntimeError, ValueError, TypeError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
                raise CheckpointError(
                    f"{self.ckpt_path}: does not fit this run ({first})"
                ) from None
        if self.counters["global_step"] > self.total_steps:
            raise ValueError(
                f"--epochs: the run in {self.out} already made {self.counters['global_step']} "
                f"steps, more than {self.opts.epochs} epochs of {self.steps_per_epoch} steps"
            )

    # -- wrap ------------------------------------------------------------------------------
    def wrap(self) -> None:
        """``run_model``: the model as the training steps call it (SyncBN, DDP, compile)."""
        info, device = self.info, self.device
        run_model: nn.Module = self.model
        if info.enabled and self.opts.sync_bn:
            # same parameters and buffers; checkpoints keep the converted model's state dict
            self.model = convert_sync_batchnorm(self.model, device.type)
            run_model = self.model
        if info.enabled:
            run_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None
            )
        if self.opts.compile:
            run_model = torch.compile(run_model)
        self.run_model = run_model

    # -- the run folder --------------------------------------------------------------------
    def create_folder(self) -> None:
        """Everything is valid: create the run folder (rank 0) and start the clock."""
        out = self.out
        if self.info.is_main:
            if not out.exists():
                self.created_out = True
            (out / "checkpoints").mkdir(parents=True, exist_ok=True)
            atomic_write_text(
                out / "options.json", json.dumps(self.opts.to_dict(), indent=2) + "\n"
            )
            if self.history:
                write_metrics(out, self.history)
        self.quiet = self.opts.quiet or not self.info.is_main
        self.show_bar = not self.quiet and sys.stderr.isatty()
        self.run_start = time.perf_counter()

    def _elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.run_start

    def _global_sums(self) -> list[float]:
        s = self.sums
        return vdist.all_reduce_sum(self.info, [s["loss"], s["correct"], s["count"]], self.device)

    def save(self, epoch: int, step: int) -> None:
        """Write the checkpoint of (epoch, step) (rank 0; every rank joins the sums' all-reduce)
        and delete all but the newest ``keep_checkpoints``."""
        global_sums = self._global_sums()
        if not self.info.is_main:
            return
        opts, counters, device = self.opts, self.counters, self.device
        opt_tensors, opt_state = optimizer_to_tensors(self.optimizer)
        tensors = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        tensors.update(opt_tensors)
        tensors["rng.torch"] = torch.get_rng_state()
        if torch.cuda.is_available() and device.type == "cuda":
            tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
        state = {
            "counters": {"epoch": epoch, "step": step, "global_step": counters["global_step"]},
            "sums": dict(zip(("loss", "correct", "count"), global_sums, strict=True)),
            "history": self.history,
            "optimizer": opt_state,
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "schedule": {"name": opts.schedule, "lr": opts.lr, "total_steps": self.total_steps},
            "elapsed_s": self._elapsed(),
            "options": opts.to_dict(),
            "data": self.data_info,
        }
        folder = self.out / "checkpoints"
        write_safetensors(
            folder / f"step-{counters['global_step']:08d}.safetensors",
            tensors,
            CHECKPOINT_FORMAT,
            state,
        )
        for old in sorted(folder.glob("step-*.safetensors"))[: -opts.keep_checkpoints]:
            old.unlink(missing_ok=True)

    # -- training --------------------------------------------------------------------------
    def train_epoch(self, epoch: int, stop: _StopFlag) -> int:
        """The steps of ``epoch`` (from the saved step when resuming), then :meth:`end_epoch`.

        Returns 0, or the signal number when a SIGINT / SIGTERM asked to stop (in any process):
        the checkpoint of the step reached is then written and the epoch left unfinished.
        """
        from tqdm.auto import tqdm

        opts, counters, info = self.opts, self.counters, self.info
        start_step = counters["step"] if epoch == counters["epoch"] else 0
        if start_step == 0:
            self.sums = _zero_sums()
        order = epoch_permutation(len(self.train_set), opts.seed, epoch)
        self.run_model.train()
        bar = tqdm(
            total=self.steps_per_epoch,
            initial=start_step,
            desc=f"epoch {epoch + 1}/{opts.epochs}",
            disable=not self.show_bar,
            leave=False,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        clock = _EpochClock(time.perf_counter())
        for step in range(start_step, self.steps_per_epoch):
            self.train_step(epoch, step, order, clock)
            if self.show_bar:
                sums = self.sums
                rate = clock.seen * info.world_size / (time.perf_counter() - clock.start)
                bar.set_postfix(
                    loss=f"{sums['loss'] / sums['count']:.4f}",
                    acc=f"{sums['correct'] / sums['count']:.4f}",
                    img_s=f"{rate:.0f}",
                    refresh=False,
                )
                bar.update(1)
            signum = stop.signum
            if info.enabled:
                signum = int(vdist.all_reduce_sum(info, [float(signum)], self.device)[0] > 0) * (
                    signum or signal.SIGTERM
                )
            periodic = (
                opts.checkpoint_every
                and counters["global_step"] % opts.checkpoint_every == 0
                and step + 1 < self.steps_per_epoch
            )
            if signum or periodic:
                self.save(epoch, step + 1)
            if signum:
                bar.close()
                name = signal.Signals(signum).name
                _log(
                    self.quiet,
                    f"{name}: checkpoint saved at step {counters['global_step']} in "
                    f"{self.out / 'checkpoints'}; continue with --resume --out {self.out}",
                )
                return signum
        if self.show_bar:
            bar.refresh()  # the final postfix, also for epochs shorter than mininterval
        bar.close()
        self.end_epoch(epoch, clock)
        return 0

    def train_step(self, epoch: int, step: int, order: torch.Tensor, clock: _EpochClock) -> None:
        """One optimiser step on this process's rows of global batch ``step`` of ``epoch``."""
        opts, info, sums = self.opts, self.info, self.sums
        first = step * opts.batch_size + info.rank * self.local_batch
        idx = order[first : first + self.local_batch]
        t_data = time.perf_counter()
        x, y = self.train_pipe.batch(
            idx, augment_seed=derive_seed(opts.seed, "augment", epoch, step)
        )
        clock.data_time += time.perf_counter() - t_data
        torch.manual_seed(derive_seed(opts.seed, "step", epoch, step, info.rank))
        lr = lr_at(opts.schedule, opts.lr, self.counters["global_step"], self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with amp_context(self.device, self.amp_dtype):
            logits = self.run_model(x)
        loss = F.cross_entropy(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.counters["global_step"] += 1
        loss_value = float(loss.detach())
        if not math.isfinite(loss_value):
            raise FloatingPointError(
                f"training diverged: loss is {loss_value} at epoch {epoch + 1}, "
                f"step {step + 1} (lower --lr?)"
            )
        sums["loss"] += loss_value * len(y)
        sums["correct"] += float((logits.detach().argmax(1) == y).sum())
        sums["count"] += len(y)
        clock.seen += len(y)

    def end_epoch(self, epoch: int, clock: _EpochClock) -> None:
        """The epoch's record (training sums, speed, validation), checkpoint and metrics files."""
        opts, info, counters = self.opts, self.info, self.counters
        epoch_time = time.perf_counter() - clock.start
        g_loss, g_correct, g_count = self._global_sums()
        seen = clock.seen
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "step": counters["global_step"],
            "lr": lr_at(opts.schedule, opts.lr, counters["global_step"] - 1, self.total_steps),
            "train_loss": g_loss / max(g_count, 1),
            "train_accuracy": g_correct / max(g_count, 1),
            "train_images_per_s": seen * info.world_size / epoch_time if seen else None,
            "data_images_per_s": seen / clock.data_time if clock.data_time > 0 else None,
        }
        if self.val_pipe is not None:
            v = evaluate(
                self.model,
                self.val_pipe,
                batch_size=self.local_batch,
                info=info,
                amp_dtype=self.amp_dtype,
            )
            record.update(val_loss=v["loss"], val_accuracy=v["accuracy"])
        record["time_s"] = epoch_time
        self.history.append(record)
        counters.update(epoch=epoch + 1, step=0)
        self.sums = _zero_sums()
        self.save(epoch + 1, 0)
        if info.is_main:
            write_metrics(self.out, self.history)
        _log(
            self.quiet,
            f"epoch {epoch + 1}/{opts.epochs}: loss {record['train_loss']:.4f} "
            f"acc {record['train_accuracy']:.4f}"
            + (f" val_acc {record['val_accuracy']:.4f}" if self.val_pipe is not None else "")
            + (
                f" {record['train_images_per_s']:.0f} img/s" if record["train_images_per_s"] else ""
            ),
        )

    # -- finish ----------------------------------------------------------------------------
    def finish(self) -> dict[str, Any]:
        """Evaluate on the test split, write ``model.safetensors`` and ``metrics.json``."""
        opts, info, out = self.opts, self.info, self.out
        # the unwrapped model: DDP's forward would broadcast buffers, a collective that hangs when
        # the processes' shards have different numbers of batches
        test = evaluate(
            self.model,
            self.test_pipe,
            batch_size=max(self.local_batch, 256),
            info=info,
            amp_dtype=self.amp_dtype,
        )
        history = self.history
        rates = [r["train_images_per_s"] for r in history if r.get("train_images_per_s")]
        data_rates = [r["data_images_per_s"] for r in history if r.get("data_images_per_s")]
        final = {
            "test_accuracy": test["accuracy"],
            "test_loss": test["loss"],
            "test_images": test["images"],
            "params": self.params,
            "flops_per_image": self.flops,
            "train_images_per_s": rates[-1] if rates else None,
            "data_images_per_s": data_rates[-1] if data_rates else None,
            "eval_images_per_s": test["images_per_s"],
            "epochs": opts.epochs,
            "steps": self.counters["global_step"],
            "model": opts.model,
            "attention": opts.attention,
            "dataset": opts.dataset,
            "distortion": opts.distortion,
            "world_size": info.world_size,
            "device": str(self.device),
            "elapsed_s": self._elapsed(),
        }
        if info.is_main:
            write_safetensors(
                out / "model.safetensors",
                self.model.state_dict(),
                MODEL_FORMAT,
                {"options": opts.to_dict(), "data": self.data_info},
            )
            atomic_write_text(out / "metrics.json", json.dumps(json_safe(final), indent=2) + "\n")
        _log(
            self.quiet,
            f"test accuracy {test['accuracy']:.4f} on {test['images']} images; results in {out}",
        )
        final["out"] = str(out)
        return final


def train(opts: TrainOptions, *, explicit: set[str] | None = None) -> dict[str, Any]:
    """Run (or resume) a training run; returns the final metrics (see docs/training.md).

    ``explicit`` names the options the user set (used by ``--resume`` to detect conflicts).
    """
    return Trainer(opts, explicit=explicit).run()
