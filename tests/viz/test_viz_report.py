"""Tests of visattn.viz.write_report: a self-contained, escaped, well-formed HTML page."""

from __future__ import annotations

from html.parser import HTMLParser

import pytest
import torch

from visattn.viz import Figure, plot_confusion_matrix, write_report


class _Collect(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_report_links_tables_and_escaping(tmp_path):
    plot_confusion_matrix(torch.tensor([0, 1]), torch.tensor([0, 0]), tmp_path / "cm.png")
    rows = [{"model": "<b>cnn</b>", "accuracy": 0.91234, "params": 123456, "x": None}]
    path = write_report(
        tmp_path,
        title="Demo & co",
        intro="intro",
        tables={"Results": rows},
        figures=[Figure("cm.png", "Confusion", "what it shows")],
        notes=["seed 0"],
    )
    text = path.read_text()
    parser = _Collect()
    parser.feed(text)
    imgs = [a for t, a in parser.tags if t == "img"]
    assert imgs == [{"src": "cm.png", "alt": "Confusion"}]
    assert "&lt;b&gt;cnn&lt;/b&gt;" in text and "<b>cnn" not in text
    assert "Demo &amp; co" in text and "123,456" in text and "0.9123" in text
    assert not [t for t, a in parser.tags if t in ("script", "link")]
    assert "http://" not in text and "https://" not in text


def test_report_rejects_missing_or_outside_figures(tmp_path):
    with pytest.raises(ValueError, match="missing"):
        write_report(tmp_path, title="t", figures=[Figure("nope.png", "x")])
    with pytest.raises(ValueError, match="relative"):
        write_report(tmp_path, title="t", figures=[Figure("../x.png", "x")])
    assert not (tmp_path / "report.html").exists()
