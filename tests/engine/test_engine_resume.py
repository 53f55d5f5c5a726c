"""Kill / interrupt a training subprocess and resume it: the final weights must be identical.

Paths of the issue's "done when": ``stcnn`` on RTS-distorted Fashion-MNIST killed with SIGKILL,
and ``resnet20_cifar --attention cbam`` on an image folder stopped with SIGTERM / SIGINT.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from visattn.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"

STCNN = [
    "--model", "stcnn", "--distortion", "rts", "--epochs", "2", "--batch-size", "8",
    "--train-subset", "64", "--test-subset", "32", "--checkpoint-every", "2",
    "--optimizer", "sgd", "--lr", "0.02", "--seed", "7", "--quiet", "--device", "cpu",
]  # fmt: skip


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    return env


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "visattn", "train", *args],
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_checkpoint(folder: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not list(folder.glob("checkpoints/step-*.safetensors")):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)


def _same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_sigkill_then_resume_gives_identical_weights(tmp_path):
    torch.set_num_threads(1)
    assert main(["train", *STCNN, "--out", str(tmp_path / "ref")]) == 0
    run = tmp_path / "killed"
    proc = _start([*STCNN, "--out", str(run)])
    _wait_for_checkpoint(run, proc)
    # a random moment within the next step(s): before, during or after a checkpoint write
    time.sleep(random.uniform(0, 0.02))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "model.safetensors").exists()
    resumed = subprocess.run(
        [sys.executable, "-m", "visattn", "train", "--resume", "--out", str(run)],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    _same_weights(tmp_path / "ref", run)
    ref_lines = (tmp_path / "ref" / "metrics.jsonl").read_text().splitlines()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == len(ref_lines) == 2
    assert not list(run.rglob("*.tmp"))


def _image_folder(root: Path) -> Path:
    gen = torch.Generator().manual_seed(0)
    for split, n in (("train", 8), ("test", 3)):
        for c, name in enumerate(("circle", "square", "stripe")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = (torch.rand(12, 12, 3, generator=gen) * 60 + 60 * c).to(torch.uint8)
                Image.fromarray(pixels.numpy()).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """(arguments, uninterrupted run folder) of resnet20_cifar + CBAM on an image folder."""
    root = tmp_path_factory.mktemp("folder")
    data = _image_folder(root / "images")
    args = [
        "--model", "resnet20_cifar", "--attention", "cbam", "--dataset", f"folder:{data}",
        "--image-size", "12", "--epochs", "2", "--batch-size", "4", "--checkpoint-every", "1",
        "--augment", "--optimizer", "sgd", "--lr", "0.05", "--quiet", "--device", "cpu",
    ]  # fmt: skip
    torch.set_num_threads(1)
    assert main(["train", *args, "--out", str(root / "ref")]) == 0
    return args, root / "ref"


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_saves_checkpoint_and_resume_is_exact(tmp_path, folder_run, sig):
    args, ref = folder_run
    run = tmp_path / "stopped"
    proc = _start([*args, "--out", str(run), "--no-quiet"])
    _wait_for_checkpoint(run, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, err
    assert "checkpoint saved" in err and "Traceback" not in err
    assert not (run / "model.safetensors").exists()
    assert list(run.glob("checkpoints/step-*.safetensors"))
    assert main(["train", "--resume", "--out", str(run), "--quiet"]) == 0
    _same_weights(ref, run)
