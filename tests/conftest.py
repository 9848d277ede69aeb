"""Shared pytest setup."""
import pytest
import torch


@pytest.fixture(autouse=True, scope='session')
def _one_thread():
    "Test tensors are small: one intra-op thread per worker avoids oversubscribing CI's 2 cores (results are unchanged)."
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
