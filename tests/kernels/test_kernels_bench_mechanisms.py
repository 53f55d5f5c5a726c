"""``visattn bench --blocks`` over every registered attention name against timm's modules
(visattn/commands/_bench_mechanisms.py), on tiny CPU shapes.

Only the structure is checked (a row for every registered name, timm's where the table has a
module, "—" where timm has none, notes for skipped and failed candidates): timings are never
asserted. The timm table is checked against the registered layers' defaults (same parameters,
same outputs), so that a layer whose defaults change makes the table fail here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from visattn import list_attention
from visattn.commands._bench_mechanisms import TIMM_EQUIVALENTS, estimate_peak_bytes
from visattn.commands._bench_timing import Context
from visattn.commands.bench import main

pytest.importorskip("timm")

DUMMY = "zz_bench_dummy"  # sorts last, so it runs after every real name


class _Gate(nn.Module):
    """A registered stand-in mechanism: y = x * sigmoid(w * GAP(x))."""

    map_kind = "channel"

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, 1, 1))

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.weight * x.mean((2, 3), keepdim=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.attention(x)


class _Broken(_Gate):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("broken on purpose")


def _register(monkeypatch, name: str, factory) -> None:
    from visattn.layers import registry

    monkeypatch.setitem(registry._REGISTRY, name, factory)


def _run(tmp_path, *args: str) -> str:
    out = tmp_path / "bench.md"
    code = main(
        ["--device", "cpu", "--batch", "2", "--repeats", "1", "--warmup", "0", "--no-models",
         "--sampler-shape", "1,3,9,7", "--output", str(out), *args]
    )  # fmt: skip
    assert code == 0
    return out.read_text()


def _main_rows(text: str) -> dict[tuple[str, str], list[str]]:
    """(block, implementation) -> the cells of the main table's row."""
    body = text.split("### Every mechanism")[0]
    rows = [line.split("|")[1:-1] for line in body.splitlines() if line.startswith("| ")]
    return {(r[0].strip(), r[2].strip()): [c.strip() for c in r] for r in rows[1:]}


def _summary(text: str) -> dict[str, list[str]]:
    """mechanism -> the cells of its line in the "every mechanism" table."""
    part = text.split("### Every mechanism against timm")[1]
    lines = [line for line in part.splitlines() if line.startswith("|")]
    assert lines[1].startswith("|---|")
    assert lines[0].startswith("| mechanism | shape | visattn (ms) | timm (ms) |")
    return {r[0]: r for r in ([c.strip() for c in line.split("|")[1:-1]] for line in lines[2:])}


def test_blocks_all_gives_every_registered_name_a_row(tmp_path, monkeypatch):
    _register(monkeypatch, DUMMY, _Gate)
    text = _run(tmp_path, "--blocks", "all", "--shapes", "64x8")
    rows, summary = _main_rows(text), _summary(text)
    names = list_attention()
    assert DUMMY in names and list(summary) == [
        *[n for n in ("se", "cbam") if n in names],
        *[n for n in names if n not in ("se", "cbam")],
    ]
    assert ("sampler", "F.grid_sample") in rows  # "all" includes the sampler
    for name in names:
        ours = "visattn fast (default)" if name in ("se", "cbam") else "visattn"
        assert float(rows[name, ours][3]) > 0, name
        line = summary[name]
        assert line[1] == "2x64x8x8" and float(line[2]) > 0, name
        if name in TIMM_EQUIVALENTS:
            assert float(rows[name, "timm"][3]) > 0, name
            assert float(line[3]) > 0 and line[4].endswith("x"), name
            assert line[6] == f"`{TIMM_EQUIVALENTS[name].module}`", name
        else:
            assert (name, "timm") not in rows, name
            assert line[3] == line[4] == line[6] == "—", name
    assert summary[DUMMY][5] == f'`create_attention("{DUMMY}", C)`'
    assert rows[DUMMY, "visattn"][6] == "-"  # no timm module: no ratio


def test_a_named_mechanism_runs_alone_at_each_shape(tmp_path, monkeypatch):
    _register(monkeypatch, DUMMY, _Gate)
    text = _run(tmp_path, "--blocks", DUMMY, "--shapes", "16x4,8x3")
    rows = [line for line in text.splitlines() if line.startswith(f"| {DUMMY} |")]
    assert [line.split("|")[2].strip() for line in rows] == ["2x16x4x4", "2x8x3x3"] * 2
    assert "| se |" not in text and "| sampler |" not in text


def test_a_failing_mechanism_is_reported_not_dropped(tmp_path, monkeypatch):
    _register(monkeypatch, DUMMY, _Broken)
    text = _run(tmp_path, "--blocks", DUMMY, "--shapes", "16x4")
    assert f"| {DUMMY} | 2x16x4x4 | visattn |" not in text
    assert f"| {DUMMY} | 2x16x4x4 | failed (RuntimeError: broken on purpose) | — |" in text
    assert f"Note: {DUMMY} 2x16x4x4 visattn: failed (RuntimeError: broken on purpose)" in text


def test_shapes_over_the_memory_limit_are_skipped_with_a_note(tmp_path, capsys):
    text = _run(tmp_path, "--blocks", "channel,sampler", "--shapes", "64x8",
                "--max-memory-gb", "1e-9")  # fmt: skip
    assert "| channel | 2x64x8x8 | visattn |" not in text
    assert "| channel | 2x64x8x8 | timm |" not in text
    line = _summary(text)["channel"]
    assert line[2].startswith("skipped (estimated peak") and line[3].startswith("skipped")
    assert "Note: channel 2x64x8x8 visattn: skipped, its estimated peak memory" in text
    assert "exceeds the limit" in capsys.readouterr().out
    assert "| sampler |" in text  # the sampler is not subject to the limit


def test_the_peak_estimate_counts_at_least_the_output_and_dx():
    from visattn import create_attention

    ctx = Context(torch.device("cpu"), torch.float32, False, repeats=1, warmup=0)
    n, c, s = 8, 32, 12
    estimate = estimate_peak_bytes(create_attention("channel", c), n, c, s, ctx, "auto")
    assert estimate >= 2 * n * c * s * s * 4


def test_unknown_block_lists_the_valid_names(capsys):
    assert main(["--device", "cpu", "--blocks", "se,nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("visattn bench: error: --blocks:")
    assert "'nope'" in err[0]
    for name in ["all", *list_attention(), "sampler"]:
        assert f" {name}," in err[0] or err[0].endswith(f" {name})"), name


def test_bad_shapes_and_memory_limit_are_usage_errors(capsys):
    assert main(["--shapes", "64x"]) == 2
    assert main(["--shapes", "0x8"]) == 2
    assert main(["--max-memory-gb", "-1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("visattn bench: error: --") for line in err)


@pytest.mark.parametrize("name", sorted(TIMM_EQUIVALENTS))
def test_every_timm_module_of_the_table_builds_and_runs(name):
    module = TIMM_EQUIVALENTS[name].build(64)
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    y = module(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None


def _randomise(module: nn.Module) -> None:
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.2)
        for name, b in module.named_buffers():
            if name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
            elif name.endswith("running_mean"):
                b.normal_(0, 0.1)


@pytest.mark.parametrize(
    "name", sorted(set(list_attention()) & set(TIMM_EQUIVALENTS) - {"se", "cbam"})
)
def test_the_timm_module_computes_what_the_registered_layer_does(name):
    """The table builds timm's module in the layout of ``create_attention(name, C)`` at its
    defaults: the same parameter shapes at the ResNet-50 widths, and the same outputs with
    timm's (random) weights loaded, unless the entry says where it differs. (se and cbam are
    timed in their own layout, ``bench_block``.)"""
    from visattn import create_attention

    entry = TIMM_EQUIVALENTS[name]
    for c in (256, 2048):
        shapes = [sorted(tuple(p.shape) for p in m.parameters())
                  for m in (create_attention(name, c), entry.build(c))]  # fmt: skip
        if shapes[0] != shapes[1]:
            assert entry.differs, f"{name} at C={c}: {shapes[0]} != {shapes[1]}"
            return
    ours, theirs = create_attention(name, 256), entry.build(256)
    _randomise(theirs)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval(), theirs.eval()
    x = torch.randn(2, 256, 7, 9)
    with torch.no_grad():
        y, want = ours(x), theirs(x)
    diff = (y - want).abs().max().item() / max(1.0, want.abs().max().item())
    # float32; measured up to 5.6e-7 (gc; ese, nonlocal, sk 1.4e-7 to 2.7e-7, the others 0) over
    # 20 seeds with every mechanism's layer as of writing; tolerance 1e-5.
    assert (diff < 1e-5) != bool(entry.differs), f"{name}: max |ours - timm| / max |timm| = {diff}"


def test_se_and_cbam_alone_keep_their_rows_and_no_mechanism_table(tmp_path):
    text = _run(tmp_path, "--blocks", "se", "--shapes", "16x4")
    impls = [line.split("|")[3].strip() for line in text.splitlines() if line.startswith("| se |")]
    assert impls == ["visattn reference", "visattn fast (default)", "timm"]
    assert "### Every mechanism" not in text
