"""``visattn demo`` end to end in its tiny setting: every figure, metrics.json, checkpoints, and
the report opens in headless Chromium (that part is skipped only without Chromium)."""

from __future__ import annotations

import json

import pytest

from visattn.cli import main
from visattn.engine import load_model
from visattn.viz.browser import check_page, find_chromium

FIGURES = {
    "curves_plain.png", "curves_rts.png", "stn_affine.png", "cbam_spatial.png",
    "se_excitation.png", "gradcam.png", "confusion.png", "hardest.png",
}  # fmt: skip


def test_demo_tiny_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--preset", "tiny", "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    for label in ("CNN", "CNN+SE", "CNN+CBAM", "ST-CNN (affine)", "test acc", "attn time"):
        assert label in printed
    files = {p.name for p in out.iterdir()}
    assert FIGURES | {"report.html", "metrics.json", "models"} == files
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["results"]
    assert len(rows) == 8 and {r["data"] for r in rows} == {"plain", "rts"}
    for r in rows:
        assert 0 <= r["test_accuracy"] <= 1 and r["params"] > 0 and r["mflops"] > 0
        assert r["train_images_per_s"] > 0 and r["inference_images_per_s"] > 0
        assert 0 <= r["attention_time_share"] < 1
        assert (r["attention_time_share"] == 0) == (r["model"] == "CNN")
    assert set(metrics["figures"]) == FIGURES
    _, info = load_model(out / "models" / "rts-st-cnn-affine")
    assert info["input_size"] == 42 and info["distortion"] == "rts"
    assert {r["run"] for r in rows} == {f"models/{p.name}" for p in (out / "models").iterdir()}
    html = (out / "report.html").read_text()
    assert all(f in html for f in FIGURES)
    if find_chromium() is None:
        pytest.skip("chromium is not installed: report not opened in a browser")
    check = check_page(out / "report.html", screenshot=tmp_path / "report.png")
    assert check.images == {f: True for f in metrics["figures"]} and check.errors == []


def test_demo_bad_options_one_line(tmp_path, capsys):
    assert (
        main(["demo", "--preset", "tiny", "--models", "cnn,xyz", "--out", str(tmp_path / "d")]) == 1
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "models" in err and "xyz" in err
    assert not (tmp_path / "d").exists()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("precious")
    assert main(["demo", "--preset", "tiny", "--out", str(tmp_path / "mine")]) == 1
    assert "not empty" in capsys.readouterr().err
    assert (tmp_path / "mine" / "thesis.tex").read_text() == "precious"


def test_demo_every_mechanism(tmp_path, capsys):
    """``--preset family`` (here at a few images) trains the baseline, every registered
    mechanism and the spatial transformer on RTS data; each mechanism other than SE and CBAM
    (which have figures of their own) gets a summary figure of its maps in the report."""
    from visattn import list_attention

    out = tmp_path / "family"
    args = ["--train-size", "96", "--val-size", "32", "--test-size", "48", "--epochs", "1",
            "--batch-size", "32"]  # fmt: skip
    assert main(["demo", "--preset", "family", "--out", str(out), "--threads", "1", *args]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    rows = metrics["results"]
    assert {r["data"] for r in rows} == {"rts"}
    assert len(rows) == 2 + len(list_attention())  # CNN, ST-CNN and every mechanism
    summaries = {f"attention_{n}.png" for n in list_attention() if n not in ("se", "cbam")}
    assert summaries <= set(metrics["figures"])
    html = (out / "report.html").read_text()
    assert all(f in html for f in summaries)
    for r in rows:
        assert (r["attention_time_share"] == 0) == (r["model"] == "CNN")
