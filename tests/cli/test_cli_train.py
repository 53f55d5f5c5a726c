"""Tests of ``visattn train`` and the command-line plumbing (help, config files, bad input)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from visattn.cli import main

SRC = Path(__file__).resolve().parents[2] / "src"
TINY = ["--epochs", "1", "--batch-size", "16", "--train-subset", "32", "--test-subset", "16",
        "--quiet", "--device", "cpu"]  # fmt: skip


@pytest.fixture(autouse=True)
def _no_data(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("VISATTN_DATA", raising=False)
    monkeypatch.chdir(tmp_path)


def test_help_lists_commands_and_defaults(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["--help"]) == 0
    top = capsys.readouterr().out
    assert all(name in top for name in ("train", "eval", "data"))
    assert main(["train", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for expected in ("--lr LR peak learning rate (default: 0.001)", "(default: cnn)",
                     "(default: fashion-mnist-small)", "--resume", "--config FILE"):  # fmt: skip
        assert expected in text
    assert main(["eval", "--help"]) == 0
    assert "(default: 256)" in capsys.readouterr().out


def test_train_stcnn_on_rts(tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "stcnn", "--distortion", "rts", "--model-arg", "transform=affine",
            *TINY, "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    opts = json.loads((out / "options.json").read_text())
    assert opts["distortion"] == "rts" and opts["model_args"] == {"transform": "affine"}
    final = json.loads((out / "metrics.json").read_text())
    assert final["model"] == "stcnn" and 0 <= final["test_accuracy"] <= 1
    assert capsys.readouterr().err == ""  # --quiet
    assert main(["eval", "--checkpoint", str(out), "--subset", "16"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["distortion"] == "rts" and result["accuracy"] == final["test_accuracy"]


@pytest.mark.parametrize("kind", ["toml", "yaml"])
def test_config_file_and_precedence(tmp_path, kind):
    if kind == "toml":
        text = 'model = "fcn"\nepochs = 2\nlr = 0.01\nbatch-size = 16\n[model_args]\n'
    else:
        text = "model: fcn\nepochs: 2\nlr: 1e-2\nbatch_size: 16\nmodel_args: {}\n"
    config = tmp_path / f"c.{kind}"
    config.write_text(text)
    out = tmp_path / "run"
    argv = ["train", "--config", str(config), "--epochs", "1", "--train-subset", "32",
            "--test-subset", "16", "--quiet", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    opts = json.loads((out / "options.json").read_text())
    assert (opts["model"], opts["epochs"], opts["lr"], opts["batch_size"]) == ("fcn", 1, 0.01, 16)


def _bad(tmp_path: Path) -> dict[str, list[str]]:
    (tmp_path / "bad.toml").write_text("lr = [")
    (tmp_path / "bad.yaml").write_text("lr: [1, 2\n")
    (tmp_path / "unknown.toml").write_text("colour = 3\n")
    (tmp_path / "wrongtype.yaml").write_text("epochs: many\n")
    return {
        "unknown model": ["--model", "vgg99"],
        "unknown dataset": ["--dataset", "imagenet"],
        "lr zero": ["--lr", "0"],
        "lr negative": ["--lr", "-0.1"],
        "batch size zero": ["--batch-size", "0"],
        "negative epochs": ["--epochs", "-1"],
        "not a number": ["--lr", "fast"],
        "bad choice": ["--optimizer", "adam"],
        "missing data": ["--dataset", "mnist", "--data-root", str(tmp_path / "none")],
        "missing folder": ["--dataset", f"folder:{tmp_path / 'nope'}"],
        "bad toml": ["--config", str(tmp_path / "bad.toml")],
        "bad yaml": ["--config", str(tmp_path / "bad.yaml")],
        "missing config": ["--config", str(tmp_path / "none.toml")],
        "unknown config key": ["--config", str(tmp_path / "unknown.toml")],
        "config wrong type": ["--config", str(tmp_path / "wrongtype.yaml")],
        "resume nothing": ["--resume"],
        "unknown option": ["--colour", "red"],
    }


EXPECTED = {
    "unknown model": "stcnn",  # the valid names are listed
    "unknown dataset": "fashion-mnist-small",
    "missing data": "visattn data download mnist",
    "lr zero": "--lr",
    "batch size zero": "--batch-size",
    "negative epochs": "--epochs",
    "bad toml": "bad.toml",
    "unknown config key": "colour",
}


CASES = ["unknown model", "unknown dataset", "lr zero", "lr negative", "batch size zero",
         "negative epochs", "not a number", "bad choice", "missing data", "missing folder",
         "bad toml", "bad yaml", "missing config", "unknown config key", "config wrong type",
         "resume nothing", "unknown option"]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_line_and_leaves_nothing(tmp_path, capsys, case):
    cases = _bad(tmp_path)
    assert sorted(cases) == sorted(CASES)
    argv = ["train", *cases[case], "--out", str(tmp_path / "run"), "--quiet"]
    code = main(argv)
    captured = capsys.readouterr()
    assert code != 0
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert EXPECTED.get(case, "") in lines[0]
    assert not (tmp_path / "run").exists()


def test_subprocess_exit_status_and_no_traceback(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([str(SRC), env.get("PYTHONPATH", "")])
    result = subprocess.run(
        [sys.executable, "-m", "visattn", "train", "--batch-size", "0"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip() == (
        "visattn train: error: --batch-size: expected an integer >= 1, got 0"
    )
