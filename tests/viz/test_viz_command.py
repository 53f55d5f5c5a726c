"""``visattn viz``: figures and report for checkpoints with each attention type."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visattn.models import create_model
from visattn.viz.checkpoint import save_checkpoint
from visattn.viz.command import main

CLASSES = [f"c{i}" for i in range(10)]


def _ckpt(tmp_path, name, size=28, info=None, **kw):
    kwargs = {"num_classes": 10, "in_chans": 1, "input_size": size, "channels": (4, 8),
              "kernel_sizes": (3, 3), **kw}  # fmt: skip
    model = create_model(name, **kwargs)
    return save_checkpoint(tmp_path / f"{name}.pt", model, name=name, kwargs=kwargs,
                           classes=CLASSES, input_size=(size, size), in_chans=1,
                           info=info)  # fmt: skip


@pytest.mark.parametrize(
    ("name", "kw", "expected"),
    [
        ("cnn", {"attention": "se", "attention_kw": {"reduction": 2}}, {"se_excitation.png"}),
        ("cnn", {"attention": "cbam", "attention_kw": {"reduction": 2}}, {"cbam_spatial.png"}),
        ("stcnn", {"transform": "affine"}, {"stn_0.png"}),
    ],
)
def test_viz_dataset(tmp_path, name, kw, expected):
    info = {"distortion": "rts"} if name == "stcnn" else None
    ckpt = _ckpt(tmp_path, name, size=42 if info else 28, info=info, **kw)
    out = tmp_path / "viz"
    assert main(["--checkpoint", str(ckpt), "--dataset", "fashion-mnist-small", "--out", str(out),
                 "--limit", "60", "--num-images", "2"]) == 0  # fmt: skip
    files = {p.name for p in out.iterdir()}
    base = {"gradcam.png", "confusion.png", "hardest.png", "report.html"}
    assert base | expected <= files
    html = (out / "report.html").read_text()
    assert all(f in html for f in (base | expected) - {"report.html"})


def test_viz_images_and_errors(tmp_path, capsys):
    ckpt = _ckpt(tmp_path, "cnn", attention="cbam", attention_kw={"reduction": 2})
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng().integers(0, 255, (50, 30), dtype=np.uint8)).save(img)
    (tmp_path / "bad.png").write_bytes(b"xx")
    out = tmp_path / "v"
    assert main(["--checkpoint", str(ckpt), "--images", str(img), str(tmp_path / "bad.png"),
                 "--out", str(out)]) == 0  # fmt: skip
    assert "bad.png" in capsys.readouterr().err
    assert {"cbam_spatial.png", "gradcam.png", "report.html"} <= {p.name for p in out.iterdir()}
    assert not (out / "confusion.png").exists()  # no labels for plain images
    code = main(["--checkpoint", str(ckpt), "--images", str(tmp_path / "bad.png"), "--out",
                 str(tmp_path / "w")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "none of the files" in err and "Traceback" not in err
