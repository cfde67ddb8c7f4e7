"""Fixtures of the classification tests."""

from __future__ import annotations

from typing import Iterator

import pytest
import torch


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """One intra-op thread for every classification test module (restored afterwards).

    The top-level conftest asks for two; on a shared 2-core machine the second spinning
    thread slows these small convolutions down by an order of magnitude (measured: a
    4-round Fashion-MNIST simulate took 15 s with one thread, 192 s with two under load).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
