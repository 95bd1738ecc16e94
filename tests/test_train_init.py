"""Init: the variances of torch.nn.init (formula and sample), torch's fans and gains, seeding."""
import math

import numpy as np
import pytest

from fastgd.train import init as I

SHAPE = (300, 500)  # (out, in): fan_in 500, fan_out 300; 150_000 samples -> variance within ~1%


def _var(fill, **kw):
    a = np.empty(SHAPE)
    fill(a, seed=0, **kw)
    return a.var(), a


@pytest.mark.parametrize("fill, kw, expected", [
    (I.xavier_uniform_, {}, 2 / 800),
    (I.xavier_normal_, {}, 2 / 800),
    (I.xavier_uniform_, {"gain": 5 / 3}, (5 / 3) ** 2 * 2 / 800),
    (I.kaiming_uniform_, {}, 2 / 500),                                        # torch default: leaky_relu(0)
    (I.kaiming_normal_, {"nonlinearity": "relu"}, 2 / 500),
    (I.kaiming_normal_, {"nonlinearity": "relu", "mode": "fan_out"}, 2 / 300),
    (I.kaiming_uniform_, {"nonlinearity": "tanh"}, (5 / 3) ** 2 / 500),
    (I.kaiming_normal_, {"nonlinearity": "linear"}, 1 / 500),
])
def test_variance_formula(fill, kw, expected):
    var, a = _var(fill, **kw)
    assert var == pytest.approx(expected, rel=0.03)
    assert abs(a.mean()) < 0.05 * math.sqrt(expected)


@pytest.mark.parametrize("ours, theirs, kw", [
    ("xavier_uniform_", "xavier_uniform_", {}),
    ("xavier_normal_", "xavier_normal_", {"gain": 2.0}),
    ("kaiming_uniform_", "kaiming_uniform_", {"mode": "fan_out", "nonlinearity": "relu"}),
    ("kaiming_normal_", "kaiming_normal_", {}),
])
def test_variance_equals_torch(ours, theirs, kw):
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    t = torch.empty(SHAPE, dtype=torch.float64)
    getattr(torch.nn.init, theirs)(t, **kw)
    var, _ = _var(getattr(I, ours), **kw)
    assert var == pytest.approx(t.var().item(), rel=0.03)


def test_gains_and_fans_equal_torch():
    torch = pytest.importorskip("torch")
    for name in ("linear", "sigmoid", "tanh", "relu", "selu"):
        assert I.calculate_gain(name) == pytest.approx(torch.nn.init.calculate_gain(name))
    assert I.calculate_gain("leaky_relu", 0.2) == pytest.approx(torch.nn.init.calculate_gain("leaky_relu", 0.2))
    assert I.fans((16, 8, 3, 3)) == (72, 144)


def test_seeded_and_in_place_on_views():
    buf = np.zeros(2 * 12)
    a, b = buf[:12].reshape(3, 4), buf[12:].reshape(3, 4)
    I.xavier_uniform_(a, seed=7)
    I.xavier_uniform_(b, seed=7)
    assert np.array_equal(a, b) and np.any(buf != 0)   # same seed, same values, written through views
    f32 = np.empty((3, 4), np.float32)
    assert I.kaiming_normal_(f32, seed=1).dtype == np.float32


@pytest.mark.parametrize("call, err", [
    (lambda: I.xavier_uniform_(np.empty(5)), ValueError),             # 1-D: no fans
    (lambda: I.xavier_uniform_(np.empty((2, 2), int)), TypeError),
    (lambda: I.kaiming_normal_(np.empty((2, 2)), mode="fan"), ValueError),
    (lambda: I.calculate_gain("swish"), ValueError),
    (lambda: I.normal_(np.empty((2, 2)), std=-1.0), ValueError),
    (lambda: I.normal_(np.empty((2, 2)), seed="x"), TypeError),
])
def test_bad_arguments(call, err):
    with pytest.raises(err):
        call()
