"""Tests of ``visattn eval``: results equal the run's, unsafe or broken checkpoints are refused."""

from __future__ import annotations

import json
import os

import pytest
import torch

from visattn.cli import main


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "run"
    argv = ["train", "--model", "fcn", "--epochs", "1", "--batch-size", "16", "--train-subset",
            "64", "--test-subset", "50", "--quiet", "--device", "cpu", "--out", str(out)]  # fmt: skip
    torch.set_num_threads(1)
    assert main(argv) == 0
    return out


def test_eval_matches_training_metrics(run, tmp_path, capsys):
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(run),
                "--subset",
                "50",
                "--output",
                str(tmp_path / "r.json"),
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    final = json.loads((run / "metrics.json").read_text())
    assert result["accuracy"] == pytest.approx(final["test_accuracy"])
    assert result["images"] == 50 and result["distortion"] == "none"
    assert json.loads((tmp_path / "r.json").read_text()) == result
    ckpt = next((run / "checkpoints").iterdir())
    assert main(["eval", "--checkpoint", str(ckpt), "--subset", "50"]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(result["accuracy"])
    assert (
        main(
            [
                "eval",
                "--checkpoint",
                str(run / "model.safetensors"),
                "--distortion",
                "rotated",
                "--subset",
                "20",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out)["distortion"] == "rotated"


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _broken(run, tmp_path):
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes((run / "model.safetensors").read_bytes()[:300])
    evil = tmp_path / "evil.safetensors"
    torch.save({"w": _Payload(tmp_path / "pwned")}, evil)
    return {
        "truncated": ([str(truncated)], "truncated"),
        "pickle": ([str(evil)], "execute code"),
        "missing": ([str(tmp_path / "none.safetensors")], "no such checkpoint"),
        "wrong size": ([str(run), "--distortion", "rts"], "expects 1 x 28 x 28"),
        "bad batch": ([str(run), "--batch-size", "0"], "--batch-size"),
    }


@pytest.mark.parametrize("case", ["truncated", "pickle", "missing", "wrong size", "bad batch"])
def test_eval_errors_are_one_line(run, tmp_path, capsys, case):
    args, expected = _broken(run, tmp_path)[case]
    assert main(["eval", "--checkpoint", *args]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and expected in err and "Traceback" not in err
    assert not (tmp_path / "pwned").exists()
