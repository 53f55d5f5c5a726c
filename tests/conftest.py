"""Shared fixtures: a fresh random seed per test (printed, so a failure can be replayed), the
fast kernels taken as they are under backend "auto", ``device`` (``cpu``, and ``cuda`` when it
is available) and ``server``, a local HTTP server for the download tests.

Set VISATTN_TEST_SEED=<int> to replay a run with fixed inputs.
"""

from __future__ import annotations

import functools
import http.server
import os
import random
import threading

import numpy as np
import pytest
import torch

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


@pytest.fixture(autouse=True)
def seed() -> int:
    """Seed torch / random / NumPy with a new value each run; the value is printed for replay."""
    value = int(os.environ.get("VISATTN_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(value)
    random.seed(value)
    np.random.seed(value)
    print(f"VISATTN_TEST_SEED={value}")
    return value


@pytest.fixture(autouse=True)
def _one_thread_per_worker():
    """pytest-xdist runs one worker per core: keep torch from oversubscribing them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _kernels_not_measured(monkeypatch):
    """Tests compare the fast kernels themselves with the formulas: backend "auto" takes them
    without measuring them against the formulas first (on CUDA it would; the measured choice
    has its own tests, tests/kernels/test_kernels_tune.py)."""
    from visattn.kernels import _tune

    monkeypatch.setattr(_tune, "TUNED_DEVICES", set())


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Each device the tests can run on: the CPU, and the GPU when CUDA is available."""
    return torch.device(request.param)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path):
    """(folder served, base URL) of a local HTTP server on 127.0.0.1: the download code's real
    network path, without the internet."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    yield folder, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
