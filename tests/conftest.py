"""Shared fixtures (the helpers they use are in tests/helpers.py)."""

from __future__ import annotations

import pytest

from tests.helpers import FAMILIES, make_tiny_model


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny_model(family):
    return make_tiny_model(family)
