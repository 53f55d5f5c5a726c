"""Shared fixtures: a fresh random seed per test (printed, so a failure can be replayed).

Set VISATTN_TEST_SEED=<int> to replay a run with fixed inputs.
"""

from __future__ import annotations

import os
import random

import pytest
import torch


@pytest.fixture(autouse=True)
def seed() -> int:
    """Seed torch / random with a new value each run; the value is printed for replay."""
    value = int(os.environ.get("VISATTN_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(value)
    random.seed(value)
    print(f"VISATTN_TEST_SEED={value}")
    return value


@pytest.fixture(autouse=True)
def _one_thread_per_worker():
    """pytest-xdist runs one worker per core: keep torch from oversubscribing them."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
