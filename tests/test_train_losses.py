"""Losses: values against direct formulas (and torch), gradients against finite differences,
stability for logits of +-1000, clear errors."""
import numpy as np
import pytest

from fastgd.train import losses as L
from _train_helpers import assert_grad_close, numerical_grad


def test_mse_value_and_grad(rng):
    pred, target = rng.standard_normal((7, 3)), rng.standard_normal((7, 3))
    loss, grad = L.mse(pred, target)
    assert loss == pytest.approx(np.sum((pred - target) ** 2) / 7)
    assert_grad_close(grad, numerical_grad(lambda: L.mse(pred, target)[0], pred))
    loss_sum, grad_sum = L.mse(pred, target, reduction="sum")
    assert loss_sum == pytest.approx(7 * loss) and np.allclose(grad_sum, 7 * grad)


def test_bce_value_and_grad(rng):
    z, y = 3 * rng.standard_normal((9, 1)), rng.integers(0, 2, (9, 1)).astype(float)
    loss, grad = L.bce_with_logits(z, y)
    p = 1 / (1 + np.exp(-z))
    assert loss == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert_grad_close(grad, numerical_grad(lambda: L.bce_with_logits(z, y)[0], z))


def test_softmax_ce_value_and_grad(rng):
    z, c = 2 * rng.standard_normal((8, 5)), rng.integers(0, 5, 8)
    loss, grad = L.softmax_cross_entropy(z, c)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(8), c])))
    assert_grad_close(grad, numerical_grad(lambda: L.softmax_cross_entropy(z, c)[0], z))


def test_losses_equal_torch(rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    z, c = 5 * rng.standard_normal((6, 4)), rng.integers(0, 4, 6)
    assert L.softmax_cross_entropy(z, c)[0] == pytest.approx(F.cross_entropy(torch.tensor(z), torch.tensor(c)).item())
    zb, yb = 5 * rng.standard_normal(6), rng.integers(0, 2, 6).astype(float)
    assert L.bce_with_logits(zb, yb)[0] == pytest.approx(
        F.binary_cross_entropy_with_logits(torch.tensor(zb), torch.tensor(yb)).item())


@pytest.mark.parametrize("big", [1000.0, -1000.0])
def test_stable_for_huge_logits(big):
    # any overflow, invalid operation or division by zero fails the test (underflow to 0 is fine)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        z = np.array([[big, 0.0, -big], [big, big, 0.0]])
        loss, grad = L.softmax_cross_entropy(z, np.array([2, 0]))
        assert np.isfinite(loss) and np.all(np.isfinite(grad))
        # big > 0: row 0 misses by 2000, row 1 splits two equal classes; big < 0: row 1 misses by 1000
        expected = (2000.0 + np.log(2.0)) / 2 if big > 0 else 1000.0 / 2
        assert loss == pytest.approx(expected, rel=1e-12)
        zb = np.array([big, -big, big])
        lb, gb = L.bce_with_logits(zb, np.array([0.0, 1.0, 1.0]))
        assert lb == pytest.approx((2000.0 if big > 0 else 1000.0) / 3) and np.all(np.isfinite(gb))
        s = L.sigmoid(np.array([big]))
        assert np.all(np.isfinite(s))


def test_float32_kept(rng):
    z = rng.standard_normal((4, 3)).astype(np.float32)
    assert L.softmax_cross_entropy(z, [0, 1, 2, 0])[1].dtype == np.float32


@pytest.mark.parametrize("call, err", [
    (lambda: L.softmax_cross_entropy(np.zeros((3, 4)), [0, 1, 4]), ValueError),    # label out of range
    (lambda: L.softmax_cross_entropy(np.zeros((3, 4)), [0, -1, 2]), ValueError),
    (lambda: L.softmax_cross_entropy(np.zeros((3, 4)), [0, 1]), ValueError),       # length mismatch
    (lambda: L.softmax_cross_entropy(np.zeros((3, 4)), [0.5, 1, 2]), TypeError),   # not integers
    (lambda: L.softmax_cross_entropy(np.zeros((0, 4)), []), ValueError),           # empty
    (lambda: L.mse(np.zeros(3), np.zeros(4)), ValueError),
    (lambda: L.mse(np.zeros(3), np.zeros(3), reduction="max"), ValueError),
    (lambda: L.bce_with_logits(np.zeros(3), np.array([0, 1, 2])), ValueError),
    (lambda: L.mse(np.array(["a"]), np.array(["b"])), TypeError),
])
def test_bad_arguments(call, err):
    with pytest.raises(err):
        call()
