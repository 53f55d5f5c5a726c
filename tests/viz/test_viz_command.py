"""``visattn viz``: figures and report for checkpoints with each attention type."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visattn.cli import main


@pytest.mark.parametrize(
    ("name", "kw", "expected"),
    [
        ("cnn", {"attention": "se", "attention_kw": {"reduction": 2}}, {"se_excitation.png"}),
        ("cnn", {"attention": "cbam", "attention_kw": {"reduction": 2}}, {"cbam_spatial.png"}),
        ("stcnn", {"transform": "affine"}, {"stn_0.png"}),
        # any other mechanism: its summary (here channel gates per class)
        ("cnn", {"attention": "channel", "attention_kw": {"reduction": 2}}, {"attention.png"}),
    ],
)
def test_viz_dataset(make_run, tmp_path, name, kw, expected):
    rts = name == "stcnn"
    ckpt, _ = make_run(tmp_path / "run", model=name, size=42 if rts else 28,
                       distortion="rts" if rts else "none", **kw)  # fmt: skip
    out = tmp_path / "viz"
    assert main(["viz", "--checkpoint", str(ckpt), "--dataset", "fashion-mnist-small", "--out", str(out),
                 "--limit", "60", "--num-images", "2"]) == 0  # fmt: skip
    files = {p.name for p in out.iterdir()}
    base = {"gradcam.png", "confusion.png", "hardest.png", "report.html"}
    assert base | expected <= files
    html = (out / "report.html").read_text()
    assert all(f in html for f in (base | expected) - {"report.html"})
    # behind a transformer, Grad-CAM is drawn over what the convolutions see
    assert ("spatial transformer&#x27;s output" in html) == rts


def test_viz_images_and_errors(make_run, tmp_path, capsys):
    ckpt, _ = make_run(tmp_path / "run", attention="cbam", attention_kw={"reduction": 2})
    img = tmp_path / "a.png"
    Image.fromarray(np.random.default_rng().integers(0, 255, (50, 30), dtype=np.uint8)).save(img)
    (tmp_path / "bad.png").write_bytes(b"xx")
    out = tmp_path / "v"
    assert main(["viz", "--checkpoint", str(ckpt), "--images", str(img), str(tmp_path / "bad.png"),
                 "--out", str(out)]) == 0  # fmt: skip
    assert "bad.png" in capsys.readouterr().err
    assert {"cbam_spatial.png", "gradcam.png", "report.html"} <= {p.name for p in out.iterdir()}
    assert not (out / "confusion.png").exists()  # no labels for plain images
    code = main(["viz", "--checkpoint", str(ckpt), "--images", str(tmp_path / "bad.png"), "--out",
                 str(tmp_path / "w")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "none of the files" in err and "Traceback" not in err
