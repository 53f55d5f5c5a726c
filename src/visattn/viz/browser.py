"""Open an HTML report in headless Chromium and check it, over the DevTools protocol (CDP).

Chromium is started with ``--remote-debugging-pipe``: CDP messages are JSON objects separated by
NUL bytes on file descriptors 3 (to the browser) and 4 (from the browser), so only the Python
standard library is needed (no selenium, no websocket client). :func:`check_page` loads a file,
waits for its ``load`` event, then reports every image that failed to load (``complete`` and
``naturalWidth > 0``), every console error, uncaught exception and failed request (``Log`` and
``Runtime`` domains), and can save a full-page PNG screenshot.

Used by the browser test ``tests/viz/test_viz_browser.py`` and to make the README screenshot.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["PageCheck", "check_page", "find_chromium"]

_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--remote-debugging-pipe",
)


def find_chromium() -> str | None:
    """Path of a Chromium / Chrome executable (``$CHROMIUM`` first), or ``None``."""
    env = os.environ.get("CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if path := shutil.which(name):
            return path
    return None


@dataclass
class PageCheck:
    """What the browser saw: images (src -> loaded?), errors (console, exceptions, network)."""

    images: dict[str, bool] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    title: str = ""
    screenshot: Path | None = None

    @property
    def ok(self) -> bool:
        return all(self.images.values()) and not self.errors


class _Pipe:
    """Minimal CDP client over the NUL-separated pipe."""

    def __init__(self, proc: subprocess.Popen, to_browser: int, from_browser: int) -> None:
        self.proc, self.w, self.r = proc, to_browser, from_browser
        self.buf = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _read_message(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium: no answer over the DevTools pipe")
            ready, _, _ = select.select([self.r], [], [], left)
            if ready:
                chunk = os.read(self.r, 1 << 20)
                if not chunk:
                    raise RuntimeError("chromium: the browser closed the DevTools pipe")
                self.buf += chunk
        msg, self.buf = self.buf.split(b"\0", 1)
        return json.loads(msg)

    def send(
        self, method: str, params: dict | None = None, session: str | None = None, timeout=30.0
    ) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self.w, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._read_message(deadline)
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"chromium: {method} failed: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, timeout: float = 30.0) -> dict[str, Any]:
        for i, ev in enumerate(self.events):
            if ev.get("method") == method:
                return self.events.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            ev = self._read_message(deadline)
            if ev.get("method") == method:
                return ev
            self.events.append(ev)


_IMAGES_JS = (
    "JSON.stringify(Array.from(document.images).map("
    "i => [i.getAttribute('src'), i.complete && i.naturalWidth > 0]))"
)


def check_page(
    html_path: str | os.PathLike,
    *,
    screenshot: str | os.PathLike | None = None,
    width: int = 1280,
    height: int = 900,
    full_page: bool = False,
    chromium: str | None = None,
    timeout: float = 60.0,
) -> PageCheck:
    """Load ``html_path`` in headless Chromium and report images and errors.

    Args:
        screenshot: where to save a PNG of the page (``full_page``: the whole page, not only the
            ``width`` x ``height`` viewport).
        chromium: executable; default :func:`find_chromium`.

    Raises:
        FileNotFoundError: no page, or no Chromium found.
    """
    page = Path(html_path).resolve()
    if not page.is_file():
        raise FileNotFoundError(f"html_path: expected an existing file, got {page}")
    exe = chromium or find_chromium()
    if exe is None:
        raise FileNotFoundError("chromium: no Chromium executable found (apt-get install chromium)")
    result = PageCheck()
    with tempfile.TemporaryDirectory(prefix="visattn-chromium-") as profile:
        to_r, to_w = os.pipe()  # we write to_w, the browser reads fd 3
        from_r, from_w = os.pipe()  # the browser writes fd 4, we read from_r

        def child_fds() -> None:
            # Move both ends above 9 first so neither is clobbered, then onto 3 and 4
            # (dup2 onto another number also clears close-on-exec).
            hi_r = fcntl.fcntl(to_r, fcntl.F_DUPFD, 10)
            hi_w = fcntl.fcntl(from_w, fcntl.F_DUPFD, 10)
            os.dup2(hi_r, 3)
            os.dup2(hi_w, 4)

        proc = subprocess.Popen(
            [exe, *_FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE
            if os.environ.get("VISATTN_CHROMIUM_LOG")
            else subprocess.DEVNULL,
            preexec_fn=child_fds,  # fixed fd numbers 3 and 4 are the protocol
            close_fds=False,
        )
        os.close(to_r)
        os.close(from_w)
        cdp = _Pipe(proc, to_w, from_r)
        try:
            target = cdp.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)
            sess = cdp.send(
                "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
            )["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                cdp.send(f"{domain}.enable", session=sess)
            cdp.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
                session=sess,
            )
            cdp.send("Page.navigate", {"url": page.as_uri()}, session=sess)
            cdp.wait_event("Page.loadEventFired", timeout=timeout)
            value = cdp.send(
                "Runtime.evaluate", {"expression": _IMAGES_JS, "returnByValue": True}, session=sess
            )["result"]["value"]
            result.images = {src: bool(ok) for src, ok in json.loads(value)}
            result.title = cdp.send(
                "Runtime.evaluate",
                {"expression": "document.title", "returnByValue": True},
                session=sess,
            )["result"]["value"]
            if screenshot is not None:
                params: dict[str, Any] = {"format": "png"}
                if full_page:
                    params["captureBeyondViewport"] = True
                    metrics = cdp.send("Page.getLayoutMetrics", session=sess)
                    size = metrics.get("cssContentSize") or metrics["contentSize"]
                    params["clip"] = {
                        "x": 0,
                        "y": 0,
                        "width": size["width"],
                        "height": size["height"],
                        "scale": 1,
                    }
                data = cdp.send("Page.captureScreenshot", params, session=sess, timeout=timeout)
                out = Path(screenshot)
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(base64.b64decode(data["data"]))
                result.screenshot = out
            result.errors = _errors(cdp.events)
        finally:
            try:
                cdp.send("Browser.close", timeout=5)
            except Exception:  # the browser may already be gone
                pass
            os.close(to_w)
            os.close(from_r)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return result


def _errors(events: list[dict[str, Any]]) -> list[str]:
    errors = []
    for ev in events:
        method, p = ev.get("method"), ev.get("params", {})
        if method == "Runtime.consoleAPICalled" and p.get("type") in ("error", "assert"):
            errors.append(
                "console: " + " ".join(str(a.get("value", "")) for a in p.get("args", []))
            )
        elif method == "Runtime.exceptionThrown":
            errors.append("exception: " + p.get("exceptionDetails", {}).get("text", ""))
        elif method == "Log.entryAdded" and p.get("entry", {}).get("level") == "error":
            entry = p["entry"]
            errors.append(f"log: {entry.get('text', '')} {entry.get('url', '')}".strip())
        elif method == "Network.loadingFailed":
            errors.append(f"network: {p.get('errorText', '')} ({p.get('type', '')})")
    return errors
