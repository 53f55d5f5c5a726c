"""Screenshot a demo report in headless Chromium for the README (docs/images/report.png).

    python tools/screenshot_report.py runs/demo/report.html docs/images/report.png

The page must load every image without a console error (``visattn.viz.browser.check_page``);
the PNG is reduced to a 256-colour palette so it stays small (< 300 KB).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from PIL import Image

from visattn.viz.browser import check_page


def main(report: str, out: str, width: int = 1100, height: int = 1500) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.png"
        check = check_page(report, screenshot=raw, width=width, height=height)
        if not check.ok:
            print(f"report did not load cleanly: {check}", file=sys.stderr)
            return 1
        with Image.open(raw) as im:
            small = im.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            small.save(out, optimize=True)
    print(f"{out}: {Path(out).stat().st_size / 1024:.0f} KB")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
