"""The Triton kernels (SE, CBAM, sampler: arXiv:1709.01507, 1807.06521, 1506.02025) on the CPU.

``TRITON_INTERPRET=1`` must be set before ``triton`` is imported, so this test reruns
``test_kernels_se_cbam.py``, ``test_kernels_norm_fusion.py``, ``test_kernels_sampler.py`` and
``test_kernels_channel_gate.py`` in
a fresh Python process with the interpreter on and the Triton backend forced on CPU tensors (tiny
shapes only).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton not installed")
def test_triton_kernels_under_interpreter(tmp_path):
    env = dict(os.environ)
    env.update(
        TRITON_INTERPRET="1",
        VISATTN_TEST_FAST_BACKEND="triton",
        OMP_NUM_THREADS="1",
        CUDA_VISIBLE_DEVICES="",
    )
    src = str(HERE.parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [
        sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "-p", "no:xdist",
        "--rootdir", str(tmp_path), str(HERE / "test_kernels_se_cbam.py"),
        str(HERE / "test_kernels_norm_fusion.py"), str(HERE / "test_kernels_sampler.py"),
        str(HERE / "test_kernels_channel_gate.py"),
        "-k", "not dtype1 or shape0",  # bfloat16 on the smallest case only: the interpreter is slow
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout
