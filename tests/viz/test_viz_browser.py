"""The report opens in a real browser: headless Chromium loads every image, logs no error.

Skipped only when no Chromium executable is installed (CI installs the Debian packages
``chromium`` and ``chromium-driver``). The screenshot is saved next to the report.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from visattn.viz import Figure, plot_confusion_matrix, plot_overlay, write_report
from visattn.viz.browser import check_page, find_chromium

pytestmark = pytest.mark.skipif(find_chromium() is None, reason="chromium is not installed")


def _report(tmp_path):
    plot_confusion_matrix(
        torch.randint(0, 3, (20,)), torch.randint(0, 3, (20,)), tmp_path / "cm.png"
    )
    plot_overlay(torch.rand(1, 16, 16), torch.rand(4, 4), tmp_path / "o.png")
    return write_report(
        tmp_path,
        title="Browser check",
        tables={"Results": [{"model": "cnn", "accuracy": 0.5}]},
        figures=[Figure("cm.png", "Confusion matrix"), Figure("o.png", "Overlay")],
    )


def test_report_loads_in_chromium(tmp_path):
    page = _report(tmp_path)
    check = check_page(page, screenshot=tmp_path / "shot.png", full_page=True)
    assert check.title == "Browser check"
    assert check.images == {"cm.png": True, "o.png": True}
    assert check.errors == []
    assert check.ok
    with Image.open(tmp_path / "shot.png") as im:
        assert im.size[0] == 1280 and im.size[1] > 600  # the whole page
        assert np.asarray(im.convert("L")).std() > 5


def test_check_sees_broken_image_and_console_error(tmp_path):
    page = _report(tmp_path)
    (tmp_path / "o.png").write_bytes(b"not a png")
    bad = tmp_path / "bad.html"
    bad.write_text(
        page.read_text().replace("</body>", "<script>console.error('boom')</script></body>")
    )
    check = check_page(bad)
    assert check.images == {"cm.png": True, "o.png": False}
    assert any("boom" in e for e in check.errors)
    assert not check.ok
