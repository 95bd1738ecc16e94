"""Models: hand-written backprop against finite differences for every model and activation;
flat-buffer layout; predictions; errors."""
import numpy as np
import pytest

import fastgd
from fastgd.train import MLP, LinearRegression, LogisticRegression, SoftmaxRegression
from _train_helpers import assert_grad_close, numerical_grad


def _check_grad(model, X, y):
    model.loss_grad(X, y)
    analytic = model.grad.copy()
    numeric = numerical_grad(lambda: model.loss(X, y), model.params)
    assert_grad_close(analytic, numeric)


def _random_init(model, rng):
    model.params[:] = 0.5 * rng.standard_normal(model.params.size)
    return model


def test_linear_regression_grad(rng):
    X = rng.standard_normal((9, 4))
    _check_grad(_random_init(LinearRegression(4), rng), X, rng.standard_normal(9))
    _check_grad(_random_init(LinearRegression(4, 3), rng), X, rng.standard_normal((9, 3)))


def test_logistic_regression_grad(rng):
    X = rng.standard_normal((11, 3))
    _check_grad(_random_init(LogisticRegression(3), rng), X, rng.integers(0, 2, 11))


def test_softmax_regression_grad(rng):
    X = rng.standard_normal((10, 4))
    _check_grad(_random_init(SoftmaxRegression(4, 5), rng), X, rng.integers(0, 5, 10))


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "bce"])
def test_mlp_grad(rng, activation, loss):
    X = rng.standard_normal((8, 5))
    out = {"cross_entropy": 3, "mse": 2, "bce": 1}[loss]
    y = {"cross_entropy": rng.integers(0, 3, 8), "mse": rng.standard_normal((8, 2)),
         "bce": rng.integers(0, 2, 8).astype(float)}[loss]
    model = MLP([5, 7, 6, out], activation, loss=loss, init="xavier", seed=3)
    model.biases[0][:] = 0.1 * rng.standard_normal(7)  # nonzero biases, so their grads are exercised
    _check_grad(model, X, y)


def test_params_are_one_flat_buffer(rng):
    m = MLP([4, 6, 3], seed=0)
    assert m.params.size == 4 * 6 + 6 + 6 * 3 + 3 and m.grad.shape == m.params.shape
    for v in m.weights + m.biases:
        assert np.shares_memory(v, m.params)
    m.weights[1][0, 0] = 42.0
    assert 42.0 in m.params
    # one optimizer step moves the whole model: one array, one kernel call
    X, y = rng.standard_normal((5, 4)), rng.integers(0, 3, 5)
    opt = fastgd.Adam([m.params], lr=0.01)
    before = m.params.copy()
    m.loss_grad(X, y)
    opt.step([m.grad])
    assert np.all(m.params != before)


def test_init_schemes_and_seed():
    a, b = MLP([10, 20, 3], "tanh", seed=1), MLP([10, 20, 3], "tanh", seed=1)
    assert np.array_equal(a.params, b.params)
    assert not np.array_equal(a.params, MLP([10, 20, 3], "tanh", seed=2).params)
    assert np.all(LinearRegression(3).params == 0)
    small = MLP([10, 20, 3], init=0.01, seed=0)
    assert small.weights[0].std() == pytest.approx(0.01, rel=0.2)
    assert np.all(small.biases[0] == 0)


def test_predict_and_accuracy_float32(rng):
    m = SoftmaxRegression(2, 3, dtype=np.float32)
    m.weights[0][:] = np.array([[1, 0], [0, 1], [-1, -1]], np.float32)
    X = np.array([[5.0, 0], [0, 5.0], [-5, -5]])
    assert m.predict(X).tolist() == [0, 1, 2]
    assert m.accuracy(X, [0, 1, 1]) == pytest.approx(2 / 3)
    assert m.forward(X).dtype == np.float32
    lr = LogisticRegression(1)
    lr.weights[0][:] = 1.0
    assert lr.predict(np.array([[-2.0], [3.0]])).tolist() == [0, 1]
    with pytest.raises(TypeError):
        LinearRegression(2).accuracy(X[:, :2], [0, 1, 2])


@pytest.mark.parametrize("call, err", [
    (lambda: SoftmaxRegression(3, 4).loss_grad(np.zeros((2, 3)), [0, 4]), ValueError),   # label out of range
    (lambda: SoftmaxRegression(3, 4).loss_grad(np.zeros((2, 3)), [0, 1, 2]), ValueError),  # mismatched lengths
    (lambda: SoftmaxRegression(3, 4).loss_grad(np.zeros((0, 3)), []), ValueError),        # empty
    (lambda: SoftmaxRegression(3, 4).loss_grad(np.zeros((2, 5)), [0, 1]), ValueError),    # wrong features
    (lambda: LogisticRegression(2).loss_grad(np.zeros((2, 2)), [0, 2]), ValueError),
    (lambda: LinearRegression(2, 2).loss_grad(np.zeros((2, 2)), np.zeros(2)), ValueError),
    (lambda: MLP([3, 4, 2], "swish"), ValueError),
    (lambda: MLP([3]), ValueError),
    (lambda: MLP([3, 0, 2]), ValueError),
    (lambda: MLP([3, 4, 2], loss="bce"), ValueError),
    (lambda: MLP([3, 4, 2], init="orthogonal"), ValueError),
    (lambda: MLP([3, 4, 2], dtype=np.int32), TypeError),
])
def test_bad_arguments(call, err):
    with pytest.raises(err):
        call()
