"""The learning tier runs torch on one thread: same seed and thread count give the same
weights and outputs; 1 vs 2 threads do not (and on a busy 2-core machine, 2 is slower)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

THREADS = 1


@pytest.fixture(autouse=True)
def fixed_torch_threads() -> Iterator[None]:
    """Pin torch's intra-op thread count for the test, then restore it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    yield
    torch.set_num_threads(threads)
