"""Fixtures of the callback tests."""

import pytest

from .stub import StubTrainer


@pytest.fixture
def trainer():
    return StubTrainer(num_steps=5)
