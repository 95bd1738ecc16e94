"""Fixtures: the compiled backend under test, and a seeded generator per test."""
import zlib

import numpy as np
import pytest

import fastgd
from _helpers import COMPILED, require_backend


@pytest.fixture(params=COMPILED)
def backend(request):
    require_backend(request.param)
    with fastgd.use_backend(request.param):
        yield request.param


@pytest.fixture
def rng(request):
    # A seed per test, so failures reproduce.
    return np.random.default_rng(zlib.crc32(request.node.nodeid.encode()))
