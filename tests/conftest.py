"""pytest fixtures shared by the tests; the models and data behind them live in ``helpers.py``."""

from __future__ import annotations

import pytest

from helpers import PairDataset, tiny_bert  # also sets the offline environment variables


@pytest.fixture
def bert():
    return tiny_bert()


@pytest.fixture
def pair_dataset():
    return PairDataset()
