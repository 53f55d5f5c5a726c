"""``visattn bench`` (visattn/commands/bench.py) runs end to end on tiny CPU shapes, writes its table.

Only the structure is checked (rows for every implementation, numbers present): timings are
never asserted.
"""

from __future__ import annotations

import importlib.util

from visattn.commands.bench import main


def test_bench_quick_cpu_writes_markdown(tmp_path, capsys):
    out = tmp_path / "bench.md"
    code = main(
        ["--device", "cpu", "--quick", "--batch", "1", "--repeats", "1", "--warmup", "0",
         "--sampler-shape", "1,3,9,7", "--output", str(out), "--no-models"]
    )  # fmt: skip
    assert code == 0
    text = out.read_text()
    assert "copy bandwidth" in text and "| block | shape |" in text
    for impl in ("visattn reference", "visattn fast (default)", "F.grid_sample"):
        assert impl in text
    if importlib.util.find_spec("timm") is not None:
        assert "| se | 1x256x56x56 | timm |" in text
    cbam_rows = [line for line in text.splitlines() if line.startswith("| cbam |")]
    assert cbam_rows and all(float(line.split("|")[8]) > 0 for line in cbam_rows)  # peak memory
    assert "visattn fast" in capsys.readouterr().out


def test_bench_times_each_kernel_alone(tmp_path):
    out = tmp_path / "kernels.md"
    code = main(
        ["--device", "cpu", "--quick", "--batch", "1", "--repeats", "1", "--warmup", "0",
         "--blocks", "", "--kernels", "--no-models", "--output", str(out)]
    )  # fmt: skip
    assert code == 0
    text = out.read_text()
    assert "### Each kernel alone" in text and "| block | shape |" not in text
    rows = [line.split("|")[1:-1] for line in text.splitlines() if "| 1x256x56x56 |" in line]
    names = [r[0].strip() for r in rows]
    assert "bwd_apply (CBAM), folded BN" in names and "fold_backward" in names and len(rows) == 15
    for name, _, ms, passes, share in rows:
        assert float(ms) > 0, name
        assert (passes.strip() == "-") == (share.strip() == "-"), name


def test_bench_rejects_unknown_block(capsys):
    assert main(["--device", "cpu", "--blocks", "se,nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_bench_usage_errors_are_one_line(capsys):
    assert main(["--sampler-shape", "1,2,x"]) == 2
    assert main(["--no-such-option"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and all("visattn bench: error:" in line for line in lines)


def test_bench_keep_freed_memory_is_reported(tmp_path):
    """--keep-freed-memory changes malloc for the whole process: run it in a child process."""
    import platform
    import subprocess
    import sys

    out = tmp_path / "bench.md"
    proc = subprocess.run(
        [sys.executable, "-m", "visattn.bench", "--device", "cpu", "--quick", "--batch", "1",
         "--repeats", "1", "--warmup", "0", "--blocks", "se", "--no-models",
         "--keep-freed-memory", "--output", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    reported = "glibc keeps freed memory" in out.read_text()
    if platform.system() == "Linux" and platform.libc_ver()[0] == "glibc":
        assert reported
    else:
        assert not reported and "ignored" in proc.stderr


def test_table_adds_host_column_only_for_rows_with_host_times():
    from visattn.commands.bench import Row, table

    cpu = table([Row("se", "1x2x3x3", "timm", 1.0, 5.0)])
    assert "host (ms)" not in cpu[0] and cpu[2].count("|") == 9
    gpu = table([Row("se", "1x2x3x3", "timm", 1.0, 5.0, host_ms=0.25),
                 Row("se", "1x2x3x3", "visattn", 2.0, 9.0)])  # fmt: skip
    assert gpu[0].endswith("host (ms) |") and gpu[1].count("---") == 9
    assert gpu[2].endswith(" 0.250 |") and gpu[3].endswith(" - |")


def test_bench_models_rows_with_small_networks(monkeypatch):
    """The whole-network rows, with CIFAR-sized ResNets standing in for the ResNet-50 family."""
    import torch

    import visattn.models
    from visattn.commands.bench import Context, bench_models

    attention = {"resnet50": None, "seresnet50": "se", "cbam_resnet50": "cbam"}
    real = visattn.models.create_model
    monkeypatch.setattr(
        visattn.models, "create_model",
        lambda name: real("resnet20_cifar", attention=attention[name], num_classes=1000),
    )  # fmt: skip
    ctx = Context(torch.device("cpu"), torch.float32, True, repeats=1, warmup=0)
    lines = bench_models(ctx, batch=2, steps=1, compile_models=False)
    assert lines[0].startswith("| model | mode | images/s | vs resnet50 | peak memory (GiB) |")
    rows = [line.split("|")[1:-1] for line in lines[2:]]
    assert [r[0].strip() for r in rows] == ["resnet50", "seresnet50", "cbam_resnet50"]
    assert all(float(r[2]) > 0 and float(r[4]) >= 0 and r[3].strip().endswith("%") for r in rows)


def test_old_module_path_still_works():
    """``visattn.bench`` (the former home) re-exports the command and warns on import."""
    import importlib
    import sys
    import warnings

    import visattn.commands.bench as bench

    sys.modules.pop("visattn.bench", None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        old = importlib.import_module("visattn.bench")
    assert any(issubclass(w.category, DeprecationWarning) for w in caught)
    assert old.main is bench.main and old.Row is bench.Row and old.table is bench.table
