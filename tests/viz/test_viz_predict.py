"""``visattn predict``: good and corrupt files, CSV, stderr, exit code, overlays; checkpoints."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.cli import main
from visattn.commands.predict import normalise, predict_files
from visattn.viz.images import load_image

CLASSES = ["zero", "one", "two"]


def _checkpoint(make_run, tmp_path, **kw):
    name = "stcnn" if "transform" in kw else "cnn"
    folder = tmp_path / f"run-{name}-{kw.get('attention')}"
    _, model = make_run(folder, model=name, size=16, classes=CLASSES, **kw)
    return folder, model


def _images(tmp_path):
    rng = np.random.default_rng()
    good = []
    for i, (size, mode, ext) in enumerate(
        [((37, 23), "RGB", "png"), ((8, 8), "L", "jpg"), ((100, 64), "RGBA", "png")]
    ):
        arr = rng.integers(0, 256, (*size[::-1], len(mode)), dtype=np.uint8)
        p = tmp_path / f"img{i}.{ext}"
        Image.fromarray(arr.squeeze(-1) if mode == "L" else arr, mode).save(p)
        good.append(p)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good[0].read_bytes()[:60])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    missing = tmp_path / "missing.jpg"
    return good, [truncated, text, missing]


def test_load_image_any_size_and_mode(tmp_path):
    good, bad = _images(tmp_path)
    for p in good:
        t = load_image(p, 1, (16, 16))
        assert t.shape == (1, 16, 16) and 0 <= t.min() and t.max() <= 1
        assert load_image(p, 3, (9, 11)).shape == (3, 9, 11)
    for p in bad:
        with pytest.raises(ValueError, match=p.name):
            load_image(p, 1, (16, 16))


def test_predict_mixed_files(make_run, tmp_path, capsys):
    ckpt, model = _checkpoint(make_run, tmp_path)
    good, bad = _images(tmp_path)
    files = [good[0], bad[0], good[1], bad[1], bad[2], good[2]]
    out = tmp_path / "pred.csv"
    code = main(["predict", "--checkpoint", str(ckpt), *map(str, files), "--out", str(out),
                 "--overlay", str(tmp_path / "ov")])  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    for p in bad:
        assert p.name in err
    with open(out, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["file"] for r in rows] == [str(f) for f in files]
    assert [r["status"] for r in rows] == ["ok", "error", "ok", "error", "error", "ok"]
    x = torch.stack([load_image(p, 1, (16, 16)) for p in good])
    x = normalise(x, {"mean": [0.3], "std": [0.35]})
    torch.testing.assert_close(
        x, (torch.stack([load_image(p, 1, (16, 16)) for p in good]) - 0.3) / 0.35
    )
    with torch.no_grad():
        expect = model.eval()(x).softmax(1)
    for r, p in zip([rows[0], rows[2], rows[5]], expect, strict=True):
        assert r["class_name"] == CLASSES[int(p.argmax())] and r["error"] == ""
        assert abs(float(r["probability"]) - float(p.max())) < 1e-3
        assert len(r["top3"].split(";")) == 3
    assert all(r["error"] for r in rows if r["status"] == "error")
    assert sorted(f.name for f in (tmp_path / "ov").iterdir()) == [
        "img0.png",
        "img1.png",
        "img2.png",
    ]


def test_predict_all_good_and_overlays_per_attention(make_run, tmp_path):
    good, _ = _images(tmp_path)
    for kw in ({"transform": "affine"}, {"attention": "cbam", "attention_kw": {"reduction": 2}}):
        ckpt, _ = _checkpoint(make_run, tmp_path, **kw)
        rows, failed = predict_files(ckpt, good[:1], out=tmp_path / "p.csv",
                                     overlay=tmp_path / "ov2")  # fmt: skip
        assert failed == 0 and rows[0]["status"] == "ok"
        with Image.open(tmp_path / "ov2" / "img0.png") as im:
            assert im.size[0] > 200
    assert main(["predict", "--checkpoint", str(ckpt / "model.safetensors"), str(good[0]),
                 "--out", str(tmp_path / "q.csv")]) == 0  # fmt: skip


def test_predict_bad_checkpoint_is_one_line(tmp_path, capsys):
    good, _ = _images(tmp_path)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    code = main(["predict", "--checkpoint", str(tmp_path / "junk.safetensors"), str(good[0]),
                 "--out", str(tmp_path / "x.csv")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "x.csv").exists()
    assert main(["predict", "--checkpoint", str(tmp_path / "none"), str(good[0])]) == 1
